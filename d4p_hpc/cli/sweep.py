"""How the job commands treat a sweep (``<name>-sweep-<hex>``, its id or directory): what they print.

Each job command takes a sweep where it takes a JOB (:func:`found`), and does to it what it does to
a job, over its tasks: ``status`` (counts, ``--tasks`` for a row a task), ``wait`` (exit 0 only if
every task completed), ``cancel [--tasks]``, ``logs --task N``, ``results`` (a row a task, ``--show``
across tasks), ``report``, ``resume --failed``, and ``list`` (a line a sweep).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import click

from d4p_hpc.api.sweep import Sweep, SweepStatus, find_sweep, list_sweeps
from d4p_hpc.cli import show
from d4p_hpc.errors import D4pHpcError, UsageError
from d4p_hpc.units import clock, plural

#: the sweep that a JOB argument names, or None
found = find_sweep


def summary(sweep: Sweep, current: SweepStatus) -> str:
    """``sweep sweep-1a2b3c4d (word_count, local): RUNNING: 2 RUNNING, 4 PENDING (6 tasks)``."""
    return (f"sweep {sweep.id} ({sweep.name}): {current.state}: {current.counts_line} "
            f"({plural(len(current.tasks), 'task')})")


def status(sweep: Sweep, tasks: bool, wide: bool) -> None:
    current = sweep.status()
    click.echo(summary(sweep, current))
    if wide:
        click.echo(str(sweep.directory))
    if tasks:
        task_table(current, wide)


def task_table(current: SweepStatus, wide: bool = False) -> None:
    """A row a task: index, name, state, attempts, elapsed, job id, what it varies, reason."""
    rows = [("TASK", "NAME", "STATE", "TRIES", "ELAPSED", "JOB", "VALUES", "REASON")]
    for t in current.tasks:
        s = t.status
        rows.append((str(t.task.index), t.task.name, t.state, str(t.attempts),
                     clock(s.elapsed) if s is not None and s.elapsed is not None else "-",
                     s.job.job_id if s is not None else "-", _values(t.task.varied()) or "-",
                     " ".join(t.reason.split()) or "-"))
    show.columns(rows, wide)


def _values(values: dict) -> str:
    return " ".join(f"{k}={json.dumps(v, separators=(',', ':')) if not isinstance(v, str) else v}"
                    for k, v in values.items())


def wait(sweep: Sweep, timeout: float | None) -> None:
    """Wait for every task; a line each time the counts change; exit 1 unless all COMPLETED."""
    said = ""

    def show(current: SweepStatus) -> None:
        nonlocal said
        if current.counts_line != said:
            said = current.counts_line
            click.echo(f"sweep {sweep.id}: {said}", err=True)

    try:
        final = sweep.wait(timeout, on_poll=show)
    except KeyboardInterrupt:
        click.echo(f"stopped waiting for sweep {sweep.id}; its tasks go on: d4p-hpc cancel {sweep.id} stops them",
                   err=True)
        raise click.exceptions.Exit(130) from None
    click.echo(f"{final} {sweep.directory}")
    if final != "COMPLETED":
        click.echo(f"rerun the tasks that did not complete with: d4p-hpc resume {sweep.id} --failed", err=True)
        raise click.exceptions.Exit(1)


def cancel(sweep: Sweep, tasks: str | None) -> None:
    done = sweep.cancel(tasks)
    if not done:
        raise UsageError(f"no task of sweep {sweep.id}{' of --tasks ' + tasks if tasks else ''} is queued or running")
    click.echo(f"cancel requested for {plural(len(done), 'task')} of sweep {sweep.id}: {_list(done)}")


def resume(sweep: Sweep, failed: bool, tasks: str | None) -> None:
    if not failed and tasks is None:
        raise UsageError(f"{sweep.id} is a sweep: give --failed (rerun the tasks that did not complete) or "
                         "--tasks 3,5-7")
    done = sweep.resume(tasks)
    click.echo(f"sweep {sweep.id}: {plural(len(done), 'task')} submitted again: {_list(done)}")


def _list(indices: list[int]) -> str:
    return ", ".join(map(str, indices[:20])) + (f" and {len(indices) - 20} more" if len(indices) > 20 else "")


def logs_task(sweep: Sweep, task: int | None) -> Path:
    """The results directory of ``--task N`` (which ``logs`` of a sweep needs)."""
    if task is None:
        raise UsageError(f"{sweep.id} is a sweep: give --task N for the logs of one of its tasks "
                         f"(0-{len(sweep.tasks) - 1})")
    return sweep.job(task).directory


def results(sweep: Sweep) -> None:
    """A row a task: state, wall time, items, items/s, and each of its outputs' item counts."""
    current = sweep.status()
    click.echo(summary(sweep, current) + f"\n{sweep.directory}")
    rows = [("TASK", "NAME", "STATE", "WALL S", "ITEMS", "ITEMS/S", "OUTPUTS")]
    for t in current.tasks:
        try:
            job = sweep.job(t.task.index)
            metrics = job.metrics() if job.record() else {}
            outputs = ", ".join(f"{name}: {count:,}" for name, (count, _) in job.counts().items()) \
                if job.record() else ""
        except D4pHpcError as err:  # one task's files damaged or gone: its row says so, the others are shown
            rows.append((str(t.task.index), t.task.name, t.state, "-", "-", "-", str(err)))
            continue
        rows.append((str(t.task.index), t.task.name, t.state, f"{metrics.get('wall_seconds') or 0:.2f}",
                     f"{metrics.get('items', 0):,}", f"{metrics.get('items_per_second') or 0:,.0f}", outputs or "-"))
    show.columns(rows, wide=True)
    click.echo(f"print one output across the tasks with: d4p-hpc results {sweep.id} --show PE.OUTPUT")


def show_items(sweep: Sweep, target: str, limit: int | None) -> None:
    """The items of ``target`` (PE.OUTPUT) of every task that has it, a JSON line each, with the
    task's index, name and values beside each item."""
    out = sys.stdout
    for task in sweep.status().tasks:
        try:
            job = sweep.job(task.task.index)
            if not job.record():
                continue
            items = job.items(target)
        except D4pHpcError:  # this task's run has no such output (yet), or its files are gone
            continue
        for item in itertools.islice(items, limit):
            out.write(json.dumps({"task": task.task.index, "name": task.task.name, **task.task.varied(),
                                  "item": item}, default=repr) + "\n")


def listing(results_root: str | None, profile: str | None, unfinished: bool = False) -> None:
    """A line per sweep under the results root (``list``), or per sweep not ended (``status``)."""
    unreadable: list[str] = []
    for sweep in list_sweeps(results_root, profile, unreadable):
        current = sweep.status()
        if not unfinished or not current.done:
            click.echo(summary(sweep, current))
    for reason in unreadable:
        click.echo(f"warning: {reason}", err=True)
