"""A worker of the Redis mappings, on any node: ``python -m d4p_hpc.mappings.worker --connection FILE``.

It needs nothing but the connection file (or ``--redis URL``): it waits for the
driver to announce a run in Redis (graph path, attribute, mapping, results
directory, pool size), loads the same graph and plan, and runs tasks until
the driver's run ends. The results directory must be the one the driver uses
(a shared file system in a job). Exit codes: 0 when the run completed,
1 after a PE failure or a lost Redis, 128 + signal when stopped by one.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time

from d4p_hpc.errors import D4pHpcError
from d4p_hpc.mappings import rconn
from d4p_hpc.mappings.dynamic import RUNNING, WorkerLoop
from d4p_hpc.mappings.rbroker import RedisBroker
from d4p_hpc.mappings.rstate import Keys, read_announcement, stop_run
from d4p_hpc.mappings.runner import Outcome, RunContext, prepare, run_process
from d4p_hpc.mappings.tasks import TaskRuntime

POLL = 0.2


def wait_for_run(client) -> tuple[dict, str]:
    """Block until a run is announced; return its announcement and state."""
    while True:
        run, state = read_announcement(client)
        if run is not None and state is not None:
            return run, state
        time.sleep(POLL)


def serve(conn: rconn.Connection, run: dict, ctx: RunContext | None = None) -> Outcome:
    """Work for the announced ``run`` until it ends.

    Parameters
    ----------
    conn
        The run's Redis.
    run
        Its announcement (see :mod:`d4p_hpc.mappings.dyn_redis`).
    ctx
        The run's context when the driver forked this worker; else it is
        rebuilt from the announcement (same graph, same plan).
    """
    keys = Keys(run["id"])
    client = conn.client()
    if ctx is None:
        try:
            ctx = prepare(run["graph"], run["attr"], run["mapping"], run["processes"], 0, run["results"])
        except D4pHpcError as exc:
            # the driver would wait for this worker forever: fail the run, saying why
            stop_run(client, keys, "FAILED", {"pe": None, "process": None,
                                               "traceback": f"a worker on {socket.gethostname()}: {exc}"})
            raise
    proc = int(client.incr(keys.procs))
    broker = RedisBroker(conn, keys, proc, run["processes"], run["claim_idle"])

    def on_stop(outcome: Outcome) -> None:
        # a PE failure ends the run; a worker stopped by a signal is just gone (its tasks get claimed)
        if outcome.error:
            broker.stop("FAILED", outcome.error)

    try:
        outcome = run_process(ctx, proc, None, on_stop=on_stop, make_runtime=lambda sink: WorkerLoop(
            broker.attach(TaskRuntime(ctx.plan, proc, sink)), broker))
        client.hset(keys.exited, proc, outcome.state)
    finally:
        broker.close()
    return outcome


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m d4p_hpc.mappings.worker",
                                     description="Work for a d4p-hpc Redis-mapped run.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--connection", help="connection file written by d4p_hpc.mappings.redis_server")
    where.add_argument("--redis", help=f"redis://[:PASSWORD@]HOST:PORT (password also from ${rconn.PASSWORD_ENV})")
    args = parser.parse_args(argv)
    redis = rconn.import_redis()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda n, _f: sys.exit(128 + n))  # while waiting; the run has its own handling
    try:
        conn = rconn.read_connection_file(args.connection) if args.connection else rconn.parse_url(args.redis)
        run, state = wait_for_run(rconn.connect(conn))
        if state != RUNNING:  # started after the job's run ended: nothing to do
            print(f"d4p-hpc worker: run {run['id']} has ended ({state}); nothing to do", file=sys.stderr)
            return 0
        return serve(conn, run).exit_code
    except D4pHpcError as exc:
        print(f"d4p-hpc worker: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"d4p-hpc worker: lost the Redis connection ({exc}); the run is over or its Redis stopped",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
