"""The results directory of a run or job: the one owner of its layout, its writers and its readers.

Every name in it is an attribute of :class:`Layout` (in capitals below)::

    DIR/run.json        RUN       what ran and how it ended (:class:`~d4p_hpc.records.RunRecord`)
    DIR/metrics.json    METRICS   per PE instance: items in/out, busy seconds; per run: wall seconds,
                                  items/s (:class:`~d4p_hpc.records.Metrics`)
    DIR/outputs/<PE>.<output>/part-<process>.jsonl    OUTPUTS: one JSON value per line
    DIR/outputs/<PE>.<output>/part-<process>.pickle   pickle frames, for values JSON cannot hold
    DIR/logs/<process>.log      LOGS        what PEs print, per process
    DIR/.parts/                 PARTS       each process's metrics, merged when the run ends
    DIR/timeseries/<process>.jsonl, graph.json   TIMESERIES, GRAPH: samples of the run
                                (written by :mod:`d4p_hpc.mappings.runtime.sampler`)
    DIR/checkpoints/<seq>/      CHECKPOINTS (:mod:`d4p_hpc.mappings.checkpoint`)
    DIR/redis.json              REDIS       how to reach the per-job Redis

and for a job, written before its run starts (``JOB_FILES``)::

    DIR/job.sh, spec.json       SCRIPT, SPEC: the script and the spec it was rendered from
    DIR/job.out, job.err        STDOUT, STDERR: the scheduler's log files, moved in by the script
    DIR/state/<marker>          STATE: submitted, started, finished, cancel_requested (JSON),
                                requeue.log; local.json, nodefile (the local scheduler's)
    DIR/state/segments/<n>/     SEGMENTS: the markers of each earlier job of the run (``ARCHIVED``)

Data written to an output that is connected to nothing is the workflow's
result. Lists and tuples are both stored as JSON arrays. The directory and
everything in it is private to the user (0700/0600): results of a shared
cluster are nobody else's business. Importing this module is cheap: the
submission side reads results with it.

Every record is read checked (:func:`read_run`, :func:`read_metrics`, :func:`read_spec`,
:func:`read_marker`, :func:`read_graph`): each field it has is of the type its shape in
:mod:`d4p_hpc.records` declares, or a :class:`~d4p_hpc.errors.ResultsError` names the file and the field in one line, so
that no reader meets a field of another type. A sample line that is not one is skipped and
counted (:func:`read_series`). A pickle part is unpickled only if :mod:`d4p_hpc.trust` allows it,
else read as plain data; its items are counted without unpickling.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from d4p_hpc import durable, units
from d4p_hpc.records import (JSON_KINDS, Graph, Marker, Metrics, RunRecord, Sample, SampleHeader, SpecFile,
                             mismatch)
from d4p_hpc.trust import COPY, DataUnpickler, NotData, open_checked, open_regular, scan_pickles
from d4p_hpc.errors import ResultsError, UntrustedFileError, UsageError


class Layout:
    """The names in a results directory (class attributes) and their paths under one (``Layout(DIR).run``)."""

    RUN = "run.json"
    METRICS = "metrics.json"
    OUTPUTS = "outputs"
    LOGS = "logs"
    #: in LOGS: the stderr of the workers a job script starts, which the driver watches
    WORKERS_LOG = "workers.log"
    PARTS = ".parts"
    TIMESERIES = "timeseries"
    #: in TIMESERIES
    GRAPH = "graph.json"
    CHECKPOINTS = "checkpoints"
    REDIS = "redis.json"
    SCRIPT = "job.sh"
    SPEC = "spec.json"
    #: the stem of the job's scheduler logs: job.out and job.err
    SCHEDULER_LOG = "job"
    STDOUT = f"{SCHEDULER_LOG}.out"
    STDERR = f"{SCHEDULER_LOG}.err"
    STATE = "state"
    # the markers in STATE: written by ``submit`` (jobs sent with plain sbatch/qsub lack it), by the job
    # script first thing and from its exit trap, and by ``d4p-hpc cancel``
    SUBMITTED = "submitted"
    STARTED = "started"
    FINISHED = "finished"
    CANCEL_REQUESTED = "cancel_requested"
    #: in STATE: what a job that requeues itself said while submitting its successor
    REQUEUE_LOG = "requeue.log"
    #: in STATE: the local scheduler's record of the job's process, and its node file
    LOCAL = "local.json"
    NODEFILE = "nodefile"
    #: in STATE: one directory per earlier segment of the run, holding its ARCHIVED markers and SUCCESSOR
    SEGMENTS = "segments"
    ARCHIVED = (SUBMITTED, STARTED, FINISHED, LOCAL, CANCEL_REQUESTED)
    SUCCESSOR = "successor"
    #: the lock its one writer holds (see :func:`d4p_hpc.durable.lock`)
    LOCK = durable.LOCK
    #: what a job puts into its results directory before the run starts (and the lock a run takes
    #: before it checks that the directory holds no other run)
    JOB_FILES = frozenset({SCRIPT, SPEC, STATE, STDOUT, STDERR, REDIS, LOGS, LOCK})

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    @property
    def run(self) -> Path:
        return self.directory / self.RUN

    @property
    def metrics(self) -> Path:
        return self.directory / self.METRICS

    @property
    def outputs(self) -> Path:
        return self.directory / self.OUTPUTS

    @property
    def logs(self) -> Path:
        return self.directory / self.LOGS

    @property
    def timeseries(self) -> Path:
        return self.directory / self.TIMESERIES

    @property
    def graph(self) -> Path:
        return self.timeseries / self.GRAPH

    @property
    def checkpoints(self) -> Path:
        return self.directory / self.CHECKPOINTS

    @property
    def redis(self) -> Path:
        return self.directory / self.REDIS

    @property
    def script(self) -> Path:
        return self.directory / self.SCRIPT

    @property
    def spec(self) -> Path:
        return self.directory / self.SPEC

    @property
    def scheduler_logs(self) -> list[Path]:
        return [self.directory / self.STDOUT, self.directory / self.STDERR]

    @property
    def state(self) -> Path:
        return self.directory / self.STATE

    def marker(self, name: str) -> Path:
        """``state/<name>``."""
        return self.state / name

    @property
    def segments(self) -> Path:
        return self.state / self.SEGMENTS


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


def new_private_dir(path: str | os.PathLike) -> list[Path]:
    """:func:`make_private_dir`, returning the directories it created, outermost first ([] when
    ``path`` was there): what :func:`remove_created` takes away from a run refused at its start."""
    p = Path(path).absolute()
    missing = [d for d in (p, *p.parents) if not os.path.lexists(d)]
    make_private_dir(p)
    return missing[::-1]


def remove_created(paths: list[Path]) -> None:
    """Remove what a run created before it was refused at its start (:func:`new_private_dir`'s
    directories, the files it wrote), last first. A directory is removed only if it is empty, and
    nothing that cannot be removed stops the rest: the refusal is what the user must see."""
    for path in reversed(paths):
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)


def check_new(results: str | os.PathLike) -> None:
    """Refuse a results directory that holds a run, or files that are not a job's.

    Nothing is created: a run writes into an empty or missing directory, or into the directory
    of its own job (``Layout.JOB_FILES``, which the job script wrote first).
    """
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
    if Layout(p).run.exists():
        raise UsageError(f"{p} already holds a run; give a new --results directory")
    try:
        others = sorted(e.name for e in p.iterdir() if e.name not in Layout.JOB_FILES)
    except OSError as exc:
        raise UsageError(f"cannot read --results {p}: {exc.strerror}") from None
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UsageError(f"--results {p} is not empty ({shown}) and is not a run's directory; "
                         "give a new or empty directory")


def write_bytes(path: str | os.PathLike, data: bytes, sync: bool = False) -> None:
    """Write ``data`` atomically (readers never see half a file), mode 0600, through a temporary file
    and a rename; missing parent directories are made, private. ``sync``: durable when this returns
    (a checkpoint must survive the node; see :func:`d4p_hpc.durable.write_file`)."""
    path = Path(path)
    missing, parent = [], path.parent
    while not parent.is_dir():
        missing.append(parent)
        parent = parent.parent
    for parent in reversed(missing):
        make_private_dir(parent)
    durable.write_file(path, data, sync)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON with :func:`write_bytes`."""
    write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


_MOVE_AWAY = "move it away to read the rest of the directory"


def read_json(path: str | os.PathLike, kind: type | None = None) -> Any:
    """Read a JSON file; None if it does not exist.

    A file that cannot be read, is not JSON (cut short by a full disk or a killed writer) or
    is not of ``kind`` raises :class:`~d4p_hpc.errors.ResultsError`, whose one line names it.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc.strerror}; {_MOVE_AWAY}") from None
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors; arrays nested beyond measure
        raise ResultsError(f"{path} is not valid JSON ({str(exc)[:80]}): it was cut short or changed by hand; "
                           f"{_MOVE_AWAY}") from None
    if kind is not None and not isinstance(data, kind):
        raise ResultsError(f"{path} holds {JSON_KINDS.get(type(data), type(data).__name__)}, not "
                           f"{JSON_KINDS[kind]}: it was changed by hand; {_MOVE_AWAY}")
    return data


def read_record(path: str | os.PathLike, shape: Any) -> Any:
    """The JSON object in ``path``, checked against the TypedDict ``shape``: every field it has is
    of its declared type, every required one is there (more fields are allowed: a newer version
    may add some); None if the file does not exist. Anything else raises
    :class:`~d4p_hpc.errors.ResultsError`, whose one line names the file and the field."""
    data = read_json(path, dict)
    if data is not None and (wrong := mismatch(data, shape)) is not None:
        raise ResultsError(f"{path}: {wrong}: the file was changed by hand or written by another version; "
                           f"{_MOVE_AWAY}")
    return data


def read_run(results: str | os.PathLike) -> RunRecord | None:
    """The run record (``run.json``) of a results directory, or None."""
    return read_record(Layout(results).run, RunRecord)


def read_metrics(results: str | os.PathLike) -> Metrics | None:
    """The metrics (``metrics.json``) of a results directory, or None."""
    return read_record(Layout(results).metrics, Metrics)


def read_spec(results: str | os.PathLike) -> SpecFile | None:
    """A job's ``spec.json``, or None (a ``d4p-hpc run``, or a job sent with plain sbatch/qsub)."""
    return read_record(Layout(results).spec, SpecFile)


def read_marker(path: str | os.PathLike) -> Marker | None:
    """A state marker (``Layout(DIR).marker(name)``, or one archived with a segment), or None."""
    return read_record(path, Marker)


def output_dir(results: str | os.PathLike, pe: str, output: str) -> Path:
    """Where the parts of output ``output`` of PE ``pe`` are stored."""
    return Layout(results).outputs / f"{pe}.{output}"


def list_outputs(results: str | os.PathLike) -> list[tuple[str, str]]:
    """The (PE, output) pairs that have stored results."""
    base = Layout(results).outputs
    if not base.is_dir():
        return []
    pairs = []
    for d in sorted(base.iterdir()):
        if d.is_dir() and "." in d.name:
            pe, _, output = d.name.rpartition(".")
            pairs.append((pe, output))
    return pairs


def output_items(results: str | os.PathLike, pe: str, output: str) -> Iterator[Any]:
    """Yield every stored item of ``pe.output`` (JSON parts first, then pickle parts).

    A pickle part is unpickled only if it passes the trust check (:mod:`d4p_hpc.trust`); the part
    of another user (or one in a directory others can write) is read as plain data, and an item
    that is not plain data is refused in one line."""
    d = output_dir(results, pe, output)
    for part in sorted(d.glob("part-*.jsonl")):
        with _opened(part, open_regular) as raw:
            for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8", errors="replace"), 1):
                if line.strip():
                    try:
                        item = json.loads(line)
                    except (ValueError, RecursionError):
                        raise ResultsError(f"{part} line {number} is not valid JSON: the part was cut short "
                                           "(a full disk?) or changed; the items before it are intact") from None
                    yield item
    for part in sorted(d.glob("part-*.pickle")):
        yield from _pickled(part)


def _pickled(part: Path) -> Iterator[Any]:
    with _opened(part, open_checked) as (fh, refused):
        number = 0
        while True:
            try:
                # one unpickler an item: each pickle has its own memo
                item = pickle.Unpickler(fh).load() if refused is None else DataUnpickler(fh).load()
            except EOFError:
                return
            except NotData as exc:
                assert refused is not None
                raise UntrustedFileError(
                    f"{part}: item {number + 1} names {exc.what}, not plain data, and d4p-hpc reads only plain data "
                    f"from a file that {refused.why}: ask its owner to export the output (d4p-hpc results DIR "
                    f"--export PE.OUTPUT FILE writes JSON lines), or {COPY}") from None
            except Exception as exc:  # a part cut short or changed: anything may be raised
                raise ResultsError(f"{part} cannot be read past item {number} (byte {fh.tell()}): "
                                   f"{type(exc).__name__}: {str(exc)[:80]} (cut short, or it needs a module this "
                                   "Python lacks)") from None
            number += 1
            yield item


@contextlib.contextmanager
def _opened(part: Path, how: Callable[[Path, str], Any]) -> Iterator[Any]:
    """``how(part, "output part")``, closed after; a part that cannot be opened is one error line."""
    try:
        opened = how(part, "output part")
    except OSError as exc:
        raise ResultsError(f"cannot read {part}: {exc.strerror}") from None
    try:
        yield opened
    finally:
        (opened[0] if isinstance(opened, tuple) else opened).close()


def iter_outputs(results: str | os.PathLike) -> dict[tuple[str, str], Iterator[Any]]:
    """Map every (PE, output) of a results directory to an iterator over its items."""
    return {pair: output_items(results, *pair) for pair in list_outputs(results)}


def count_items(results: str | os.PathLike, pe: str, output: str) -> int:
    """Number of stored items of ``pe.output``, read without parsing JSON or unpickling anything
    (whoever wrote the parts: see :func:`d4p_hpc.trust.scan_pickles`)."""
    d = output_dir(results, pe, output)
    n = 0
    for part in d.glob("part-*.jsonl"):
        with _opened(part, open_regular) as fh:
            n += sum(1 for line in fh if line.strip())
    for part in d.glob("part-*.pickle"):
        with _opened(part, open_regular) as fh:
            count, end = scan_pickles(fh)
            size = os.fstat(fh.fileno()).st_size
        if end < size:
            raise ResultsError(f"{part} cannot be read past item {count} (byte {end} of {size}): the part was cut "
                               "short (a full disk?) or changed; the items before it are intact")
        n += count
    return n


# --- the samples of a run (format: d4p_hpc.mappings.runtime.sampler) -----------------------------
class ResultsView:
    """What a job or a run of the Python API reads of its results directory (``directory``)."""

    if TYPE_CHECKING:  # (a property of a job, a field of a run here: neither is this class's to set)
        @property
        def directory(self) -> Path: ...

    @property
    def log_directory(self) -> Path:
        """Where each process of the run writes its log."""
        return Layout(self.directory).logs

    @property
    def record_file(self) -> Path:
        """The run's record (``run.json``): state, error and traceback, segments, notices."""
        return Layout(self.directory).run

    def record(self) -> dict[str, Any]:
        """The run's record; {} before the run starts (one that cannot be read raises
        :class:`~d4p_hpc.errors.ResultsError`, naming it)."""
        return dict(read_run(self.directory) or {})

    def metrics(self) -> dict[str, Any]:
        """The run's ``metrics.json`` (items, rates, per-PE counts and busy time); {} before it ends."""
        return dict(read_metrics(self.directory) or {})

    def counts(self) -> dict[str, tuple[int, Path]]:
        """``"PE.output"`` -> (its items, counted without reading them; the folder of its parts)."""
        return output_counts(self.directory)


def output_counts(results: str | os.PathLike) -> dict[str, tuple[int, Path]]:
    """``"PE.output"`` -> (its items, counted as :func:`count_items` counts them; the folder of its parts)."""
    return {f"{pe}.{output}": (count_items(results, pe, output), output_dir(results, pe, output))
            for pe, output in list_outputs(results)}


def last_sample(path: Path) -> dict | None:
    """The newest sample of one process's file (reads only its end); None if it has none yet, or
    cannot be read (the progress line does without)."""
    try:
        with open_regular(path, "sample file") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 65536))
            lines = fh.read().splitlines()
    except (OSError, UntrustedFileError):
        return None
    return next((record for record in map(_sample, reversed(lines)) if record is not None), None)


def last_samples(results: str | os.PathLike) -> dict[int, dict]:
    """The newest sample of every process of the run in ``results``, by process."""
    found = {}
    for proc, path in _sample_files(results):
        record = last_sample(path)
        if record is not None:
            found[proc] = record
    return found


def read_series(results: str | os.PathLike, skipped: list[str] | None = None) -> dict[int, tuple[dict, list[dict]]]:
    """Every process's header and samples, by process.

    A line that is not a sample (changed by hand, or cut short by a crash) is left out and counted
    in a one-line note appended to ``skipped``; the last line, which the process may still be
    writing, is left out silently. A file that cannot be read is left out with a note."""
    found = {}
    for proc, path in _sample_files(results):
        try:
            with open_regular(path, "sample file") as fh:
                lines = fh.read().splitlines()
        except (OSError, UntrustedFileError) as exc:
            if skipped is not None:
                skipped.append(f"{path}: {getattr(exc, 'strerror', None) or exc}; left out")
            continue
        head: dict | None = None
        samples, bad = [], 0
        for number, line in enumerate(lines, 1):
            if (sample := _sample(line)) is not None:
                samples.append(sample)
            elif (header := _header(line)) is not None:
                head = head or header
            elif number < len(lines):
                bad += 1
        if bad and skipped is not None:
            skipped.append(f"{path}: {units.plural(bad, 'line')} of {len(lines)} skipped: not samples (changed by "
                           "hand, or cut short by a crash)")
        if head is not None or samples:
            found[proc] = (head or {}, samples)
    return found


def _sample_files(results: str | os.PathLike) -> list[tuple[int, Path]]:
    return [(int(path.stem), path) for path in sorted(Layout(results).timeseries.glob("*.jsonl"))
            if path.stem.isdigit()]


def _sample(line: bytes | str) -> dict | None:
    record = _json_line(line)
    return record if isinstance(record, dict) and "i" in record and mismatch(record, Sample) is None else None


def _header(line: bytes | str) -> dict | None:
    record = _json_line(line)
    return record if isinstance(record, dict) and "i" not in record and mismatch(record, SampleHeader) is None \
        else None


def _json_line(line: bytes | str) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):  # cut by a seek or a crash, still being written, not UTF-8
        return None


def read_graph(results: str | os.PathLike) -> dict:
    """``timeseries/graph.json`` ({} before process 0 has written it)."""
    return read_record(Layout(results).graph, Graph) or {}
