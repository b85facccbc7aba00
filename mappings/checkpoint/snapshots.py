"""Taking checkpoints in the static mappings (simple, multi, mpi): Chandy-Lamport.

:class:`Snapshots` is one process's place in the sequence of checkpoints (when the next is due,
who began it, writing its part, completing it); :class:`ChandyLamport` is what the process's
:class:`~d4p_hpc.mappings.runtime.core.Runtime` delegates to with checkpoints on: the markers on
its channels, reading ahead so that a marker is always in reach, its local snapshot, and staying,
once finished, until every other process has finished too, so that a checkpoint begun late still
reaches every process.

A local snapshot is taken at a clean point (no PE call under way) or at a write point of a long
root call (see :mod:`~d4p_hpc.mappings.runtime.replay`): the root's call is then replayed on
resume, and every item it wrote so far is processed here or recorded on its way to a peer.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from d4p_hpc.mappings.checkpoint.store import (directory, is_complete, parts_written, read_part, write_manifest,
                                               write_part)
from d4p_hpc.mappings.runtime.core import BATCH_ITEMS, Runtime
from d4p_hpc.mappings.runtime.hosting import calls_under_way
from d4p_hpc.mappings.runtime.replay import PART_FIELD
from d4p_hpc.results import write_bytes
from d4p_hpc.supervisor import STOPS, WALLTIME, Interrupted

#: the file whose creation begins checkpoint n (its content: "final" for the last of a segment)
ANNOUNCED = "begun"
#: How long a process that has written its part of a checkpoint taken at the walltime signal
#: waits for the other parts before it stops anyway (the previous checkpoint is then the one used).
FINAL_WAIT = 60.0
#: the gid of a control entry of a batch; its "input" says which: a checkpoint marker, or "done"
CONTROL = -1
MARKER = "marker"
DONE = "done"
#: how often a process with checkpoints on looks at its clock while it has nothing to receive
IDLE_WAIT = 0.05
#: batches a process with checkpoints on reads ahead of what it processes (see ChandyLamport.read_ahead):
#: as many as a channel holds (multi's inbox, mpi's sends in flight), so a marker is always in reach;
#: and how often it looks while it works through them
READ_AHEAD = 8
READ_SECONDS = 0.01


class Snapshots:
    """One process's side of taking checkpoints in a static mapping (simple, multi, mpi).

    Any process may begin checkpoint n+1 at one of its clean points (no PE call under way) once n is
    complete and its clock says one is due or the walltime signal came: it announces it
    (``<n+1>/begun``, created once), takes its local snapshot and sends a marker on every channel.
    Every other process takes its own at the first marker it receives or, when its inbox is too
    full for the marker to be in reach, at the announcement. Each writes its part once every
    channel's marker is in; whoever writes the last part completes the checkpoint. No process is
    special: one that waits in a send (backpressure), which cannot take a snapshot then, holds up
    nobody's beginning.
    """

    def __init__(self, results: Path, proc: int, procs: list[int], every: float | None, identity: dict,
                 first_seq: int = 1) -> None:
        self.results = Path(results)
        self.proc = proc
        self.procs = len(procs)
        self.peers = [p for p in procs if p != proc]
        self.every = every
        self.identity = identity
        self.first = first_seq
        self.seq = first_seq - 1          # the last checkpoint this process has taken its snapshot of
        self.next_at = time.monotonic() + every if every else float("inf")
        self.stop_signal: int | None = None  # the walltime signal came: checkpoint, then stop
        self.final = False                # the current checkpoint is the last one of this segment
        self.recording: set[int] = set()  # peers whose channel is recorded until their marker
        self.part: dict | None = None     # our part of the current checkpoint, until written
        self.written = True               # our part of self.seq is written (or there is none)
        self.started = 0.0

    def request_stop(self, signum: int) -> None:
        """The signal handler: the walltime is near; take a checkpoint and then stop."""
        self.stop_signal = signum

    def due(self) -> bool:
        """Whether to begin the next checkpoint now. Cheap until the clock or the signal says one is
        due; then the previous one must be complete."""
        if not self.written or (self.stop_signal is None and time.monotonic() < self.next_at):
            return False
        if self.seq >= self.first and not is_complete(self.results, self.seq):
            self.next_at = time.monotonic() + 0.05  # others still write theirs: look again soon, not at once
            return False
        return True

    def begin(self) -> tuple[int, bool]:
        """Our local snapshot of the next checkpoint is being taken: announce it, if nobody has; return
        its number and whether it is the last of this segment.

        The process that begins a checkpoint decides that (it has had the walltime signal), in the
        announcement all read: the signal reaches the processes one by one, and they must agree.
        One that has the signal after a checkpoint that is not the last begins the next, the last."""
        self.seq += 1
        self.started = time.monotonic()
        self.written = False
        self.recording = set(self.peers)
        self.final = self.stop_signal is not None
        if self.peers:
            # written whole under another name, then linked: the first process to begin it decides
            d = directory(self.results, self.seq)
            tmp = d / f".{ANNOUNCED}.{self.proc}"
            write_bytes(tmp, b"final" if self.final else b"", sync=True)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, d / ANNOUNCED)
            tmp.unlink()
            self.final = (d / ANNOUNCED).read_bytes() == b"final"
        return self.seq, self.final

    def announced(self) -> bool:
        """Whether another process has begun the next checkpoint."""
        return (directory(self.results, self.seq + 1) / ANNOUNCED).exists()

    def channel_done(self, sender: int) -> None:
        self.recording.discard(sender)
        self.maybe_write()

    def maybe_write(self) -> None:
        """Write our part once every channel's marker is in; complete the checkpoint if it is the last."""
        if self.part is None or self.recording:
            return
        part, self.part = self.part, None
        write_part(self.results, self.seq, self.proc, part)
        self.written = True
        if self.every:
            self.next_at = time.monotonic() + self.every
        if parts_written(self.results, self.seq) == self.procs and not is_complete(self.results, self.seq):
            parts = [read_part(p) for p in directory(self.results, self.seq).glob("part-*.pkl")]
            write_manifest(self.results, self.seq, {"identity": self.identity,
                                                    "seconds": round(time.monotonic() - self.started, 4),
                                                    "in_flight": sum(len(p.get("in_flight", [])) for p in parts),
                                                    "final": self.final})

    def wait_complete(self, poll: Callable[[], None]) -> None:
        """After our part of a final checkpoint: wait (calling ``poll`` to keep channels moving) until
        the checkpoint is complete, at most :data:`FINAL_WAIT` seconds."""
        deadline = time.monotonic() + FINAL_WAIT
        while time.monotonic() < deadline and not is_complete(self.results, self.seq):
            poll()
            time.sleep(0.01)


class ChandyLamport:
    """The :class:`~d4p_hpc.mappings.runtime.core.Checkpoints` of one process's Runtime in a static
    mapping: what the Runtime delegates to receive, to send control entries and to take its local
    snapshots.

    Control entries (a checkpoint's marker, or a process's word that it has finished) travel alone
    in a batch, on the same ordered channels as the items, behind everything sent before them.
    """

    def __init__(self, runtime: Runtime, snapshots: Snapshots) -> None:
        self.runtime = runtime
        self.snapshots = snapshots
        #: the peers that have said they finished
        self.peers_done: set[int] = set()
        #: after our part of a checkpoint taken at the walltime signal: record, process nothing
        self.halted = False
        #: items read ahead, not yet processed, and when we last read
        self.inbox: deque[tuple] = deque()
        self._read_at = 0.0
        #: control entries not sent yet, per process: the receiver's inbox was full
        self.controls: dict[int, deque] = {}

    def drain(self, block: bool) -> None:
        """The Runtime's drain, through the read-ahead inbox, which also ends the wait of a process
        that has finished but stays for the others (it blocks only when idle).

        One process (simple, or multi -n 1) receives nothing, but its inbox holds, on resume, the items
        in flight in the checkpoint (a multi or mpi one): they are processed here all the same."""
        transport = self.runtime.transport
        if transport is not None:
            self.read_ahead()
        inbox = self.inbox
        while inbox and not self.halted:
            self.runtime.deliver((inbox.popleft(),))
            if time.monotonic() - self._read_at > READ_SECONDS:
                if transport is not None:
                    self.read_ahead()
                else:
                    self._read_at = time.monotonic()
                self.at_clean_point()
        if transport is None:  # one process: nothing comes in
            return
        if block and not self.inbox:
            self.runtime.flush_all()
            # not a receive that blocks for ever: a process must watch its clock and the walltime
            # signal while it idles
            payload = transport.recv(True, IDLE_WAIT)
            if payload is not None:
                self._take(payload)
            self.read_ahead()

    def due(self) -> bool:
        return self.snapshots.due()

    def read_ahead(self) -> None:
        """Take what has arrived into ``inbox``, acting on control entries at once.

        A marker queued behind batches that take minutes to process would make a checkpoint wait
        that long; read ahead (at most :data:`READ_AHEAD` batches, so memory stays bounded), it is
        seen at once, and the batches read but not processed are in flight in the checkpoint."""
        transport = self.runtime.transport
        assert transport is not None
        snap = self.snapshots
        self._read_at = time.monotonic()
        for proc in [p for p, waiting in self.controls.items() if waiting]:
            self.send_controls(proc, block=False)
        while True:
            if len(self.inbox) >= READ_AHEAD * BATCH_ITEMS and snap.part is None and not self.halted:
                # full: the marker may be out of reach behind the batches still queued; the
                # announcement says a checkpoint has begun (then we read on until
                # every channel's marker: what comes before it is recorded, so memory stays bounded)
                if not snap.announced():
                    return
                self._snapshot()
            payload = transport.recv(False)
            if payload is None:
                return
            self._take(payload)

    def _take(self, payload: bytes | bytearray) -> None:
        """One batch read ahead: a control entry acted on, items recorded (if in flight) and queued."""
        snap = self.snapshots
        sender, box = pickle.loads(payload)
        if box and box[0][0] == CONTROL:  # control entries travel alone
            self._control(sender, box[0][1], box[0][2])
            return
        if snap.part is not None and sender in snap.recording:
            # pickled now: the PE that takes an item may change it
            snap.part["in_flight"].extend(pickle.dumps(e, protocol=5) for e in box)
        if not self.halted:  # after the last checkpoint of a segment, items only count as in flight
            self.inbox.extend(box)

    def _control(self, sender: int, kind: str, data: Any) -> None:
        snap = self.snapshots
        if kind == DONE:
            self.peers_done.add(sender)
        elif data > snap.seq:  # the first marker of this checkpoint: our local snapshot now
            self._snapshot(first_from=sender)
        else:
            snap.channel_done(sender)

    def _snapshot(self, first_from: int | None = None) -> None:
        """Take this process's local snapshot and send a marker behind everything sent so far."""
        runtime = self.runtime
        snap = self.snapshots
        seq, final = snap.begin()
        runtime.flush_all()
        instances = {}
        for gid, inst in runtime.local.items():
            saved: dict = {"eos_left": inst.eos_left, "done": inst.done}
            if not inst.done:
                saved["state"] = inst.saved_state()
            instances[gid] = saved
        # a resumed run processes the items in flight before its roots begin again: a root whose call it
        # is to replay (see replay.py) has not begun it yet, and a checkpoint taken meanwhile passes it on
        replays = {gid: inst.replay for gid, inst in runtime.local.items() if inst.replay is not None}
        snap.part = {"instances": instances, "fed": dict(runtime.fed), "parts": runtime.sink.checkpoint_sizes(),
                     "in_flight": [pickle.dumps(e, protocol=5) for e in self.inbox],
                     PART_FIELD: {**replays, **calls_under_way(runtime.local.values())}}
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
        entry = pickle.dumps((self.runtime.proc, [(CONTROL, kind, data)]), protocol=5)
        self.controls.setdefault(proc, deque()).append(entry)
        self.send_controls(proc, block=False)

    def send_controls(self, proc: int, block: bool) -> None:
        """Send the control entries still queued for ``proc`` (the Runtime sends them before a batch
        of items to ``proc``, blocking: they were sent first)."""
        waiting = self.controls.get(proc)
        transport = self.runtime.transport
        assert transport is not None or not waiting
        while waiting and transport is not None and transport.send(proc, waiting[0], block):
            waiting.popleft()

    def at_clean_point(self) -> None:
        """A clean point (no PE call under way): begin a checkpoint that is due, or stop after the
        last one (taken at the walltime signal) once it is complete."""
        snap = self.snapshots
        # a process whose instances have all finished begins none: it only takes part in those begun
        # by others (it waits for them), so none is begun once a peer may have left
        if not self.halted and not self.runtime.finished() and snap.due():
            self._snapshot()
        if self.halted and snap.written:
            snap.wait_complete(lambda: self.drain(block=False))
            raise Interrupted(STOPS[WALLTIME], WALLTIME)

    def at_write_point(self) -> None:
        """Inside a long root call, at one of its writes: see the markers that have come (now
        and then: every write would cost a look), then as at a clean point."""
        if self.runtime.transport is not None and time.monotonic() - self._read_at > READ_SECONDS:
            self.read_ahead()
        if self.halted or self.snapshots.due():  # (cheap, unlike a clean point's look at every instance)
            self.at_clean_point()

    def stay_for_peers(self) -> None:
        """Once every local instance has finished: a peer may still begin (or be in) a checkpoint, so
        say so to every peer and take our part until all have said the same."""
        snap = self.snapshots
        if not snap.peers:
            return
        self.runtime.flush_all()
        for peer in snap.peers:
            self._send_control(peer, DONE, None)
        while len(self.peers_done) < len(snap.peers) or not snap.written:
            self.drain(block=True)
            self.at_clean_point()
        for proc in list(self.controls):  # the others read on until they have our word too
            self.send_controls(proc, block=True)
