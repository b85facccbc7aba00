"""How the job commands print a job: the status table, the results summary, an output's items,
the segments of a resumed run, the efficiency line, and a job followed to its end."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import click

from d4p_hpc.cli import notices
from d4p_hpc.cli.common import root
from d4p_hpc.errors import D4pHpcError, RunFailed, UsageError
from d4p_hpc.jobs import efficiency, state
from d4p_hpc.jobs.progress import Display, Progress
from d4p_hpc.jobs.resume import describe
from d4p_hpc.results import count_items, list_outputs, output_dir, output_items, read_metrics, read_run
from d4p_hpc.units import clock, plural

#: the exit code of a command stopped by Ctrl-C (128 + SIGINT), as a shell reports it
INTERRUPTED = 130
#: the narrowest REASON column a table cuts a reason to, however narrow the terminal
REASON_MIN = 20


def table(statuses: list[state.JobStatus], wide: bool = False) -> None:
    """One row a job: id, name, state, elapsed time and reason, its end cut off to fit the terminal;
    ``wide``: the job's directory too, and the whole reason."""
    rows = [("JOB", "NAME", "STATE", "ELAPSED") + (("DIRECTORY",) if wide else ()) + ("REASON",)]
    rows += [(s.job.job_id, s.job.name, s.state, clock(s.elapsed) if s.elapsed is not None else "-")
             + ((str(s.job.directory),) if wide else ()) + (" ".join(s.reason.split()) or "-",) for s in statuses]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    # a pipe or a file gets whole lines (COLUMNS may be set where no terminal is)
    columns = shutil.get_terminal_size((0, 0)).columns if sys.stdout.isatty() else 0
    room = columns - sum(w + 2 for w in widths) - 1
    for row in rows:
        # every column padded but the last
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        if not wide and room > 0 and len(row[-1]) > max(room, REASON_MIN):
            line = line[:len(line) - len(row[-1]) + max(room, REASON_MIN) - 3] + "..."
        click.echo(line)


def segments(statuses: list[state.JobStatus]) -> None:
    """Under the table: the segments of each job whose run spans several jobs."""
    for s in statuses:
        lines = describe(s)
        if lines:
            click.echo(f"{s.job.job_id}: {plural(len(lines), 'segment')}")
            for line in lines:
                click.echo(f"  {line}")


def results(job: state.Job) -> None:
    """What ``d4p-hpc results JOB`` prints: state, wall time, items/s per PE, outputs, efficiency."""
    current = state.status([job])[0]
    run, metrics = read_run(job.directory) or {}, read_metrics(job.directory) or {}
    elapsed = clock(int(current.elapsed)) if current.elapsed is not None else "-"
    click.echo(f"job {job.job_id} ({job.name}, {job.scheduler}): {current.state} after {elapsed}"
               + (f": {current.reason}" if current.reason else "") + f"\n{job.directory}")
    segments([current])
    if not run:
        click.echo("no run.json yet: the run has not started")
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
    for pe, output in list_outputs(job.directory):
        click.echo(f"output {pe}.{output}: {plural(count_items(job.directory, pe, output), 'item')}  "
                   f"({output_dir(job.directory, pe, output)})")
    click.echo(f"print one with: d4p-hpc results {job.directory} --show PE.OUTPUT")
    efficiency_line(job)


def dump(directory: Path, target: str, file: str | None, limit: int | None) -> None:
    """The items of output ``target`` (PE.OUTPUT), one JSON value a line, to ``file`` or stdout."""
    pe, _, output = target.rpartition(".")
    if (pe, output) not in list_outputs(directory):
        known = ", ".join(f"{p}.{o}" for p, o in list_outputs(directory)) or "none yet"
        raise UsageError(f"no output {target} in {directory}; outputs: {known}")
    items = itertools.islice(output_items(directory, pe, output), limit)
    try:
        if file:
            Path(file).parent.mkdir(parents=True, exist_ok=True)
        with open(file, "w") if file else contextlib.nullcontext(click.get_text_stream("stdout")) as out:
            for item in items:
                out.write(json.dumps(item, default=repr) + "\n")
    except OSError as exc:
        if not file:
            raise
        raise UsageError(f"cannot write {file}: {exc.strerror or exc}; give --export a writable path") from None
    if file:
        click.echo(f"wrote {file}", err=True)


def efficiency_line(job: state.Job) -> None:
    """The last line of ``results`` and ``submit --wait``: CPU and memory used against the allocation."""
    if read_metrics(job.directory) is not None:
        click.echo(efficiency.measure(job.directory, job.scheduler, job.job_id).line())


def follow(job: state.Job, timeout: float | None = None, said: list[str] | None = None) -> None:
    """Poll ``job`` to its end with a live line (on a terminal) or a plain line now and then, showing
    the run's progress (:mod:`d4p_hpc.jobs.progress`) and, once the run has started, its plan's
    notices (but those ``said`` already); end with its state and efficiency. Ctrl-C stops
    following, not the job."""
    display, progress = Display(sys.stderr), Progress(job.directory)
    last: state.JobStatus | None = None
    told = False

    def show(current: state.JobStatus) -> None:
        nonlocal last, told
        if not told and (run := read_run(job.directory)) is not None:
            display.clear()
            notices(n for n in run.get("notices") or [] if n not in (said or []))
            told = True
        elapsed = clock(current.elapsed) if current.elapsed is not None else "--:--:--"
        room = display.room(len(f"{current.state:<9} {elapsed}  "))
        detail = progress.describe(room) if current.state == "RUNNING" else current.reason
        changed, last = last is None or current.state != last.state, current  # before a Ctrl-C can see it
        display.show(f"{current.state:<9} {elapsed}  {detail}".rstrip(), force=changed)

    try:
        final = state.wait(job, poll=1.0, timeout=timeout, on_poll=show)
    except KeyboardInterrupt:
        display.clear()
        interrupted(last, job)
    display.clear()
    click.echo(f"{final.state} {job.directory}" + (f": {final.reason}" if final.reason else ""))
    efficiency_line(job)
    if final.state != "COMPLETED":
        raise RunFailed(f"job {job.job_id} ended {final.state}" + (f": {final.reason}" if final.reason else ""))


def interrupted(current: state.JobStatus | None, job: state.Job, what: str = "following") -> NoReturn:
    """After Ctrl-C while following ``job`` (``current``: its last status seen): say that it goes on,
    and how to follow or cancel it, in one line; exit 130."""
    job = current.job if current is not None else job  # a job that requeued itself has a new id
    if current is not None and current.terminal:
        click.echo(f"stopped {what} job {job.job_id}: it has ended {current.state}", err=True)
    else:
        name = ref(job)
        click.echo(f"stopped {what} job {job.job_id}; it is still {current.state if current else 'queued or running'}"
                   f": d4p-hpc wait {name} follows it again, d4p-hpc cancel {name} stops it", err=True)
    raise click.exceptions.Exit(INTERRUPTED)


def ref(job: state.Job) -> str:
    """What to give the job commands for ``job``: its id if the default results root holds it,
    else its directory."""
    try:
        if job.directory.parent.resolve() == root(None, None).resolve():
            return job.job_id
    except (D4pHpcError, OSError):
        pass
    return str(job.directory)
