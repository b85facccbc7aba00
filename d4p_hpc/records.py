"""The records of a results directory: the shape of each JSON file in it, as TypedDicts, and
:func:`mismatch`, which tells where data read from one is not of its shape.

A reader of a record (:mod:`d4p_hpc.results`) checks it against its shape before anyone uses a
field: every field the data has must be of its declared type (an int is not a bool, a float is
finite), every required one must be there, and more fields are allowed (a newer version may add
some; a list may have more items than a tuple declares, for the same reason). A writer that adds
a field declares it here.
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
from typing import Any, Literal, TypedDict

#: how a job or a run ended
Ended = Literal["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"]


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
    state: Ended
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
    state: Literal["RUNNING"] | Ended
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


class SegmentMetrics(TypedDict, total=False):
    """``metrics.json``'s entry for one segment of a resumed run (``mappings/runtime/totals.py``); only
    what is read of it is declared (and checked): a killed segment's figures come from its samples,
    whose fields may be null."""

    job_id: str | None
    items: int | None


class Metrics(TypedDict, total=False):
    """``metrics.json``, written when the run ends; the dynamic mappings add the keys after ``roots_spread``."""

    mapping: str
    processes: int
    wall_seconds: float
    items: int
    items_per_second: float | None
    pes: dict[str, PEMetrics]
    process_list: list[ProcessMetrics]
    #: the root PEs whose calls were spread (found stateless) over the workers, or, under multi and
    #: mpi, over their instances
    roots_spread: list[str]
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
    segments: list[SegmentMetrics]


class Marker(TypedDict, total=False):
    """A file of ``state/`` (or of an archived segment): ``submitted`` (``submit``), ``started`` and
    ``finished`` (the job script), ``cancel_requested`` (``d4p-hpc cancel``), ``local.json`` (the
    local scheduler), ``successor`` (``resume``); each has the fields its writer knows."""

    time: str
    epoch: float
    job_id: str
    scheduler: str
    argv: list[str]
    cwd: str
    host: str
    pid: int
    pid_token: str | None
    state: Ended
    exit_code: int | None
    reason: str


class SpecFields(TypedDict, total=False):
    """The fields of a job's spec that the inspection side reads (the whole spec, and its checks,
    are :class:`d4p_hpc.submission.spec.JobSpec`'s)."""

    job_name: str
    scheduler: str
    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    memory: str | None
    requeue: int


class _SpecFileFields(TypedDict):
    spec: SpecFields


class SpecFile(_SpecFileFields, total=False):
    """``spec.json``: the spec a job was rendered from, and where each value came from."""

    sources: dict[str, Any]


class _GraphPEFields(TypedDict):
    name: str


class GraphPE(_GraphPEFields, total=False):
    """A PE in ``timeseries/graph.json``."""

    instances: int
    root: bool
    #: how many inputs the root is fed (None: not known ahead)
    inputs: int | None


class GraphEdge(TypedDict, total=False):
    """A connection in ``timeseries/graph.json``."""

    src: str
    output: str
    dst: str
    input: str
    grouping: Any


class Graph(TypedDict, total=False):
    """``timeseries/graph.json``: the plan, as the report and the progress line need it."""

    mapping: str
    processes: int
    pes: list[GraphPE]
    edges: list[GraphEdge]


class SampleHeader(TypedDict, total=False):
    """The line a process writes to ``timeseries/<process>.jsonl`` when it starts sampling."""

    process: int
    host: str
    pid: int
    interval: float
    t: float


class _SampleFields(TypedDict):
    t: float
    cpu: float
    rss: float | None
    sink: int
    i: list[tuple[str, int, int, int, float]]


class Sample(_SampleFields, total=False):
    """A sample line of ``timeseries/<process>.jsonl`` (see :mod:`d4p_hpc.mappings.runtime.sampler`);
    ``i``: per PE instance, its PE, instance, items in, items out, busy seconds."""

    backlog: int
    pool: int
    workers: int


JSON_KINDS = {dict: "a JSON object", list: "a JSON array", str: "a JSON string", int: "a JSON number",
               float: "a JSON number", bool: "true or false", type(None): "null"}


def mismatch(data: Any, shape: Any) -> str | None:
    """Where ``data`` (as JSON gives it) is not of the TypedDict ``shape``, in words
    (``field state is a JSON number (5), not one of RUNNING, ...``); None if it is."""
    wrong = _wrong(data, shape, "")
    if wrong is None:
        return None
    where, expected, value = wrong
    return f"{where or 'it'} is {'missing' if value is _MISSING else _describe(value)}, not {expected}"


_MISSING = object()
_NAMES = {str: "a string", int: "a whole number", float: "a finite number", bool: "true or false", type(None): "null",
          list: "a list", dict: "an object"}


def _wrong(value: Any, hint: Any, where: str) -> tuple[str, str, Any] | None:
    """The first place in ``value`` (as JSON gives it) that is not of type ``hint``: (where, what was
    expected there, what is there); None if there is none."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        arms = [arm for arm in args if arm is not type(None)]
        if value is None and len(arms) < len(args):
            return None
        if len(arms) == 1:  # X | None: say what is wrong inside X
            return _wrong(value, arms[0], where)
        return None if any(_wrong(value, arm, where) is None for arm in arms) else (where, _expected(hint), value)
    if typing.is_typeddict(hint):
        if not isinstance(value, dict):
            return where, _expected(hint), value
        for key, field in _fields(hint).items():
            inner = f"{where}.{key}" if where else f"field {key}"
            if key in value:
                if (found := _wrong(value[key], field, inner)) is not None:
                    return found
            elif key in hint.__required_keys__:
                return inner, _expected(field), _MISSING
        return None
    if origin in (list, tuple, dict) or hint in (list, dict):
        kind = dict if dict in (origin, hint) else list
        if not isinstance(value, kind) or (origin is tuple and len(value) < len(args)):
            return where, _expected(hint), value
        if isinstance(value, dict):
            pairs = ((f"{where}[{json.dumps(key)}]", item, args[1] if args else Any) for key, item in value.items())
        elif origin is tuple:  # more items than declared: a newer version's
            pairs = ((f"{where}[{n}]", item, arg) for n, (item, arg) in enumerate(zip(value, args, strict=False)))
        else:
            pairs = ((f"{where}[{n}]", item, args[0] if args else Any) for n, item in enumerate(value))
        return next((found for inner, item, arg in pairs if (found := _wrong(item, arg, inner)) is not None), None)
    if origin is Literal:
        ok = isinstance(value, str) and value in args
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63
    else:
        ok = isinstance(value, hint)
    return None if ok else (where, _expected(hint), value)


@functools.cache
def _fields(shape: Any) -> dict[str, Any]:
    return typing.get_type_hints(shape)


def _expected(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if all(typing.get_origin(arm) is Literal for arm in args):  # Literal["RUNNING"] | Ended
            return _expected(Literal[tuple(value for arm in args for value in typing.get_args(arm))])
        return " or ".join(_expected(arm) for arm in args)
    if origin is Literal:
        return "one of " + ", ".join(args)
    if typing.is_typeddict(hint):
        return "an object"
    if origin is tuple:
        return f"a list of {len(args)} values"
    return _NAMES.get(origin or hint, str(hint))


def _describe(value: Any) -> str:
    kind = JSON_KINDS.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return kind
    text = json.dumps(value)
    return f"{kind} ({text if len(text) <= 30 else text[:27] + '...'})"


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond any float
        return False
