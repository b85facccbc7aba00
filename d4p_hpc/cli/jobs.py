"""The job commands: submit, render, status, logs, results, cancel, wait, list, resume.

JOB arguments are a results directory or a job id looked up under the results root
(:mod:`d4p_hpc.cli.common`); :mod:`d4p_hpc.cli.show` prints what these commands find.
The options of ``submit``/``render`` are made from the fields of
:class:`~d4p_hpc.submission.spec.JobSpec`, so a new field is a new option.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from d4p_hpc import schedulers
from d4p_hpc.cli import notices, show
from d4p_hpc.cli.common import PROFILE_HELP, find, root, root_options
from d4p_hpc.errors import UsageError
from d4p_hpc.jobs import state
from d4p_hpc.jobs.resume import resume, signal_warning
from d4p_hpc.submission import config, precheck
from d4p_hpc.submission.render import check_syntax, render_script
from d4p_hpc.submission.spec import FIELDS, JobSpec, field_type
from d4p_hpc.submission.submit import check_files, submit
from d4p_hpc.units import clock, plural

WATCH_SECONDS = 2.0


def _spec_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``command`` with GRAPH, --profile and an option per job spec field."""
    for name, fld in reversed(FIELDS.items()):
        flags, help_text = fld.metadata.get("flags"), fld.metadata.get("help")
        if not flags:
            continue
        typ = field_type(name)
        if typ is tuple:
            command = click.option(*flags, name, multiple=True, help=help_text)(command)
        else:
            command = click.option(*flags, name, type=int if typ is int else None, default=None,
                                   help=help_text)(command)
    command = click.option("--profile", help=PROFILE_HELP)(command)
    return click.argument("graph", type=click.Path(dir_okay=False))(command)


_no_check = click.option("--no-check", is_flag=True,
                         help="Do not load the graph here (for a graph that only loads on the compute nodes).")


def _build(graph: str, profile: str | None, options: dict) -> tuple[JobSpec, config.Resolved, list[str]]:
    """The job's spec and where its values came from, checked; and the notices of its plan."""
    no_check = options.pop("no_check")
    values = {k: v for k, v in options.items() if v is not None and v != ()}
    resolved = config.resolve({**values, "graph": graph}, profile=profile)
    spec = resolved.spec()
    check_files(spec)
    return spec, resolved, precheck.check(spec, graph=not no_check, sources=resolved.sources)


def _make_root(directory: str) -> None:
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the results root {directory}: {exc.strerror}; give --results-root a "
                         "writable directory") from None


def _describe(spec: JobSpec, sources: dict) -> str:
    """One line on the job's size, with a loud note when the walltime is nobody's choice."""
    origin = "" if sources.get("walltime") != config.BUILT_IN else \
        " (built-in default: set --time or walltime in a profile)"
    return (f"{spec.scheduler}{config.scheduler_origin(spec.scheduler, sources)} job {spec.job_name}: "
            f"mapping {spec.mapping}, {plural(spec.nodes, 'node')} x "
            f"{plural(spec.tasks_per_node, 'task')} x {plural(spec.cpus_per_task, 'CPU')}, walltime "
            f"{clock(spec.walltime_seconds)}{origin}")


@click.command(name="submit")
@_spec_options
@_no_check
@click.option("--dry-run", is_flag=True, help="Print the job script and submit nothing.")
@click.option("--wait", "wait_", is_flag=True, help="Follow the job to its end, showing its progress.")
def submit_(graph, profile, dry_run, wait_, **options):
    """Submit GRAPH as a batch job; print its job id and results directory."""
    spec, resolved, plan_notices = _build(graph, profile, options)
    script = render_script(spec, resolved.sources)
    click.echo(_describe(spec, resolved.sources), err=True)
    notices(plan_notices)
    if warning := signal_warning(spec):
        click.echo(f"warning: {warning}", err=True)
    if dry_run:
        click.echo(script, nl=False)
        return
    job_id, directory = submit(spec, script, resolved.sources)
    click.echo(f"job {job_id}\nresults {directory}")
    if wait_:
        show.follow(state.open_job(directory), said=plan_notices)


@click.command()
@_spec_options
@_no_check
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the script here [default: stdout].")
def render(graph, profile, output, **options):
    """Write the job script of GRAPH, to submit by hand (sbatch job.sh / qsub job.sh)."""
    spec, resolved, plan_notices = _build(graph, profile, options)
    script = render_script(spec, resolved.sources)
    check_syntax(script)
    notices(plan_notices)
    if output is not None:  # first: a script that cannot be written leaves no results root behind
        try:
            Path(output).write_text(script)
            Path(output).chmod(0o755)
        except OSError as exc:
            raise UsageError(f"cannot write the job script to {output}: {exc.strerror}; give -o a writable "
                             "path") from None
    # the scheduler opens its log files in the results root before the job starts
    _make_root(spec.results_root)
    if output is None:
        click.echo(script, nl=False)
        return
    click.echo(f"{_describe(spec, resolved.sources)}\nwrote {output}", err=True)


_wide = click.option("-l", "--wide", is_flag=True, help="Whole reasons, and each job's directory.")


@click.command()
@click.argument("job", nargs=-1)
@click.option("--watch", is_flag=True, help=f"Refresh the table every {WATCH_SECONDS:g} s until every job shown "
                                            "has ended (Ctrl-C stops watching; the jobs go on).")
@_wide
@root_options
def status(job: tuple[str, ...], watch: bool, wide: bool, results_root: str | None, profile: str | None) -> None:
    """State of JOBs (ids or results directories); without JOB, of the unfinished jobs."""
    under = root(results_root, profile)
    selected = [state.find(j, under) for j in job] or \
        state.unfinished(state.list_jobs(under))
    current: list[state.JobStatus] = []
    try:
        while True:
            current = state.status(selected)
            if watch and sys.stdout.isatty():
                click.echo("\033[H\033[J", nl=False)  # redraw the table in place
            show.table(current, wide)
            show.segments(current)
            if not watch or all(s.terminal for s in current):
                return
            time.sleep(WATCH_SECONDS)
            if not sys.stdout.isatty():
                click.echo()
    except KeyboardInterrupt:
        going = [s for s in current if not s.terminal]
        if len(going) == 1:
            show.interrupted(going[0], going[0].job, "watching")
        click.echo("stopped watching" + (f"; {plural(len(going), 'job')} still queued or running: d4p-hpc cancel "
                                         "ID stops one" if going else ""), err=True)
        raise click.exceptions.Exit(show.INTERRUPTED) from None


@click.command(name="list")
@_wide
@root_options
def list_(wide: bool, results_root: str | None, profile: str | None) -> None:
    """All jobs under the results root, oldest first."""
    unreadable: list[str] = []
    show.table(state.status(state.list_jobs(root(results_root, profile), unreadable)), wide)
    for reason in unreadable:
        click.echo(f"warning: {reason}", err=True)


@click.command()
@click.argument("job")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the job writes until it ends.")
@root_options
def logs(job: str, follow: bool, results_root: str | None, profile: str | None) -> None:
    """The scheduler's stdout/stderr of JOB, then its per-process logs."""
    found = find(job, results_root, profile)
    offsets: dict[Path, int] = {}
    # the scheduler's stdout and stderr are expected: one that is missing is named once, not skipped
    expected = {} if found.scheduler == state.RUN else {
        path: f"{schedulers.scheduler_class(found.scheduler).title} {what}" for path, what in
        zip(schedulers.get(found.scheduler).log_files(found.directory, found.job_id), ("stdout", "stderr"),
            strict=True)}
    current: list[state.JobStatus] = []
    try:
        while True:
            current = state.status([found]) if follow else []
            ended = not current or current[0].terminal
            for path in state.log_files(found):
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
        show.interrupted(current[0] if current else None, found, "following the logs of")


@click.command()
@click.argument("job")
@click.option("--show", "show_", metavar="PE.OUTPUT", help="Print the items of one output, one JSON value a line.")
@click.option("--export", nargs=2, metavar="PE.OUTPUT FILE", help="Write the items of one output to FILE (JSON lines).")
@click.option("--limit", type=int, help="With --show: at most this many items.")
@root_options
def results(job, show_, export, limit, results_root, profile):
    """State, wall time, items/s per PE and outputs of JOB."""
    found = find(job, results_root, profile)
    if show_ or export:
        show.dump(found.directory, *(export or (show_, None)), limit=limit)
    else:
        show.results(found)


@click.command()
@click.argument("job")
@root_options
def cancel(job, results_root, profile):
    """Cancel JOB, pending or running."""
    found = find(job, results_root, profile)
    state.cancel(found)
    click.echo(f"cancel requested for job {found.job_id}")


@click.command(name="resume")
@click.argument("job")
@click.option("--requeue", type=click.IntRange(min=0),
              help="Automatic resubmissions the continued run may still make [default: as the job had].")
@click.option("--exit-code", type=int, hidden=True)  # given by a job that resubmits itself at its walltime stop
@click.option("--from-job", is_flag=True, hidden=True)
@root_options
def resume_(job, requeue, exit_code, from_job, results_root, profile):
    """Continue JOB (TIMEOUT, CANCELLED or FAILED) from its last checkpoint, as a new job in its directory."""
    found = state.open_job(job) if from_job else find(job, results_root, profile)
    new_id, warning = resume(found, exit_code if from_job else None, requeue)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"job {new_id} continues {found.directory}")


@click.command()
@click.argument("job")
@click.option("--timeout", type=float, help="Give up after this many seconds.")
@root_options
def wait(job, timeout, results_root, profile):
    """Wait for JOB to end; exit 0 if it COMPLETED, 1 otherwise."""
    show.follow(find(job, results_root, profile), timeout)
