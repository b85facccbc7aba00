"""The job commands: submit, render, status, logs, results, cancel, wait, list, resume.

``d4p_hpc.cli`` adds every command of :data:`COMMANDS` to its group, which
turns :class:`~d4p_hpc.errors.D4pHpcError` into ``Error: ...`` and its exit
code. JOB arguments are a results directory or a job id looked up under the
results root. The options of ``submit``/``render`` are made from the fields of
:class:`~d4p_hpc.submission.spec.JobSpec`, so a new field is a new option.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from d4p_hpc.submission import config
from d4p_hpc.errors import RunFailed
from d4p_hpc.submission.spec import FIELDS, field_type

WATCH_SECONDS = 2.0
PROFILE_HELP = "Profile of the config files (~/.config/d4p-hpc/config.toml, ./d4p-hpc.toml)."


def _spec_options(command):
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


def _root_options(command):
    """Decorate an inspection command with --results-root and --profile."""
    command = click.option("--profile", help=PROFILE_HELP)(command)
    return click.option("--results-root", type=click.Path(file_okay=False),
                        help="Where job directories are [default: from the profile, else ./d4p-results].")(command)


def _build(graph: str, profile: str | None, options: dict):
    from d4p_hpc.submission import precheck
    from d4p_hpc import schedulers

    no_check = options.pop("no_check")
    values = {k: v for k, v in options.items() if v is not None and v != ()}
    resolved = config.resolve({**values, "graph": graph}, profile=profile)
    spec = resolved.spec()
    schedulers.check_files(spec)
    precheck.check(spec, graph=not no_check)
    return spec, resolved


def _make_root(root: str) -> None:
    from d4p_hpc.errors import UsageError

    try:
        Path(root).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the results root {root}: {exc.strerror}; give --results-root a "
                         "writable directory") from None


_no_check = click.option("--no-check", is_flag=True,
                         help="Do not load the graph here (for a graph that only loads on the compute nodes).")


def _root(results_root: str | None, profile: str | None) -> Path:
    from d4p_hpc.errors import UsageError

    try:
        return Path(results_root).resolve(strict=Path(results_root).is_symlink()) if results_root \
            else config.results_root(profile)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, before Python 3.13
        raise UsageError(f"results root {results_root or '(from the profile)'} cannot be used: {exc}; "
                         "give --results-root a directory") from None


def _find(job: str, results_root: str | None, profile: str | None):
    from d4p_hpc.jobs import state as jobs

    return jobs.find(job, _root(results_root, profile))


def _describe(spec, sources: dict) -> str:
    """One line on the job's size, with a loud note when the walltime is nobody's choice."""
    from d4p_hpc.submission.render import clock

    origin = "" if sources.get("walltime") != config.BUILT_IN else \
        " (built-in default: set --time or walltime in a profile)"
    return (f"{spec.scheduler} job {spec.job_name}: mapping {spec.mapping}, {spec.nodes} node(s) x "
            f"{spec.tasks_per_node} task(s) x {spec.cpus_per_task} CPU(s), walltime "
            f"{clock(spec.walltime_seconds)}{origin}")


@click.command()
@_spec_options
@_no_check
@click.option("--dry-run", is_flag=True, help="Print the job script and submit nothing.")
@click.option("--wait", "wait_", is_flag=True, help="Follow the job to its end, showing its progress.")
def submit(graph, profile, dry_run, wait_, **options):
    """Submit GRAPH as a batch job; print its job id and results directory."""
    from d4p_hpc.jobs import state as jobs
    from d4p_hpc import schedulers
    from d4p_hpc.submission.render import render_script

    spec, resolved = _build(graph, profile, options)
    script = render_script(spec, resolved.sources)
    click.echo(_describe(spec, resolved.sources), err=True)
    from d4p_hpc.jobs.resume import signal_warning

    if warning := signal_warning(spec):
        click.echo(f"warning: {warning}", err=True)
    if dry_run:
        click.echo(script, nl=False)
        return
    job_id, directory = schedulers.submit(spec, script, resolved.sources)
    click.echo(f"job {job_id}\nresults {directory}")
    if wait_:
        _follow(jobs.open_job(directory))


@click.command()
@_spec_options
@_no_check
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the script here [default: stdout].")
def render(graph, profile, output, **options):
    """Write the job script of GRAPH, to submit by hand (sbatch job.sh / qsub job.sh)."""
    from d4p_hpc.submission.render import check_syntax, render_script

    spec, resolved = _build(graph, profile, options)
    script = render_script(spec, resolved.sources)
    check_syntax(script)
    # the scheduler opens its log files in the results root before the job starts
    _make_root(spec.results_root)
    if output is None:
        click.echo(script, nl=False)
        return
    try:
        Path(output).write_text(script)
        Path(output).chmod(0o755)
    except OSError as exc:
        from d4p_hpc.errors import UsageError

        raise UsageError(f"cannot write the job script to {output}: {exc.strerror}; give -o a writable path") from None
    click.echo(f"{_describe(spec, resolved.sources)}\nwrote {output}", err=True)


@click.command()
@click.argument("job", nargs=-1)
@click.option("--watch", is_flag=True, help=f"Refresh the table every {WATCH_SECONDS:g} s until every job shown "
                                            "has ended (Ctrl-C stops).")
@_root_options
def status(job, watch, results_root, profile):
    """State of JOBs (ids or results directories); without JOB, of the unfinished jobs."""
    from d4p_hpc.jobs import state as jobs

    root = _root(results_root, profile)
    selected = [jobs.find(j, root) for j in job] or \
        [j for j in jobs.list_jobs(root) if j.marker("finished") is None]
    while True:
        current = jobs.status(selected)
        if watch and sys.stdout.isatty():
            click.echo("\033[H\033[J", nl=False)  # redraw the table in place
        _table(current)
        _segments(current)
        if not watch or all(s.terminal for s in current):
            return
        time.sleep(WATCH_SECONDS)
        if not sys.stdout.isatty():
            click.echo()


@click.command(name="list")
@_root_options
def list_(results_root: str | None, profile: str | None) -> None:
    """All jobs under the results root, oldest first."""
    from d4p_hpc.jobs import state as jobs

    unreadable: list[str] = []
    _table(jobs.status(jobs.list_jobs(_root(results_root, profile), unreadable)))
    for reason in unreadable:
        click.echo(f"warning: {reason}", err=True)


@click.command()
@click.argument("job")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the job writes until it ends.")
@_root_options
def logs(job: str, follow: bool, results_root: str | None, profile: str | None) -> None:
    """The scheduler's stdout/stderr of JOB, then its per-process logs."""
    from d4p_hpc.jobs import state as jobs
    from d4p_hpc import schedulers

    found = _find(job, results_root, profile)
    offsets: dict[Path, int] = {}
    # the scheduler's stdout and stderr are expected: one that is missing is named once, not skipped
    expected = {} if found.scheduler == jobs.RUN else {
        path: f"{schedulers.scheduler_class(found.scheduler).title} {what}" for path, what in
        zip(schedulers.get(found.scheduler).log_files(found.directory, found.job_id), ("stdout", "stderr"),
            strict=True)}
    while True:
        ended = not follow or jobs.status([found])[0].terminal
        for path in jobs.log_files(found):
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


@click.command()
@click.argument("job")
@click.option("--show", metavar="PE.OUTPUT", help="Print the items of one output, one JSON value a line.")
@click.option("--export", nargs=2, metavar="PE.OUTPUT FILE", help="Write the items of one output to FILE (JSON lines).")
@click.option("--limit", type=int, help="With --show: at most this many items.")
@_root_options
def results(job, show, export, limit, results_root, profile):
    """State, wall time, items/s per PE and outputs of JOB."""
    found = _find(job, results_root, profile)
    if show or export:
        _dump(found.directory, *(export or (show, None)), limit=limit)
    else:
        _report(found)


@click.command()
@click.argument("job")
@_root_options
def cancel(job, results_root, profile):
    """Cancel JOB, pending or running."""
    from d4p_hpc.jobs import state as jobs

    found = _find(job, results_root, profile)
    jobs.cancel(found)
    click.echo(f"cancel requested for job {found.job_id}")


@click.command()
@click.argument("job")
@click.option("--requeue", type=click.IntRange(min=0),
              help="Automatic resubmissions the continued run may still make [default: as the job had].")
@click.option("--exit-code", type=int, hidden=True)  # given by a job that resubmits itself at its walltime stop
@click.option("--from-job", is_flag=True, hidden=True)
@_root_options
def resume(job, requeue, exit_code, from_job, results_root, profile):
    """Continue JOB (TIMEOUT, CANCELLED or FAILED) from its last checkpoint, as a new job in its directory."""
    from d4p_hpc.jobs import state as jobs
    from d4p_hpc.jobs.resume import resume as resubmit

    found = jobs.open_job(job) if from_job else _find(job, results_root, profile)
    new_id, warning = resubmit(found, exit_code if from_job else None, requeue)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"job {new_id} continues {found.directory}")


@click.command()
@click.argument("job")
@click.option("--timeout", type=float, help="Give up after this many seconds.")
@_root_options
def wait(job, timeout, results_root, profile):
    """Wait for JOB to end; exit 0 if it COMPLETED, 1 otherwise."""
    _follow(_find(job, results_root, profile), timeout)


def _follow(job, timeout: float | None = None) -> None:
    """Poll ``job`` to its end with a live line (on a terminal) or a plain line now and then, showing
    the run's progress (:mod:`d4p_hpc.jobs.progress`); end with its state and efficiency."""
    from d4p_hpc.jobs import state as jobs
    from d4p_hpc.jobs.progress import Display, Progress
    from d4p_hpc.submission.render import clock

    display, progress, last = Display(sys.stderr), Progress(job.directory), [""]

    def show(current) -> None:
        elapsed = clock(current.elapsed) if current.elapsed is not None else "--:--:--"
        detail = progress.describe() if current.state == "RUNNING" else current.reason
        display.show(f"{current.state:<9} {elapsed}  {detail}".rstrip(), force=current.state != last[0])
        last[0] = current.state

    final = jobs.wait(job, poll=1.0, timeout=timeout, on_poll=show)
    display.clear()
    click.echo(f"{final.state} {job.directory}" + (f": {final.reason}" if final.reason else ""))
    _efficiency(job)
    if final.state != "COMPLETED":
        raise RunFailed(f"job {job.job_id} ended {final.state}" + (f": {final.reason}" if final.reason else ""))


def _efficiency(job) -> None:
    """The last line of ``results`` and ``submit --wait``: CPU and memory used against the allocation."""
    from d4p_hpc.jobs import efficiency
    from d4p_hpc import results as rd

    if rd.read_metrics(job.directory) is not None:
        click.echo(efficiency.measure(job.directory, job.scheduler, job.job_id).line())


def _report(job) -> None:
    from d4p_hpc.jobs import state as jobs
    from d4p_hpc import results as rd
    from d4p_hpc.submission.render import clock

    current = jobs.status([job])[0]
    run, metrics = rd.read_run(job.directory) or {}, rd.read_metrics(job.directory) or {}
    elapsed = clock(int(current.elapsed)) if current.elapsed is not None else "-"
    click.echo(f"job {job.job_id} ({job.name}, {job.scheduler}): {current.state} after {elapsed}"
               + (f": {current.reason}" if current.reason else "") + f"\n{job.directory}")
    _segments([current])
    if not run:
        click.echo("no run.json yet: the run has not started")
        return
    wall = metrics.get("wall_seconds") or 0
    click.echo(f"mapping {run.get('mapping')}, {run.get('processes')} processes: {metrics.get('items', 0):,} items "
               f"in {wall:.2f} s ({metrics.get('items_per_second') or 0:,.0f} items/s)")
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
    for pe, output in rd.list_outputs(job.directory):
        click.echo(f"output {pe}.{output}: {rd.count_items(job.directory, pe, output):,} items  "
                   f"({rd.output_dir(job.directory, pe, output)})")
    click.echo(f"print one with: d4p-hpc results {job.directory} --show PE.OUTPUT")
    _efficiency(job)


def _dump(directory: Path, target: str, file: str | None, limit: int | None) -> None:
    import contextlib
    import itertools
    import json

    from d4p_hpc import results as rd
    from d4p_hpc.errors import UsageError

    pe, _, output = target.rpartition(".")
    if (pe, output) not in rd.list_outputs(directory):
        known = ", ".join(f"{p}.{o}" for p, o in rd.list_outputs(directory)) or "none yet"
        raise UsageError(f"no output {target} in {directory}; outputs: {known}")
    items = itertools.islice(rd.output_items(directory, pe, output), limit)
    with open(file, "w") if file else contextlib.nullcontext(click.get_text_stream("stdout")) as out:
        for item in items:
            out.write(json.dumps(item, default=repr) + "\n")
    if file:
        click.echo(f"wrote {file}", err=True)


def _segments(statuses) -> None:
    """Under the table: the segments of each job whose run spans several jobs."""
    from d4p_hpc.jobs.resume import describe

    for s in statuses:
        lines = describe(s.job)
        if lines:
            click.echo(f"{s.job.job_id}: {len(lines)} segments")
            for line in lines:
                click.echo(f"  {line}")


def _table(statuses) -> None:
    from d4p_hpc.submission.render import clock

    rows = [("JOB", "NAME", "STATE", "ELAPSED", "REASON", "DIRECTORY")]
    rows += [(s.job.job_id, s.job.name, s.state, clock(s.elapsed) if s.elapsed is not None else "-",
              s.reason or "-", str(s.job.directory)) for s in statuses]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        # every column padded but the last, the directory
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])


COMMANDS = [submit, render, status, logs, results, cancel, wait, list_, resume]
