"""``d4p-hpc run``: run a graph here, with no scheduler (:func:`d4p_hpc.api.local.run_here`), and
print a summary."""

from __future__ import annotations

import click

from d4p_hpc import mappings, settings
from d4p_hpc.api.local import Ended, run_here
from d4p_hpc.cli import notices, word_order_hint
from d4p_hpc.errors import Command
from d4p_hpc.units import plural

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
@click.option("-i", "--iterations", type=click.IntRange(min=0, max=settings.MAX_COUNT),
              help="Feed each root PE N times [default: 1].")
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
    ended = run_here(graph, mapping, processes, attr, iterations, data, data_file, results, redis_url,
                     redis_connection, external_workers, redis_server, check, checkpoint_every, checkpoint_on,
                     resume, notices)
    if check:
        click.echo(ended.checked)
        return
    if not ended.said_by_another and not settings.quiet():
        notices(ended.late_notices)
        _summary(ended)
    ended.exit()


def _summary(ended: Ended) -> None:
    """The run's state, rate, failure and outputs, after it ended."""
    record, metrics = ended.final, ended.metrics()
    state = record["state"]
    rate = metrics.get("items_per_second")
    click.echo(f"{state} in {metrics.get('wall_seconds', record.get('wall_seconds', 0)):.2f} s: "
               f"{plural(metrics.get('items', 0), 'item')}"
               + (f", {rate:,.0f} items/s" if rate else "")
               + f" ({record['mapping']}, {plural(record['processes'], 'process')})")
    if record.get("error"):
        click.echo(_failure(record["error"], ended.record_file.name), err=True)
    click.echo(f"results: {ended.directory}")
    for name, (count, _folder) in ended.counts().items():
        click.echo(f"  {name}: {plural(count, 'item')}")
    click.echo(f"logs: {ended.log_directory}/")


def _failure(error: dict, record: str) -> str:
    """Who failed where, and the traceback: whole, or its last line when it is too long to read."""
    who = f"PE {error['pe']}" if error.get("pe") else "the run"
    where = f" (process {error['process']})" if error.get("process") is not None else ""
    lines = (error.get("traceback") or "").strip().splitlines()
    if not lines:
        return f"{who} failed{where}; its log may say why"
    if len(lines) > TRACEBACK_LINES:
        return (f"{who} failed{where}: {lines[-1]} (the whole traceback, {plural(len(lines), 'line')}, is in "
                f"{record} and the logs)")
    return f"{who} failed{where}:\n" + "\n".join(lines)
