"""The schedulers by name: the registry.

Every module of this package that defines a scheduler registers it with :func:`register`
when it is imported, and importing the package imports them all: a new scheduler is one
module here (or anywhere, registered by whoever imports it) plus its template. The spec,
the launch step, the renderer, the configuration, the submission and the job commands find a
scheduler's facts only through :func:`scheduler_class`, :func:`get`, :func:`classes`,
:func:`names` and :func:`detect` (and :func:`detected_because`, which says why). The registry
knows no job spec: submitting one is :mod:`d4p_hpc.submission.submit`'s.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TypeVar

from d4p_hpc.errors import SpecError
from d4p_hpc.schedulers.base import ArrayLimits, ArraySubmission, Scheduler, SchedulerState, Submission

__all__ = ["ArrayLimits", "ArraySubmission", "Scheduler", "SchedulerState", "Submission", "RUN", "register",
           "unregister", "classes", "names", "scheduler_class", "get", "detect", "detected_because"]

#: what a results directory of a ``d4p-hpc run`` (no scheduler: its run.json tells all) gives as its
#: scheduler (:attr:`d4p_hpc.jobs.state.Job.scheduler`); no scheduler may be called so
RUN = "run"
_REGISTRY: dict[str, type[Scheduler]] = {}
_S = TypeVar("_S", bound=type[Scheduler])


def register(cls: _S) -> _S:
    """Make ``cls`` the scheduler called ``cls.name`` (a class decorator; returns ``cls``).

    Raises
    ------
    ValueError
        Another class has that name already, the name is :data:`RUN`, or ``cls`` forks workers on this
        host without a node file.
    """
    if cls.name == RUN:
        raise ValueError(f"{RUN!r} is not a scheduler's name: it stands for a `d4p-hpc run` without one")
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


def detected_because(name: str) -> str:
    """Why :func:`detect` gives ``name`` on this host: its command is on PATH and those of the
    schedulers before it are not (``sbatch is on PATH``, ``neither sbatch nor qsub is on PATH``)."""
    chosen = scheduler_class(name)
    before = [cls.command for cls in classes() if cls.priority > chosen.priority and cls.command]
    found = [f"{chosen.command} is on PATH"] if chosen.command else []
    if len(before) > 1:
        found.append(f"neither {', '.join(before[:-1])} nor {before[-1]} is")
    elif before:
        found.append(f"{before[0]} is not")
    if found and not chosen.command:
        found[-1] += " on PATH"
    return " and ".join(found)


# the package's own schedulers register themselves as they are imported
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module
