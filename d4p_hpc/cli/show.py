"""How the job commands print a job: the status table, the results summary, an output's items,
the segments of a resumed run, the efficiency line, and a job followed to its end."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from collections.abc import Sequence
from typing import NoReturn

import click

from d4p_hpc import api
from d4p_hpc.api.display import Live
from d4p_hpc.api.job import find_root
from d4p_hpc.cli import notices
from d4p_hpc.errors import D4pHpcError, UsageError
from d4p_hpc.units import clock, plural

#: the exit code of a command stopped by Ctrl-C (128 + SIGINT), as a shell reports it
INTERRUPTED = 130
#: the narrowest REASON column a table cuts a reason to, however narrow the terminal
REASON_MIN = 20


def table(statuses: list[api.Status], wide: bool = False) -> None:
    """One row a job: id, name, state, elapsed time and reason, its end cut off to fit the terminal;
    ``wide``: the job's directory too, and the whole reason."""
    rows = [("JOB", "NAME", "STATE", "ELAPSED") + (("DIRECTORY",) if wide else ()) + ("REASON",)]
    rows += [(s.id, s.job.name, s.state, clock(s.elapsed) if s.elapsed is not None else "-")
             + ((str(s.job.directory),) if wide else ()) + (" ".join(s.reason.split()) or "-",) for s in statuses]
    columns(rows, wide)


def columns(rows: Sequence[tuple[str, ...]], wide: bool = False) -> None:
    """Print ``rows`` (the header first) in columns, every one padded but the last, which is cut to fit
    the terminal (not below :data:`REASON_MIN`) unless ``wide``."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    # a pipe or a file gets whole lines (COLUMNS may be set where no terminal is)
    terminal = shutil.get_terminal_size((0, 0)).columns if sys.stdout.isatty() else 0
    room = terminal - sum(w + 2 for w in widths) - 1
    for row in rows:
        # every column padded but the last
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        if not wide and room > 0 and len(row[-1]) > max(room, REASON_MIN):
            line = line[:len(line) - len(row[-1]) + max(room, REASON_MIN) - 3] + "..."
        click.echo(line)


def segments(statuses: list[api.Status]) -> None:
    """Under the table: the segments of each job whose run spans several jobs."""
    for s in statuses:
        if s.segments:
            click.echo(f"{s.id}: {plural(len(s.segments), 'segment')}")
            for line in s.segments:
                click.echo(f"  {line}")


def results(job: api.Job) -> None:
    """What ``d4p-hpc results JOB`` prints: state, wall time, items/s per PE, outputs, efficiency."""
    current = job.status()
    run, metrics = job.record(), job.metrics()
    elapsed = clock(int(current.elapsed)) if current.elapsed is not None else "-"
    click.echo(f"job {current.id} ({job.name}, {job.scheduler}): {current.state} after {elapsed}"
               + (f": {current.reason}" if current.reason else "") + f"\n{job.directory}")
    segments([current])
    if not run:
        click.echo(f"no {job.record_file.name}: the run never started" if current.done
                   else f"no {job.record_file.name} yet: the run has not started")
        return
    wall = metrics.get("wall_seconds") or 0
    click.echo(f"mapping {run.get('mapping')}, {plural(run.get('processes') or 0, 'process')}: "
               f"{plural(metrics.get('items', 0), 'item')} in {wall:.2f} s "
               f"({metrics.get('items_per_second') or 0:,.0f} items/s)")
    rows = [("PE (dispel4py id)", "INSTANCES", "ITEMS IN", "ITEMS OUT", "BUSY S", "ITEMS/S")]
    ids = run.get("pe_ids") or {}
    for pe, m in metrics.get("pes", {}).items():
        done = m.get("items_in") or m.get("items_out") or 0
        rows.append((f"{pe} ({ids[pe]})" if ids.get(pe, pe) != pe else pe, str(len(m.get("instances", []))),
                     f"{m.get('items_in', 0):,}", f"{m.get('items_out', 0):,}",
                     f"{m.get('busy_seconds', 0):.2f}", f"{done / wall:,.0f}" if wall else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    for name, (count, folder) in job.counts().items():
        click.echo(f"output {name}: {plural(count, 'item')}  ({folder})")
    click.echo(f"print one with: d4p-hpc results {job.directory} --show PE.OUTPUT")
    efficiency_line(job)


def dump(job: api.Job, target: str, file: str | None, limit: int | None) -> None:
    """The items of output ``target`` (PE.OUTPUT), one JSON value a line, to ``file`` or stdout; a
    file is written whole or not at all (an item refused midway leaves none)."""
    items = itertools.islice(job.items(target), limit)
    if not file:
        out = sys.stdout
        for item in items:
            out.write(json.dumps(item, default=repr) + "\n")
        return
    target_file = Path(file)
    try:
        target_file.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{target_file.name}.", dir=target_file.parent)
    except OSError as exc:
        raise UsageError(f"cannot write {file}: {exc.strerror or exc}; give --export a writable path") from None
    try:
        with os.fdopen(fd, "w") as out:
            for item in items:
                out.write(json.dumps(item, default=repr) + "\n")
        os.replace(temporary, target_file)
    except OSError as exc:
        raise UsageError(f"cannot write {file}: {exc.strerror or exc}; give --export a writable path") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    click.echo(f"wrote {file}", err=True)


def efficiency_line(job: api.Job) -> None:
    """The last line of ``results`` and ``submit --wait``: CPU and memory used against the allocation."""
    if job.metrics():
        click.echo(job.efficiency().line())


def follow(job: api.Job, timeout: float | None = None, said: list[str] | None = None) -> None:
    """Follow ``job`` to its end with a live line (on a terminal) or a plain line now and then, showing
    the run's progress and, once the run has started, its plan's notices (but those ``said``
    already); end with its state and efficiency. Ctrl-C stops following, not the job."""
    live = Live(job.directory, sys.stderr)
    last: api.Status | None = None
    told = False

    def show(current: api.Status) -> None:
        nonlocal last, told
        if not told and (run := job.record()):
            live.clear()
            notices(n for n in run.get("notices") or [] if n not in (said or []))
            told = True
        last = current  # before a Ctrl-C can see it
        live.update(current)

    try:
        final = job.wait(timeout, progress=False, on_poll=show)
    except KeyboardInterrupt:
        live.clear()
        interrupted(last, job)
    live.clear()
    reason = last.reason if last is not None and last.state == final else ""
    click.echo(f"{final} {job.directory}" + (f": {reason}" if reason else ""))
    efficiency_line(job)
    if final != "COMPLETED":  # (the line above said how it ended, and why: an Error: line would say it again)
        raise click.exceptions.Exit(1)


def interrupted(current: api.Status | None, job: api.Job, what: str = "following") -> NoReturn:
    """After Ctrl-C while following ``job`` (``current``: its last status seen): say that it goes on,
    and how to follow or cancel it, in one line; exit 130."""
    job_id = current.id if current is not None else job.id  # a job that requeued itself has a new id
    if current is not None and current.done:
        click.echo(f"stopped {what} job {job_id}: it has ended {current.state}", err=True)
    else:
        name = ref(job, job_id)
        click.echo(f"stopped {what} job {job_id}; it is still {current.state if current else 'queued or running'}"
                   f": d4p-hpc wait {name} follows it again, d4p-hpc cancel {name} stops it", err=True)
    raise click.exceptions.Exit(INTERRUPTED)


def ref(job: api.Job, job_id: str) -> str:
    """What to give the job commands for ``job``: its id if the default results root holds it,
    else its directory."""
    try:
        if job.directory.parent.resolve() == find_root().resolve():
            return job_id
    except (D4pHpcError, OSError):
        pass
    return str(job.directory)
