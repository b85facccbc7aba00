"""Checkpoints: consistent snapshots of a running stream, and what a resumed run starts from.

A checkpoint is ``DIR/checkpoints/<seq>/``: one ``part-<process>.pkl`` per process of the run and,
once all of them are written, ``complete.json`` (what the checkpoint is of, its size and the time
it took). Every file is written to a temporary name and renamed (0600): a checkpoint either is
complete or is not used. The two newest complete ones are kept.

A part holds, for the PE instances of its process: the state of each (``checkpoint()`` if the PE
defines it, else its ``__dict__`` without ``pickleIgnore`` and what the mapping wires in), whether
it has finished, how many end-of-stream markers it still expects, how many inputs each root has
consumed, the items *in flight* to it, and the size of every output part file it writes.

How the snapshot is made consistent is the mapping's business:

* static mappings (simple, multi, mpi: :class:`Snapshots`, driven by the core) use the
  Chandy-Lamport algorithm over their ordered process-to-process channels: process 0 takes its
  local snapshot and sends a marker on every channel; a process takes its own at the first marker
  it receives, and records what arrives on each other channel until that channel's marker. Nothing
  waits and nothing drains: the items recorded are the checkpoint's in-flight items, delivered
  again on resume;
* the dynamic mappings quiesce: the driver stops feeding, waits until no task is queued or running,
  and every worker then writes its copies and stateful instances (see :mod:`.dynamic`).

Every item is thus either before the checkpoint (its effects in the states and in the output bytes
the checkpoint keeps) or after it (replayed on resume); on resume every output part file is cut
back to its size in the checkpoint, so the outputs of all segments together are those of one
uninterrupted run, each item once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d4p_hpc import results as rd
from d4p_hpc.errors import ResumeError
from d4p_hpc.mappings import MAPPINGS

#: Version of the format of parts and manifests: a resume refuses another one.
FORMAT = 1
DIRNAME = "checkpoints"
COMPLETE = "complete.json"
ANNOUNCED = "begun"
KEEP = 2
#: What the mappings put on a PE object; not the PE's own state.
WIRED = frozenset({"inputconnections", "outputconnections", "log", "rank", "pickleIgnore", "wrapper"})
#: How long a process that has written its part of a checkpoint taken at the walltime signal
#: waits for the other parts before it stops anyway (the previous checkpoint is then the one used).
FINAL_WAIT = 60.0


class CheckpointFailed(Exception):
    """A PE's state cannot be saved."""


def capture(key: str, pe: Any) -> bytes:
    """The pickled state of PE object ``pe`` (named ``key`` in messages)."""
    hook = getattr(pe, "checkpoint", None)
    if callable(hook):
        state: tuple = ("hook", hook())
    else:
        ignore = WIRED | set(getattr(pe, "pickleIgnore", None) or ())
        state = ("dict", {k: v for k, v in vars(pe).items() if k not in ignore})
    try:
        return pickle.dumps(state, protocol=5)
    except Exception as exc:
        culprit = next((k for k, v in state[1].items() if not _picklable(v)), None) \
            if state[0] == "dict" else None
        what = f"attribute {culprit!r}" if culprit else "its state"
        raise CheckpointFailed(f"PE {key}: {what} cannot be saved ({type(exc).__name__}: {exc}); list it in "
                               "the PE's pickleIgnore, or give the PE checkpoint() and restore(state) "
                               "methods") from None


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value, protocol=5)
        return True
    except Exception:
        return False


def restore(pe: Any, blob: bytes) -> None:
    """Give ``pe`` (a fresh copy, already preprocessed) the state :func:`capture` saved."""
    kind, state = pickle.loads(blob)
    if kind == "hook":
        pe.restore(state)
    else:
        pe.__dict__.update(state)


def identity(ctx: Any) -> dict:
    """What a checkpoint is of: a resume must match it (see :func:`check_resumable`)."""
    from d4p_hpc.mappings.runtime.runner import file_digest, inputs_record

    inputs = inputs_record(ctx)
    return {"graph": ctx.graph_path, "graph_sha256": file_digest(ctx.graph_path), "attr": ctx.attr,
            "inputs_sha256": hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest(),
            "inputs": inputs, "mapping": ctx.mapping, "processes": ctx.processes,
            "instances": ctx.plan.instances, "states": MAPPINGS[ctx.mapping].states}


# --- writing ---------------------------------------------------------------------------------------
def directory(results: Path, seq: int) -> Path:
    return Path(results) / DIRNAME / f"{seq:06d}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, 0600, synced."""
    rd.make_private_dir(path.parent.parent)
    rd.make_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_part(results: Path, seq: int, proc: int, part: dict) -> int:
    """Write process ``proc``'s part of checkpoint ``seq``; return its size in bytes."""
    data = pickle.dumps({"format": FORMAT, "seq": seq, "proc": proc, **part}, protocol=5)
    write_atomic(directory(results, seq) / f"part-{proc:05d}.pkl", data)
    return len(data)


def parts_written(results: Path, seq: int) -> int:
    try:
        return sum(1 for p in os.listdir(directory(results, seq)) if p.startswith("part-") and p.endswith(".pkl"))
    except FileNotFoundError:
        return 0


def complete(results: Path, seq: int, manifest: dict) -> None:
    """Mark checkpoint ``seq`` complete with its ``manifest``, and remove all but the newest ones.

    Output part files of process numbers that wrote no part (an earlier segment had more processes,
    or a worker that has left) are written by nobody now: their sizes are recorded here, so that a
    resume keeps them."""
    d = directory(results, seq)
    parts = sorted(d.glob("part-*.pkl"))
    size = sum(p.stat().st_size for p in parts)
    procs = {f"part-{p.name[5:10]}." for p in parts}
    dormant = {str(p.relative_to(results)): p.stat().st_size for p in Path(results, rd.OUTPUTS).glob("*/part-*")
               if p.name[:11] not in procs}
    manifest = {"format": FORMAT, "seq": seq, "time": rd.now(), "bytes": size, "dormant": dormant, **manifest}
    write_atomic(d / COMPLETE, (json.dumps(manifest, indent=1) + "\n").encode())
    done = completed(results)
    for old in sorted(p for p in (Path(results) / DIRNAME).iterdir() if p.name.isdigit()):
        if int(old.name) < seq and (int(old.name) not in done[-KEEP:]):
            shutil.rmtree(old, ignore_errors=True)


def is_complete(results: Path, seq: int) -> bool:
    return (directory(results, seq) / COMPLETE).exists()


def completed(results: Path) -> list[int]:
    """The sequence numbers of the complete checkpoints in ``results``, oldest first."""
    root = Path(results) / DIRNAME
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / COMPLETE).exists())


def manifest(results: Path, seq: int) -> dict:
    return json.loads((directory(results, seq) / COMPLETE).read_text())


def latest(results: Path) -> dict | None:
    """The manifest of the newest complete checkpoint, or None."""
    done = completed(results)
    return manifest(results, done[-1]) if done else None


#: a run's own stop after its last checkpoint, and the submission of its successor
STOP_SECONDS = 10.0


def signal_seconds_needed(results: Path | None) -> float:
    """How long before the walltime the signal must come for the run to take its checkpoint, stop
    and (``--requeue``) submit its successor: twice the longest checkpoint measured in ``results``
    (None: none measured yet), plus :data:`STOP_SECONDS`."""
    measured = [manifest(results, seq).get("seconds", 0.0) for seq in completed(results)] if results else []
    return STOP_SECONDS + 2 * max(measured, default=0.0)


# --- reading -------------------------------------------------------------------------------------
@dataclass
class Restored:
    """A complete checkpoint, loaded: what a resumed run starts from."""

    seq: int
    manifest: dict
    parts: list[dict]

    def instance(self, gid: int) -> dict | None:
        """The saved instance ``gid`` (static mappings; stateful instances of hybrid_redis)."""
        for part in self.parts:
            found = part.get("instances", {}).get(gid)
            if found is not None:
                return found
        return None

    def fed(self, gid: int) -> int:
        """Inputs root instance ``gid`` had consumed."""
        return sum(part.get("fed", {}).get(gid, 0) for part in self.parts)

    def in_flight(self, gids: set[int] | None = None) -> list:
        """The items in flight at the checkpoint, to instances ``gids`` (all if None), in channel order."""
        entries = (pickle.loads(e) for part in self.parts for e in part.get("in_flight", []))
        return [e for e in entries if gids is None or e[0] in gids]

    def copies(self, proc: int) -> dict[int, bytes]:
        """Dynamic mappings: the states of the PE copies worker ``proc`` had, by PE index."""
        return next((p.get("copies", {}) for p in self.parts if p["proc"] == proc), {})

    def sizes(self) -> dict[str, int]:
        """The size of every output part file at the checkpoint."""
        found: dict[str, int] = dict(self.manifest.get("dormant", {}))
        for part in self.parts:
            found.update(part.get("parts", {}))
        return found


def load(results: Path, seq: int | None = None) -> Restored:
    """The newest complete checkpoint of ``results`` (or number ``seq``)."""
    done = completed(results)
    if not done:
        raise ResumeError(f"{results} has no complete checkpoint to resume from: run with --checkpoint-every "
                          "SECONDS (or submit with --requeue N) to take them")
    seq = done[-1] if seq is None else seq
    found = manifest(results, seq)
    if found.get("format") != FORMAT:
        raise ResumeError(f"checkpoint {seq} of {results} has format {found.get('format')}; this d4p-hpc reads "
                          f"format {FORMAT}: resume with the d4p-hpc version that wrote it")
    return Restored(seq, found, [_read(path) for path in sorted(directory(results, seq).glob("part-*.pkl"))])


def _read(path: Path) -> dict:
    with open(path, "rb") as fh:
        return pickle.load(fh)


def check_resumable(ctx: Any, restored: Restored) -> None:
    """Refuse, in one line, a resume whose graph, inputs or mapping differ from the checkpoint's."""
    now, then = identity(ctx), restored.manifest.get("identity") or {}
    where = f"checkpoint {restored.seq} of {ctx.results}"
    if set(now) - set(then):
        raise ResumeError(f"{where} lacks {', '.join(sorted(set(now) - set(then)))}: it was not written by this "
                          "d4p-hpc version; start a new run instead")
    if now["graph_sha256"] != then["graph_sha256"]:
        raise ResumeError(f"the graph file {ctx.graph_path} has changed since {where} (sha256 "
                          f"{then['graph_sha256'][:12]} then, {str(now['graph_sha256'])[:12]} now): a resume must run "
                          "the same graph; start a new run instead")
    if now["inputs_sha256"] != then["inputs_sha256"]:
        raise ResumeError(f"the inputs differ from those of {where} ({_short(then['inputs'])} then, "
                          f"{_short(now['inputs'])} now): a resume must read the same inputs; start a new run instead")
    if now["states"] != then["states"]:
        raise ResumeError(f"{where} was taken under -m {then['mapping']}, whose PE states cannot move to "
                          f"-m {ctx.mapping}; resume with -m {then['mapping']}")
    if now["states"] == "instance" and now["instances"] != then["instances"]:
        raise ResumeError(f"{where} has {then['instances']} PE instances and -m {ctx.mapping} -n {ctx.processes} "
                          f"makes {now['instances']}; resume with -n {then['processes']}")
    if now["states"] == "worker" and now["processes"] != then["processes"]:
        raise ResumeError(f"{where} holds the PE copies of {then['processes']} workers; resume with "
                          f"-n {then['processes']}")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def cut_back(results: Path, restored: Restored) -> int:
    """Cut every output part file back to its size in the checkpoint (removing parts it does not
    know): what a segment wrote after its last checkpoint is written again by the next one.
    Returns the number of bytes cut."""
    sizes = restored.sizes()
    cut = 0
    for path in sorted((Path(results) / rd.OUTPUTS).glob("*/part-*")):
        keep = sizes.get(str(path.relative_to(results)), 0)
        size = path.stat().st_size
        if size > keep:
            cut += size - keep
            if keep:
                os.truncate(path, keep)
            else:
                path.unlink()
    return cut


# --- taking them: the static mappings (Chandy-Lamport) ---------------------------------------------
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
            write_atomic(tmp, b"final" if self.final else b"")
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
            parts = [_read(p) for p in directory(self.results, self.seq).glob("part-*.pkl")]
            complete(self.results, self.seq, {"identity": self.identity,
                                              "seconds": round(time.monotonic() - self.started, 4),
                                              "in_flight": sum(len(p.get("in_flight", [])) for p in parts),
                                              "final": self.final})

    def wait_complete(self, poll: Any) -> None:
        """After our part of a final checkpoint: wait (calling ``poll`` to keep channels moving) until
        the checkpoint is complete, at most :data:`FINAL_WAIT` seconds."""
        deadline = time.monotonic() + FINAL_WAIT
        while time.monotonic() < deadline and not is_complete(self.results, self.seq):
            poll()
            time.sleep(0.01)
