"""The job commands: submit, render, status, logs, results, cancel, wait, list.

``d4p_hpc.cli`` adds every command of :data:`COMMANDS` to its group, which
turns :class:`~d4p_hpc.errors.D4pHpcError` into ``Error: ...`` and its exit
code. JOB arguments are a results directory or a job id looked up under the
results root. The options of ``submit``/``render`` are made from the fields of
:class:`~d4p_hpc.spec.JobSpec`, so a new field is a new option.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from d4p_hpc import config
from d4p_hpc.errors import RunFailed
from d4p_hpc.spec import FIELDS, field_type

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
    from d4p_hpc import schedulers

    values = {k: v for k, v in options.items() if v is not None and v != ()}
    resolved = config.resolve({**values, "graph": graph}, profile=profile)
    spec = resolved.spec()
    schedulers.check_files(spec)
    return spec, resolved


def _root(results_root: str | None, profile: str | None) -> Path:
    return Path(results_root).resolve() if results_root else config.results_root(profile)


def _find(job: str, results_root: str | None, profile: str | None):
    from d4p_hpc import jobs

    return jobs.find(job, _root(results_root, profile))


def _describe(spec, sources: dict) -> str:
    """One line on the job's size, with a loud note when the walltime is nobody's choice."""
    from d4p_hpc.render import clock

    origin = "" if sources.get("walltime") != config.BUILT_IN else \
        " (built-in default: set --time or walltime in a profile)"
    return (f"{spec.scheduler} job {spec.job_name}: mapping {spec.mapping}, {spec.nodes} node(s) x "
            f"{spec.tasks_per_node} task(s) x {spec.cpus_per_task} CPU(s), walltime "
            f"{clock(spec.walltime_seconds)}{origin}")


@click.command()
@_spec_options
@click.option("--dry-run", is_flag=True, help="Print the job script and submit nothing.")
@click.option("--wait", "wait_", is_flag=True, help="Follow the job to its end, showing its progress.")
def submit(graph, profile, dry_run, wait_, **options):
    """Submit GRAPH as a batch job; print its job id and results directory."""
    from d4p_hpc import jobs, schedulers
    from d4p_hpc.render import render_script

    spec, resolved = _build(graph, profile, options)
    script = render_script(spec, resolved.sources)
    click.echo(_describe(spec, resolved.sources), err=True)
    if dry_run:
        click.echo(script, nl=False)
        return
    job_id, directory = schedulers.submit(spec, script, resolved.sources)
    click.echo(f"job {job_id}\nresults {directory}")
    if wait_:
        _follow(jobs.open_job(directory))


@click.command()
@_spec_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the script here [default: stdout].")
def render(graph, profile, output, **options):
    """Write the job script of GRAPH, to submit by hand (sbatch job.sh / qsub job.sh)."""
    from d4p_hpc.render import check_syntax, render_script

    spec, resolved = _build(graph, profile, options)
    script = render_script(spec, resolved.sources)
    check_syntax(script)
    # the scheduler opens its log files in the results root before the job starts
    Path(spec.results_root).mkdir(parents=True, exist_ok=True)
    if output is None:
        click.echo(script, nl=False)
        return
    Path(output).write_text(script)
    Path(output).chmod(0o755)
    click.echo(f"{_describe(spec, resolved.sources)}\nwrote {output}", err=True)


@click.command()
@click.argument("job", nargs=-1)
@_root_options
def status(job, results_root, profile):
    """State of JOBs (ids or results directories); without JOB, of the unfinished jobs."""
    from d4p_hpc import jobs

    root = _root(results_root, profile)
    selected = [jobs.find(j, root) for j in job] or \
        [j for j in jobs.list_jobs(root) if j.marker("finished") is None]
    _table(jobs.status(selected))


@click.command(name="list")
@_root_options
def list_(results_root, profile):
    """All jobs under the results root, oldest first."""
    from d4p_hpc import jobs

    _table(jobs.status(jobs.list_jobs(_root(results_root, profile))))


@click.command()
@click.argument("job")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the job writes until it ends.")
@_root_options
def logs(job, follow, results_root, profile):
    """The scheduler's stdout/stderr of JOB, then its per-process logs."""
    from d4p_hpc import jobs

    found = _find(job, results_root, profile)
    offsets: dict[Path, int] = {}
    while True:
        ended = not follow or jobs.status([found])[0].terminal
        for path in jobs.log_files(found):
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
    from d4p_hpc import jobs

    found = _find(job, results_root, profile)
    jobs.cancel(found)
    click.echo(f"cancel requested for job {found.job_id}")


@click.command()
@click.argument("job")
@click.option("--timeout", type=float, help="Give up after this many seconds.")
@_root_options
def wait(job, timeout, results_root, profile):
    """Wait for JOB to end; exit 0 if it COMPLETED, 1 otherwise."""
    _follow(_find(job, results_root, profile), timeout)


def _follow(job, timeout: float | None = None) -> None:
    """Poll ``job`` to its end with a live line (on a terminal) or a line per change."""
    from d4p_hpc import jobs
    from d4p_hpc.render import clock

    live, counter, last = sys.stderr.isatty(), _ItemCounter(job.directory), [""]

    def show(current) -> None:
        elapsed = clock(current.elapsed) if current.elapsed is not None else "--:--:--"
        line = f"{current.state:<9} {elapsed}  {counter():,} output items  {current.reason}".rstrip()
        if live:
            click.echo(f"\r\033[K{line}", nl=False, err=True)
        elif current.state != last[0]:
            click.echo(line, err=True)
        last[0] = current.state

    final = jobs.wait(job, poll=1.0, timeout=timeout, on_poll=show)
    if live:
        click.echo("", err=True)
    click.echo(f"{final.state} {job.directory}" + (f": {final.reason}" if final.reason else ""))
    if final.state != "COMPLETED":
        raise RunFailed(f"job {job.job_id} ended {final.state}" + (f": {final.reason}" if final.reason else ""))


class _ItemCounter:
    """Counts JSON-lines output items as they grow, reading only the new bytes."""

    def __init__(self, directory: Path) -> None:
        self.outputs = directory / "outputs"
        self.seen: dict[Path, tuple[int, int]] = {}

    def __call__(self) -> int:
        for part in self.outputs.glob("*/part-*.jsonl"):
            offset, count = self.seen.get(part, (0, 0))
            with open(part, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
            self.seen[part] = (offset + len(data), count + data.count(b"\n"))
        return sum(count for _, count in self.seen.values())


def _report(job) -> None:
    from d4p_hpc import jobs
    from d4p_hpc import results as rd
    from d4p_hpc.render import clock

    current = jobs.status([job])[0]
    run, metrics = rd.read_run(job.directory) or {}, rd.read_metrics(job.directory) or {}
    elapsed = clock(current.elapsed) if current.elapsed is not None else "-"
    click.echo(f"job {job.job_id} ({job.name}, {job.scheduler}): {current.state} after {elapsed}"
               + (f": {current.reason}" if current.reason else "") + f"\n{job.directory}")
    if not run:
        click.echo("no run.json yet: the run has not started")
        return
    wall = metrics.get("wall_seconds") or 0
    click.echo(f"mapping {run.get('mapping')}, {run.get('processes')} processes: {metrics.get('items', 0):,} items "
               f"in {wall:.2f} s ({metrics.get('items_per_second') or 0:,.0f} items/s)")
    rows = [("PE", "INSTANCES", "ITEMS IN", "ITEMS OUT", "BUSY S", "ITEMS/S")]
    for pe, m in metrics.get("pes", {}).items():
        done = m.get("items_in") or m.get("items_out") or 0
        rows.append((pe, str(len(m.get("instances", []))), f"{m.get('items_in', 0):,}", f"{m.get('items_out', 0):,}",
                     f"{m.get('busy_seconds', 0):.2f}", f"{done / wall:,.0f}" if wall else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    for pe, output in rd.list_outputs(job.directory):
        click.echo(f"output {pe}.{output}: {rd.count_items(job.directory, pe, output):,} items  "
                   f"({rd.output_dir(job.directory, pe, output)})")
    click.echo(f"print one with: d4p-hpc results {job.directory} --show PE.OUTPUT")


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


def _table(statuses) -> None:
    from d4p_hpc.render import clock

    rows = [("JOB", "NAME", "STATE", "ELAPSED", "REASON", "DIRECTORY")]
    rows += [(s.job.job_id, s.job.name, s.state, clock(s.elapsed) if s.elapsed is not None else "-",
              s.reason or "-", str(s.job.directory)) for s in statuses]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])


COMMANDS = [submit, render, status, logs, results, cancel, wait, list_]
