"""The results directory of a run: the one owner of its layout.

::

    DIR/run.json       what ran and how it ended (state, exit code, error)
    DIR/metrics.json   per PE instance: items in/out, busy seconds; per run: wall seconds, items/s
    DIR/outputs/<PE>.<output>/part-<process>.jsonl    one JSON value per line
    DIR/outputs/<PE>.<output>/part-<process>.pickle   pickle frames, for values JSON cannot hold
    DIR/logs/<process>.log                            what PEs print, per process

Data written to an output that is connected to nothing is the workflow's
result. Lists and tuples are both stored as JSON arrays. The directory and
everything in it is private to the user (0700/0600): results of a shared
cluster are nobody else's business. Importing this module is cheap: the
submission side reads results with it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pickle
from pathlib import Path
from typing import Any, Iterator

STATES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
OUTPUTS = "outputs"
LOGS = "logs"
PARTS = ".parts"


def now() -> str:
    """The current time as ISO 8601 with the local offset."""
    return _dt.datetime.now().astimezone().isoformat(timespec="milliseconds")


def make_private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) and make it 0700."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    os.chmod(p, 0o700)
    return p


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON atomically (readers never see half a file), mode 0600."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; None if it does not exist."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def read_run(results: str | os.PathLike) -> dict | None:
    """The run record (``run.json``) of a results directory, or None."""
    return read_json(Path(results) / RUN_FILE)


def read_metrics(results: str | os.PathLike) -> dict | None:
    """The metrics (``metrics.json``) of a results directory, or None."""
    return read_json(Path(results) / METRICS_FILE)


def output_dir(results: str | os.PathLike, pe: str, output: str) -> Path:
    """Where the parts of output ``output`` of PE ``pe`` are stored."""
    return Path(results) / OUTPUTS / f"{pe}.{output}"


def list_outputs(results: str | os.PathLike) -> list[tuple[str, str]]:
    """The (PE, output) pairs that have stored results."""
    base = Path(results) / OUTPUTS
    if not base.is_dir():
        return []
    pairs = []
    for d in sorted(base.iterdir()):
        if d.is_dir() and "." in d.name:
            pe, _, output = d.name.rpartition(".")
            pairs.append((pe, output))
    return pairs


def output_items(results: str | os.PathLike, pe: str, output: str) -> Iterator[Any]:
    """Yield every stored item of ``pe.output`` (JSON parts first, then pickle parts)."""
    d = output_dir(results, pe, output)
    for part in sorted(d.glob("part-*.jsonl")):
        with open(part) as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
    for part in sorted(d.glob("part-*.pickle")):
        with open(part, "rb") as fh:
            while True:
                try:
                    yield pickle.load(fh)
                except EOFError:
                    break


def iter_outputs(results: str | os.PathLike) -> dict[tuple[str, str], Iterator[Any]]:
    """Map every (PE, output) of a results directory to an iterator over its items."""
    return {pair: output_items(results, *pair) for pair in list_outputs(results)}


def count_items(results: str | os.PathLike, pe: str, output: str) -> int:
    """Number of stored items of ``pe.output``, without unpickling JSON lines."""
    d = output_dir(results, pe, output)
    n = 0
    for part in d.glob("part-*.jsonl"):
        with open(part, "rb") as fh:
            n += sum(1 for line in fh if line.strip())
    for part in d.glob("part-*.pickle"):
        with open(part, "rb") as fh:
            while True:
                try:
                    pickle.load(fh)
                except EOFError:
                    break
                n += 1
    return n
