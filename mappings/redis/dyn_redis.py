"""``dyn_redis``, ``dyn_auto_redis`` and ``hybrid_redis``: tasks over Redis streams, workers on any node.

The driver (this process, process 0) connects to Redis: the connection file
of a per-job Redis (``--redis-connection``), an existing server (``--redis
URL``), or else a private ``redis-server`` it starts itself on loopback. It
publishes the run (graph path, attribute, mapping, pool size, results
directory) and announces it, so that workers started anywhere with only the
connection file (``python -m d4p_hpc.mappings.redis.worker``) can join; unless
``--external-workers`` is given, it forks ``-n`` local workers itself. Then
it feeds the root PEs, with backpressure, and supervises: autoscaling
(dyn_auto_redis), the liveness of workers that host stateful instances
(hybrid_redis), whose death fails the run since their state is lost, and, in a
job, the workers' launcher (:class:`Launcher`): a worker that could not join
(it prints ``Error: worker on HOST: ...``) or the launcher ending while the run
goes on (every worker is gone) fails the run within a tick, naming the cause.

A stop (a signal, a failure) is told to every worker through Redis, which then
has the final word: the driver waits for the workers' last commits (a cancel: at
most :data:`CANCEL_WAIT`), collects how each ended, cuts results that were redone
elsewhere, and only then forgets the run, which lets the per-job Redis stop
(:meth:`~d4p_hpc.mappings.redis.server.RedisServer.release`). A cancelled job's
workers on other nodes may get no signal of their own (PBS without TM support):
this is how they stop, and are counted.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sys
import time
import uuid
from pathlib import Path

from d4p_hpc import liveness, supervisor
from d4p_hpc.results import Layout
from d4p_hpc.errors import UsageError
from d4p_hpc.mappings import connections
from d4p_hpc.mappings.redis.conn import Connection, connect, import_redis, parse_url, read_connection_file
from d4p_hpc.mappings.dynamic.autoscale import Autoscaler
from d4p_hpc.mappings.runtime.process import Aborted, die_with_parent
from d4p_hpc.mappings.runtime.sink import Sink
from d4p_hpc.mappings.dynamic.loops import (RUNNING, Driver, DriverHold, died, driver_hold, final_outcome,
                                            join_workers)
from d4p_hpc.mappings.redis.broker import RedisBroker, claim_idle, cut_unacknowledged
from d4p_hpc.mappings.redis.server import RELEASE_TIMEOUT, RedisServer
from d4p_hpc.mappings.redis.keys import Keys, forget, publish, stop_run
from d4p_hpc.mappings.runtime.runner import Outcome, RunContext, begin, end, run_process
from d4p_hpc.mappings.dynamic.tasks import CONTROL_QUEUE, TaskRuntime, keep_notices, refuse_stateful
from d4p_hpc.mappings.redis.worker import ERROR_PREFIX

NO_WORKER_NOTICE = 30.0
#: how long the driver waits for workers started elsewhere to leave and write their metrics: after
#: a cancel, within the time the per-job Redis is kept for it, the rest being for the accounting
EXTERNAL_WAIT = 10.0
CANCEL_WAIT = RELEASE_TIMEOUT - 2.0
# set by the job script (templates/common/redis.sh.j2): the pid of the workers' launcher (srun,
# mpiexec or the script's d4p_fork) on this node, and the file its stderr is copied to
LAUNCHER_PID_ENV = "D4P_WORKERS_PID"
LAUNCHER_LOG_ENV = "D4P_WORKERS_LOG"


def validate(plan, mapping: str) -> None:
    """Refuse stateful PEs, except under hybrid_redis, before anything runs."""
    if mapping != "hybrid_redis":
        refuse_stateful(plan, mapping)
    keep_notices(plan)


class RedisDriverBroker(RedisBroker):
    """The driver's side: fresh state, backlog and load, pool size, liveness."""

    #: the pool last written to ``active``
    _pool: list[int] | None = None

    def state(self) -> str:
        """The run's state, read now (the driver has no heartbeat)."""
        return self.fresh_state()

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; return at once when the run has ended (an entry in ``ended``)."""
        self.client.xread({self.keys.ended: "0-0"}, count=1, block=max(1, int(seconds * 1000)))

    def backlog(self) -> int:
        """Tasks and items queued and not finished (kept by the commits)."""
        return int(self.client.hget(self.keys.work, "backlog") or 0)

    def load(self) -> tuple[int, int, float]:
        """``(backlog, tasks done, busy seconds)``."""
        backlog, tasks, busy = self.client.hmget(self.keys.work, "backlog", "tasks", "busy")
        return int(backlog or 0), int(tasks or 0), float(busy or 0)

    def pending(self, index: int) -> int:
        """Tasks of PE ``index`` queued or running."""
        return int(self.client.hget(self.keys.pending, str(index)) or 0)

    def live_workers(self) -> list[int]:
        """Numbers of the registered workers whose heartbeat has not expired."""
        procs = sorted(int(p) for p in self.client.hkeys(self.keys.workers))
        pipe = self.client.pipeline(transaction=False)
        for proc in procs:
            pipe.exists(self.keys.alive(proc))
        return [proc for proc, alive in zip(procs, pipe.execute(), strict=True) if alive]

    def set_pool(self, n: int) -> None:
        """Write the first ``n`` live workers as the pool; wake those that join or leave it."""
        pool = self.live_workers()[:n]
        if pool == self._pool:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.active, ",".join(str(p) for p in pool))
        # a parked worker blocks on its control stream: tell those that join or leave the pool now
        for proc in set(pool) ^ set(self._pool or ()):
            pipe.xadd(self.keys.prefix + self.keys.stream(CONTROL_QUEUE, proc), {"pool": 1})
        pipe.execute()
        self._pool = pool

    def request_checkpoint(self, seq: int) -> list[int]:
        """Ask every live worker to write its part of checkpoint ``seq``; return their numbers."""
        workers = self.live_workers()
        pipe = self.client.pipeline(transaction=False)
        for proc in workers:
            pipe.xadd(self.keys.prefix + self.keys.stream(CONTROL_QUEUE, proc), {"checkpoint": seq})
        pipe.execute()
        return workers

    def dead_owner(self) -> tuple[int, int, str] | None:
        """(gid, proc, host) of a stateful instance not finished whose worker has no heartbeat, if any,
        while the run goes on. Its end is read again after the heartbeat: a run that completed since the
        first read lets its workers leave, and their heartbeats go with them (a 128-worker run under load
        was failed so, its every item through)."""
        owners = {int(g): int(p) for g, p in self.client.hgetall(self.keys.owners).items()}
        finished = {int(g) for g in self.client.hkeys(self.keys.idone)}
        for gid, proc in sorted(owners.items()):
            if gid not in finished and not self.client.exists(self.keys.alive(proc)) and \
                    not self.client.hexists(self.keys.idone, gid) and self.fresh_state() == RUNNING:
                try:
                    host = str(json.loads(self.client.hget(self.keys.workers, proc) or "{}").get("host") or "?")
                except (ValueError, AttributeError):
                    host = "?"
                return gid, proc, host
        return None


class Launcher:
    """The job's worker launcher, as the driver sees it: its pid and what it printed on stderr."""

    def __init__(self, pid: int, log: Path) -> None:
        self.pid = pid
        self.log = log
        self._token = liveness.token(pid)  # None: gone already; else what a reused pid cannot match
        self._offset = 0
        self._last = ""

    @classmethod
    def from_environment(cls) -> Launcher | None:
        """The launcher the job script names (:data:`LAUNCHER_PID_ENV`), or None outside a job."""
        pid = os.environ.get(LAUNCHER_PID_ENV, "")
        return cls(int(pid), Path(os.environ.get(LAUNCHER_LOG_ENV, os.devnull))) if pid.isdigit() else None

    def gone(self) -> bool:
        """Whether the launcher has exited (its pid gone or reused)."""
        return self._token is None or liveness.token(self.pid) != self._token

    def worker_error(self) -> str | None:
        """The first worker error line (:data:`worker.ERROR_PREFIX`) printed since the last call, if any."""
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return None
        whole = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._offset += whole
        for line in data[:whole].decode(errors="replace").splitlines():
            line = line.strip()
            if line.strip("-") and "PMIX ERROR" not in line:  # not Open MPI's rules and noise
                self._last = line
            if line.startswith(ERROR_PREFIX):
                return line
        return None

    def last_words(self) -> str:
        """The workers' last error line, or where to look."""
        self.worker_error()
        return f"last words on stderr: {self._last}" if self._last else f"nothing on stderr (see {self.log})"


def _connection(ctx: RunContext, stack: contextlib.ExitStack) -> tuple[Connection, bool]:
    """The Redis to use, and whether it is our own private one."""
    opts = ctx.options
    if opts.get("redis_connection"):
        return read_connection_file(opts["redis_connection"]), False
    if opts.get("redis_url"):
        return parse_url(opts["redis_url"]), False
    if opts.get("external_workers"):
        raise UsageError("--external-workers needs the Redis the workers use: --redis-connection FILE "
                         "(of python -m d4p_hpc.mappings.redis.server) or --redis URL")
    return stack.enter_context(RedisServer(ctx.results, binary=opts.get("redis_server"),
                                           clients=connections(ctx.processes))), True


def _local_worker(conn: Connection, run: dict, ctx: RunContext, parent: int) -> None:
    from d4p_hpc.mappings.redis.worker import serve

    die_with_parent(parent)
    sys.exit(serve(conn, run, ctx).exit_code)


def run(ctx: RunContext) -> dict:
    """Run the graph on Redis; return the final run record."""
    redis = import_redis()
    with contextlib.ExitStack() as stack:
        conn, own = _connection(ctx, stack)
        client = connect(conn)
        t0 = begin(ctx)
        run_id = uuid.uuid4().hex[:12]
        idle = claim_idle()
        run_info = {"graph": ctx.graph_path, "attr": ctx.attr, "mapping": ctx.mapping,
                    "processes": ctx.processes, "results": str(ctx.results), "claim_idle": idle,
                    "checkpoints": ctx.checkpoints, "resume": ctx.restored.seq if ctx.restored else None}
        keys = publish(client, run_id, ctx.plan, run_info)
        broker = RedisDriverBroker(conn, keys, 0, ctx.processes, idle)
        mp = multiprocessing.get_context("fork")
        children = [] if ctx.options.get("external_workers") else [
            mp.Process(target=_local_worker, args=(conn, {"id": run_id, **run_info}, ctx, os.getpid()),
                       name=f"d4p-worker-{p}")
            for p in range(1, ctx.processes + 1)]
        scaler = Autoscaler(ctx.processes, t0) if ctx.mapping == "dyn_auto_redis" else None
        drivers: list[Driver] = []
        hold = driver_hold(ctx)
        extra: dict = {}
        errors: list[dict] = []
        lost: list[bool] = []  # Redis found gone while stopping: every further call would only retry
        try:
            for child in children:
                child.start()
            supervisor.raise_on_signals(hold=hold)  # stop signals are held since begin(), and in the workers too
            driver = run_process(ctx, 0, None, on_stop=lambda o: _tell_stop(broker, o, redis, lost),
                                 make_runtime=lambda sink: _driver(ctx, sink, broker, scaler, children, drivers, hold),
                                 hold=hold)
        except supervisor.Interrupted as stop:  # before the driver's run began
            driver = Outcome(stop.state, stop.signum)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            driver = Outcome("FAILED", None, {"pe": None, "process": 0,
                                              "traceback": f"lost the Redis at {conn.display()}: {exc}"})
        finally:
            try:
                if lost:
                    raise redis.ConnectionError("Redis stopped with the job")
                state = broker.fresh_state()
                if state == RUNNING:
                    state = "CANCELLED"
                    broker.stop(state)
                join_workers(children)
                _wait_external(broker, CANCEL_WAIT if state == "CANCELLED" else EXTERNAL_WAIT)
                extra = {**_finish(ctx, broker, client), **(drivers[0].metrics() if drivers else {})}
                error = client.get(keys.error)
                errors = [json.loads(error)] if error else []
                if not own:
                    forget(client, keys)
            except (redis.ConnectionError, redis.TimeoutError):
                join_workers(children)  # Redis is gone: what it held is lost, but no worker may outlive us
    # a dead worker is no failure when others redid its work and the run completed
    errors += died(children, ctx.results) if driver.state != "COMPLETED" else []
    return end(ctx, t0, final_outcome(ctx, driver, errors), extra)


def _tell_stop(broker: RedisDriverBroker, outcome: Outcome, redis, lost: list) -> None:
    """Tell the workers the run stops. The per-job Redis outlives a cancel until the driver is done
    with it; one that is gone all the same (a Redis of the user's, stopped with the job) leaves
    nobody to tell, and the run's state is the stop's, not "lost the Redis". Nothing more is asked
    of that Redis: redis-py's retries (seconds per call) would outlast the scheduler's grace before
    SIGKILL, and the run would never record its end."""
    state = "FAILED" if outcome.error else outcome.state
    if outcome.signum is None:
        broker.stop(state, outcome.error)
        return
    client = broker.conn.client(no_retry=True, socket_timeout=2, socket_connect_timeout=2)
    try:
        stop_run(client, broker.keys, state, outcome.error)
    except (redis.ConnectionError, redis.TimeoutError):
        lost.append(True)
    finally:
        client.close()


def _driver(ctx: RunContext, sink: Sink, broker: RedisDriverBroker, scaler: Autoscaler | None, children: list,
            made: list, hold: DriverHold | None) -> Driver:
    runtime = TaskRuntime(ctx.plan, 0, sink, chain=False, restored=ctx.restored)
    broker.runtime = runtime
    started = time.monotonic()
    told: list[bool] = []
    launcher = None if children else Launcher.from_environment()

    def fail(why: str) -> None:
        # the run may have completed since this tick read its state: its last worker leaving is no failure
        if broker.stop("FAILED", {"pe": None, "process": None, "traceback": why}):
            print(why, flush=True)
            raise Aborted()

    def watch() -> None:
        # no commit may come while a PE waits for a dead worker to close its copy: walk the PEs anyway
        broker.commit(None, {}, {}, 0.0)
        if children and not any(c.is_alive() for c in children):
            fail("every local worker died")
        if launcher is not None:
            # a worker that cannot join (no route to Redis, a broken environment) is a set-up error
            # that every rerun would meet: fail now rather than run on with part of the pool
            error = launcher.worker_error()
            if error:
                fail(f"a worker could not join the run: {error}")
            if launcher.gone() and broker.fresh_state() == RUNNING:
                fail(f"every worker is gone: their launcher (pid {launcher.pid}) ended while the run "
                     f"was going; {launcher.last_words()}")
        dead = broker.dead_owner()
        if dead is not None:
            gid, proc, host = dead
            node = runtime.node_of[gid]
            again = "resume the run from its last checkpoint (d4p-hpc resume, or run --resume)" if ctx.checkpoints \
                else "rerun the workflow (with --checkpoint-every, a rerun could resume instead)"
            if broker.stop("FAILED", {"pe": node.key, "process": proc, "traceback":
                                      f"worker {proc} on {host}, host of instance {gid - node.first_gid} of stateful "
                                      f"PE {node.key}, died; its state is lost: {again}"}):
                raise Aborted()
        if not told and not children and time.monotonic() - started > NO_WORKER_NOTICE and \
                not broker.live_workers():
            told.append(True)
            print(f"no worker has joined after {NO_WORKER_NOTICE:.0f} s: start them with "
                  f"python -m d4p_hpc.mappings.redis.worker --connection {Layout(ctx.results).redis}", flush=True)

    made.append(Driver(ctx, runtime, broker, scaler, watch))
    return hold.made(made[0]) if hold is not None else made[0]


def _wait_external(broker: RedisDriverBroker, timeout: float) -> None:
    """Give live workers started elsewhere ``timeout`` seconds to leave and write their metrics."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = {int(p) for p in broker.client.hkeys(broker.keys.exited)}
        if not set(broker.live_workers()) - exited:
            return
        time.sleep(0.1)


def _finish(ctx: RunContext, broker: RedisDriverBroker, client) -> dict:
    """Cut the results of units that were never acknowledged and have been redone; return the
    mapping's metrics."""
    keys: Keys = broker.keys
    completed = broker.fresh_state() == "COMPLETED"
    taken = {int(p) for p in client.hkeys(keys.taken)}
    exited = {int(p): s.decode() for p, s in client.hgetall(keys.exited).items()}
    sizes = {k.decode(): int(v) for k, v in client.hgetall(keys.sizes).items()}
    workers = sorted(int(p) for p in client.hkeys(keys.workers))
    # what earlier segments wrote is the checkpoint's: a worker dead before its first commit keeps it
    kept = ctx.restored.sizes() if ctx.restored is not None else {}
    cut = 0
    for proc in workers:
        # a completed run's units were all acknowledged: what is beyond was written twice. Else a killed
        # or signalled worker's last unit was redone elsewhere if another worker took its entries over;
        # if nothing redid it (the run stopped, or failed), what it wrote stays, as under every other
        # mapping (its metrics, if it wrote them, count it). (A worker that goes on after this, paused
        # until now, cuts its own: see worker.serve.)
        if completed or (proc in taken and exited.get(proc) not in ("COMPLETED", "FAILED")):
            cut += cut_unacknowledged(ctx.results, kept, proc, sizes)
    return {"workers": len(workers), "redeliveries": int(client.get(keys.redeliveries) or 0),
            "truncated_parts": cut,
            "redis_used_memory_peak_mb": round(client.info("memory")["used_memory_peak"] / 2 ** 20, 2)}
