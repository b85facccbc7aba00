"""The job commands: submit, render, status, logs, results, cancel, wait, list, resume.

JOB arguments are a results directory or a job id looked up under the results root
(:mod:`d4p_hpc.cli.common`); :mod:`d4p_hpc.cli.show` prints what these commands find.
The options of ``submit``/``render`` are made from the fields of the job spec (the keywords of
:func:`d4p_hpc.submit`), so a new field is a new option. Every decision is the Python API's
(:mod:`d4p_hpc.api`): these commands parse, call it and print.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from d4p_hpc import api
from d4p_hpc.api import options as planning
from d4p_hpc.api.job import attach, find_root, list_jobs, resume, statuses, unfinished
from d4p_hpc.cli import notices, show
from d4p_hpc.cli import sweep as sweeping
from d4p_hpc.cli.common import PROFILE_HELP, root_options
from d4p_hpc.errors import Command, UsageError
from d4p_hpc.units import plural

WATCH_SECONDS = 2.0


def _spec_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``command`` with GRAPH, --profile and an option per job spec field."""
    for name, flags, help_text, typ in reversed(planning.spec_options()):
        if typ is tuple:
            command = click.option(*flags, name, multiple=True, help=help_text)(command)
        else:
            command = click.option(*flags, name, type=int if typ is int else None, default=None,
                                   help=help_text)(command)
    command = click.option("--profile", help=PROFILE_HELP)(command)
    return click.argument("graph", type=click.Path(dir_okay=False))(command)


_no_check = click.option("--no-check", is_flag=True,
                         help="Do not load the graph here (for a graph that only loads on the compute nodes).")


def _plan(graph: str, profile: str | None, options: dict) -> planning.Plan:
    no_check = options.pop("no_check")
    return planning.plan(graph, options, profile=profile, check=not no_check, given=planning.COMMAND_LINE)


@click.command(cls=Command, name="submit")
@_spec_options
@_no_check
@click.option("--dry-run", is_flag=True, help="Print the job script and submit nothing.")
@click.option("--wait", "wait_", is_flag=True, help="Follow the job to its end, showing its progress.")
@click.option("--sweep", "sweep_file", type=click.Path(dir_okay=False),
              help="Submit one job per line of this file (JSON lines, or CSV with a header), as job arrays: each "
                   "line sets what differs (data, iterations, input_file, attr, env, name, mapping, processes).")
@click.option("--max-parallel", type=int, metavar="K", help="With --sweep: at most K tasks run at once.")
def submit_(graph, profile, dry_run, wait_, sweep_file, max_parallel, **options):
    """Submit GRAPH as a batch job (with --sweep, one per line of a sweep file, as job arrays); print its job id and
    results directory."""
    if sweep_file is not None or max_parallel is not None:
        _submit_sweep(graph, profile, dry_run, wait_, sweep_file, max_parallel, options)
        return
    planned = _plan(graph, profile, options)
    click.echo(planned.description, err=True)
    notices(planned.notices)
    if warning := planned.warning:
        click.echo(f"warning: {warning}", err=True)
    if dry_run:
        click.echo(planned.script, nl=False)
        return
    job = api.enqueue(planned)
    click.echo(f"job {job.id}\nresults {job.directory}")
    if wait_:
        show.follow(job, said=planned.notices)


def _submit_sweep(graph, profile, dry_run, wait_, sweep_file, max_parallel, options) -> None:
    from d4p_hpc.api import sweep as api_sweep

    if sweep_file is None:
        raise UsageError("--max-parallel is for a sweep: give --sweep FILE too")
    if max_parallel is not None and max_parallel < 1:
        raise UsageError(f"--max-parallel must be at least 1 (tasks running at once), not {max_parallel}")
    no_check = options.pop("no_check")
    planned = api_sweep.plan_sweep(graph, sweep_file, options, max_parallel, profile, check=not no_check,
                                   given=planning.COMMAND_LINE)
    click.echo(planned.description(), err=True)
    notices(planned.notices)
    if dry_run:
        for script in planned.array_scripts():
            click.echo(script, nl=False)
        return
    found = api_sweep.enqueue_sweep(planned)
    click.echo(f"sweep {found.id}\nresults {found.directory}")
    if wait_:
        sweeping.wait(found, None)


@click.command(cls=Command)
@_spec_options
@_no_check
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the script here [default: stdout].")
def render(graph, profile, output, **options):
    """Write the job script of GRAPH, to submit by hand (sbatch job.sh / qsub job.sh)."""
    planned = _plan(graph, profile, options)
    notices(planned.notices)
    if output is not None:  # first: a script that cannot be written leaves no results root behind
        planned.write(output)
    planned.make_root()
    if output is None:
        click.echo(planned.script, nl=False)
        return
    click.echo(f"{planned.description}\nwrote {output}", err=True)


_wide = click.option("-l", "--wide", is_flag=True, help="Whole reasons, and each job's directory.")


@click.command(cls=Command)
@click.argument("job", nargs=-1)
@click.option("--watch", is_flag=True, help=f"Refresh the table every {WATCH_SECONDS:g} s until every job shown "
                                            "has ended (Ctrl-C stops watching; the jobs go on).")
@_wide
@click.option("--tasks", "tasks", is_flag=True, help="For a sweep: a row for each of its tasks.")
@root_options
def status(job: tuple[str, ...], watch: bool, wide: bool, tasks: bool, results_root: str | None,
           profile: str | None) -> None:
    """State of JOBs (ids or results directories) or of a SWEEP; without JOB, of the unfinished jobs and sweeps."""
    if len(job) == 1 and (sweep := sweeping.found(job[0], results_root, profile)):
        _watch_sweep(sweep, watch, tasks, wide)
        return
    under = find_root(results_root, profile)
    selected = [attach(j, under) for j in job] or unfinished(list_jobs(under))
    current: list[api.Status] = []
    try:
        while True:
            current = statuses(selected)
            if watch and sys.stdout.isatty():
                click.echo("\033[H\033[J", nl=False)  # redraw the table in place
            show.table(current, wide)
            show.segments(current)
            if not job:
                sweeping.listing(results_root, profile, unfinished=True)
            if not watch or all(s.done for s in current):
                return
            time.sleep(WATCH_SECONDS)
            if not sys.stdout.isatty():
                click.echo()
    except KeyboardInterrupt:
        going = [s for s in current if not s.done]
        if len(going) == 1:
            show.interrupted(going[0], going[0].job, "watching")
        click.echo("stopped watching" + (f"; {plural(len(going), 'job')} still queued or running: d4p-hpc cancel "
                                         "ID stops one" if going else ""), err=True)
        raise click.exceptions.Exit(show.INTERRUPTED) from None


def _watch_sweep(sweep, watch: bool, tasks: bool, wide: bool) -> None:
    try:
        while True:
            if watch and sys.stdout.isatty():
                click.echo("\033[H\033[J", nl=False)
            sweeping.status(sweep, tasks, wide)
            if not watch or sweep.status().done:
                return
            time.sleep(WATCH_SECONDS)
            if not sys.stdout.isatty():
                click.echo()
    except KeyboardInterrupt:
        click.echo(f"stopped watching sweep {sweep.id}; its tasks go on", err=True)
        raise click.exceptions.Exit(show.INTERRUPTED) from None


@click.command(cls=Command, name="list")
@_wide
@root_options
def list_(wide: bool, results_root: str | None, profile: str | None) -> None:
    """All jobs under the results root, oldest first, then a line per sweep."""
    unreadable: list[str] = []
    show.table(statuses(list_jobs(results_root, profile=profile, unreadable=unreadable)), wide)
    sweeping.listing(results_root, profile)
    for reason in unreadable:
        click.echo(f"warning: {reason}", err=True)


@click.command(cls=Command)
@click.argument("job")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the job writes until it ends.")
@click.option("--task", type=int, metavar="N", help="For a sweep: the logs of its task N.")
@root_options
def logs(job: str, follow: bool, task: int | None, results_root: str | None, profile: str | None) -> None:
    """The scheduler's stdout/stderr of JOB (or of a SWEEP's task N), then its per-process logs."""
    if sweep := sweeping.found(job, results_root, profile):
        job = str(sweeping.logs_task(sweep, task))
    elif task is not None:
        raise UsageError(f"--task is for a sweep, and {job} is a job")
    found = attach(job, results_root, profile)
    offsets: dict[Path, int] = {}
    # the scheduler's stdout and stderr are expected: one that is missing is named once, not skipped
    expected = found.scheduler_logs()
    current: api.Status | None = None
    try:
        while True:
            current = found.status() if follow else None
            ended = current is None or current.done
            for path in found.log_files():
                if path in expected and not path.is_file():
                    click.echo(f"(no {expected.pop(path)}{'' if ended else ' yet'}: {path})")
                if path.is_file() and path.stat().st_size > offsets.get(path, 0):
                    with open(path, errors="replace") as fh:
                        fh.seek(offsets.get(path, 0))
                        text = fh.read()
                        offsets[path] = fh.tell()
                    click.echo(f"==> {path} <==\n{text}", nl=not text or not text.endswith("\n"))
            if ended:
                return
            time.sleep(1.0)
    except KeyboardInterrupt:
        show.interrupted(current, found, "following the logs of")


@click.command(cls=Command)
@click.argument("job")
@click.option("--show", "show_", metavar="PE.OUTPUT", help="Print the items of one output, one JSON value a line.")
@click.option("--export", nargs=2, metavar="PE.OUTPUT FILE", help="Write the items of one output to FILE (JSON lines).")
@click.option("--limit", type=int, help="With --show: at most this many items.")
@root_options
def results(job, show_, export, limit, results_root, profile):
    """State, wall time, items/s per PE and outputs of JOB (of each task of a SWEEP)."""
    if sweep := sweeping.found(job, results_root, profile):
        if export:
            raise UsageError("--export is for one job: give the task's directory (d4p-hpc status SWEEP --tasks -l)")
        if show_:
            sweeping.show_items(sweep, show_, limit)
        else:
            sweeping.results(sweep)
        return
    found = attach(job, results_root, profile)
    if show_ or export:
        show.dump(found, *(export or (show_, None)), limit=limit)
    else:
        show.results(found)


@click.command(cls=Command)
@click.argument("job")
@click.option("--tasks", metavar="3,5-7", help="For a sweep: only these tasks.")
@root_options
def cancel(job, tasks, results_root, profile):
    """Cancel JOB, pending or running (a SWEEP: its tasks that have not ended)."""
    if sweep := sweeping.found(job, results_root, profile):
        sweeping.cancel(sweep, tasks)
        return
    if tasks is not None:
        raise UsageError(f"--tasks is for a sweep, and {job} is a job")
    found = attach(job, results_root, profile)
    if not found.cancel():
        raise UsageError(f"job {found.id} has already ended: {found.state}")
    click.echo(f"cancel requested for job {found.id}")


@click.command(cls=Command, name="resume")
@click.argument("job")
@click.option("--requeue", type=click.IntRange(min=0),
              help="Automatic resubmissions the continued run may still make [default: as the job had].")
@click.option("--exit-code", type=int, hidden=True)  # given by a job that resubmits itself at its walltime stop
@click.option("--from-job", is_flag=True, hidden=True)
@click.option("--failed", is_flag=True, help="For a sweep: rerun, as a new array, every task that FAILED, was "
                                            "CANCELLED, hit TIMEOUT or never ran.")
@click.option("--tasks", metavar="3,5-7", help="For a sweep: rerun these tasks.")
@root_options
def resume_(job, requeue, exit_code, from_job, failed, tasks, results_root, profile):
    """Continue JOB (TIMEOUT, CANCELLED or FAILED) from its last checkpoint, as a new job in its directory;
    rerun a SWEEP's failed tasks (--failed)."""
    if not from_job and (sweep := sweeping.found(job, results_root, profile)):
        if requeue is not None:
            raise UsageError("--requeue is for a job; a sweep's tasks keep the --requeue they were submitted with")
        sweeping.resume(sweep, failed, tasks)
        return
    if failed or tasks is not None:
        raise UsageError(f"--failed and --tasks are for a sweep, and {job} is a job")
    found = attach(job) if from_job else attach(job, results_root, profile)
    successor, warning = resume(found, exit_code if from_job else None, {"requeue": requeue})
    if warning:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"job {successor.id} continues {found.directory}")


@click.command(cls=Command)
@click.argument("job")
@click.option("--timeout", type=float, help="Give up after this many seconds.")
@root_options
def wait(job, timeout, results_root, profile):
    """Wait for JOB (or every task of a SWEEP) to end; exit 0 if it COMPLETED, 1 otherwise."""
    if sweep := sweeping.found(job, results_root, profile):
        sweeping.wait(sweep, timeout)
        return
    show.follow(attach(job, results_root, profile), timeout)
