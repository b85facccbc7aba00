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
from collections.abc import Iterator
from typing import Any

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
OUTPUTS = "outputs"
LOGS = "logs"
PARTS = ".parts"


def now() -> str:
    """The current time as ISO 8601 with the local offset."""
    return _dt.datetime.now().astimezone().isoformat(timespec="milliseconds")


def make_private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) as 0700; a directory that already exists keeps its mode.

    A group-shared (setgid) project directory given as ``--results`` must stay as its owner set
    it: only what d4p-hpc creates is made private (files are 0600 whatever the directory).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(p, 0o700)
    except FileExistsError:
        if not p.is_dir():
            raise
        return p
    os.chmod(p, 0o700)  # a umask may have taken owner bits away
    return p


# what a job puts into its results directory before the run starts (the per-job Redis: its
# connection file and its log)
JOB_FILES = frozenset({"job.sh", "spec.json", "state", "job.out", "job.err", "redis.json", LOGS})


def check_new(results: str | os.PathLike) -> None:
    """Refuse a results directory that holds a run, or files that are not a job's.

    Nothing is created: a run writes into an empty or missing directory, or into the directory
    of its own job (``JOB_FILES``, which the job script wrote first).
    """
    from d4p_hpc.errors import UsageError

    p = Path(results)
    if not p.exists():
        parent = p.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"cannot create the results directory {p}: {parent} is not writable; "
                             "give a writable --results directory (or --results-root)")
        return
    if not p.is_dir():
        raise UsageError(f"--results {p} is a file, not a directory; give a new directory")
    if (p / RUN_FILE).exists():
        raise UsageError(f"{p} already holds a run; give a new --results directory")
    try:
        others = sorted(e.name for e in p.iterdir() if e.name not in JOB_FILES)
    except OSError as exc:
        raise UsageError(f"cannot read --results {p}: {exc.strerror}") from None
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UsageError(f"--results {p} is not empty ({shown}) and is not a run's directory; "
                         "give a new or empty directory")


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON atomically (readers never see half a file), mode 0600."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half file behind
        raise


_JSON_KINDS = {dict: "a JSON object", list: "a JSON array", str: "a JSON string", int: "a JSON number",
               float: "a JSON number", bool: "true or false", type(None): "null"}


def read_json(path: str | os.PathLike, kind: type | None = None) -> Any:
    """Read a JSON file; None if it does not exist.

    A file that cannot be read, is not JSON (cut short by a full disk or a killed writer) or
    is not of ``kind`` raises :class:`~d4p_hpc.errors.ResultsError`, whose one line names it.
    """
    from d4p_hpc.errors import ResultsError

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # JSON and UTF-8 errors
        raise ResultsError(f"{path} is not valid JSON ({exc}): it was cut short or changed by hand; "
                           "move it away to read the rest of the directory") from None
    if kind is not None and not isinstance(data, kind):
        raise ResultsError(f"{path} holds {_JSON_KINDS.get(type(data), type(data).__name__)}, not "
                           f"{_JSON_KINDS[kind]}: it was changed by hand; move it away to read the rest of "
                           "the directory")
    return data


def read_run(results: str | os.PathLike) -> dict | None:
    """The run record (``run.json``) of a results directory, or None."""
    return read_json(Path(results) / RUN_FILE, dict)


def read_metrics(results: str | os.PathLike) -> dict | None:
    """The metrics (``metrics.json``) of a results directory, or None."""
    return read_json(Path(results) / METRICS_FILE, dict)


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
    from d4p_hpc.errors import ResultsError

    d = output_dir(results, pe, output)
    for part in sorted(d.glob("part-*.jsonl")):
        with open(part, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        item = json.loads(line)
                    except ValueError:
                        raise ResultsError(f"{part} line {number} is not valid JSON: the part was cut short "
                                           "(a full disk?) or changed; the items before it are intact") from None
                    yield item
    for part in sorted(d.glob("part-*.pickle")):
        yield from _pickled(part)


def _pickled(part: Path) -> Iterator[Any]:
    from d4p_hpc.errors import ResultsError

    with open(part, "rb") as fh:
        while True:
            try:
                item = pickle.load(fh)
            except EOFError:
                return
            except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError) as exc:
                raise ResultsError(f"{part} cannot be read past byte {fh.tell()}: {exc} (cut short, or "
                                   "it needs a module this Python lacks)") from None
            yield item


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
        n += sum(1 for _ in _pickled(part))
    return n
