"""Checkpoints on disk: their format, writing and reading them, and what a resume must match.

A checkpoint is ``DIR/checkpoints/<seq>/``: one ``part-<process>.pkl`` per process of the run and,
once all of them are written, ``complete.json``, its manifest (what the checkpoint is of, its size
and the time it took). Every file is written to a temporary name and renamed (0600): a checkpoint
either is complete or is not used. The two newest complete ones are kept.

A part holds, for the PE instances of its process: the state of each (see :mod:`.pe_state`),
whether it has finished, how many end-of-stream markers it still expects, how many inputs each
root has consumed, the items *in flight* to it, and the size of every output part file it writes.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d4p_hpc.results import Layout, now, write_bytes
from d4p_hpc.errors import ResumeError

#: Version of the format of parts and manifests: a resume refuses another one.
FORMAT = 1
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
    parts = sorted(d.glob("part-*.pkl"))
    size = sum(p.stat().st_size for p in parts)
    procs = {f"part-{p.name[5:10]}." for p in parts}
    dormant = {str(p.relative_to(results)): p.stat().st_size for p in Layout(results).outputs.glob("*/part-*")
               if p.name[:11] not in procs}
    manifest = {"format": FORMAT, "seq": seq, "time": now(), "bytes": size, "dormant": dormant, **manifest}
    write_bytes(d / COMPLETE, (json.dumps(manifest, indent=1) + "\n").encode(), sync=True)
    done = complete_seqs(results)
    for old in sorted(p for p in Layout(results).checkpoints.iterdir() if p.name.isdigit()):
        if int(old.name) < seq and (int(old.name) not in done[-KEEP:]):
            shutil.rmtree(old, ignore_errors=True)


def is_complete(results: Path, seq: int) -> bool:
    return (directory(results, seq) / COMPLETE).exists()


def complete_seqs(results: Path) -> list[int]:
    """The sequence numbers of the complete checkpoints in ``results``, oldest first."""
    root = Layout(results).checkpoints
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / COMPLETE).exists())


def read_manifest(results: Path, seq: int) -> dict:
    return json.loads((directory(results, seq) / COMPLETE).read_text())


def latest(results: Path) -> dict | None:
    """The manifest of the newest complete checkpoint, or None."""
    done = complete_seqs(results)
    return read_manifest(results, done[-1]) if done else None


#: a run's own stop after its last checkpoint, and the submission of its successor
STOP_SECONDS = 10.0


def signal_seconds_needed(results: Path | None) -> float:
    """How long before the walltime the signal must come for the run to take its checkpoint, stop
    and (``--requeue``) submit its successor: twice the longest checkpoint measured in ``results``
    (None: none measured yet), plus :data:`STOP_SECONDS`."""
    measured = [read_manifest(results, seq).get("seconds", 0.0) for seq in complete_seqs(results)] if results else []
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
    done = complete_seqs(results)
    if not done:
        raise ResumeError(f"{results} has no complete checkpoint to resume from: run with --checkpoint-every "
                          "SECONDS (or submit with --requeue N) to take them")
    seq = done[-1] if seq is None else seq
    found = read_manifest(results, seq)
    if found.get("format") != FORMAT:
        raise ResumeError(f"checkpoint {seq} of {results} has format {found.get('format')}; this d4p-hpc reads "
                          f"format {FORMAT}: resume with the d4p-hpc version that wrote it")
    return Restored(seq, found, [read_part(path) for path in sorted(directory(results, seq).glob("part-*.pkl"))])


def read_part(path: Path) -> dict:
    with open(path, "rb") as fh:
        return pickle.load(fh)


def check_resumable(ctx: Any, restored: Restored) -> None:
    """Refuse, in one line, a resume whose graph, inputs or mapping differ from the checkpoint's."""
    current, then = ctx.identity(), restored.manifest.get("identity") or {}
    where = f"checkpoint {restored.seq} of {ctx.results}"
    if set(current) - set(then):
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
    if current["states"] == "worker" and current["processes"] != then["processes"]:
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
    for path in sorted(Layout(results).outputs.glob("*/part-*")):
        keep = sizes.get(str(path.relative_to(results)), 0)
        size = path.stat().st_size
        if size > keep:
            cut += size - keep
            if keep:
                os.truncate(path, keep)
            else:
                path.unlink()
    return cut
