"""A sweep as its directory: what was submitted, and the state of each task and of the whole.

``<results root>/<name>-sweep-<hex>/``::

    sweep.json        the sweep: its job, its tasks (index, line, values), its arrays (ids, tasks)
    sweep-file.*      the sweep file as it was given
    arrays/           each array's script (<n>.sh), and the logs of elements not yet started
    tasks/<index>/    one complete results directory per task, which every job command reads

Each task is a job of its own (its ``state/submitted`` names the array element's job id), so its
state is decided exactly as a job's (:mod:`d4p_hpc.jobs.state`); a rerun of a task archives its
earlier attempt as a segment, so its attempts are its segments plus one. The sweep's own state
follows from its tasks' (:func:`overall`).
"""

from __future__ import annotations

import glob
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from d4p_hpc.errors import D4pHpcError, JobNotFoundError, ResultsError, UsageError
from d4p_hpc.jobs import index, state
from d4p_hpc.results import Layout, read_json
from d4p_hpc.sweeps.tasks import Task, well_formed

#: how a sweep's id looks: ``sweep-`` and 8 hex digits
SWEEP_ID = re.compile(r"sweep-[0-9a-f]{8}")
#: a task index as ``--tasks`` takes it (ASCII digits)
_INDEX = re.compile(r"[0-9]+")
#: the order in which the tasks' ends make the sweep's: the first one present wins
_WORST = ("FAILED", "TIMEOUT", "CANCELLED")


class SweepLayout:
    """The names in a sweep directory (class attributes) and their paths under one."""

    RECORD = "sweep.json"
    FILE = "sweep-file"
    ARRAYS = "arrays"
    TASKS = "tasks"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @property
    def record(self) -> Path:
        return self.directory / self.RECORD

    @property
    def arrays(self) -> Path:
        return self.directory / self.ARRAYS

    def task(self, index: int) -> Path:
        """The results directory of task ``index``."""
        return self.directory / self.TASKS / str(index)


@dataclass(frozen=True)
class Sweep:
    """A sweep directory and its record."""

    directory: Path
    record: dict

    @property
    def layout(self) -> SweepLayout:
        return SweepLayout(self.directory)

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def name(self) -> str:
        return str(self.record["name"])

    @property
    def scheduler(self) -> str:
        return str(self.record["scheduler"])

    @property
    def tasks(self) -> list[Task]:
        return [Task(t["index"], t["line"], t["values"]) for t in self.record["tasks"]]

    @property
    def arrays(self) -> list[dict]:
        """The arrays submitted, oldest first: number, scheduler id, tasks, time."""
        return list(self.record.get("arrays", []))

    def job(self, index: int) -> state.Job | None:
        """Task ``index`` as a job; None while it has never been submitted."""
        directory = self.layout.task(index)
        if not Layout(directory).marker(Layout.SUBMITTED).exists():
            return None
        return state.open_job(directory)


@dataclass(frozen=True)
class TaskStatus:
    """A task's state: its job's, or NOT SUBMITTED."""

    task: Task
    status: state.JobStatus | None
    attempts: int
    #: its results directory is gone (deleted by hand)
    gone: bool = False

    @property
    def state(self) -> str:
        return self.status.state if self.status else "FAILED"

    @property
    def reason(self) -> str:
        if self.gone:
            return "its folder is gone (deleted?): d4p-hpc resume SWEEP --failed makes it again and reruns it"
        if self.status is None:
            return "never submitted (its array was not accepted): d4p-hpc resume SWEEP --failed submits it"
        return self.status.reason

    @property
    def terminal(self) -> bool:
        return self.status is None or self.status.terminal

    @property
    def rerunnable(self) -> bool:
        """Ended without completing (or never submitted): what ``resume --failed`` reruns."""
        return self.terminal and self.state != "COMPLETED"


def is_sweep(directory: str | Path) -> bool:
    """Whether ``directory`` is a sweep's."""
    return SweepLayout(directory).record.is_file()


def open_sweep(directory: str | Path) -> Sweep:
    """The sweep in ``directory`` (its record checked: a task's index names its folder)."""
    directory = Path(directory).resolve()
    path = SweepLayout(directory).record
    record = read_json(path, dict)
    if record is None:
        raise JobNotFoundError(f"{directory} is not a sweep's directory (no {SweepLayout.RECORD})")
    tasks = record.get("tasks")
    parallel = record.get("max_parallel")
    if not (isinstance(record.get("id"), str) and isinstance(record.get("name"), str)
            and isinstance(record.get("scheduler"), str) and isinstance(record.get("spec"), dict)
            and isinstance(tasks, list)
            and all(isinstance(t, dict) and type(t.get("index")) is int and t["index"] >= 0
                    and type(t.get("line")) is int and isinstance(t.get("values"), dict)
                    and well_formed(t["values"]) for t in tasks)
            and isinstance(record.get("arrays", []), list)
            and (parallel is None or (type(parallel) is int and parallel >= 1))):
        raise ResultsError(f"{path} is not a sweep's record (changed by hand?): it needs its id, name, scheduler, "
                           "job spec and a list of tasks, each with its index, line and values of their kinds")
    return Sweep(directory, record)


def find(sweep: str, root: Path) -> Sweep | None:
    """The sweep ``sweep`` (its directory, or its id under ``root`` or in the user's index); None
    when ``sweep`` names no sweep (it may name a job)."""
    for directory in (Path(sweep), Path(root) / sweep):
        if directory.is_dir():
            return open_sweep(directory) if is_sweep(directory) else None
    if not SWEEP_ID.fullmatch(sweep):
        return None
    matches = [Path(p) for p in glob.glob(str(Path(root) / f"*-{sweep}")) if is_sweep(p)]
    if not matches:
        matches = [d for d in index.lookup(sweep)[0] if is_sweep(d)]
    if len(matches) != 1:
        raise JobNotFoundError(f"no sweep {sweep} under {root} nor in the index of your jobs: give its directory"
                               if not matches else f"sweep id {sweep} matches several directories: "
                               + ", ".join(map(str, matches)))
    return open_sweep(matches[0])


def status(sweep: Sweep, indices: list[int] | None = None) -> list[TaskStatus]:
    """The state of each task (of ``indices``, else all), asking the scheduler once."""
    tasks = [t for t in sweep.tasks if indices is None or t.index in indices]
    jobs = {t.index: sweep.job(t.index) for t in tasks}
    found = state.status([j for j in jobs.values() if j is not None])
    decided = {s.job.directory: s for s in found}
    arrayed = {i for a in sweep.arrays for i in a.get("tasks", [])}
    return [TaskStatus(t, decided[j.directory] if (j := jobs[t.index]) else None, _attempts(sweep, t.index),
                       t.index in arrayed and not sweep.layout.task(t.index).is_dir()) for t in tasks]


def _attempts(sweep: Sweep, index: int) -> int:
    segments = Layout(sweep.layout.task(index)).segments
    return 1 + (sum(1 for d in segments.iterdir() if d.name.isdigit()) if segments.is_dir() else 0)


def overall(tasks: list[TaskStatus]) -> str:
    """The sweep's state: RUNNING or PENDING until every task has ended, then COMPLETED if each
    did, else the worst of FAILED, TIMEOUT and CANCELLED among them."""
    states = Counter(t.state for t in tasks)
    if not all(t.terminal for t in tasks):
        return "RUNNING" if states["RUNNING"] or states["COMPLETED"] or any(
            t.terminal for t in tasks) else "PENDING"
    return next((s for s in _WORST if states[s]), "COMPLETED")


def counts(tasks: list[TaskStatus]) -> str:
    """``5 COMPLETED, 1 FAILED``: the tasks per state."""
    return ", ".join(f"{n} {s}" for s, n in sorted(Counter(t.state for t in tasks).items()))


def select(sweep: Sweep, tasks: str | int | Iterable[int] | None) -> list[int] | None:
    """The task indices of ``--tasks 3,5-7`` (or an index, or indices; None when not given), each
    one of the sweep's: a range is checked before it is counted out."""
    if tasks is None:
        return None
    count = len(sweep.tasks)
    ranges: list[tuple[int, int, str]] = []  # first, last, as given
    if isinstance(tasks, str):
        for part in tasks.split(","):
            low, dash, high = part.strip().partition("-")
            if not _INDEX.fullmatch(low) or (dash and not _INDEX.fullmatch(high)):
                raise UsageError(f"tasks are indices and ranges such as 3,5-7, not {tasks!r:.60}")
            ranges.append((_index(low), _index(high) if dash else _index(low), part.strip()))
    elif isinstance(tasks, int) and not isinstance(tasks, bool):
        ranges = [(tasks, tasks, str(tasks))]
    elif isinstance(tasks, Iterable) and _indices(listed := list(tasks)):
        ranges = [(t, t, str(t)) for t in listed]
    else:
        raise UsageError(f"tasks are an index, a list of indices or a text such as '3,5-7', not {tasks!r:.60}")
    bad = [given for first, last, given in ranges if not 0 <= first <= last < count]
    if bad or not ranges:
        raise UsageError(f"sweep {sweep.id} has tasks 0-{count - 1}; tasks {tasks!r:.60} names "
                         + (", ".join(b[:40] for b in bad[:5]) if bad else "none"))
    return sorted({i for first, last, _ in ranges for i in range(first, last + 1)})


def _index(digits: str) -> int:
    """An index of ``--tasks``; one longer than any sweep's count stands as -1, outside every sweep."""
    return int(digits) if len(digits) <= 12 else -1


def _indices(values: list) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def cancel(sweep: Sweep, indices: list[int] | None = None) -> list[int]:
    """Cancel the tasks (of ``indices``, else all) that have not ended; return those cancelled."""
    done = []
    # the pending first: a slot freed by a running task's stop must not start a task about to be cancelled
    for current in sorted(status(sweep, indices), key=lambda t: t.state == "RUNNING"):
        if current.terminal or current.status is None:
            continue
        try:
            state.cancel(current.status.job)
        except UsageError:  # it ended meanwhile
            continue
        done.append(current.task.index)
    return sorted(done)


def wait(sweep: Sweep, poll: float = 2.0, timeout: float | None = None,
         on_poll: Callable[[list[TaskStatus]], None] | None = None) -> list[TaskStatus]:
    """Poll until every task has ended (a task's end inferred without its marker is given
    :data:`~d4p_hpc.jobs.state.MARKER_GRACE_SECONDS` for it, as for a job)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    inferred_since: float | None = None
    first = True
    while True:
        current = status(open_sweep(sweep.directory))
        if on_poll:
            on_poll(current)
        if all(t.terminal for t in current):
            # a sweep found ended at the first look ended before: no marker is on its way
            if first or not any(t.status is not None and t.status.inferred for t in current):
                return current
            inferred_since = inferred_since or time.monotonic()
            if time.monotonic() - inferred_since >= state.MARKER_GRACE_SECONDS:
                return current
        else:
            inferred_since = None
        first = False
        if deadline is not None and time.monotonic() >= deadline:
            raise D4pHpcError(f"sweep {sweep.id} has not ended after {timeout:g} s: {counts(current)}")
        time.sleep(poll)
