"""The Python API: submit a graph as a batch job or run it here, then follow, reattach and read it.

    import d4p_hpc
    job = d4p_hpc.submit("word_count.py", nodes=2, mapping="mpi", walltime="00:30:00")
    job.wait()                      # a live progress line; returns the final state
    counts = job.result()           # "PE.output" -> items; raises d4p_hpc.JobFailed if it failed
    job = d4p_hpc.attach(job.id)    # later, from another kernel or shell of the cluster

The keywords are the job spec's fields, which are also the keys of profiles and (with dashes)
``submit``'s long options; the commands of ``d4p-hpc`` are a layer over these functions, so both
take every decision the same way. A job is a plain batch job: nothing here holds it, and closing
the notebook or script that submitted it neither cancels nor orphans it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from d4p_hpc import settings
from d4p_hpc.api.checks import check_flag
from d4p_hpc.errors import D4pHpcError, JobFailed, UsageError

if TYPE_CHECKING:
    from d4p_hpc.api.job import Job, Report, Run, Status, as_completed, attach, list_jobs
    from d4p_hpc.api.options import Plan
    from d4p_hpc.api.sweep import Sweep, attach_sweep, submit_sweep

__all__ = ["D4pHpcError", "Job", "JobFailed", "Report", "Run", "Status", "Sweep", "UsageError", "as_completed",
           "attach", "attach_sweep", "list_jobs", "load_graph", "run", "submit", "submit_sweep"]
#: what :mod:`d4p_hpc.api.job` gives, imported on first use: a run (``d4p-hpc run``, each MPI rank)
#: imports this package for :mod:`d4p_hpc.api.local` and needs none of the job machinery
_FROM_JOB = ("Job", "Report", "Run", "Status", "as_completed", "attach", "list_jobs")
#: and :mod:`d4p_hpc.api.sweep`'s, the same way
_FROM_SWEEP = ("Sweep", "attach_sweep", "submit_sweep")


def __getattr__(name: str) -> Any:
    if name in _FROM_JOB:
        from d4p_hpc.api import job

        return getattr(job, name)
    if name in _FROM_SWEEP:
        from d4p_hpc.api import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'd4p_hpc.api' has no attribute {name!r}")


def submit(graph: Any, *, profile: str | None = None, check: bool = True, **options: Any) -> Job:
    """Submit ``graph`` (a path, a module name, or a WorkflowGraph of an importable file) as a batch
    job; return it at once, queued.

    ``options``: the job spec's fields (``nodes=4, mapping="mpi", walltime="01:00:00",
    scheduler="slurm", iterations=10, data={...}``, ...), each of its field's type; ``profile``: a
    profile of the config files; ``check=False`` does not load the graph here first. Everything is
    checked before anything is queued: a bad value raises a :class:`UsageError` saying which.
    """
    from d4p_hpc.api import options as planning

    planning.refuse_while_loading("d4p_hpc.submit")
    check_flag("check", check, "submit")
    return enqueue(planning.plan(graph, options, profile=profile, check=check))


def enqueue(planned: Plan) -> Job:
    """Submit a job planned (and checked) by :func:`d4p_hpc.api.options.plan`; ``submit`` is both."""
    from d4p_hpc.api.job import attach

    _job_id, directory = planned.submit()
    return attach(directory)


def load_graph(graph: str | os.PathLike, attr: str | None = None) -> Any:
    """The WorkflowGraph of a graph file (or module), loaded as a job loads it: a file written for
    dispel4py loads without stream-d4py too (its stand-in is used). The graph can be looked at, and
    given to :func:`submit` or :func:`run`, which send its file."""
    from d4p_hpc.workflow.loader import load_graph as load

    if not isinstance(graph, (str, os.PathLike)) or not isinstance(attr, (str, type(None))):
        raise UsageError(f"load_graph takes a graph file's path or a module name (and the graph's name), not "
                         f"{graph!r:.60}")
    return load(os.fspath(graph), attr)


def run(graph: Any, *, wait: bool = True, progress: bool = True, **options: Any) -> Run:
    """Run ``graph`` here, with no scheduler, in a process of its own (a failing PE never takes the
    caller down, and the run outlives it); return once it has ended, or at once with ``wait=False``.

    ``options``: ``mapping``, ``processes``, ``iterations``, ``data``, ``input_file``, ``attr``,
    ``results`` (its directory; default: a new one under the results root), ``checkpoint_every``,
    ``checkpoint``, ``resume``, ``redis_server`` -- the options of ``d4p-hpc run``. A run that
    failed does not raise here: :meth:`Run.result` does.
    """
    from d4p_hpc.api import options as planning
    from d4p_hpc.api.job import Run
    from d4p_hpc.results import check_new
    from d4p_hpc.submission import config

    planning.refuse_while_loading("d4p_hpc.run")
    check_flag("wait", wait, "run")
    check_flag("progress", progress, "run")
    argv, directory = planning.run_argv(graph, dict(options), config.results_root())
    if not options.get("resume"):
        check_new(directory)  # an earlier run there is refused, as the command refuses it
    env = {**os.environ, settings.QUIET: "1"}  # its summary is the Run's to give
    command = [sys.executable, "-m", "d4p_hpc", "run", *argv]
    # the graph loads, its inputs and the mapping fit: refused here, in one line, before a run starts
    checked = subprocess.run([*command, "--check"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             env=env)
    if checked.returncode != 0:
        said = [line for line in checked.stderr.splitlines() if line.strip()]
        error = next((line for line in said if line.startswith("Error: ")), said[-1] if said else
                     f"d4p-hpc run --check exited {checked.returncode}")
        raise (UsageError if checked.returncode == 2 else D4pHpcError)(error.removeprefix("Error: "))
    # (a file, not a pipe: a run that says much never blocks on a reader that is not there)
    said_file = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=said_file,
                               env=env, start_new_session=True)
    started = Run(directory, process, said_file)
    if wait:
        started.wait(progress=progress)
    return started
