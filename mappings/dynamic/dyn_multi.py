"""``dyn_multi`` and ``dyn_auto_multi``: a pool of forked workers takes tasks from one shared queue.

Any worker runs any (stateless) PE; what a task writes becomes new tasks (see
:mod:`d4p_hpc.mappings.dynamic.tasks`). The parent is process 0: it feeds the root
PEs and supervises. The end-of-stream accounting is
:class:`~d4p_hpc.mappings.dynamic.accounting.Accounting` itself, the executable
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
from collections.abc import Callable, Iterator
from typing import Any

from d4p_hpc.mappings.dynamic.accounting import Accounting, commit_fields, topology
from d4p_hpc.mappings.dynamic.autoscale import Autoscaler
from d4p_hpc.mappings.runtime.process import Aborted, die_with_parent
from d4p_hpc import supervisor
from d4p_hpc.mappings.dynamic.loops import (COMPLETED, RUNNING, Driver, Unit, WorkerLoop,
    died, driver_hold, final_outcome, join_workers)
from d4p_hpc.mappings.runtime.runner import Outcome, RunContext, begin, end, run_process
from d4p_hpc.mappings.dynamic.tasks import (CONTROL_QUEUE, SHARED_QUEUE, TaskRuntime, keep_notices, pack,
    refuse_stateful, shared_entries)

#: The run's state, by Accounting's state code
STATE_NAMES = (RUNNING, COMPLETED, "STOPPED")
PARK_POLL = 0.1
#: how long the driver waits for the accounting's lock before it asks whether a worker died holding it
LOCK_WAIT = 1.0


def validate(plan, mapping: str) -> None:
    """Refuse stateful PEs before anything runs."""
    refuse_stateful(plan, mapping)
    keep_notices(plan)


class LocalBroker:
    """The broker of dyn_multi (a :class:`~d4p_hpc.mappings.dynamic.loops.DriverBroker`): one queue
    of pickled task lists, one control queue per worker, and the accounting in shared memory,
    changed under one lock.

    A stop signal raised inside a lock's acquire, or a queue's put, would leak that lock: the
    accounting's would then block every process, a queue's hang this one's exit for ever. So each
    call that takes one holds stop signals back (:func:`~d4p_hpc.supervisor.deferred`), once for
    the whole call: each hold swaps the handlers of every stop signal twice.
    """

    def __init__(self, mp: Any, plan, workers: int) -> None:
        #: in the driver: whether a worker has died (set once the workers are started; None in a worker)
        self.gone: Callable[[], bool] | None = None
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
        """Control units first; tasks unless parked (waiting up to 0.2 s for them)."""
        try:
            news = self.ctl[self.proc].get(timeout=PARK_POLL if parked else 0)
            if isinstance(news, tuple):  # ("checkpoint", number)
                return [Unit(CONTROL_QUEUE, [], checkpoint=news[1])]
            return [Unit(CONTROL_QUEUE, [], close=news)]
        except queue.Empty:
            if parked:
                return []
        try:
            payload = self.queue.get(timeout=0.2)
        except queue.Empty:
            return []
        return [Unit(SHARED_QUEUE, pickle.loads(payload))] if payload else []

    def commit(self, unit: Unit | None, outbox: dict, done: dict, seconds: float, close: int | None = None,
               runtime: TaskRuntime | None = None) -> int:
        """Apply the commit to the accounting under the lock, then queue the tasks and close messages."""
        fields = commit_fields(unit, outbox, done, seconds, close, self.node_of.__getitem__, self.proc)
        with supervisor.deferred():
            with self._locked():
                step = self.books.commit(**fields)
            if step is None:  # the run has ended: nothing more to queue
                self._wake(ended=True)
                return self.books.backlog()
            done, busy = self.books.values[1], self.books.values[2]
            for entry in shared_entries(outbox, self.workers, self.node_of.__getitem__,
                                        runtime.known_costs({}) if runtime else {}, busy / done if done else None):
                for payload in pack(entry):
                    self.queue.put(payload)
            for index in step.closing:
                for proc in range(1, self.workers + 1):
                    self.ctl[proc].put(index)
            if step.closing or step.completed:
                self._wake(ended=step.completed)
        return step.backlog

    def _wake(self, ended: bool) -> None:
        """Wake the workers waiting for a task now, not at their next timeout; and the driver, if the
        run has ended. (The caller holds stop signals back.)"""
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
        """RUNNING, COMPLETED or STOPPED, from the shared accounting."""
        return STATE_NAMES[self.books.state]

    def stop(self, state: str, error: dict | None = None) -> bool:
        """End a RUNNING run; ``state`` and ``error`` are not kept: every process records its own outcome."""
        with supervisor.deferred():
            try:
                with self._locked():
                    stopped = self.books.stop()
            except Aborted:  # the lock died with a worker: the run ends all the same, and nobody else writes
                stopped = self.books.stop()
            self._ended()
        return stopped

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The accounting's lock. A worker SIGKILLed while it held it never gives it back (a kill is the
        one stop that cannot be held back): the driver, waiting, asks every :data:`LOCK_WAIT` seconds
        whether a worker has died, and then raises :class:`Aborted` rather than wait for ever (the
        workers left waiting are stopped by the driver's end)."""
        while not self.lock.acquire(timeout=LOCK_WAIT):
            if self.gone is not None and self.gone():
                raise Aborted()
        try:
            yield
        finally:
            self.lock.release()

    def on_stop(self, outcome: Outcome) -> None:
        """``run_process``'s ``on_stop``: a process that stops, stops the run."""
        self.stop(outcome.state, outcome.error)

    def active(self) -> bool:
        """Whether this worker is in the pool (workers 1 to the pool size are)."""
        return self.proc <= self.pool.value

    def backlog(self) -> int:
        """Tasks queued and not finished."""
        return self.books.backlog()

    def load(self) -> tuple[int, int, float]:
        """``(backlog, tasks done, busy seconds)``."""
        return self.books.load()

    def pending(self, index: int) -> int:
        """Tasks of PE ``index`` queued or running (read without the lock: a driver that no longer
        queues any for it sees the count only fall)."""
        return self.books.pending[index]

    def set_pool(self, n: int) -> None:
        """Let workers 1 to ``n`` work."""
        self.pool.value = n

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds`` on the wake-up pipe, which gets a byte when the run ends."""
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
    outcome = run_process(ctx, proc, None, on_stop=broker.on_stop, hold=ctx.hold_for_driver,
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

    def gone() -> bool:
        return any(c.exitcode not in (None, 0) for c in children)

    broker.gone = gone

    def watch() -> None:
        if gone():
            raise Aborted()

    drivers = []
    hold = driver_hold(ctx)

    def make_driver(sink) -> Driver:
        drivers.append(Driver(ctx, TaskRuntime(ctx.plan, 0, sink, chain=False, restored=ctx.restored), broker,
                              scaler, watch))
        return hold.made(drivers[0]) if hold is not None else drivers[0]

    try:
        for child in children:
            child.start()
        supervisor.raise_on_signals(hold=hold)  # stop signals are held since begin(), and in the workers too
        driver_outcome = run_process(ctx, 0, None, on_stop=broker.on_stop, make_runtime=make_driver, hold=hold)
    except supervisor.Interrupted as stop:  # before the driver's run began
        driver_outcome = Outcome(stop.state, stop.signum)
    finally:
        if broker.state() != COMPLETED:
            broker.stop("CANCELLED")
        join_workers(children)
        broker.close()
    extra = drivers[0].metrics() if drivers else {}
    return end(ctx, t0, final_outcome(ctx, driver_outcome, died(children, ctx.results)), extra)
