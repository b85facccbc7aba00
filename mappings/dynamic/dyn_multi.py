"""``dyn_multi`` and ``dyn_auto_multi``: a pool of forked workers takes tasks from one shared queue.

Any worker runs any (stateless) PE; what a task writes becomes new tasks (see
:mod:`d4p_hpc.mappings.dynamic.tasks`). The parent is process 0: it feeds the root
PEs and supervises. The end-of-stream accounting is
:class:`~d4p_hpc.mappings.redis.keys.Accounting` itself, the executable
specification that the Redis mappings' script is tested against, kept in
shared memory and changed under one lock. ``dyn_auto_multi`` sizes the
working pool by the backlog (policy: :mod:`d4p_hpc.mappings.dynamic.autoscale`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import select
import sys
from typing import Any

from d4p_hpc.mappings.dynamic.autoscale import Autoscaler
from d4p_hpc.mappings.runtime.core import die_with_parent
from d4p_hpc import supervisor
from d4p_hpc.supervisor import restore_signals
from d4p_hpc.mappings.dynamic.loops import (COMPLETED, RUNNING, Driver, Unit, WorkerLoop,
    died, driver_hold, final_outcome, join_workers)
from d4p_hpc.mappings.redis.keys import Accounting, commit_fields, topology
from d4p_hpc.mappings.runtime.runner import Aborted, Outcome, RunContext, begin, end, run_process
from d4p_hpc.mappings.dynamic.tasks import CONTROL, SHARED, TaskRuntime, chunk, keep_notices, refuse_stateful

#: The run's state, by Accounting's state code
STATE_NAMES = (RUNNING, COMPLETED, "STOPPED")
PARK_POLL = 0.1


def validate(plan, mapping: str) -> None:
    """Refuse stateful PEs before anything runs."""
    refuse_stateful(plan, mapping)
    keep_notices(plan)


class LocalBroker:
    """The broker of dyn_multi: one queue of pickled task lists, one control queue per worker, and
    the accounting in shared memory, changed under one lock."""

    def __init__(self, mp: Any, plan, workers: int) -> None:
        self.workers = workers
        self.proc = 0
        self.node_of = {gid: node.index for node in plan.pes for gid in node.gids}
        self.queue = mp.Queue()
        self.ctl = [mp.Queue() for _ in range(workers + 1)]
        self.lock = mp.Lock()
        self.books = Accounting(topology(plan), workers, mp.RawArray)
        for proc in range(1, workers + 1):
            self.books.register(proc)
        self.pool = mp.RawValue("q", workers)
        # a byte is written here when the state leaves RUNNING: wakes the driver (see wait)
        self._ended_r, self._ended_w = os.pipe()
        os.set_blocking(self._ended_w, False)

    def take(self, parked: bool) -> list[Unit]:
        try:
            news = self.ctl[self.proc].get(timeout=PARK_POLL if parked else 0)
            if isinstance(news, tuple):  # ("checkpoint", number)
                return [Unit(CONTROL, [], checkpoint=news[1])]
            return [Unit(CONTROL, [], close=news)]
        except queue.Empty:
            if parked:
                return []
        try:
            payload = self.queue.get(timeout=0.2)
        except queue.Empty:
            return []
        return [Unit(SHARED, pickle.loads(payload))] if payload else []

    def commit(self, unit: Unit | None, outbox: dict, done: dict, seconds: float, close: int | None = None) -> int:
        fields = commit_fields(unit, outbox, done, seconds, close, self.node_of.__getitem__, self.proc)
        # a stop signal raised inside a lock's acquire, or a queue's put, would leak that lock: the
        # accounting's would then block every process, a queue's hang this one's exit for ever
        with supervisor.deferred(), self.lock:
            step = self.books.commit(**fields)
        if step is None:  # the run has ended: nothing more to queue
            self._wake(ended=True)
            return self.books.backlog()
        with supervisor.deferred():
            for entry in chunk(outbox.get(SHARED, []), self.workers):
                self.queue.put(pickle.dumps(entry, protocol=5))
            for index in step.closing:
                for proc in range(1, self.workers + 1):
                    self.ctl[proc].put(index)
        if step.closing or step.completed:
            self._wake(ended=step.completed)
        return step.backlog

    def _wake(self, ended: bool) -> None:
        """Wake the workers waiting for a task now, not at their next timeout; and the driver, if the
        run has ended."""
        with supervisor.deferred():
            for _ in range(self.workers):
                self.queue.put(b"")
        if ended:
            self._ended()

    def request_checkpoint(self, seq: int) -> list[int]:
        """Ask every worker to write its part of checkpoint ``seq``; return their numbers."""
        with supervisor.deferred():
            for proc in range(1, self.workers + 1):
                self.ctl[proc].put(("checkpoint", seq))
        self._wake(ended=False)
        return list(range(1, self.workers + 1))

    def state(self) -> str:
        return STATE_NAMES[self.books.state]

    def stop(self, _outcome: Outcome | None = None) -> None:
        with supervisor.deferred(), self.lock:
            self.books.stop()
        self._ended()

    def active(self) -> bool:
        return self.proc <= self.pool.value

    def backlog(self) -> int:
        return self.books.backlog()

    def load(self) -> tuple[int, int, float]:
        return self.books.load()

    def set_pool(self, n: int) -> None:
        self.pool.value = n

    def wait(self, seconds: float) -> None:
        select.select([self._ended_r], [], [], seconds)

    def _ended(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe has woken the driver already
            os.write(self._ended_w, b"x")

    def close(self) -> None:
        """Release the driver's wake-up pipe (after the workers have left)."""
        os.close(self._ended_r)
        os.close(self._ended_w)
        # tasks nobody will take (the workers failed) must not hold the driver's exit for ever
        self.queue.cancel_join_thread()


def _worker(ctx: RunContext, proc: int, broker: LocalBroker, parent: int) -> None:
    die_with_parent(parent)
    broker.proc = proc
    outcome = run_process(ctx, proc, None, on_stop=broker.stop, hold=ctx.hold_for_driver,
                          make_runtime=lambda sink: WorkerLoop(TaskRuntime(ctx.plan, proc, sink,
                                                                           restored=ctx.restored), broker))
    broker.queue.cancel_join_thread()  # tasks left in the pipe after a failure must not block exit
    sys.exit(outcome.exit_code)


def run(ctx: RunContext) -> dict:
    """Run the graph with ``ctx.processes`` workers; return the final run record."""
    t0 = begin(ctx)
    workers = ctx.processes
    mp = multiprocessing.get_context("fork")
    broker = LocalBroker(mp, ctx.plan, workers)
    scaler = Autoscaler(workers, t0) if ctx.mapping == "dyn_auto_multi" else None
    if scaler is not None:
        broker.set_pool(scaler.size)
    children = [mp.Process(target=_worker, args=(ctx, p, broker, os.getpid()), name=f"d4p-worker-{p}")
                for p in range(1, workers + 1)]
    for child in children:
        child.start()

    def watch() -> None:
        if any(c.exitcode not in (None, 0) for c in children):
            raise Aborted()

    drivers = []

    def make_driver(sink) -> Driver:
        drivers.append(Driver(ctx, TaskRuntime(ctx.plan, 0, sink, chain=False, restored=ctx.restored), broker,
                              scaler, watch))
        return drivers[0]

    try:
        driver_outcome = run_process(ctx, 0, None, on_stop=broker.stop, make_runtime=make_driver,
                                     hold=driver_hold(ctx, drivers))
    finally:
        if broker.state() != COMPLETED:
            broker.stop()
        join_workers(children)
        broker.close()
        restore_signals()
    extra = drivers[0].metrics() if drivers else {}
    return end(ctx, t0, final_outcome(ctx, driver_outcome, died(children, ctx.results)), extra)
