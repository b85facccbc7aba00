"""The results directory of a run or job: the one owner of its layout, its writers and its readers.

Every name in it is an attribute of :class:`Layout` (in capitals below)::

    DIR/run.json        RUN       what ran and how it ended (:class:`RunRecord`)
    DIR/metrics.json    METRICS   per PE instance: items in/out, busy seconds; per run: wall seconds,
                                  items/s (:class:`Metrics`)
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
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

from d4p_hpc.errors import ResultsError, UsageError


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
    ARCHIVED = (SUBMITTED, STARTED, FINISHED, LOCAL)
    SUCCESSOR = "successor"
    #: what a job puts into its results directory before the run starts
    JOB_FILES = frozenset({SCRIPT, SPEC, STATE, STDOUT, STDERR, REDIS, LOGS})

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


class RunError(TypedDict):
    """``run.json``'s ``error``: the PE that raised (None: the run itself failed) and where."""

    pe: str | None
    process: int | None
    traceback: str


class Segment(TypedDict, total=False):
    """What ``run.json`` keeps of each earlier segment of a resumed run."""

    job_id: str | None
    started: str
    ended: str | None
    state: str
    exit_code: int | None
    items: int | None
    wall_seconds: float | None
    resumed_from: int | None


class RunRecord(TypedDict, total=False):
    """``run.json``: written RUNNING when the run starts, and again with how it ended."""

    graph: str
    graph_sha256: str | None
    attr: str | None
    mapping: str
    processes: int
    instances: int
    inputs: Any
    notices: list[str]
    d4p_hpc_version: str
    #: dispel4py's own names of the PEs, by PE
    pe_ids: dict[str, str]
    # who writes it: what tells a run whose processes are gone from a live one (see liveness.run_alive)
    host: str
    pid: int
    pid_token: str | None
    #: the job it runs in ($D4P_HPC_JOB_ID)
    job_id: str | None
    checkpoint_every: float | None
    checkpoints: bool
    started: str
    ended: str | None
    #: RUNNING, COMPLETED, FAILED, CANCELLED or TIMEOUT
    state: str
    exit_code: int | None
    error: RunError | None
    segments: list[Segment]
    resumed_from: int | None
    wall_seconds: float
    items: int
    #: the manifest of the newest complete checkpoint
    checkpoint: dict | None


class InstanceMetrics(TypedDict):
    """One PE instance in ``metrics.json``."""

    pe: str
    instance: int
    process: int
    items_in: int
    items_out: int
    busy_seconds: float


class PEMetrics(TypedDict):
    """One PE in ``metrics.json``: its instances and their sums."""

    instances: list[InstanceMetrics]
    items_in: int
    items_out: int
    busy_seconds: float


class ProcessMetrics(TypedDict):
    """One process in ``metrics.json``."""

    process: int
    host: str
    pid: int
    max_rss_mb: float | None
    state: str


class Metrics(TypedDict, total=False):
    """``metrics.json``, written when the run ends; the dynamic mappings add the keys after ``process_list``."""

    mapping: str
    processes: int
    wall_seconds: float
    items: int
    items_per_second: float | None
    pes: dict[str, PEMetrics]
    process_list: list[ProcessMetrics]
    backlog_peak: int
    backlog_limit: int
    #: ``[[seconds since the start, workers], ...]`` (dyn_auto_*)
    pool_size: list[list[float]]
    pool_max: int
    autoscale_policy: str
    workers: int
    redeliveries: int
    truncated_parts: int
    redis_used_memory_peak_mb: float


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
    and a rename; missing parent directories are made, private. ``sync``: on disk before the rename
    (a checkpoint must survive the node)."""
    path = Path(path)
    missing, parent = [], path.parent
    while not parent.is_dir():
        missing.append(parent)
        parent = parent.parent
    for parent in reversed(missing):
        make_private_dir(parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half file behind
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON with :func:`write_bytes`."""
    write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


_JSON_KINDS = {dict: "a JSON object", list: "a JSON array", str: "a JSON string", int: "a JSON number",
               float: "a JSON number", bool: "true or false", type(None): "null"}


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
        raise ResultsError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # JSON and UTF-8 errors
        raise ResultsError(f"{path} is not valid JSON ({exc}): it was cut short or changed by hand; "
                           "move it away to read the rest of the directory") from None
    if kind is not None and not isinstance(data, kind):
        raise ResultsError(f"{path} holds {_JSON_KINDS.get(type(data), type(data).__name__)}, not "
                           f"{_JSON_KINDS[kind]}: it was changed by hand; move it away to read the rest of "
                           "the directory")
    return data


def read_run(results: str | os.PathLike) -> RunRecord | None:
    """The run record (``run.json``) of a results directory, or None."""
    return read_json(Layout(results).run, dict)


def read_metrics(results: str | os.PathLike) -> Metrics | None:
    """The metrics (``metrics.json``) of a results directory, or None."""
    return read_json(Layout(results).metrics, dict)


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
    """Yield every stored item of ``pe.output`` (JSON parts first, then pickle parts)."""
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


# --- the samples of a run (format: d4p_hpc.mappings.runtime.sampler) -----------------------------
def last_sample(path: Path) -> dict | None:
    """The newest complete sample of one process's file (reads only its end)."""
    with open(path, "rb") as fh:
        fh.seek(max(0, fh.seek(0, 2) - 65536))
        lines = fh.read().splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:  # cut by the seek, or still being written
            continue
        if "i" in record:
            return record
    return None


def last_samples(results: str | os.PathLike) -> dict[int, dict]:
    """The newest sample of every process of the run in ``results``, by process."""
    found = {}
    for path in sorted(Layout(results).timeseries.glob("*.jsonl")):
        record = last_sample(path)
        if record is not None:
            found[int(path.stem)] = record
    return found


def read_series(results: str | os.PathLike) -> dict[int, tuple[dict, list[dict]]]:
    """Every process's header and samples, by process."""
    found = {}
    for path in sorted(Layout(results).timeseries.glob("*.jsonl")):
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        if records:
            found[int(path.stem)] = (records[0], [r for r in records if "i" in r])
    return found


def read_graph(results: str | os.PathLike) -> dict:
    """``timeseries/graph.json`` ({} before process 0 has written it)."""
    return read_json(Layout(results).graph) or {}
