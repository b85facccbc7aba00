"""The driver and worker loops shared by dyn_multi and the Redis mappings, and their broker contract.

Both talk to a *broker* (a local queue for dyn_multi, Redis streams for the
others): a worker through :class:`Broker`, the driver through
:class:`DriverBroker`, Protocols that mypy checks both brokers against; their
docstrings say what each call must guarantee.

The accounting, in the same atomic step as each commit (specified by
:class:`~d4p_hpc.mappings.dynamic.accounting.Accounting`): per PE, the tasks
queued and not finished. A PE whose upstream PEs are all done and which has
none left gets no more: the workers postprocess their copies of it (stateful
instances: after their last item), and then it is done. The driver closes the
roots after feeding them; the run is COMPLETED when every PE is done. No idle
timeout is involved, so a PE that takes minutes per item cannot end the run early.

A root's calls are spread over the workers when the root is found stateless: the driver
makes its first :data:`~d4p_hpc.mappings.runtime.spread.PROBE_CALLS` calls itself, comparing the PE's state
(:func:`~d4p_hpc.mappings.checkpoint.pe_state.fingerprint`) before and after each; if none
changed it, every later call is a task any worker runs
(:data:`~d4p_hpc.mappings.dynamic.tasks.ROOT_CALL`), in entries of about
:data:`~d4p_hpc.mappings.dynamic.tasks.SLOW_UNIT` of work by the calls' measured time, so slow
calls spread one by one. A root whose state changed, cannot be pickled, or that says
``stateful = True`` is called in the driver, in order, as before. The driver closes a spread
root once none of its calls is queued or running, and runs ``postprocess`` on its own copy
only: the workers' copies, which calls did not change, hold the same state. What no
fingerprint sees is state outside the PE object (a module-level iterator or counter): such a
root must say ``stateful = True``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

from d4p_hpc import settings, supervisor
from d4p_hpc.mappings.checkpoint import pe_state, store
from d4p_hpc.mappings.dynamic.autoscale import TICK, Autoscaler
from d4p_hpc.mappings.runtime import replay
from d4p_hpc.mappings.runtime.core import root_feed
from d4p_hpc.mappings.runtime.hosting import Instance
from d4p_hpc.mappings.runtime.process import Aborted
from d4p_hpc.mappings.runtime.runner import Outcome, RunContext, death, read_parts
from d4p_hpc.mappings.runtime.spread import PROBE_CALLS
from d4p_hpc.supervisor import STOPS, WALLTIME, Interrupted
from d4p_hpc.mappings.dynamic.tasks import ENTRY_TASKS, SHARED_QUEUE, SLOW_UNIT, TaskRuntime

RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
READ_COUNT = 8
FLUSH_SECONDS = 0.02
#: checkpoints: how often the driver looks whether the run has quiesced, and whether the workers'
#: parts are written; how long it waits for those before it gives the checkpoint up
QUIESCE_POLL = 0.005
PART_WAIT = 30.0
#: checkpoints on: the driver queues no more work than the pool does in this long (see Driver._limit)
QUIESCE_SECONDS = 2.0
#: ... but at least this many per worker: fewer would starve some (a worker reads a few at once)
QUIESCE_TASKS = 4


def max_backlog(workers: int) -> int:
    """Tasks the driver lets wait before it pauses feeding (``$D4P_HPC_MAX_BACKLOG`` overrides)."""
    return settings.max_backlog() or 2 * READ_COUNT * ENTRY_TASKS * max(1, workers)


@dataclass
class Unit:
    """One piece of work: tasks from the shared queue (``gid == SHARED_QUEUE``), items for owned
    instance ``gid`` (``eos``: its end of stream), or (``gid == CONTROL_QUEUE``) closing stateless
    PE ``close``."""

    gid: int
    items: list
    ref: Any = None
    eos: bool = False
    close: int | None = None
    #: (``gid == CONTROL_QUEUE``) write this worker's part of checkpoint number ``checkpoint``
    checkpoint: int | None = None


class Broker(Protocol):
    """What a worker's loop needs of its broker, and what ends a run from any process."""

    def take(self, parked: bool) -> list[Unit]:
        """Units to run. Blocks until some come or the broker has a duty of its own (then it may
        return none); never busy-waits. While ``parked``, only this worker's control units (close a
        PE, write a checkpoint part), no tasks: a parked worker must still close every PE."""

    def commit(self, unit: Unit | None, outbox: dict, done: dict, seconds: float, close: int | None = None,
               runtime: TaskRuntime | None = None) -> int:
        """Atomically: acknowledge ``unit`` (None: the driver's commit), queue what it wrote
        (``outbox``, by queue; its shared tasks in entries by what their PEs cost, as ``runtime``, the
        worker's, measured), count its tasks finished per PE index (``done``, in ``seconds``) and
        the new ones, close root PE ``close``, then take the accounting's step, telling the workers
        of PEs that now close and the instances of their end of stream. A unit counts once or not at
        all. Returns the backlog (tasks and items queued and not finished); once the run has ended,
        changes nothing."""

    def state(self) -> str:
        """RUNNING, COMPLETED, or anything else for a run that stops. A worker may see it late, but
        soon enough that a unit under way stops between two tasks."""

    def active(self) -> bool:
        """False while autoscaling has parked this worker."""

    def stop(self, state: str, error: dict | None = None) -> bool:
        """End a RUNNING run as ``state`` (FAILED, CANCELLED, TIMEOUT), keeping the first ``error``,
        and tell every process: the driver at once (its ``wait`` returns), the workers by their next
        :meth:`take`. False, changing nothing, once the run has ended (a stop never undoes completion)."""


class DriverBroker(Broker, Protocol):
    """What the driver (process 0) needs of its broker besides."""

    def backlog(self) -> int:
        """Tasks and items queued and not finished, read now."""

    def load(self) -> tuple[int, int, float]:
        """``(backlog, tasks done, busy seconds)`` over the run so far, for autoscaling."""

    def set_pool(self, n: int) -> None:
        """Let ``n`` workers work; the others park (see :meth:`Broker.take`) until the pool grows."""

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, returning as soon as the run has ended."""

    def request_checkpoint(self, seq: int) -> list[int]:
        """Ask every worker, through its control queue, to write its part of checkpoint ``seq`` (the
        driver has quiesced the run); return their numbers."""

    def pending(self, index: int) -> int:
        """Tasks of PE ``index`` queued or running, read now."""


class WorkerLoop:
    """A worker: run units until the run ends (the object ``run_process`` drives)."""

    def __init__(self, runtime: TaskRuntime, broker: Broker) -> None:
        self.runtime = runtime
        self.broker = broker

    def run(self) -> None:
        """Take, run and commit units until the run completes; raise :class:`Aborted` if it stops."""
        runtime, broker = self.runtime, self.broker
        while True:
            state = broker.state()
            if state == COMPLETED:
                break
            if state != RUNNING:
                raise Aborted()
            for unit in broker.take(parked=not broker.active()):
                if unit.checkpoint is not None:
                    # the driver has quiesced the run: nothing runs, nothing is queued
                    store.write_part(runtime.sink.results, unit.checkpoint, runtime.proc, runtime.saved())
                    continue
                t = time.perf_counter()
                done = {}
                if unit.gid == SHARED_QUEUE:
                    done = runtime.run_tasks(unit.items, self._check)
                elif unit.close is not None:  # from the control queue
                    runtime.close(unit.close)
                elif unit.eos:
                    runtime.finish(runtime.owned[unit.gid])
                else:
                    runtime.run_items(unit.gid, unit.items, self._check)
                broker.commit(unit, runtime.take_outbox(), done, time.perf_counter() - t, runtime=runtime)
                if broker.state() != RUNNING:
                    break

    def _check(self) -> None:
        # between two tasks of a unit: a run that stopped is not worth finishing the unit for
        if self.broker.state() != RUNNING:
            raise Aborted()

    def stats(self) -> list[dict]:
        """Per-instance statistics of the PE copies this worker ran (for the metrics)."""
        return self.runtime.stats()


class Driver:
    """Process 0: feeds the root PEs, then supervises until the run ends.

    Parameters
    ----------
    ctx
        The run.
    runtime
        A non-chaining :class:`TaskRuntime` hosting the roots.
    broker
        Its :class:`DriverBroker`.
    scaler
        The autoscaler of dyn_auto_* mappings, or None for a fixed pool.
    watch
        Called every tick; raises (e.g. :class:`Aborted`) when workers died.
    """

    def __init__(self, ctx: RunContext, runtime: TaskRuntime, broker: DriverBroker, scaler: Autoscaler | None = None,
                 watch: Callable[[], None] | None = None) -> None:
        self.ctx = ctx
        self.runtime = runtime
        self.broker = broker
        self.scaler = scaler
        self.watch = watch
        self.limit = max_backlog(ctx.processes)
        self.peak = 0
        self._next_tick = 0.0
        self._last_send = time.monotonic()
        self.fed: dict[int, int] = {}
        #: checkpoints on: the walltime signal came (take one, then stop), and when the next is due
        self.stop_signal: int | None = None
        every = ctx.options.get("checkpoint_every")
        self.next_checkpoint = time.monotonic() + every if every else float("inf")
        self.seq = ctx.restored.seq if ctx.restored is not None else 0
        #: a PE has been closed: state and accounting could no longer be saved apart, no checkpoint after
        self.closing = False
        self._started = self._rate_at = time.monotonic()
        self._quiesce_limit = QUIESCE_TASKS * ctx.processes
        #: the roots whose calls were spread over the workers (for the metrics)
        self.spread: list[str] = []

    def request_stop(self, signum: int) -> None:
        """The walltime signal's handler (checkpoints on)."""
        self.stop_signal = signum

    def run(self) -> None:
        """Feed and close every root, then supervise until the run completes; raise if it stops."""
        # from inside write(): a root that writes a whole file in one call is shipped as it goes,
        # and may be checkpointed there (see the replay module)
        self.runtime.on_queued = self._ship
        if self.ctx.checkpoints:
            self.runtime.on_write = self._write_point
        restored = self.ctx.restored
        spread = []
        for root in self.ctx.plan.roots():
            inst = self.runtime.copy_of(root.index)
            gid = root.first_gid
            self.fed[gid] = restored.fed(gid) if restored is not None else 0
            inst.replay = replay.pending(restored, gid) if restored is not None else None
            if self._feed(inst):
                spread.append(inst)
            else:
                self._close(inst)
        for inst in spread:
            self._drain(inst.node.index)
            self._close(inst)
        while self._check():
            # the run's end wakes the wait at once: until the next tick there is nothing else to do
            self.broker.wait(max(0.0, self._next_tick - time.monotonic()))

    def _feed(self, inst: Instance) -> bool:
        """Make every call of root ``inst``: the first ones here, and, once it has been found
        stateless, the others as tasks for the workers (see the module's docstring). Whether it was."""
        gid, node = inst.gid, inst.node
        probing = self.ctx.processes > 1 and not self.ctx.plan.stateful(node)
        probed, entry, slowest, spread = 0, ENTRY_TASKS, 0.0, 0
        after: bytes | None = None
        for item in root_feed(self.ctx.feeds.get(node.index, 0), self.fed[gid]):
            if probed == PROBE_CALLS:
                self.runtime.queue_call(gid, item)
                self.fed[gid] += 1
                spread += 1
                if entry < ENTRY_TASKS and self.runtime.queued >= entry:  # slow calls: entries of their own
                    self._send()
                else:
                    self._ship()
                self._write_point()
                continue
            # (a call that left the state as it was: its state after is the next one's before)
            before = (after or pe_state.fingerprint(inst.pe)) if probing else None
            started = time.perf_counter()
            self.runtime.feed(inst, item)
            slowest = max(slowest, time.perf_counter() - started)
            self.fed[gid] += 1
            after = pe_state.fingerprint(inst.pe) if before is not None else None
            if before is not None and after == before:
                probed += 1
                # entries of about SLOW_UNIT of work by the slowest call seen: slow calls one by one
                entry = max(1, min(ENTRY_TASKS, int(SLOW_UNIT / slowest) if slowest else ENTRY_TASKS))
            else:
                probing = False
            self._ship()  # also for calls that write nothing: the watch and the autoscaler tick
            self._write_point()
        if spread:
            self.spread.append(node.key)
        return spread > 0

    def _drain(self, index: int) -> None:
        """Wait until no call of spread root ``index`` is queued or running (a checkpoint may be due
        meanwhile)."""
        self._send()
        self._hold(lambda: self.broker.pending(index) > 0, self._write_point)

    def _close(self, inst: Instance) -> None:
        """Postprocess root ``inst`` and tell the accounting it gets no more input."""
        self.runtime.finish(inst)
        self.closing = True
        self._send(close=inst.node.index)

    def _ship(self) -> None:
        """Send the outbox once it holds two entries per worker, or when the last send was a while ago."""
        if self.runtime.queued >= min(2 * ENTRY_TASKS * self.ctx.processes, self._limit()) or \
                time.monotonic() - self._last_send > FLUSH_SECONDS:
            self._send()

    def _write_point(self) -> None:
        """Between root calls, or at a write of a recorded one: take a checkpoint if one is due."""
        if self.ctx.checkpoints and (self.stop_signal or time.monotonic() >= self.next_checkpoint):
            self._checkpoint(final=self.stop_signal is not None)

    def _send(self, close: int | None = None) -> None:
        backlog = self.broker.commit(None, self.runtime.take_outbox(), {}, 0.0, close=close)
        self._last_send = time.monotonic()
        self.peak = max(self.peak, backlog)
        self._check()
        # backpressure: a fast producer waits for the pool, so queues (and Redis) stay small
        limit = self._limit()
        if backlog > limit:
            self._hold(lambda: self.broker.backlog() > limit)

    def _hold(self, busy: Callable[[], bool], between: Callable[[], None] | None = None) -> None:
        """Wait while ``busy()`` and the run goes on, sleeping from 2 ms, doubling up to 50 ms, and
        calling ``between`` after each sleep. The root's call (if one is under way) is blocked
        meanwhile, not busy."""
        delay = 0.002
        with self.runtime.blocked():
            while busy() and self._check():
                time.sleep(delay)
                delay = min(0.05, delay * 2)
                if between is not None:
                    between()

    def _limit(self) -> int:
        """The backlog limit; with checkpoints on, no more than the pool does in
        :data:`QUIESCE_SECONDS`, so that a checkpoint quiesces the run that fast."""
        if not self.ctx.checkpoints:
            return self.limit
        now = time.monotonic()
        if now >= self._rate_at:
            self._rate_at = now + TICK
            done = self.broker.load()[1]
            rate = done / max(TICK, now - self._started)
            self._quiesce_limit = int(min(self.limit, max(QUIESCE_TASKS * self.ctx.processes, rate * QUIESCE_SECONDS)))
        return self._quiesce_limit

    def _checkpoint(self, final: bool) -> None:
        """Quiesce (feed nothing until no task is queued or running), have every worker write its
        part, write ours, complete the checkpoint; after one taken at the walltime signal, stop."""
        started = time.monotonic()
        self._send()
        with self.runtime.blocked():
            while self.broker.backlog() > 0 and self._check():
                time.sleep(QUIESCE_POLL)
        self.seq += 1
        workers = self.broker.request_checkpoint(self.seq)
        deadline = time.monotonic() + PART_WAIT
        while store.parts_written(self.ctx.results, self.seq) < len(workers) and self._check():
            if time.monotonic() > deadline:  # a worker died meanwhile: the next checkpoint may do
                print(f"checkpoint {self.seq} abandoned: not every worker wrote its part in {PART_WAIT:g} s",
                      flush=True)
                self._next()
                return
            time.sleep(QUIESCE_POLL)
        runtime = self.runtime
        store.write_part(self.ctx.results, self.seq, 0, {**runtime.saved(), "fed": dict(self.fed)})
        seconds = round(time.monotonic() - started, 4)
        store.write_manifest(self.ctx.results, self.seq, {"identity": self.ctx.identity(),
                                                         "seconds": seconds, "in_flight": 0, "final": final,
                                                         "workers": workers})
        self._next()
        if final:
            raise Interrupted(STOPS[WALLTIME], WALLTIME)

    def _next(self) -> None:
        every = self.ctx.options.get("checkpoint_every")
        self.next_checkpoint = time.monotonic() + every if every else float("inf")

    def _check(self) -> bool:
        """True while the run goes on; ticks the autoscaler and the watch; raises if it stopped."""
        if self.stop_signal is not None and self.closing:  # too late for a checkpoint: stop now
            raise Interrupted(STOPS[WALLTIME], WALLTIME)
        state = self.broker.state()
        if state == COMPLETED:
            return False
        if state != RUNNING:
            raise Aborted()
        now = time.monotonic()
        if now >= self._next_tick:
            self._next_tick = now + TICK
            if self.scaler is not None:
                self.broker.set_pool(self.scaler.update(time.time(), *self.broker.load()))
            if self.watch is not None:
                self.watch()
        return True

    def stats(self) -> list[dict]:
        """Per-instance statistics of the roots (for the metrics)."""
        return self.runtime.stats()

    def gauges(self) -> dict:
        """For the sampler (another thread): the backlog, and the pool size and live workers where known."""
        found = {"backlog": self.broker.backlog()}
        if self.scaler is not None:
            found["pool"] = self.scaler.size
        live = getattr(self.broker, "live_workers", None)  # Redis: workers may join from any node
        if live is not None:
            found["workers"] = len(live())
        return found

    def metrics(self) -> dict:
        """The mapping's own metrics: the largest backlog the driver queued onto, the backpressure
        limit, the roots whose calls were spread, and the pool size over time (dyn_auto_*)."""
        extra: dict[str, Any] = {"backlog_peak": self.peak, "backlog_limit": self.limit, "roots_spread": self.spread}
        if self.scaler is not None:
            extra.update(self.scaler.metrics(time.time()))
        return extra


class DriverHold:
    """The driver's ``hold`` for the walltime signal (checkpoints on): its next checkpoint is the last.
    The signal may come while the workers are forked, before the driver is made: it is kept for it."""

    def __init__(self) -> None:
        self.driver: Driver | None = None
        self.signum: int | None = None

    def __call__(self, signum: int) -> None:
        self.signum = signum
        if self.driver is not None:
            self.driver.request_stop(signum)

    def made(self, driver: Driver) -> Driver:
        """``driver`` is made: it gets the signal, if one came; return it."""
        self.driver = driver
        if self.signum is not None:
            driver.request_stop(self.signum)
        return driver


def driver_hold(ctx: RunContext) -> DriverHold | None:
    """The driver's hold, if checkpoints are on (else the walltime signal stops the run at once)."""
    return DriverHold() if ctx.checkpoints else None


def join_workers(children: list, grace: float = supervisor.GRACE_SECONDS) -> None:
    """Wait for forked workers to leave; after ``grace`` seconds (a PE stuck in a long call) SIGTERM
    them, and SIGKILL what is left 5 s later, so that none outlives the run."""
    supervisor.stop(children, grace=5.0, patience=grace)


def died(children: list, results: Path) -> list[dict]:
    """Errors for forked workers that died (not by exiting after their own failure or a stop)."""
    return [{"pe": None, "process": proc, "traceback": why} for proc, c in enumerate(children, 1)
            if (why := death(f"worker {proc}", c.pid, c.exitcode, results))]


def final_outcome(ctx: RunContext, driver: Outcome, errors: list[dict]) -> Outcome:
    """The run's outcome: the driver's PE failure, else a worker's (from its metrics part), else one of
    ``errors`` (e.g. a worker that died), else, when the driver only saw the run stop (FAILED, no error of
    its own), the signal a worker was stopped by (a SIGTERM sent to it alone: CANCELLED, as under the
    static mappings), else the driver's own state."""
    if driver.error:
        return driver
    parts = [p for p in read_parts(ctx) if p["process"] != 0]
    found = [p["error"] for p in parts if p.get("error")] + errors
    if found:
        return Outcome("FAILED", None, found[0])
    signalled = [p for p in parts if p.get("signum") and p.get("state") in supervisor.STOPS.values()]
    if driver.state == "FAILED" and signalled:
        return Outcome(signalled[0]["state"], signalled[0]["signum"])
    return driver
