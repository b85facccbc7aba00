"""Checkpoints on disk: their format, writing and reading them, and what a resume must match.

A checkpoint is ``DIR/checkpoints/<seq>/``: one ``part-<process>.pkl`` per process of the run and,
once all of them are written, ``complete.json``, its manifest: what the checkpoint is of, its
size and the time it took, and the size and sha256 of every part. Every file is written through
:mod:`d4p_hpc.durable` (a temporary name, fsync, rename, fsync of the directory), and a process
makes its outputs durable up to the sizes its part records before it writes its part (see
:meth:`~d4p_hpc.mappings.runtime.sink.Sink.checkpoint_sizes`): a crash at any step leaves the
previous complete checkpoint whole. The two newest complete ones are kept.

A resume uses the newest complete checkpoint that is whole (:func:`load`): every part its manifest
names is there, private (:mod:`d4p_hpc.trust`), of its size and sha256, loads, and is the part of
that checkpoint and process it says; and no output file is shorter than the checkpoint records (a
crash lost what had not reached the disk). One that is not is skipped, saying why on stderr; with
none left, the resume is refused and nothing is changed. Its run then removes what is newer than the
checkpoint it continues, and cuts the outputs back to it (:func:`cut_back`, which a crash may
interrupt: the next resume does it again, from the same checkpoint).

A part holds, for the PE instances of its process: the state of each (see :mod:`.pe_state`),
whether it has finished, how many end-of-stream markers it still expects, how many inputs each
root has consumed, the items *in flight* to it, and the size of every output part file it writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d4p_hpc import durable, settings
from d4p_hpc.errors import ResumeError, UntrustedFileError
from d4p_hpc.results import Layout, now, write_bytes
from d4p_hpc.trust import open_private

#: Version of the format of parts and manifests: a resume refuses another one (2: the manifest
#: lists every part with its size and sha256).
FORMAT = 2
COMPLETE = "complete.json"
KEEP = 2


# --- writing ---------------------------------------------------------------------------------------
def directory(results: Path, seq: int) -> Path:
    return Layout(results).checkpoints / f"{seq:06d}"


def write_part(results: Path, seq: int, proc: int, part: dict) -> int:
    """Write process ``proc``'s part of checkpoint ``seq``; return its size in bytes."""
    data = pickle.dumps({"format": FORMAT, "seq": seq, "proc": proc, **part}, protocol=5)
    write_bytes(directory(results, seq) / f"part-{proc:05d}.pkl", data, sync=True)
    return len(data)


def parts_written(results: Path, seq: int) -> int:
    try:
        return sum(1 for p in os.listdir(directory(results, seq)) if p.startswith("part-") and p.endswith(".pkl"))
    except FileNotFoundError:
        return 0


def write_manifest(results: Path, seq: int, manifest: dict) -> None:
    """Mark checkpoint ``seq`` complete with its ``manifest``, and remove all but the newest ones.

    Output part files of process numbers that wrote no part (an earlier segment had more processes,
    or a worker that has left) are written by nobody now: their sizes are recorded here, so that a
    resume keeps them."""
    d = directory(results, seq)
    parts = {p.name: _digest(p) for p in sorted(d.glob("part-*.pkl"))}
    procs = {f"part-{name[5:10]}." for name in parts}
    dormant = {str(p.relative_to(results)): p.stat().st_size for p in Layout(results).outputs.glob("*/part-*")
               if p.name[:11] not in procs}
    manifest = {"format": FORMAT, "seq": seq, "time": now(), "bytes": sum(p["bytes"] for p in parts.values()),
                "parts": parts, "dormant": dormant, **manifest}
    write_bytes(d / COMPLETE, (json.dumps(manifest, indent=1) + "\n").encode(), sync=True)
    done = complete_seqs(results)
    for old in sorted(p for p in Layout(results).checkpoints.iterdir() if p.name.isdigit()):
        if int(old.name) < seq and (int(old.name) not in done[-KEEP:]):
            durable.remove_tree(old)


def _digest(path: Path) -> dict:
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def is_complete(results: Path, seq: int) -> bool:
    return (directory(results, seq) / COMPLETE).exists()


def complete_seqs(results: Path) -> list[int]:
    """The sequence numbers of the complete checkpoints in ``results``, oldest first."""
    root = Layout(results).checkpoints
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / COMPLETE).exists())


def read_manifest(results: Path, seq: int) -> dict:
    """The manifest of checkpoint ``seq``; :class:`~d4p_hpc.errors.UntrustedFileError`, OSError or
    ValueError (not JSON) if it cannot be read."""
    with open_private(directory(results, seq) / COMPLETE, "checkpoint manifest") as fh:
        found = json.load(fh)
    if not isinstance(found, dict):
        raise ValueError(f"it holds a JSON {type(found).__name__}, not an object")
    return found


def _manifests(results: Path) -> list[dict]:
    """The manifests of the complete checkpoints that can be read, oldest first."""
    found = []
    for seq in complete_seqs(results):
        try:
            found.append(read_manifest(results, seq))
        except (OSError, ValueError, UntrustedFileError):
            continue
    return found


def latest(results: Path) -> dict | None:
    """The newest manifest that can be read, or None."""
    found = _manifests(results)
    return found[-1] if found else None


#: a run's own stop after its last checkpoint, and the submission of its successor
STOP_SECONDS = 10.0


def signal_seconds_needed(results: Path | None) -> float:
    """How long before the walltime the signal must come for the run to take its checkpoint, stop
    and (``--requeue``) submit its successor: twice the longest checkpoint measured in ``results``
    (None: none measured yet), plus :data:`STOP_SECONDS`."""
    measured = [m.get("seconds", 0.0) for m in _manifests(results)] if results else []
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
        """The items in flight at the checkpoint, to instances ``gids`` (all if None), in the order to
        process them: an instance's in channel order, and those to a downstream instance first (gids
        are in topological order). Processing one makes its instance send on, and what it sends comes
        after the items already in flight to the receiver: a receiver in the same process (simple,
        or a resume on fewer processes) has it at once, not behind them on a channel."""
        entries = (pickle.loads(e) for part in self.parts for e in part.get("in_flight", []))
        return sorted((e for e in entries if gids is None or e[0] in gids), key=lambda e: -e[0])

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
    """The newest complete checkpoint of ``results`` that is whole (see the module docstring),
    saying on stderr which newer ones it skips and why; or checkpoint ``seq``, which must be whole
    (a Redis worker loads the one its driver chose). Reads only: a
    :class:`~d4p_hpc.errors.ResumeError` leaves everything as it was."""
    done = complete_seqs(results)
    if not done:
        raise ResumeError(f"{results} has no complete checkpoint to resume from: run with --checkpoint-every "
                          "SECONDS (or submit with --requeue N) to take them")
    if seq is not None:
        found = _whole(results, seq) if seq in done else "it is not complete"
        if isinstance(found, str):
            raise ResumeError(f"checkpoint {seq} of {results} cannot be used: {found}")
        return found
    skipped: list[tuple[int, str]] = []
    for seq in reversed(done):
        found = _whole(results, seq)
        if isinstance(found, Restored):
            if not settings.quiet():
                for newer, why in skipped:
                    print(f"checkpoint {newer} of {results} is not used ({why}): resuming from checkpoint {seq}",
                          file=sys.stderr)
            return found
        skipped.append((seq, found))
    raise ResumeError(f"no checkpoint of {results} can be resumed from ("
                      + "; ".join(f"checkpoint {newer}: {why}" for newer, why in skipped)
                      + "); nothing was changed: start a new run")


def _whole(results: Path, seq: int) -> Restored | str:
    """Checkpoint ``seq`` loaded, or why it cannot be used (one clause)."""
    d = directory(results, seq)
    try:
        manifest = read_manifest(results, seq)
    except (OSError, ValueError) as exc:  # an UntrustedFileError is no damage: it refuses the resume
        return f"{COMPLETE} cannot be read: {getattr(exc, 'strerror', None) or exc}"
    if manifest.get("format") != FORMAT:
        raise ResumeError(f"checkpoint {seq} of {results} has format {manifest.get('format')}; this d4p-hpc reads "
                          f"format {FORMAT}: resume with the d4p-hpc version that wrote it, or start a new run")
    listed = manifest.get("parts")
    if not isinstance(listed, dict) or not listed:
        return f"its {COMPLETE} lists no parts"
    on_disk = {p.name for p in d.glob("part-*.pkl")}
    for name in sorted(set(listed) ^ on_disk):
        return f"{name} is missing" if name in listed else f"{name} is not in its {COMPLETE}"
    parts = []
    for name, recorded in sorted(listed.items()):
        part = _part(d / name, seq, recorded)
        if isinstance(part, str):
            return part
        parts.append(part)
    restored = Restored(seq, manifest, parts)
    workers = manifest.get("workers")  # the dynamic mappings: the driver's part and one per worker
    if workers is not None and {p["proc"] for p in parts} != {0, *workers}:
        return f"its parts are not those of the driver and workers {workers}"
    for rel, size in sorted(restored.sizes().items()):
        where = Path(rel)
        if where.is_absolute() or ".." in where.parts or where.parts[:1] != (Layout.OUTPUTS,):
            return f"it names {rel}, which is not an output part file"
        have = (results / where).stat().st_size if (results / where).exists() else 0
        if have < size:
            return (f"{rel} has {have} bytes and the checkpoint records {size}: what had not reached the disk "
                    "was lost in a crash")
    return restored


def _part(path: Path, seq: int, recorded: Any) -> dict | str:
    """The part at ``path`` of checkpoint ``seq``, or why it cannot be used."""
    try:
        with open_private(path, "checkpoint part") as fh:
            data = fh.read()
    except OSError as exc:  # an UntrustedFileError is no damage: it refuses the resume, not falls back
        return f"{path.name} cannot be read: {exc.strerror}"
    digest = hashlib.sha256(data).hexdigest()
    if not isinstance(recorded, dict) or (len(data), digest) != (recorded.get("bytes"), recorded.get("sha256")):
        return (f"{path.name} has {len(data)} bytes (sha256 {digest[:12]}), not those its {COMPLETE} records: "
                "it was cut short or changed")
    try:
        part = pickle.loads(data)
    except Exception as exc:  # anything may be raised by a pickle that is not one
        return f"{path.name} does not load ({type(exc).__name__}: {exc})"
    if not isinstance(part, dict) or (part.get("format"), part.get("seq"), part.get("proc")) != \
            (FORMAT, seq, int(path.name[5:10])):
        return f"{path.name} is not the part of process {int(path.name[5:10])} of checkpoint {seq} in format {FORMAT}"
    return part


def read_part(path: Path) -> dict:
    with open_private(path, "checkpoint part") as fh:
        return pickle.load(fh)


def check_resumable(ctx: Any, restored: Restored) -> None:
    """Refuse, in one line, a resume whose graph, inputs or mapping differ from the checkpoint's."""
    current, then = ctx.identity(), restored.manifest.get("identity") or {}
    where = f"checkpoint {restored.seq} of {ctx.results}"
    # (a checkpoint of the version before "layout" is checked by its total of instances alone)
    if set(current) - set(then) - {"layout"}:
        raise ResumeError(f"{where} lacks {', '.join(sorted(set(current) - set(then)))}: it was not written by this "
                          "d4p-hpc version; start a new run instead")
    if current["graph_sha256"] != then["graph_sha256"]:
        raise ResumeError(f"the graph file {ctx.graph_path} has changed since {where} (sha256 "
                          f"{then['graph_sha256'][:12]} then, {str(current['graph_sha256'])[:12]} now): "
                          "a resume must run the same graph; start a new run instead")
    if current["inputs_sha256"] != then["inputs_sha256"]:
        raise ResumeError(f"the inputs differ from those of {where} ({_short(then['inputs'])} then, "
                          f"{_short(current['inputs'])} now): a resume must read the same inputs; "
                          "start a new run instead")
    if current["states"] != then["states"]:
        raise ResumeError(f"{where} was taken under -m {then['mapping']}, whose PE states cannot move to "
                          f"-m {ctx.mapping}; resume with -m {then['mapping']}")
    if current["states"] == "instance" and current["instances"] != then["instances"]:
        raise ResumeError(f"{where} has {then['instances']} PE instances and -m {ctx.mapping} -n {ctx.processes} "
                          f"makes {current['instances']}; resume with -n {then['processes']}")
    if current["states"] == "instance" and then.get("layout") and current["layout"] != then["layout"]:
        key, was, now = next((k, n, current["layout"].get(k)) for k, n in then["layout"].items()
                             if current["layout"].get(k) != n)
        raise ResumeError(f"{where} has PE {key} in {was} instances and -m {ctx.mapping} -n {ctx.processes} gives it "
                          f"{now}: a numprocesses changed since; resume with the numprocesses the run had")
    if current["states"] == "worker" and current["processes"] != then["processes"]:
        raise ResumeError(f"{where} holds the PE copies of {then['processes']} workers; resume with "
                          f"-n {then['processes']}")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def cut_back(results: Path, restored: Restored) -> int:
    """Continue from checkpoint ``restored``: remove every checkpoint newer than it (unfinished,
    or not whole) and what killed writers left, then cut every output part file back to its size in
    the checkpoint (removing parts it does not know): what a segment wrote after its last
    checkpoint is written again by the next one. Every step is durable and may be done again: a
    crash in the middle leaves the same checkpoint to resume from. Returns the number of bytes cut."""
    layout = Layout(results)
    for where in (results, results / Layout.PARTS, layout.checkpoints):
        durable.remove_leftovers(where)
    for d in sorted(layout.checkpoints.iterdir()) if layout.checkpoints.is_dir() else []:
        if d.name.isdigit() and int(d.name) > restored.seq:
            durable.remove_tree(d)
        elif d.name.isdigit():  # a second completer of it killed while it wrote the manifest
            durable.remove_leftovers(d)
    sizes = restored.sizes()
    cut = 0
    for path in sorted(layout.outputs.glob("*/part-*")):
        keep = sizes.get(str(path.relative_to(results)), 0)
        size = path.stat().st_size
        if size > keep:
            cut += size - keep
            if keep:
                durable.truncate(path, keep)
            else:
                durable.unlink(path)
    return cut
