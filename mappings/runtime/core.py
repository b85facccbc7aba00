"""The routing and termination core shared by every mapping.

One :class:`Runtime` runs in each process (or MPI rank) and hosts the PE
instances the plan places there. Data for an instance in the same process is
handed over by a direct call (depth first, so memory stays bounded however
many items one ``process`` call writes); data for another process is put in a
per-destination outbox and sent as one pickled batch (protocol 5) when the
box is full, or before the process would wait for input.

Termination is end-of-stream accounting, never an idle timeout: when an
instance has finished (roots: after their last input; others: after
``postprocess``) it sends one end-of-stream marker to every instance of every
downstream PE, after its data on the same ordered channel. An instance runs
``postprocess`` exactly once, when it has the markers of all its upstream
instances.

With checkpoints on, the same ordered channels carry the markers of
:class:`~d4p_hpc.mappings.checkpoint.store.Snapshots` (Chandy-Lamport), and a
process that has finished stays until every other one has said it has too,
so that a checkpoint begun late still reaches every process.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import sys
import time
import traceback
from collections import deque
from contextlib import contextmanager, suppress
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from d4p_hpc import results as rd
from d4p_hpc.mappings.checkpoint import store as checkpoint
from d4p_hpc.mappings.runtime.plan import Plan, PENode, group_key, stable_hash
from d4p_hpc.supervisor import STOPS, WALLTIME, Interrupted
from d4p_hpc.workflow import WRITER

BATCH_ITEMS = 256
BATCH_BYTES = 4 << 20
# a partly filled batch leaves after this long, so slow PEs do not hold their outputs back
BATCH_SECONDS = 0.2
SINK_FLUSH_SECONDS = 1.0
#: the gid of a control entry of a batch; its "input" says which: a checkpoint marker, or "done"
CONTROL = -1
MARKER = "marker"
DONE = "done"
#: how often a process with checkpoints on looks at its clock while it has nothing to receive
IDLE_WAIT = 0.05
#: batches a process with checkpoints on reads ahead of what it processes (see Runtime._read_ahead):
#: as many as a channel holds (multi's inbox, mpi's sends in flight), so a marker is always in reach;
#: and how often it looks while it works through them
READ_AHEAD = 8
READ_SECONDS = 0.01


class PEFailed(BaseException):
    """A PE raised. BaseException, so a PE's own ``except Exception`` around ``write`` cannot swallow it."""

    def __init__(self, pe: str, tb: str) -> None:
        super().__init__(f"PE {pe} failed")
        self.pe = pe
        self.traceback = tb


class Aborted(BaseException):
    """Another process of the run failed or was stopped; this one stops too. It may be raised inside a
    PE's call (a root waiting in ``write`` for the backlog to shrink) and passes through untouched."""


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """Have the kernel send ``signum`` to this process when ``parent`` dies, even by SIGKILL.

    A forked worker (or a per-job Redis) whose driver is gone has nobody to report to: it must
    stop, not run on. Linux only (``PR_SET_PDEATHSIG``); elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signum)


@contextmanager
def redirect_output(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors too) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # sys.stdout need not be fd 1 (Jupyter, IDEs): point the Python streams at the log too
    streams = sys.stdout, sys.stderr
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with suppress(OSError):  # the log may be on the file system that just filled up
                stream.close()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _json_safe(o: Any) -> bool:
    t = type(o)
    if t is str or t is int or t is bool or o is None:
        return True
    if t is float:
        return math.isfinite(o)
    if t is list or t is tuple:
        return all(_json_safe(x) for x in o)
    if t is dict:
        return all(type(k) is str and _json_safe(v) for k, v in o.items())
    return False


class Sink:
    """Writes the items of unconnected outputs to this process's part files."""

    def __init__(self, results: Path, proc: int) -> None:
        self.results = results
        self.proc = proc
        self._files: dict[tuple[str, str, str], Any] = {}
        # bytes of each part known to be on disk: where a write that failed (a full disk) is cut back to
        self._durable: dict[tuple[str, str, str], int] = {}
        self._last_flush = time.monotonic()
        self._writes = 0

    def _file(self, pe: str, output: str, kind: str) -> Any:
        fh = self._files.get((pe, output, kind))
        if fh is None:
            rd.make_private_dir(rd.output_dir(self.results, pe, output))
            fd = os.open(self._path((pe, output, kind)), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fh = os.fdopen(fd, "a" if kind == "jsonl" else "ab")
            self._files[(pe, output, kind)] = fh
        return fh

    def _path(self, key: tuple[str, str, str]) -> Path:
        pe, output, kind = key
        return rd.output_dir(self.results, pe, output) / f"part-{self.proc:05d}.{kind}"

    def write(self, pe: str, output: str, data: Any) -> None:
        if _json_safe(data):
            self._file(pe, output, "jsonl").write(json.dumps(data) + "\n")
        else:
            pickle.dump(data, self._file(pe, output, "pickle"), protocol=5)
        self._writes += 1
        if self._writes & 255 == 0 and time.monotonic() - self._last_flush > SINK_FLUSH_SECONDS:
            self.flush()

    @property
    def written(self) -> int:
        """Items written so far (read by the sampler)."""
        return self._writes

    def flush(self) -> None:
        """Push buffered items to the files, so a killed job keeps what it produced."""
        for key, fh in self._files.items():
            fh.flush()
            self._durable[key] = os.fstat(fh.fileno()).st_size
        self._last_flush = time.monotonic()

    def abandon(self) -> None:
        """After a write failed (a full disk, a quota): cut every part back to its last whole item
        and close it without writing what is still buffered, so what is kept can be read."""
        for key, fh in self._files.items():
            raw = fh.buffer.raw if hasattr(fh, "buffer") else fh.raw
            with suppress(OSError, ValueError):
                os.ftruncate(raw.fileno(), _whole_items(self._path(key), key[2], self._durable.get(key, 0)))
                raw.close()
        self._files.clear()

    def sizes(self) -> dict[str, int]:
        """Flush, then give the size of each part file, by path relative to the results directory."""
        self.flush()
        return {str(self._path(key).relative_to(self.results)): os.fstat(fh.fileno()).st_size
                for key, fh in self._files.items()}

    def checkpoint_sizes(self) -> dict[str, int]:
        """:meth:`sizes`, and the size of this process's part files it has not written to in this run:
        those of an earlier segment, which nobody else writes (a part file has one process number)."""
        sizes = self.sizes()
        for path in Path(self.results, rd.OUTPUTS).glob(f"*/part-{self.proc:05d}.*"):
            sizes.setdefault(str(path.relative_to(self.results)), path.stat().st_size)
        return sizes

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


def _whole_items(path: Path, kind: str, start: int) -> int:
    """Where the last whole item of a part file ends, reading on from ``start`` (known whole)."""
    end = start
    with open(path, "rb") as fh:
        fh.seek(start)
        if kind == "jsonl":
            while chunk := fh.read(1 << 20):
                if b"\n" in chunk:
                    end = fh.tell() - len(chunk) + chunk.rindex(b"\n") + 1
            return end
        while True:
            try:
                pickle.load(fh)
            except Exception:  # a frame cut short: anything may be raised
                return end
            end = fh.tell()


class Instance:
    """One PE instance in this process, with its counters."""

    __slots__ = ("gid", "node", "index", "pe", "routes", "eos_left", "done",
                 "items_in", "items_out", "busy")

    def __init__(self, gid: int, node: PENode, pe: Any, eos: int) -> None:
        self.gid = gid
        self.node = node
        self.index = gid - node.first_gid
        self.pe = pe
        self.routes: dict[str, list[Route]] = {}
        self.eos_left = eos
        self.done = False
        self.items_in = 0
        self.items_out = 0
        self.busy = 0.0

    def stats(self, proc: int) -> dict:
        return {"pe": self.node.key, "instance": self.index, "process": proc, "items_in": self.items_in,
                "items_out": self.items_out, "busy_seconds": round(self.busy, 6)}


class Route:
    """Picks the destination instances of one item on one connection, from one sender instance."""

    __slots__ = ("input", "gids", "mode", "fields", "next")

    def __init__(self, input_name: str, gids: range, grouping: Any, sender: int) -> None:
        self.input = input_name
        self.gids = tuple(gids)
        self.fields: list = grouping if isinstance(grouping, list) else []  # the group-by fields (mode "key")
        if grouping == "all":
            self.mode = "all"
        elif grouping == "global" or len(self.gids) == 1:
            self.mode = "one"
        elif isinstance(grouping, list):
            self.mode = "key"
        else:
            self.mode = "shuffle"
        # senders start at different instances, so several senders do not all hit instance 0 first
        self.next = sender % len(self.gids)

    def targets(self, data: Any) -> tuple:
        mode = self.mode
        if mode == "one":
            return self.gids[:1]
        if mode == "all":
            return self.gids
        if mode == "key":
            return (self.gids[stable_hash(group_key(data, self.fields)) % len(self.gids)],)
        i = self.next
        self.next = (i + 1) % len(self.gids)
        return (self.gids[i],)


class Transport(Protocol):
    """Moves pickled batches between the processes of one run, in order per pair of processes."""

    def send(self, proc: int, payload: bytes, block: bool = True) -> bool:
        """Send to process ``proc``; may block while the receiver is behind (backpressure), or, if
        ``block`` is False, return False instead (nothing sent)."""

    def recv(self, block: bool, timeout: float | None = None) -> bytes | bytearray | None:
        """Next batch for this process; None if ``block`` is False and nothing is waiting, or if
        nothing came within ``timeout`` seconds."""


class _Writer:
    __slots__ = ("runtime", "inst", "output")

    def __init__(self, runtime: Runtime, inst: Instance, output: str) -> None:
        self.runtime = runtime
        self.inst = inst
        self.output = output

    def write(self, data: Any) -> None:
        self.runtime.emit(self.inst, self.output, data)


def make_logger(pe: Any, label: str) -> Callable[[str], None]:
    """The ``pe.log`` mappings install: a line tagged with PE id and process."""
    def log(msg: str) -> None:
        print(f"{pe.id} ({label}): {msg}")
    return log


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
                 gids: Iterable[int] | None = None, snapshots: checkpoint.Snapshots | None = None,
                 restored: checkpoint.Restored | None = None) -> None:
        self.plan = plan
        self.snapshots = snapshots
        self.restored = restored
        #: inputs each local root has consumed
        self.fed: dict[int, int] = {}
        #: the peers that have said they finished (checkpoints on)
        self.peers_done: set[int] = set()
        #: after our part of a checkpoint taken at the walltime signal: record, process nothing
        self.halted = False
        #: items read ahead, not yet processed (checkpoints on), and when we last read
        self.inbox: deque[tuple] = deque()
        #: control entries not sent yet, per process: the receiver's inbox was full
        self.controls: dict[int, deque] = {}
        self._read_at = 0.0
        self.proc = proc
        self.sink = sink
        self.transport = transport
        self.feeds = feeds
        self.local: dict[int, Instance] = {}
        self.outbox: dict[int, list] = {}
        self.outbytes: dict[int, int] = {}
        self._owner: Instance | None = None
        self._t = time.perf_counter()
        self._oldest = 0.0  # when the oldest item now in an outbox was put there
        seen: set[int] = set()
        for gid in plan.local_gids(proc) if gids is None else gids:
            node = plan.pe_of(gid)
            # the plan's PE object is a template: a second instance in the same process needs its own copy
            try:
                pe = copy_pe(node.pe) if node.index in seen else node.pe
            except Exception:
                raise PEFailed(node.key, "a second instance of this PE shares the process and the PE cannot be "
                                         f"copied; give the run more processes\n{traceback.format_exc()}") from None
            seen.add(node.index)
            self.local[gid] = Instance(gid, node, pe, plan.expected_eos(node.index))
        for inst in self.local.values():
            self._wire(inst)

    def _wire(self, inst: Instance) -> None:
        pe = inst.pe
        for output in inst.node.outputs:
            pe.outputconnections[output][WRITER] = _Writer(self, inst, output)
            inst.routes[output] = [Route(c.input, self.plan.pes[c.dst].gids, c.grouping, inst.index)
                                   for c in self.plan.outgoing(inst.node.index, output)]
        pe.log = make_logger(pe, f"process {self.proc}")
        pe.rank = self.proc

    # --- running PE code -----------------------------------------------------------------------
    def _call(self, inst: Instance, fn: Callable, *args: Any) -> Any:
        # busy time is charged to the innermost PE: a local delivery runs inside its sender's call
        now = time.perf_counter()
        prev = self._owner
        if prev is not None:
            prev.busy += now - self._t
        self._owner = inst
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
            self._owner = prev
            self._t = now

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

    def emit(self, inst: Instance, output: str, data: Any) -> None:
        """Route one item written by ``inst`` to ``output``."""
        inst.items_out += 1
        routes = inst.routes.get(output)
        if routes is None:
            raise KeyError(f"PE {inst.node.key} wrote to unknown output {output!r}")
        if not routes:
            self.sink.write(inst.node.key, output, data)
            return
        for route in routes:
            for gid in route.targets(data):
                target = self.local.get(gid)
                if target is not None:
                    self._process(target, {route.input: data})
                else:
                    self._enqueue(gid, route.input, data)

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
            self._send_controls(proc, block=True)  # (they go first: they were sent first)
            # items are queued only for another process, so a run that has one has a transport
            assert self.transport is not None
            # the sender travels along: a checkpoint records what is in flight per channel
            self.transport.send(proc, pickle.dumps((self.proc, box), protocol=5))

    def flush_all(self) -> None:
        """Send every partly filled batch (before waiting for input, and at the end)."""
        for proc in list(self.outbox):
            self._flush(proc)

    def handle(self, payload: bytes | bytearray) -> None:
        """Deliver one received batch to the local instances."""
        self._deliver(pickle.loads(payload)[1])

    def _deliver(self, box: Iterable[tuple]) -> None:
        for gid, input_name, data in box:
            if input_name is None:
                self._end_of_stream(gid)
            else:
                self._process(self.local[gid], {input_name: data})

    def _read_ahead(self) -> None:
        """Checkpoints on: take what has arrived into ``inbox``, acting on control entries at once.

        A marker queued behind batches that take minutes to process would make a checkpoint wait
        that long; read ahead (at most :data:`READ_AHEAD` batches, so memory stays bounded), it is
        seen at once, and the batches read but not processed are in flight in the checkpoint."""
        assert self.transport is not None and self.snapshots is not None
        snap = self.snapshots
        self._read_at = time.monotonic()
        for proc in [p for p, waiting in self.controls.items() if waiting]:
            self._send_controls(proc, block=False)
        while True:
            if len(self.inbox) >= READ_AHEAD * BATCH_ITEMS and snap.part is None and not self.halted:
                # full: the marker may be out of reach behind the batches still queued; the
                # announcement says a checkpoint has begun (then we read on until
                # every channel's marker: what comes before it is recorded, so memory stays bounded)
                if not snap.announced():
                    return
                self._snapshot()
            payload = self.transport.recv(False)
            if payload is None:
                return
            self._take(payload)

    def _take(self, payload: bytes | bytearray) -> None:
        """One batch read ahead: a control entry acted on, items recorded (if in flight) and queued."""
        snap = self.snapshots
        assert snap is not None
        sender, box = pickle.loads(payload)
        if box and box[0][0] == CONTROL:  # control entries travel alone
            self._control(sender, box[0][1], box[0][2])
            return
        if snap.part is not None and sender in snap.recording:
            # pickled now: the PE that takes an item may change it
            snap.part["in_flight"].extend(pickle.dumps(e, protocol=5) for e in box)
        if not self.halted:  # after the last checkpoint of a segment, items only count as in flight
            self.inbox.extend(box)

    # --- checkpoints ---------------------------------------------------------------------------
    def _control(self, sender: int, kind: str, data: Any) -> None:
        snap = self.snapshots
        assert snap is not None  # control entries are sent only with checkpoints on
        if kind == DONE:
            self.peers_done.add(sender)
        elif data > snap.seq:  # the first marker of this checkpoint: our local snapshot now
            self._snapshot(first_from=sender)
        else:
            snap.channel_done(sender)

    def _snapshot(self, first_from: int | None = None) -> None:
        """Take this process's local snapshot and send a marker behind everything sent so far."""
        snap = self.snapshots
        assert snap is not None
        seq, final = snap.begin()
        self.flush_all()
        instances = {}
        for gid, inst in self.local.items():
            saved: dict = {"eos_left": inst.eos_left, "done": inst.done}
            if not inst.done:
                saved["state"] = checkpoint.capture(inst.node.key, inst.pe)
            instances[gid] = saved
        snap.part = {"instances": instances, "fed": dict(self.fed), "parts": self.sink.checkpoint_sizes(),
                     "in_flight": [pickle.dumps(e, protocol=5) for e in self.inbox]}
        for peer in snap.peers:
            self._send_control(peer, MARKER, seq)
        if first_from is not None:
            snap.recording.discard(first_from)
        snap.maybe_write()
        if final:
            self.halted = True
            self.inbox.clear()

    def _send_control(self, proc: int, kind: str, data: Any) -> None:
        """Queue a control entry for ``proc`` and send what can go without waiting: two processes
        that each wait to put a marker into the other's full inbox would wait for ever."""
        self.controls.setdefault(proc, deque()).append(pickle.dumps((self.proc, [(CONTROL, kind, data)]), protocol=5))
        self._send_controls(proc, block=False)

    def _send_controls(self, proc: int, block: bool) -> None:
        waiting = self.controls.get(proc)
        assert self.transport is not None or not waiting
        while waiting and self.transport is not None and self.transport.send(proc, waiting[0], block):
            waiting.popleft()

    def _checkpoint_point(self) -> None:
        """A clean point (no PE call under way): begin a checkpoint that is due, or stop after the
        last one (taken at the walltime signal) once it is complete."""
        snap = self.snapshots
        if snap is None:
            return
        # a process whose instances have all finished begins none: it only takes part in those begun
        # by others (it waits for them), so none is begun once a peer may have left
        if not self.halted and not self.finished() and snap.due():
            self._snapshot()
        if self.halted and snap.written:
            snap.wait_complete(lambda: self._drain(block=False))
            raise Interrupted(STOPS[WALLTIME], WALLTIME)

    def _restore(self) -> None:
        """Start from the checkpoint: states, finished instances, and the items in flight to ours."""
        restored = self.restored
        assert restored is not None
        for gid, inst in self.local.items():
            saved = restored.instance(gid)
            if saved is None:
                continue
            inst.eos_left, inst.done = saved["eos_left"], saved["done"]
            if not inst.done:
                self._call(inst, checkpoint.restore, inst.pe, saved["state"])
            self.fed[gid] = restored.fed(gid)
        # processed as if just read ahead: with checkpoint points and reads in between (the items a slow
        # PE had queued may take minutes), and in flight again should a checkpoint come first
        self.inbox.extend(restored.in_flight(set(self.local)))

    # --- end-of-stream accounting --------------------------------------------------------------
    def _end_of_stream(self, gid: int) -> None:
        inst = self.local[gid]
        inst.eos_left -= 1
        if inst.eos_left == 0:
            self._finish(inst)

    def _finish(self, inst: Instance) -> None:
        self._call(inst, inst.pe.postprocess)
        inst.done = True
        for conn in self.plan.outgoing(inst.node.index):
            for gid in self.plan.pes[conn.dst].gids:
                if gid in self.local:
                    self._end_of_stream(gid)
                else:
                    self._enqueue(gid, None, None)

    def finished(self) -> bool:
        return all(inst.done for inst in self.local.values())

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        """Run until every local instance has finished, then send what is left."""
        for inst in self.local.values():
            self._call(inst, inst.pe.preprocess)
        if self.restored is not None:
            self._restore()
        snap = self.snapshots
        feeding = [(inst, iter(root_feed(self.feeds.get(inst.node.index, 0), self.fed.get(inst.gid, 0))))
                   for inst in self.local.values() if self.plan.expected_eos(inst.node.index) == 0 and not inst.done]
        while feeding:
            for entry in list(feeding):
                inst, feed = entry
                # a slice of each root at a time, then look at the inbox: co-located PEs keep up
                for n, item in enumerate(feed, 1):
                    self._process(inst, item)
                    self.fed[inst.gid] = self.fed.get(inst.gid, 0) + 1
                    if n == 64 or (snap is not None and snap.due()):
                        break
                else:
                    feeding.remove(entry)
                    self._finish(inst)
            self._drain(block=False)
            self._checkpoint_point()
        while not self.finished():
            self._drain(block=True)
            self._checkpoint_point()
        if snap is not None and snap.peers:
            # a peer may still begin (or be in) a checkpoint: we stay to take our part until all are done
            self.flush_all()
            for peer in snap.peers:
                self._send_control(peer, DONE, None)
            while len(self.peers_done) < len(snap.peers) or not snap.written:
                self._drain(block=True)
                self._checkpoint_point()
            for proc in list(self.controls):  # the others read on until they have our word too
                self._send_controls(proc, block=True)
        self.flush_all()

    def _drain(self, block: bool) -> None:
        if self.transport is None:
            return
        if self.snapshots is not None:
            self._drain_ahead(block)
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

    def _drain_ahead(self, block: bool) -> None:
        """:meth:`_drain` with checkpoints on: through the read-ahead inbox, which also ends the wait
        of a process that has finished but stays for the others (it blocks only when idle)."""
        self._read_ahead()
        inbox = self.inbox
        while inbox and not self.halted:
            self._deliver((inbox.popleft(),))
            if time.monotonic() - self._read_at > READ_SECONDS:
                self._read_ahead()
                self._checkpoint_point()
        if block and not self.inbox:
            assert self.transport is not None
            self.flush_all()
            # not a receive that blocks for ever: a process must watch its clock and the walltime
            # signal while it idles
            payload = self.transport.recv(True, IDLE_WAIT)
            if payload is not None:
                self._take(payload)
            self._read_ahead()

    def stats(self) -> list[dict]:
        return [inst.stats(self.proc) for inst in self.local.values()]

