"""Sweeps in the Python API: the same job over many input sets, as job arrays.

    import d4p_hpc
    sweep = d4p_hpc.submit_sweep("graph.py", "stations.jsonl", nodes=2, mapping="mpi", max_parallel=4)
    sweep.wait()                    # COMPLETED only if every task did
    sweep.status().counts           # {"COMPLETED": 9, "FAILED": 1}
    sweep.resume()                  # rerun the tasks that failed, were cancelled or never ran
    sweep.job(3).result()           # each task is a Job: its outputs, logs, report

The sweep file and what a task may set are :mod:`d4p_hpc.sweeps.tasks`'s; the arrays, the
scheduler's limits and the rerun of failed tasks :mod:`d4p_hpc.sweeps.submit`'s.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d4p_hpc.api.checks import check_flag, check_timeout
from d4p_hpc.api.job import Job, Report, attach, find_root
from d4p_hpc.errors import D4pHpcError, JobNotFoundError, UsageError
from d4p_hpc.sweeps import submit as sweeping
from d4p_hpc.sweeps import sweep as sweeps
from d4p_hpc.sweeps.tasks import read


@dataclass(frozen=True)
class SweepStatus:
    """A sweep's state and each task's."""

    state: str
    tasks: list[sweeps.TaskStatus]

    @property
    def counts(self) -> dict[str, int]:
        """Tasks per state."""
        return dict(Counter(t.state for t in self.tasks))

    @property
    def done(self) -> bool:
        return all(t.terminal for t in self.tasks)

    @property
    def counts_line(self) -> str:
        """``5 COMPLETED, 1 FAILED``."""
        return sweeps.counts(self.tasks)


class Sweep:
    """A sweep submitted: its directory, its tasks (each a :class:`~d4p_hpc.api.job.Job`) and its state."""

    def __init__(self, found: sweeps.Sweep) -> None:
        self._sweep = found

    @property
    def id(self) -> str:
        return self._sweep.id

    @property
    def directory(self) -> Path:
        return self._sweep.directory

    @property
    def name(self) -> str:
        return self._sweep.name

    @property
    def tasks(self) -> list[dict[str, Any]]:
        """Each task's index, name and values, as the sweep file gave them."""
        return [{"index": t.index, "name": t.name, **t.values} for t in self._sweep.tasks]

    def _reopen(self) -> sweeps.Sweep:
        self._sweep = sweeps.open_sweep(self.directory)
        return self._sweep

    def status(self, tasks: str | int | Iterable[int] | None = None) -> SweepStatus:
        """The state of the sweep and of its tasks (``tasks``: ``"3,5-7"``, an index or a list of them;
        else all)."""
        found = self._reopen()
        current = sweeps.status(found, sweeps.select(found, tasks))
        return SweepStatus(sweeps.overall(current), current)

    def wait(self, timeout: float | None = None, poll: float = 2.0,
             on_poll: Callable[[SweepStatus], None] | None = None) -> str:
        """Wait until every task has ended; the sweep's final state (COMPLETED only if each task did).
        ``on_poll(status)`` is called after each look."""
        def polled(current: list[sweeps.TaskStatus]) -> None:
            if on_poll is not None:
                on_poll(SweepStatus(sweeps.overall(current), current))

        return sweeps.overall(sweeps.wait(self._reopen(), poll=poll, timeout=check_timeout(timeout), on_poll=polled))

    def cancel(self, tasks: str | int | Iterable[int] | None = None) -> list[int]:
        """Cancel the tasks (``"3,5-7"``, an index or a list of them; else all) that have not ended;
        return those cancelled."""
        found = self._reopen()
        return sweeps.cancel(found, sweeps.select(found, tasks))

    def resume(self, tasks: str | int | Iterable[int] | None = None, check: bool = True) -> list[int]:
        """Rerun, as a new array, the tasks that FAILED, were CANCELLED, hit TIMEOUT or never ran (or
        those of ``tasks``); a task with a checkpoint continues from it. Returns the tasks rerun."""
        check_flag("check", check, "resume")
        found = self._reopen()
        return sweeping.rerun(found, sweeps.select(found, tasks), check=check)

    def report(self, path: str | Path | None = None, png: bool = False) -> Report:
        """Write the sweep's HTML page (default: ``report.html`` in its directory): a row a task with
        its values, state, duration and throughput, plots against each varied value, links to each
        task's own report; with ``png`` each plot as a PNG too (needs Chromium)."""
        from d4p_hpc.report import sweep as sweep_page

        target = Path(path) if path is not None else self.directory / "report.html"
        return Report(target, tuple(sweep_page.write(self._reopen(), target, png)))

    def job(self, index: int) -> Job:
        """Task ``index`` as a job (its outputs, logs, report, efficiency)."""
        if type(index) is not int or not any(t.index == index for t in self._sweep.tasks):
            raise UsageError(f"sweep {self.id} has tasks 0-{len(self._sweep.tasks) - 1}, not {index!r}")
        return attach(self._sweep.layout.task(index))

    def __repr__(self) -> str:
        return f"<Sweep {self.id} {self.name}: {len(self._sweep.tasks)} tasks in {self.directory}>"


def submit_sweep(graph: Any, sweep: str | os.PathLike, *, max_parallel: int | None = None,
                 profile: str | None = None, check: bool = True, **options: Any) -> Sweep:
    """Submit ``graph`` once per line of the sweep file ``sweep``, as job arrays; return at once.

    ``options`` are :func:`d4p_hpc.submit`'s, the same for every task; a line sets what differs
    (:data:`d4p_hpc.sweeps.tasks.KEYS`). ``max_parallel``: tasks running at once, at most.
    Everything is checked before anything is queued.
    """
    from d4p_hpc.api import options as planning

    planning.refuse_while_loading("d4p_hpc.submit_sweep")
    check_flag("check", check, "submit_sweep")
    return enqueue_sweep(plan_sweep(graph, sweep, options, max_parallel, profile, check))


def plan_sweep(graph: Any, sweep: str | os.PathLike, options: dict[str, Any], max_parallel: int | None = None,
               profile: str | None = None, check: bool = True, given: str | None = None) -> sweeping.SweepPlan:
    """Check the sweep and plan its arrays (``submit --sweep --dry-run`` stops here)."""
    from d4p_hpc.api import options as planning

    if not isinstance(sweep, (str, os.PathLike)) or not os.fspath(sweep):
        raise UsageError(f"sweep must be the path of a sweep file, not {sweep!r:.60}")
    tasks = read(sweep)
    spec, sources = planning.resolve(graph, options, profile, given or planning.KEYWORD)
    return sweeping.plan(spec, sources, tasks, Path(os.fspath(sweep)).resolve(), max_parallel, check=check)


def enqueue_sweep(planned: sweeping.SweepPlan) -> Sweep:
    """Submit a planned sweep."""
    return Sweep(sweeping.submit(planned))


def attach_sweep(sweep: str | Path, results_root: str | Path | None = None, profile: str | None = None) -> Sweep:
    """The sweep with this id or directory."""
    if not isinstance(sweep, (str, os.PathLike)):
        raise UsageError(f"attach_sweep takes a sweep's id (sweep-<hex>) or its directory, not {sweep!r:.60}")
    found = find_sweep(os.fspath(sweep), results_root, profile)
    if found is None:
        raise JobNotFoundError(f"{sweep} is not a sweep (its id, sweep-<hex>, or its directory)")
    return found


def find_sweep(name: str, results_root: str | Path | None = None, profile: str | None = None) -> Sweep | None:
    """The sweep ``name`` names (its id or directory), or None when it names something else (a job)."""
    found = sweeps.find(name, find_root(results_root, profile))
    return Sweep(found) if found is not None else None


def list_sweeps(results_root: str | Path | None = None, profile: str | None = None,
                unreadable: list[str] | None = None) -> list[Sweep]:
    """The sweeps under the results root, oldest first; one whose record cannot be read is left out,
    its one-line reason appended to ``unreadable`` (it must not hide the others)."""
    root = find_root(results_root, profile)
    try:
        found = [d for d in root.iterdir() if d.is_dir() and sweeps.is_sweep(d)] if root.is_dir() else []
    except OSError as exc:
        raise JobNotFoundError(f"cannot list the results root {root}: {exc.strerror}") from None
    listed = []
    for directory in sorted(found, key=lambda d: d.stat().st_mtime):
        try:
            listed.append(Sweep(sweeps.open_sweep(directory)))
        except D4pHpcError as err:
            if unreadable is not None:
                unreadable.append(str(err))
    return listed
