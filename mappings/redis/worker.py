"""A worker of the Redis mappings, on any node: ``python -m d4p_hpc.mappings.redis.worker --connection FILE``.

It needs nothing but the connection file (or ``--redis URL``): it waits for the
driver to announce a run in Redis (graph path, attribute, mapping, results
directory, pool size), loads the same graph and plan, and runs tasks until
the driver's run ends. The results directory must be the one the driver uses
(a shared file system in a job). A worker hears of a stop through Redis, also
one that got no signal of its own (a cancelled PBS job's other nodes), and one
that finds its Redis gone stops too, saying so in one line: in a job that is the
end of the job, not an error of the worker's. Exit codes: 0 when the run
completed, 1 after a PE failure, a stop it was told of or a lost Redis,
128 + signal when stopped by one.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time

import click

from d4p_hpc import supervisor
from d4p_hpc.errors import Command
from d4p_hpc.errors import D4pHpcError
from d4p_hpc.mappings.redis.conn import Connection, PASSWORD_ENV, connect, import_redis, parse_url, read_connection_file
from d4p_hpc.mappings.dynamic.loops import COMPLETED, RUNNING, WorkerLoop
from d4p_hpc.mappings.redis.broker import RedisBroker, cut_unacknowledged
from d4p_hpc.mappings.redis.keys import Keys, read_announcement, stop_run
from d4p_hpc.mappings.redis.relay import through_relay
from d4p_hpc.mappings.checkpoint import store
from d4p_hpc.mappings.runtime.prepare import prepare
from d4p_hpc.mappings.runtime.process import Aborted
from d4p_hpc.mappings.runtime.runner import Outcome, RunContext, run_process
from d4p_hpc.mappings.dynamic.tasks import TaskRuntime

POLL = 0.2


def wait_for_run(client) -> tuple[dict, str]:
    """Block until a run is announced; return its announcement and state."""
    while True:
        run, state = read_announcement(client)
        if run is not None and state is not None:
            return run, state
        time.sleep(POLL)


class _Loop(WorkerLoop):
    """The worker's loop, which stops as told when Redis is gone: the per-job Redis stops once the
    driver is done with it, and a worker the driver could not wait for then finds it gone."""

    def __init__(self, make, broker: RedisBroker, conn: Connection) -> None:
        self.redis_broker = broker
        self.conn = conn
        with self._guard():
            super().__init__(make(), broker)

    def run(self) -> None:
        with self._guard():
            super().run()

    @contextlib.contextmanager
    def _guard(self):
        redis = import_redis()
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.redis_broker.lost = exc
            raise Aborted() from None
        finally:
            if self.redis_broker.lost is not None:
                print(f"lost the Redis at {self.conn.display()} ({self.redis_broker.lost}): the run is over or "
                      "its Redis stopped", flush=True)


def serve(conn: Connection, run: dict, ctx: RunContext | None = None) -> Outcome:
    """Work for the announced ``run`` until it ends.

    Parameters
    ----------
    conn
        The run's Redis.
    run
        Its announcement (see :mod:`d4p_hpc.mappings.redis.dyn_redis`).
    ctx
        The run's context when the driver forked this worker; else it is
        rebuilt from the announcement (same graph, same plan).
    """
    redis = import_redis()
    keys = Keys(run["id"])
    client = conn.client()
    if ctx is None:
        try:
            ctx = prepare(run["graph"], run["attr"], run["mapping"], run["processes"], 0, run["results"],
                          {"checkpoint": run.get("checkpoints")})
            if run.get("resume"):
                ctx.restored = store.load(ctx.results, run["resume"])
        except D4pHpcError as exc:
            # the driver would wait for this worker forever: fail the run, saying why
            stop_run(client, keys, "FAILED", {"pe": None, "process": None,
                                               "traceback": f"a worker on {socket.gethostname()}: {exc}"})
            raise
    proc = int(client.incr(keys.procs))
    broker = RedisBroker(conn, keys, proc, run["processes"], run["claim_idle"],
                         autoscaled=run["mapping"] == "dyn_auto_redis")

    def on_stop(outcome: Outcome) -> None:
        # a PE failure ends the run; a worker stopped by a signal is just gone (its tasks get claimed)
        if outcome.error and broker.lost is None:
            try:
                broker.stop("FAILED", outcome.error)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                broker.lost = exc

    try:
        outcome = run_process(ctx, proc, None, on_stop=on_stop, hold=ctx.hold_for_driver,
                              make_runtime=lambda sink: _Loop(
                                  lambda: broker.attach(TaskRuntime(ctx.plan, proc, sink, restored=ctx.restored)),
                                  broker, conn))
        if broker.lost is None:  # how it ended, for the driver's final accounting
            try:
                client.hset(keys.exited, proc, outcome.state)
                _cut_if_completed(client, keys, ctx, proc)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                broker.lost = exc
    finally:
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):  # gone at the very end
            broker.close(reachable=broker.lost is None)
        client.close()
    return outcome


def _cut_if_completed(client, keys: Keys, ctx: RunContext, proc: int) -> None:
    """If the run has COMPLETED, cut what this worker wrote beyond its acknowledged commits: a worker
    paused past its claim idle time (its entries redone elsewhere) may resume as the run ends, and
    write its unit again after the driver has cut the others. Read with the state in one step: a
    driver that has begun to forget the run's keys leaves nothing to cut against, and nothing is cut."""
    state, sizes = client.pipeline(transaction=True).get(keys.state).hgetall(keys.sizes).execute()
    if state != COMPLETED.encode() or not sizes:
        return
    kept = ctx.restored.sizes() if ctx.restored is not None else {}
    if cut_unacknowledged(ctx.results, kept, proc, {k.decode(): int(v) for k, v in sizes.items()}):
        print("the run had completed without this worker's last unit, which another worker redid: "
              "its results here are dropped", flush=True)


#: how a worker's own errors begin on stderr, where the driver watches for them (dyn_redis.Launcher):
#: d4p-hpc's ``Error:`` line, naming the worker's host
ERROR_PREFIX = "Error: worker on "


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--connection", type=click.Path(dir_okay=False),
              help="Connection file written by python -m d4p_hpc.mappings.redis.server.")
@click.option("--redis", "url", help=f"redis://[:PASSWORD@]HOST:PORT (password also from ${PASSWORD_ENV}).")
def main(connection: str | None, url: str | None) -> None:
    """Work for a d4p-hpc run of a Redis mapping, until the run ends."""
    if (connection is None) == (url is None):
        raise click.UsageError("give one of --connection FILE and --redis URL")
    here = f"worker on {socket.gethostname()}"
    redis = import_redis()
    # while it waits for a run: the run has its own handling once it starts
    supervisor.on_signals(lambda n, _f: sys.exit(supervisor.exit_code(n)))
    try:
        # a job's workers share their node's relay where its Redis says so (its connection file)
        conn = read_connection_file(connection) if connection else parse_url(url or "")
        conn = through_relay(conn) if conn.relayed else conn
        client = connect(conn)
        try:
            run, state = wait_for_run(client)
            if state != RUNNING:  # started after the job's run ended: nothing to do
                click.echo(f"{here}: run {run['id']} has ended ({state}); nothing to do", err=True)
                return
            # a relay serves while any of its node's workers is connected: a relayed worker holds this
            # one to the end; a direct one keeps to its WORKER_CONNECTIONS, which serve() opens
            if not conn.keep_probe:
                client.close()
            code = serve(conn, run).exit_code
        finally:
            client.close()
        sys.exit(code)
    except D4pHpcError as exc:
        exc.args = (f"{here}: {exc}",)
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # not an error of the worker's own: at the end of a job its Redis stops first
        click.echo(f"{here}: lost the Redis connection ({exc}); the run is over or its Redis stopped", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main(prog_name="python -m d4p_hpc.mappings.redis.worker")
