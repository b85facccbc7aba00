"""d4p-hpc: run dispel4py stream workflows on HPC batch clusters and locally.

The public API (see README, "From Python") is :mod:`d4p_hpc.api`'s, under these names; it is
imported on first use of one of them, so that ``import d4p_hpc`` (every command line, every
process of a run) costs nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker and an editor see; at run time, __getattr__ below
    from d4p_hpc.api import (D4pHpcError, Job, JobFailed, Report, Run, Status, Sweep, UsageError, as_completed,
                             attach, attach_sweep, list_jobs, load_graph, run, submit, submit_sweep)

__version__ = "0.2.0"

__all__ = ["D4pHpcError", "Job", "JobFailed", "Report", "Run", "Status", "Sweep", "UsageError", "__version__",
           "as_completed", "attach", "attach_sweep", "list_jobs", "load_graph", "run", "submit", "submit_sweep"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from d4p_hpc import api

        return getattr(api, name)
    raise AttributeError(f"module 'd4p_hpc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
