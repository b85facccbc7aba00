"""The routing and termination core shared by every mapping.

One :class:`Runtime` runs in each process (or MPI rank) and hosts the PE
instances the plan places there. Data for an instance in the same process is
handed over by a direct call (depth first, so memory stays bounded however
many items one ``process`` call writes; past :data:`MAX_DEPTH` nested
deliveries, a long chain of PEs, what a call writes is delivered as soon as
the call returns instead, so the stack stays bounded too); data for another
process is put in a per-destination outbox and sent as one pickled batch
(protocol 5) when the box is full, or before the process would wait for input.
Time spent waiting for room there (backpressure) is charged to the writing
instance as blocked, not busy.

Termination is end-of-stream accounting, never an idle timeout: when an
instance has finished (roots: after their last input; others: after
``postprocess``) it sends one end-of-stream marker to every instance of every
downstream PE, after its data on the same ordered channel. An instance runs
``postprocess`` exactly once, when it has the markers of all its upstream
instances.

With checkpoints on, the Runtime delegates receiving, and its part in taking
them, to its :class:`Checkpoints` (the static mappings':
:class:`~d4p_hpc.mappings.checkpoint.snapshots.ChandyLamport`), which may
also take one inside a long root call, at one of its writes (see
:mod:`~d4p_hpc.mappings.runtime.replay`).
"""

from __future__ import annotations

import pickle
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from d4p_hpc.mappings.checkpoint.pe_state import restore
from d4p_hpc.mappings.checkpoint.store import Restored
from d4p_hpc.mappings.runtime import hosting, replay
from d4p_hpc.mappings.runtime.hosting import Instance, Route, Writer, make_logger, pe_copy
from d4p_hpc.mappings.runtime.plan import Plan
from d4p_hpc.mappings.runtime.process import Aborted, PEFailed
from d4p_hpc.mappings.runtime.sink import Sink
from d4p_hpc.mappings.runtime.spread import ROOT_CALL, Spread, Unchanged, silenced
from d4p_hpc.supervisor import Interrupted
from d4p_hpc.workflow import WRITER

BATCH_ITEMS = 256
BATCH_BYTES = 4 << 20
# a partly filled batch leaves after this long, so slow PEs do not hold their outputs back
BATCH_SECONDS = 0.2
#: nested local deliveries (PE calls) before what a call writes waits for the call to return: each
#: costs ~8 Python frames, and Python allows 1000
MAX_DEPTH = 40


class Transport(Protocol):
    """Moves pickled batches between the processes of one run, in order per pair of processes."""

    def send(self, proc: int, payload: bytes, block: bool = True) -> bool:
        """Send to process ``proc``; may block while the receiver is behind (backpressure), or, if
        ``block`` is False, return False instead (nothing sent)."""

    def recv(self, block: bool, timeout: float | None = None) -> bytes | bytearray | None:
        """Next batch for this process; None if ``block`` is False and nothing is waiting, or if
        nothing came within ``timeout`` seconds."""


class Checkpoints(Protocol):
    """What a :class:`Runtime` delegates to with checkpoints on: receiving (through items read
    ahead, so that a checkpoint's marker is in reach), and its part in taking them."""

    #: items received and not yet processed; a resumed run puts the checkpoint's items in flight here
    inbox: deque[tuple]

    def drain(self, block: bool) -> None:
        """Process what has arrived; with ``block``, wait a little for more (:meth:`Runtime.run`'s wait)."""

    def send_controls(self, proc: int, block: bool) -> None:
        """Send the control entries queued for ``proc``: before a batch to it, which comes after them."""

    def due(self) -> bool:
        """Whether a checkpoint is due: a root stops feeding to reach a clean point."""

    def at_clean_point(self) -> None:
        """No PE call is under way: begin a checkpoint that is due, or stop after the last one."""

    def at_write_point(self) -> None:
        """Only a recorded root call is under way, and everything its writes so far reached
        here has been processed: as :meth:`at_clean_point`, and see what has arrived."""

    def stay_for_peers(self) -> None:
        """Every local instance has finished: take part in the checkpoints others begin until all have."""


def root_feed(spec: int | list, consumed: int = 0) -> Iterable[Any]:
    """The inputs a root PE's ``process`` is called with: ``{}`` N times, or each given item;
    without the first ``consumed`` (taken before the checkpoint a run resumes from)."""
    if isinstance(spec, int):
        return ({} for _ in range(max(0, spec - consumed)))
    return iter(spec[consumed:])


class Runtime:
    """Runs the PE instances the plan places on process ``proc``."""

    def __init__(self, plan: Plan, proc: int, sink: Sink, transport: Transport | None,
                 feeds: dict[int, int | list], copy_pe: Callable[[Any], Any],
                 gids: Iterable[int] | None = None, restored: Restored | None = None) -> None:
        self.plan = plan
        self.restored = restored
        #: inputs each local root has consumed
        self.fed: dict[int, int] = {}
        #: with checkpoints on: what receives, and takes this process's part in them (set before :meth:`run`)
        self.checkpoints: Checkpoints | None = None
        self.proc = proc
        self.sink = sink
        self.transport = transport
        self.feeds = feeds
        self.local: dict[int, Instance] = {}
        self.outbox: dict[int, list] = {}
        self.outbytes: dict[int, int] = {}
        #: the instance whose call is under way (the innermost)
        self.owner: Instance | None = None
        hosting.runtime_here = self
        self._t = time.perf_counter()
        self._oldest = 0.0  # when the oldest item now in an outbox was put there
        self._depth = 0  # PE calls under way inside the one a root's item started (local deliveries, postprocess)
        #: local deliveries waiting for the call at MAX_DEPTH that wrote them to return
        self._deferred: deque[tuple[Instance, str | None, Any]] = deque()
        #: a root's first instance here that hands its calls to the others (see :mod:`~.spread`)
        self.spreads: dict[int, Spread] = {}
        #: a root's other instances here, and the watch on each once it has been handed a call
        self.helpers: dict[int, Unchanged | None] = {}
        seen: set[int] = set()
        for gid in plan.local_gids(proc) if gids is None else gids:
            node = plan.pe_of(gid)
            # the plan's PE object is a template: a second instance in the same process needs its own copy
            pe = pe_copy(node, copy_pe, "for a second instance in one process", "; or give the run more processes") \
                if node.index in seen else node.pe
            seen.add(node.index)
            eos = plan.expected_eos(node.index)
            if not eos and gid != node.first_gid:
                eos = 1  # a root's other instance: its calls, then their end, come from its first
                self.helpers[gid] = None
            self.local[gid] = Instance(gid, node, pe, eos)
        for inst in self.local.values():
            self._wire(inst)

    def _wire(self, inst: Instance) -> None:
        pe = inst.pe
        for output in inst.node.outputs:
            pe.outputconnections[output][WRITER] = Writer(self, inst, output)
            inst.routes[output] = [Route(c.input, self.plan.pes[c.dst].gids, c.grouping, inst.index)
                                   for c in self.plan.outgoing(inst.node.index, output)]
        pe.log = make_logger(pe, f"process {self.proc}")
        pe.rank = self.proc

    # --- running PE code -----------------------------------------------------------------------
    def _call(self, inst: Instance, fn: Callable, *args: Any) -> Any:
        # busy time is charged to the innermost PE: a local delivery runs inside its sender's call
        now = time.perf_counter()
        prev = self.owner
        if prev is not None:
            prev.busy += now - self._t
        self.owner = inst
        self._t = now
        try:
            return fn(*args)
        except (PEFailed, Interrupted, Aborted):
            raise
        except BaseException:
            raise PEFailed(inst.node.key, traceback.format_exc()) from None
        finally:
            now = time.perf_counter()
            inst.busy += now - self._t
            self.owner = prev
            self._t = now

    @contextmanager
    def blocked(self) -> Iterator[None]:
        """Time in here, waiting for room downstream (backpressure), is blocked time of the
        instance whose call writes, not busy time."""
        start = time.perf_counter()
        owner = self.owner
        if owner is not None:
            owner.busy += start - self._t
        try:
            yield
        finally:
            self._t = time.perf_counter()
            if owner is not None:
                owner.blocked_seconds += self._t - start

    def feed(self, inst: Instance, inputs: Any) -> None:
        """Call root ``inst`` once. With checkpoints on, a long call is recorded, so that one may
        be taken at its writes (see :mod:`~d4p_hpc.mappings.runtime.replay`); a resumed run
        replays first the call it was taken inside."""
        todo, inst.replay = inst.replay, None
        if todo is not None or (inst.long_calls and self._checkpointing() and self.plan.deterministic(inst.node)):
            inst.call = replay.Call.begin(inst.node.key, inst.pe, todo)
        started = time.perf_counter()
        try:
            self._process(inst, inputs)
            if inst.call is not None:
                inst.call.ended()
        finally:
            inst.call = None
        inst.long_calls = time.perf_counter() - started >= replay.LONG_CALL

    def _checkpointing(self) -> bool:
        """Whether this process takes checkpoints (then long root calls are recorded)."""
        return self.checkpoints is not None

    def _write_point(self) -> None:
        """A recorded root call has written, and all that write reached here has been processed."""
        if self.checkpoints is not None:
            self.checkpoints.at_write_point()

    def _process(self, inst: Instance, inputs: Any) -> None:
        inst.items_in += 1
        result = self._call(inst, inst.pe.process, inputs)
        if result:
            if not isinstance(result, dict):
                raise PEFailed(inst.node.key, f"{type(inst.pe).__name__}.process returned a "
                               f"{type(result).__name__} ({result!r:.60}); return a dict "
                               "{output name: item} or None, or call self.write(output, item)")
            for output, data in result.items():
                self.emit(inst, output, data)
        if self.outbox and self._t - self._oldest > BATCH_SECONDS:
            self.flush_all()

    def _emit_plain(self, inst: Instance, output: str, data: Any) -> None:
        """:meth:`emit` where neither of its checks can apply, which :meth:`run` chooses when it may:
        no checkpoint is taken and no call replayed (so no call is recorded) and the graph's longest chain is shorter
        than :data:`MAX_DEPTH` (so local deliveries cannot nest deeper). The same routing; the checks
        cost about 5 % of a light item."""
        routes = inst.routes.get(output)
        if routes is None:
            raise KeyError(f"PE {inst.node.key} wrote to unknown output {output!r}")
        if not routes:
            self.sink.write(inst.node.key, output, data)
        inst.items_out += 1  # after the write: a stop signal between the two must not count an item unwritten
        for route in routes:
            for gid in route.targets(data):
                target = self.local.get(gid)
                if target is None:
                    self._enqueue(gid, route.input, data)
                else:
                    self._process(target, {route.input: data})

    def emit(self, inst: Instance, output: str, data: Any) -> None:
        """Route one item written by ``inst`` to ``output``."""
        call = inst.call
        if call is not None and call.wrote(output, data):
            return  # a replayed call's write the checkpoint holds already
        routes = inst.routes.get(output)
        if routes is None:
            raise KeyError(f"PE {inst.node.key} wrote to unknown output {output!r}")
        if not routes:
            self.sink.write(inst.node.key, output, data)
        inst.items_out += 1  # after the write: a stop signal between the two must not count an item unwritten
        for route in routes:
            for gid in route.targets(data):
                target = self.local.get(gid)
                if target is None:
                    self._enqueue(gid, route.input, data)
                elif self._depth < MAX_DEPTH and not self._deferred:  # (the usual case, inlined)
                    # delivered inside the call that wrote it: one level deeper
                    self._depth += 1
                    try:
                        self._process(target, {route.input: data})
                    finally:
                        self._depth -= 1
                else:
                    self._local(target, route.input, data)
        if call is not None and call.state is not None:
            self._write_point()

    def _local(self, target: Instance, input_name: str | None, data: Any) -> None:
        """Deliver an item (``input_name`` None: an end-of-stream marker) to a local instance now,
        depth first; past :data:`MAX_DEPTH` nested calls, once the call that wrote it has returned,
        in the order written: the call one level up delivers them, before it goes on."""
        deferred = self._deferred
        deferred.append((target, input_name, data))
        if self._depth >= MAX_DEPTH:
            return
        while deferred:
            target, input_name, data = deferred.popleft()
            if input_name is None:
                self._end_of_stream(target.gid)
                continue
            self._depth += 1
            try:
                if input_name == ROOT_CALL:
                    self._root_call(target, data)
                else:
                    self._process(target, {input_name: data})
            finally:
                self._depth -= 1

    def _enqueue(self, gid: int, input_name: str | None, data: Any) -> None:
        proc = self.plan.placement[gid]
        if not self.outbox:
            self._oldest = self._t
        box = self.outbox.setdefault(proc, [])
        box.append((gid, input_name, data))
        size = self.outbytes.get(proc, 0) + getattr(data, "nbytes", 64)
        self.outbytes[proc] = size
        if len(box) >= BATCH_ITEMS or size >= BATCH_BYTES:
            self._flush(proc)

    def _flush(self, proc: int) -> None:
        box = self.outbox.pop(proc, None)
        self.outbytes.pop(proc, None)
        if box:
            # the sender travels along: a checkpoint records what is in flight per channel
            payload = pickle.dumps((self.proc, box), protocol=5)
            # items are queued only for another process, so a run that has one has a transport
            assert self.transport is not None
            with self.blocked():
                if self.checkpoints is not None:
                    self.checkpoints.send_controls(proc, block=True)  # (they go first: they were sent first)
                self.transport.send(proc, payload)

    def flush_all(self) -> None:
        """Send every partly filled batch (before waiting for input, and at the end)."""
        for proc in list(self.outbox):
            self._flush(proc)

    def handle(self, payload: bytes | bytearray) -> None:
        """Deliver one received batch to the local instances."""
        self.deliver(pickle.loads(payload)[1])

    def deliver(self, box: Iterable[tuple]) -> None:
        """Process received items, and end-of-stream markers, in order."""
        for gid, input_name, data in box:
            if input_name is None:
                self._end_of_stream(gid)
            elif input_name == ROOT_CALL:
                self._root_call(self.local[gid], data)
            else:
                self._process(self.local[gid], {input_name: data})

    def _root_call(self, inst: Instance, inputs: Any) -> None:
        """Make a call of a spread root that its first instance handed to ``inst``, watching its state."""
        watch = self.helpers[inst.gid]
        if watch is None:
            watch = self.helpers[inst.gid] = Unchanged(inst, "its instances")
        self._process(inst, inputs)
        watch.called()

    def _hand(self, gid: int, inputs: Any, now: bool) -> None:
        """Hand a call of a spread root to its instance ``gid``; ``now``: not batched with later ones."""
        target = self.local.get(gid)
        if target is not None:
            self._local(target, ROOT_CALL, inputs)
            return
        self._enqueue(gid, ROOT_CALL, inputs)
        if now:
            self._flush(self.plan.placement[gid])

    def _restore(self) -> None:
        """Start from the checkpoint: states, finished instances, and the items in flight to ours."""
        restored, checkpoints = self.restored, self.checkpoints
        assert restored is not None and checkpoints is not None  # a resumed run takes checkpoints
        for gid, inst in self.local.items():
            saved = restored.instance(gid)
            if saved is None:
                continue
            inst.eos_left, inst.done = saved["eos_left"], saved["done"]
            if not inst.done:
                self._call(inst, restore, inst.pe, saved["state"])
            self.fed[gid] = restored.fed(gid)
            inst.replay = replay.pending(restored, gid)
        # processed as if just read ahead: with checkpoint points and reads in between (the items a slow
        # PE had queued may take minutes), and in flight again should a checkpoint come first
        checkpoints.inbox.extend(restored.in_flight(set(self.local)))

    # --- end-of-stream accounting --------------------------------------------------------------
    def _end_of_stream(self, gid: int) -> None:
        inst = self.local[gid]
        inst.eos_left -= 1
        if inst.eos_left == 0:
            self._finish(inst)

    def _finish(self, inst: Instance) -> None:
        self._depth += 1
        try:
            targets = [gid for conn in self.plan.outgoing(inst.node.index) for gid in self.plan.pes[conn.dst].gids]
            if inst.gid in self.helpers:
                # a spread root's calls left its state as it was: the first instance's postprocess is the one
                watch = self.helpers[inst.gid]
                if watch is not None:
                    watch.check()
            else:
                if (spread := self.spreads.get(inst.gid)) is not None:
                    spread.close()
                    targets += list(inst.node.gids)[1:]  # after the calls handed to them, on the same channels
                self._call(inst, inst.pe.postprocess)
            inst.done = True
            for gid in targets:
                target = self.local.get(gid)
                if target is not None:
                    self._local(target, None, None)
                else:
                    self._enqueue(gid, None, None)
        finally:
            self._depth -= 1

    def finished(self) -> bool:
        return all(inst.done for inst in self.local.values())

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        """Run until every local instance has finished, then send what is left."""
        for inst in self.local.values():
            if inst.gid in self.helpers:
                with silenced(inst.pe):  # (its first instance writes what preprocess writes, once)
                    self._call(inst, inst.pe.preprocess)
            else:
                self._call(inst, inst.pe.preprocess)
        if self.restored is not None:
            self._restore()
            # the checkpoint's items in flight first: their senders sent them before anything they send now,
            # and a sender that is in this process now (simple; fewer processes) delivers it at once
            self._drain(block=False)
        checkpoints = self.checkpoints
        recorded = checkpoints is not None or any(inst.replay is not None for inst in self.local.values())
        if not recorded and self.plan.longest_chain() < MAX_DEPTH and type(self).emit is Runtime.emit:
            self.emit = self._emit_plain  # type: ignore[method-assign]  # (the Writers call it too)
        feeding = [(inst, iter(root_feed(self.feeds.get(inst.node.index, 0), self.fed.get(inst.gid, 0))))
                   for inst in self.local.values() if self.plan.expected_eos(inst.node.index) == 0
                   and inst.gid not in self.helpers and not inst.done]
        for inst, _feed in feeding:
            if inst.node.count > 1:
                self.spreads[inst.gid] = Spread(inst, self._hand, probing=not self.plan.stateful(inst.node))
        while feeding:
            for entry in list(feeding):
                inst, feed = entry
                # a slice of each root at a time, then look at the inbox: co-located PEs keep up
                # (a call with nothing to record or replay goes straight in: one Python call less an item)
                call = self.feed if checkpoints is not None or inst.replay is not None else self._process
                spread = self.spreads.get(inst.gid)
                for n, item in enumerate(feed, 1):
                    if spread is None:
                        call(inst, item)
                    else:
                        spread.call(call, item)
                    self.fed[inst.gid] = self.fed.get(inst.gid, 0) + 1
                    if n == 64 or (checkpoints is not None and checkpoints.due()):
                        break
                else:
                    feeding.remove(entry)
                    self._finish(inst)
            self._drain(block=False)
            if checkpoints is not None:
                checkpoints.at_clean_point()
        while not self.finished():
            self._drain(block=True)
            if checkpoints is not None:
                checkpoints.at_clean_point()
        if checkpoints is not None:
            checkpoints.stay_for_peers()
        self.flush_all()

    def _drain(self, block: bool) -> None:
        if self.checkpoints is not None:
            self.checkpoints.drain(block)
            return
        if self.transport is None:
            return
        payload = self.transport.recv(False)
        while payload is not None:
            self.handle(payload)
            payload = self.transport.recv(False)
        if block and not self.finished():
            self.flush_all()
            payload = self.transport.recv(True)
            assert payload is not None  # a blocking recv waits for a batch
            self.handle(payload)

    def stats(self) -> list[dict]:
        return [inst.stats(self.proc) for inst in self.local.values()]

