"""What every mapping does around its own execution: the run record, the
per-process wrapper, and merging per-process metrics into ``metrics.json``."""

from __future__ import annotations

import copy
import hashlib
import os
import resource
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from d4p_hpc import __version__
from d4p_hpc import results as rd
from d4p_hpc.mappings.core import (Interrupted, PEFailed, Runtime, Sink, Transport, ignore_signals,
                                   raise_on_signals, redirect_output)
from d4p_hpc.mappings.plan import Plan


class Aborted(BaseException):
    """Another process of the run failed or was stopped; this one stops too."""


@dataclass
class RunContext:
    """Everything a mapping needs to run one graph; built (and validated) before anything runs."""

    graph: Any
    graph_path: str
    attr: str | None
    mapping: str
    processes: int
    raw_inputs: Any
    results: Path
    plan: Plan
    feeds: dict[int, int | list]
    options: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """How a process, or the whole run, ended."""

    state: str = "COMPLETED"
    signum: int | None = None
    error: dict | None = None

    @property
    def exit_code(self) -> int:
        if self.state == "COMPLETED":
            return 0
        if self.signum:
            return 128 + self.signum
        return 1


def graph_digest(path: str) -> str | None:
    """sha256 of the graph file (None for a module name that is not a file)."""
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def _record(ctx: RunContext) -> dict:
    return {"graph": ctx.graph_path, "graph_sha256": graph_digest(ctx.graph_path), "attr": ctx.attr,
            "mapping": ctx.mapping, "processes": ctx.processes, "instances": ctx.plan.instances,
            "inputs": ctx.raw_inputs, "notices": ctx.plan.notices, "d4p_hpc_version": __version__,
            "host": os.uname().nodename, "pid": os.getpid()}


def begin(ctx: RunContext) -> float:
    """Create the results directory and record the run as RUNNING; return the start time."""
    for sub in ("", rd.LOGS, rd.PARTS, rd.OUTPUTS):
        rd.make_private_dir(ctx.results / sub)
    rd.write_json(ctx.results / rd.RUN_FILE, {**_record(ctx), "started": rd.now(), "ended": None,
                                              "state": "RUNNING", "exit_code": None, "error": None})
    return time.time()


def read_parts(ctx: RunContext) -> list[dict]:
    parts = []
    for path in sorted((ctx.results / rd.PARTS).glob("metrics-*.json")):
        part = rd.read_json(path)
        if part:
            parts.append(part)
    return parts


def combine(outcomes: list[Outcome]) -> Outcome:
    """One outcome for the run: a PE failure wins over a stop, a stop over completion."""
    for o in outcomes:
        if o.error:
            return Outcome("FAILED", None, o.error)
    for o in outcomes:
        if o.state != "COMPLETED":
            return o
    return Outcome()


def end(ctx: RunContext, t0: float, outcome: Outcome, extra: dict | None = None) -> dict:
    """Merge the per-process metrics, write ``metrics.json`` and the final ``run.json``; return the latter."""
    wall = time.time() - t0
    parts = read_parts(ctx)
    instances = [inst for part in parts for inst in part.get("instances", [])]
    pes: dict[str, dict] = {}
    for inst in sorted(instances, key=lambda i: (i["pe"], i["instance"])):
        pe = pes.setdefault(inst["pe"], {"instances": [], "items_in": 0, "items_out": 0, "busy_seconds": 0.0})
        pe["instances"].append(inst)
        for k in ("items_in", "items_out", "busy_seconds"):
            pe[k] += inst[k]
    items = sum(p["items_in"] for p in pes.values())
    metrics = {"mapping": ctx.mapping, "processes": ctx.processes, "wall_seconds": round(wall, 6),
               "items": items, "items_per_second": round(items / wall, 2) if wall > 0 else None, "pes": pes,
               "process_list": [{k: part.get(k) for k in ("process", "host", "pid", "max_rss_mb", "state")}
                                for part in parts]}
    metrics.update(extra or {})
    rd.write_json(ctx.results / rd.METRICS_FILE, metrics)
    record = rd.read_run(ctx.results) or _record(ctx)
    record.update({"ended": rd.now(), "state": outcome.state, "exit_code": outcome.exit_code,
                   "error": outcome.error, "wall_seconds": round(wall, 6)})
    rd.write_json(ctx.results / rd.RUN_FILE, record)
    return record


def write_part(ctx: RunContext, proc: int, stats: list[dict], outcome: Outcome) -> None:
    rd.write_json(ctx.results / rd.PARTS / f"metrics-{proc:05d}.json",
                  {"process": proc, "host": os.uname().nodename, "pid": os.getpid(),
                   "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                   "instances": stats, "state": outcome.state, "signum": outcome.signum, "error": outcome.error})


def run_process(ctx: RunContext, proc: int, transport: Transport | None,
                on_stop: Callable[[Outcome], None] | None = None,
                make_runtime: Callable[[Sink], Any] | None = None) -> Outcome:
    """Run the instances placed on ``proc``; always leave its outputs flushed and its part written.

    ``on_stop`` is called when this process ends other than COMPLETED, to tell the others.
    ``make_runtime(sink)`` builds something with ``run()`` and ``stats()`` other than the static
    :class:`Runtime` (the dynamic mappings' workers).
    """
    sink = Sink(ctx.results, proc)
    runtime = None
    outcome = Outcome()
    with redirect_output(ctx.results / rd.LOGS / f"{proc:05d}.log"):
        raise_on_signals()
        try:
            if make_runtime is not None:
                runtime = make_runtime(sink)
            else:
                runtime = Runtime(ctx.plan, proc, sink, transport, ctx.feeds, copy.deepcopy)
            runtime.run()
        except PEFailed as failed:
            outcome = Outcome("FAILED", None, {"pe": failed.pe, "process": proc, "traceback": failed.traceback})
            print(f"PE {failed.pe} failed:\n{failed.traceback}", flush=True)
        except Interrupted as stop:
            outcome = Outcome(stop.state, stop.signum)
            print(f"stopped by signal {stop.signum}: {stop.state}", flush=True)
        except Aborted:
            outcome = Outcome("FAILED")
            on_stop = None  # the others know already
            print("stopped: another process of the run failed or was stopped", flush=True)
        except Exception:
            # outside PE code: an item that cannot be pickled, a transport error, a bug of ours
            outcome = Outcome("FAILED", None, {"pe": None, "process": proc, "traceback": traceback.format_exc()})
            print(f"process {proc} failed:\n{outcome.error['traceback']}", flush=True)
        finally:
            ignore_signals()
            sink.flush()
            sink.close()
            write_part(ctx, proc, runtime.stats() if runtime else [], outcome)
        if outcome.state != "COMPLETED" and on_stop is not None:
            on_stop(outcome)
    return outcome


def prepare(source: str, attr: str | None, mapping: str, processes: int, raw_inputs: Any,
            results: Path, options: dict | None = None) -> RunContext:
    """Load and check everything a run needs; raises a UsageError (and nothing has run) on bad input."""
    from d4p_hpc import mappings
    from d4p_hpc.loader import load_graph, resolve_feeds
    from d4p_hpc.mappings.plan import build_plan

    module = mappings.load(mapping)
    graph = load_graph(source, attr)
    plan = build_plan(graph, processes)
    feeds = resolve_feeds(plan, raw_inputs)
    validate = getattr(module, "validate", None)
    if validate is not None:
        validate(plan, mapping)
    path = os.path.abspath(source) if os.path.exists(source) else source
    return RunContext(graph, path, attr, mapping, processes, raw_inputs, Path(results).absolute(), plan, feeds,
                      dict(options or {}))
