"""The schedulers by name (the registry), and :func:`submit`, which renders, submits and records a job.

Every module of this package that defines a scheduler registers it with :func:`register`
when it is imported, and importing the package imports them all: a new scheduler is one
module here (or anywhere, registered by whoever imports it) plus its template. The spec,
the launch step, the renderer, the configuration and the job commands find a scheduler's
facts only through :func:`scheduler_class`, :func:`get`, :func:`classes`, :func:`names` and
:func:`detect`.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from d4p_hpc.errors import SpecError
from d4p_hpc.schedulers.base import Scheduler, SchedulerState

if TYPE_CHECKING:
    from d4p_hpc.submission.spec import JobSpec

__all__ = ["Scheduler", "SchedulerState", "register", "unregister", "classes", "names", "scheduler_class", "get",
           "detect", "submit", "check_files", "SUBMITTED"]

#: marker written by ``submit`` into ``state/``; jobs sent with plain sbatch/qsub lack it
SUBMITTED = "submitted"
_REGISTRY: dict[str, type[Scheduler]] = {}
_S = TypeVar("_S", bound=type[Scheduler])


def register(cls: _S) -> _S:
    """Make ``cls`` the scheduler called ``cls.name`` (a class decorator; returns ``cls``).

    Raises
    ------
    ValueError
        Another class has that name already, or ``cls`` forks workers on this host without a node file.
    """
    if _REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError(f"a scheduler called {cls.name!r} is registered already ({_REGISTRY[cls.name].__qualname__})")
    if cls.on_this_host and not cls.nodefile:
        raise ValueError(f"scheduler {cls.name!r} runs jobs on this host, so it needs a nodefile to fork workers over")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Forget the scheduler called ``name`` (a test's own, once it is done)."""
    _REGISTRY.pop(name, None)


def classes() -> list[type[Scheduler]]:
    """The registered schedulers, highest :attr:`~Scheduler.priority` first (Slurm, PBS, ..., local)."""
    return sorted(_REGISTRY.values(), key=lambda cls: -cls.priority)


def names() -> list[str]:
    """The names of :func:`classes`, in that order: what ``--scheduler`` accepts."""
    return [cls.name for cls in classes()]


def scheduler_class(name: str) -> type[Scheduler]:
    """The class of the scheduler called ``name``: its facts, without an instance."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown scheduler {name!r}; valid: {', '.join(names())}") from None


def get(name: str) -> Scheduler:
    """The scheduler called ``name``, ready to submit, query and cancel."""
    return scheduler_class(name)()


def detect() -> str:
    """The name of the scheduler that jobs from this host go to: the first found, by priority."""
    return next(cls.name for cls in classes() if cls.detected())


def check_files(spec: JobSpec) -> None:
    """Refuse a spec whose graph or input file does not exist here (the nodes could not read it either)."""
    for what, path in (("graph file", spec.graph), ("input file", spec.input_file)):
        if path is not None and not os.path.isfile(path):
            raise SpecError(f"{what} {path} does not exist")


def submit(spec: JobSpec, script: str, sources: dict | None = None) -> tuple[str, Path]:
    """Submit the rendered ``script`` of ``spec``; returns the job id and its results directory.

    Besides what the script writes itself when it starts, ``state/submitted``
    (job id, scheduler, time) is written now, so that a job still pending can
    be found and inspected; ``job.sh`` and ``spec.json`` are written too.
    """
    from d4p_hpc.submission.render import check_syntax
    from d4p_hpc.results import now, write_json

    check_syntax(script)
    assert spec.results_root is not None, "a resolved spec always has a results root"
    Path(spec.results_root).mkdir(parents=True, exist_ok=True)
    # a job's directory, its script and its logs are the user's alone, as the script's own files are
    umask = os.umask(0o077)
    try:
        job_id = get(spec.scheduler).submit(script, spec)
        directory = spec.results_dir(job_id)
        (directory / "state").mkdir(parents=True, exist_ok=True)
        if not (directory / "job.sh").exists():
            (directory / "job.sh").write_text(script)
        if not (directory / "spec.json").exists():
            write_json(directory / "spec.json", {"spec": spec.to_dict(), "sources": sources or {}})
        write_json(directory / "state" / SUBMITTED, {"time": now(), "epoch": time.time(), "job_id": job_id,
                                                      "scheduler": spec.scheduler, "argv": sys.argv,
                                                      "cwd": os.getcwd()})
    finally:
        os.umask(umask)
    return job_id, directory


# the package's own schedulers register themselves as they are imported
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module
