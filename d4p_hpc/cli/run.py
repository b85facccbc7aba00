"""``d4p-hpc run``: run a graph here, with no scheduler, through the mappings' front door
(:func:`~d4p_hpc.mappings.runtime.prepare.prepare`, then the mapping's ``run``), and print a summary."""

from __future__ import annotations

import os
from pathlib import Path

import click

from d4p_hpc import mappings, settings
from d4p_hpc.cli import notices, word_order_hint
from d4p_hpc.errors import Command, UsageError
from d4p_hpc.jobs import progress
from d4p_hpc.mappings.runtime.prepare import prepare
from d4p_hpc.results import Layout, check_new, count_items, list_outputs, read_metrics
from d4p_hpc.submission import config
from d4p_hpc.supervisor import inside_mpi_world
from d4p_hpc.units import plural
from d4p_hpc.workflow.loader import default_results, parse_inputs

_NAMES = list(mappings.MAPPINGS)
#: a failure's traceback longer than this is not printed, only its last line (a RecursionError's
#: has thousands): the whole of it is in run.json and the process's log
TRACEBACK_LINES = 60


class _RunCommand(Command):
    """``run``, which knows dispel4py's word order (``dispel4py simple g.py``) and says what to type."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with word_order_hint(ctx, list(args)):  # a copy: click consumes the list it parses
            return super().parse_args(ctx, args)


@click.command(cls=_RunCommand)
@click.argument("graph")
@click.option("-m", "--mapping", default="simple", show_default=True,
              help=f"{', '.join(_NAMES[:-1])} or {_NAMES[-1]}.")
@click.option("-n", "--processes", type=click.IntRange(min=1),
              help="Processes, MPI ranks or workers [default: 1 for simple, else the number of cores].")
@click.option("-a", "--attr", help="Name of the graph variable in GRAPH (default: its only WorkflowGraph).")
@click.option("-i", "--iterations", type=click.IntRange(min=0), help="Feed each root PE N times [default: 1].")
@click.option("-d", "--data", help='Inputs as JSON: {"PE": [{"input": ...}, ...]} or {"PE": N}.')
@click.option("-f", "--file", "data_file", type=click.Path(dir_okay=False), help="Inputs as a JSON file.")
@click.option("--results", type=click.Path(file_okay=False),
              help="Results directory [default: <graph>-<mapping>-<time> in the profile's results root, "
                   "else in ./d4p-results].")
@click.option("--redis", "redis_url", help="Use this Redis (redis://[:password@]host:port) instead of a per-run one.")
@click.option("--redis-connection", type=click.Path(dir_okay=False),
              help="Connection file of a running per-job Redis (written by d4p_hpc.mappings.redis.server).")
@click.option("--external-workers", is_flag=True,
              help="Redis mappings: workers are started elsewhere (a job script); start none here.")
@click.option("--redis-server", "redis_server", help="redis-server binary [default: from PATH].")
@click.option("--check", is_flag=True, help="Load the graph and check the inputs and mapping; run nothing.")
@click.option("--checkpoint-every", type=float, callback=settings.checkpoint_every_option, metavar="SECONDS",
              help="Take a checkpoint every SECONDS (and at the walltime signal), to resume from.")
@click.option("--checkpoint", "checkpoint_on", is_flag=True,
              help="Take a checkpoint at the walltime signal (SIGUSR1) before stopping.")
@click.option("--resume", "resume", is_flag=True,
              help="Continue the run in --results from its last checkpoint (same graph and inputs).")
def run(graph: str, mapping: str, processes: int | None, attr: str | None, iterations: int | None,
        data: str | None, data_file: str | None, results: str | None, redis_url: str | None,
        redis_connection: str | None, external_workers: bool, redis_server: str | None, check: bool,
        checkpoint_every: float | None, checkpoint_on: bool, resume: bool) -> None:
    """Run GRAPH here, with no scheduler, and write a results directory."""
    chosen = mappings.get(mapping)
    raw = parse_inputs(iterations, data, data_file)
    options = {"redis_url": redis_url, "redis_connection": redis_connection,
               "external_workers": external_workers, "redis_server": redis_server, "inputs_file": data_file,
               "checkpoint_every": checkpoint_every, "checkpoint": checkpoint_on}
    if resume and not results:
        raise UsageError("--resume needs --results DIR: the results directory of the run to continue")
    results_dir = results or default_results(graph, mapping, config.results_root())
    settings.check()
    _check_local_processes(chosen, processes, external_workers)
    chosen.check(options)
    if not check and not resume and not inside_mpi_world():  # (the ranks of one run share it: rank 0 checks it)
        check_new(results_dir)
    ctx = prepare(graph, attr, mapping, chosen.processes(processes), raw, results_dir, options, resume, not check)
    if check or not (inside_mpi_world() or settings.quiet()):
        # before the run, so that a slow run explains itself (an MPI rank: in rank 0's summary)
        notices(ctx.plan.notices)
    if check:
        click.echo(f"ok: {plural(len(ctx.plan.pes), 'PE')}, {plural(ctx.plan.instances, 'instance')} under "
                   f"{mapping} with {plural(ctx.processes, 'process')}")
        return
    with progress.live(ctx.results):
        record = chosen.run(ctx)
    if not record.get("secondary") and not settings.quiet():
        _summary(ctx.results, record)
    chosen.exit(record["exit_code"])


def _check_local_processes(chosen: mappings.Mapping, processes: int | None, external: bool) -> None:
    """Refuse a ``-n`` that would fork more processes on this host than it could ever run well
    (the Redis mappings fork theirs too, unless a job script starts the workers on its nodes)."""
    if processes is None or not chosen.forks or external or inside_mpi_world():
        return
    cores = os.cpu_count() or 1
    limit = settings.max_processes()
    if processes > limit:
        raise UsageError(f"-n {processes} would start {processes} processes on this host "
                         f"({plural(cores, 'core')}); the limit is {limit}: set D4P_HPC_MAX_PROCESSES={processes} "
                         "to allow it, or submit a job (d4p-hpc submit) to use more nodes")


def _summary(results_dir: Path, record: dict) -> None:
    """The run's state, rate, failure and outputs, after it ended."""
    metrics = read_metrics(results_dir) or {}
    if inside_mpi_world():  # the other runs said them at their start
        notices(record.get("notices", []))
    state = record["state"]
    rate = metrics.get("items_per_second")
    click.echo(f"{state} in {metrics.get('wall_seconds', record.get('wall_seconds', 0)):.2f} s: "
               f"{plural(metrics.get('items', 0), 'item')}"
               + (f", {rate:,.0f} items/s" if rate else "")
               + f" ({record['mapping']}, {plural(record['processes'], 'process')})")
    if record.get("error"):
        click.echo(_failure(record["error"]), err=True)
    click.echo(f"results: {results_dir}")
    for pe, output in list_outputs(results_dir):
        click.echo(f"  {pe}.{output}: {plural(count_items(results_dir, pe, output), 'item')}")
    click.echo(f"logs: {results_dir}/{Layout.LOGS}/")


def _failure(error: dict) -> str:
    """Who failed where, and the traceback: whole, or its last line when it is too long to read."""
    who = f"PE {error['pe']}" if error.get("pe") else "the run"
    where = f" (process {error['process']})" if error.get("process") is not None else ""
    lines = (error.get("traceback") or "").strip().splitlines()
    if not lines:
        return f"{who} failed{where}; its log may say why"
    if len(lines) > TRACEBACK_LINES:
        return (f"{who} failed{where}: {lines[-1]} (the whole traceback, {plural(len(lines), 'line')}, is in "
                f"{Layout.RUN} and the logs)")
    return f"{who} failed{where}:\n" + "\n".join(lines)
