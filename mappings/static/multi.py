"""``multi``: a fixed set of forked processes, each hosting the PE instances the plan places on it.

Each process has one bounded inbox queue; a full inbox blocks its senders,
which is the backpressure that keeps memory bounded. The parent hosts no PE:
it supervises (``simple`` too: one process, with no queue). When a process
fails, or the parent is signalled, the others get SIGTERM, flush their outputs
and write their metrics before exiting. A process that ends without a word
(``os._exit`` in a PE, a crash in native code, the OOM killer) fails the run,
naming the PE that called ``os._exit`` (see :func:`~d4p_hpc.mappings.runtime.hosting.show_calls`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import queue
import sys
import time
from typing import Any

from d4p_hpc import supervisor
from d4p_hpc.mappings.checkpoint.snapshots import FINAL_WAIT
from d4p_hpc.mappings.runtime.hosting import show_calls
from d4p_hpc.mappings.runtime.process import die_with_parent
from d4p_hpc.mappings.runtime.runner import (Outcome, RunContext, begin, combine, death, end, read_parts, run_process)

INBOX_BATCHES = 8


# Waits are cut into slices: a signal may be delivered to a queue's feeder thread, and only a
# main thread that comes back to Python code runs the handler that stops it.
WAIT_SLICE = 0.5


class QueueTransport:
    """Batches between forked processes through one bounded queue per process."""

    def __init__(self, queues: list, proc: int) -> None:
        self.queues = queues
        self.inbox = queues[proc]

    def send(self, proc: int, payload: bytes, block: bool = True) -> bool:
        while True:
            try:
                self.queues[proc].put(payload, block, WAIT_SLICE if block else None)
                return True
            except queue.Full:
                if not block:
                    return False

    def recv(self, block: bool, timeout: float | None = None) -> bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                wait = WAIT_SLICE if deadline is None else max(0.0, min(WAIT_SLICE, deadline - time.monotonic()))
                return self.inbox.get(block, wait if block else None)
            except queue.Empty:
                if not block or (deadline is not None and time.monotonic() >= deadline):
                    return None


def _child(ctx: RunContext, proc: int, queues: list | None, parent: int, exits: Any) -> None:
    die_with_parent(parent)
    show_calls(exits)
    outcome = run_process(ctx, proc, QueueTransport(queues, proc) if queues else None)
    if outcome.state != "COMPLETED":
        # outputs and metrics are written. A peer may never read what is left in our queues, and
        # a signal may have cut a queue operation short: leave without multiprocessing's exit
        # handlers, which could wait on either for ever.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(outcome.exit_code)
    sys.exit(0)


def run(ctx: RunContext) -> dict:
    """Run the graph on ``ctx.processes`` forked processes; return the final run record."""
    t0 = begin(ctx)
    used = max(ctx.plan.placement) + 1
    mp = multiprocessing.get_context("fork")
    queues = [mp.Queue(maxsize=INBOX_BATCHES) for _ in range(used)] if used > 1 else None
    exits = [mp.RawValue("i", -1) for _ in range(used)]  # the PE that ended each with os._exit
    children = [mp.Process(target=_child, args=(ctx, p, queues, os.getpid(), exits[p]), name=f"d4p-{p}")
                for p in range(used)]
    stopped = None
    passed_on: int | None = None  # the stop signal the children still have to get from us

    def checkpoint_then_stop(signum: int) -> None:
        # checkpoints on: the children take one and then stop by themselves
        for child in children:
            if child.pid is not None:
                os.kill(child.pid, signum)

    try:
        for child in children:
            child.start()
        # stop signals are held since begin(): one that came meanwhile reaches every child now
        supervisor.raise_on_signals(hold=checkpoint_then_stop if ctx.checkpoints else None)
        stopped = _supervise(children, ctx.checkpoints)
    except supervisor.Interrupted as stop:
        stopped = Outcome(stop.state, stop.signum)
        passed_on = stop.signum
    finally:
        supervisor.ignore_signals()  # the children are finishing; a second Ctrl-C must not orphan them
        # after a normal end every child has exited already: the grace only bounds a stop; one stuck
        # after it is killed (what it flushed is kept), as none may outlive the run
        supervisor.stop(children, signum=passed_on)
    return end(ctx, t0, _outcome(ctx, children, stopped, [cell.value for cell in exits]))


def _supervise(children: list, checkpoints: bool) -> Outcome | None:
    """Wait for the children; on the first abnormal exit, stop the rest (but for a stop after the
    last checkpoint, which the others take part in and then stop after by themselves)."""
    alive = {c.sentinel: c for c in children}
    timeout = supervisor.exit_code(supervisor.WALLTIME)
    deadline = None  # once one has stopped after the last checkpoint: how long the others get for it
    while alive:
        ready = multiprocessing.connection.wait(list(alive), None if deadline is None else
                                                max(0.0, deadline - time.monotonic()))
        if not ready:
            supervisor.stop(children)
            return None
        for sentinel in ready:
            child = alive.pop(sentinel)
            child.join()
            if checkpoints and child.exitcode == timeout:
                deadline = deadline or time.monotonic() + FINAL_WAIT + supervisor.GRACE_SECONDS
            elif child.exitcode != 0:
                supervisor.stop(children)
                return None
    return None


def _outcome(ctx: RunContext, children: list, stopped: Outcome | None, running: list[int]) -> Outcome:
    """The run's outcome, from the processes' parts and exit codes (``running``: the index of the PE
    that ended each with ``os._exit``, -1 for none)."""
    parts = {p["process"]: p for p in read_parts(ctx)}
    outcomes = [Outcome(p["state"], p.get("signum"), p.get("error")) for p in parts.values()]
    if stopped is not None:
        outcomes.insert(0, stopped)
    # after the parts: a PE's own error, when there is one, is the cause to report
    for proc, child in enumerate(children):
        why = death(f"process {proc}", child.pid, child.exitcode, ctx.results)
        if why is None and proc in parts:
            continue
        state, signum = supervisor.classify(child.exitcode)
        if why is None and signum is not None:
            # a stop signal ended it before it could record that (or before it began): a stop, no failure
            outcomes.append(Outcome(state, signum))
            continue
        why = why or f"process {proc} (pid {child.pid}) exited with code {child.exitcode} without recording how"
        pe = ctx.plan.pes[running[proc]].key if running[proc] >= 0 else None
        if pe is not None:
            why += f": PE {pe} called os._exit"
        outcomes.append(Outcome("FAILED", None, {"pe": pe, "process": proc, "traceback": why}))
    # children stopped by our own SIGTERM after a peer failed report CANCELLED: the failure is the cause
    return combine(outcomes)
