"""What every mapping does around its own execution: the run record, the
per-process wrapper, and merging per-process metrics into ``metrics.json``."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

from d4p_hpc import __version__, liveness, settings
from d4p_hpc import results as rd
from d4p_hpc.errors import D4pHpcError, UsageError
from d4p_hpc.mappings import MAPPINGS
from d4p_hpc.mappings.checkpoint.pe_state import CheckpointFailed
from d4p_hpc.mappings.checkpoint.snapshots import ChandyLamport, Snapshots
from d4p_hpc.mappings.checkpoint.store import Restored, cut_back, latest
from d4p_hpc.mappings.runtime.core import Runtime, Transport
from d4p_hpc.mappings.runtime.process import Aborted, PEFailed, redirect_output
from d4p_hpc.mappings.runtime.sink import Sink
from d4p_hpc import supervisor
from d4p_hpc.supervisor import (IO_FAILED, STOPPED, Interrupted, hold_stops, ignore_signals, raise_on_signals,
                                 release_stops)
from d4p_hpc.mappings.runtime import totals
from d4p_hpc.mappings.runtime.plan import Plan
from d4p_hpc.mappings.runtime.sampler import sampling
from d4p_hpc.mappings.runtime.spread import spread_roots


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
    #: the checkpoint this run resumes from
    restored: Restored | None = None
    #: what this process created to start the run (its directory, the directory's lock file: see
    #: :func:`d4p_hpc.mappings.runtime.prepare.lock`), removed if the run is refused at its start
    created: list[Path] = field(default_factory=list)

    @property
    def checkpoints(self) -> bool:
        """Whether this run takes checkpoints (``--checkpoint``, ``--checkpoint-every``, ``--resume``)."""
        return bool(self.options.get("checkpoint") or self.options.get("checkpoint_every")
                    or self.restored is not None)

    @property
    def hold_for_driver(self) -> Any:
        """A worker's ``hold`` for the walltime signal: with checkpoints on it does nothing, since the
        driver takes the checkpoint and then ends the run."""
        return (lambda _signum: None) if self.checkpoints else None

    def snapshots(self, proc: int) -> Snapshots | None:
        """Process ``proc``'s side of taking checkpoints in a static mapping, if they are on."""
        if not self.checkpoints:
            return None
        first = self.restored.seq + 1 if self.restored is not None else 1
        return Snapshots(self.results, proc, sorted(set(self.plan.placement)), self.options.get("checkpoint_every"),
                         self.identity(), first)

    def identity(self) -> dict:
        """What this run is of, as its checkpoints record it: a resume must match it (see
        :func:`d4p_hpc.mappings.checkpoint.store.check_resumable`)."""
        inputs = inputs_record(self)
        return {"graph": self.graph_path, "graph_sha256": file_digest(self.graph_path), "attr": self.attr,
                "inputs_sha256": hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest(),
                "inputs": inputs, "mapping": self.mapping, "processes": self.processes,
                "instances": self.plan.instances, "states": MAPPINGS[self.mapping].states,
                "layout": {node.key: node.count for node in self.plan.pes}}


def death(label: str, pid: int | None, code: int | None, results: Path) -> str | None:
    """Why a process of the run ended, when its exit code says more than its own record can;
    None when it ended as a process of a run does (done, failed with its record, stopped)."""
    if code in (0, 1, *STOPPED):
        return None
    if code == IO_FAILED:
        return (f"{label} could not write the results directory {results} (No space left on device, "
                "or a quota?); outputs written before that are kept")
    return f"{label} (pid {pid}) died with exit code {code}"


@dataclass
class Outcome:
    """How a process, or the whole run, ended."""

    state: str = "COMPLETED"
    signum: int | None = None
    error: dict | None = None
    #: its per-process part could not be written (a full disk): the exit code is then the message
    unrecorded: bool = False

    @property
    def exit_code(self) -> int:
        if self.state == "COMPLETED":
            return 0
        if self.signum:
            return supervisor.exit_code(self.signum)
        return IO_FAILED if self.unrecorded else 1


def file_digest(path: str) -> str | None:
    """sha256 of a file: the graph, an inputs file (None for a module name that is not a file)."""
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def inputs_record(ctx: RunContext) -> Any:
    """The inputs as given; an inputs file (``-f``, maybe gigabytes) by its path and digest."""
    path = ctx.options.get("inputs_file")
    if not path:
        return ctx.raw_inputs
    return {"file": os.path.abspath(path), "sha256": file_digest(path)}


def _record(ctx: RunContext) -> dict:
    return {"graph": ctx.graph_path, "graph_sha256": file_digest(ctx.graph_path), "attr": ctx.attr,
            "mapping": ctx.mapping, "processes": ctx.processes, "instances": ctx.plan.instances,
            "inputs": inputs_record(ctx), "notices": ctx.plan.notices, "d4p_hpc_version": __version__,
            # dispel4py's own names of the PEs (WorkflowNode ids such as TestOneInOneOut5)
            "pe_ids": {node.key: str(getattr(node.pe, "id", node.key)) for node in ctx.plan.pes},
            # `status` tells a run whose processes are gone from a live one by these
            "host": liveness.host(), "pid": os.getpid(), "pid_token": liveness.token(os.getpid()),
            "job_id": settings.job_id(),
            "checkpoint_every": ctx.options.get("checkpoint_every"), "checkpoints": ctx.checkpoints}


#: what run.json keeps of each earlier segment of a resumed run
SEGMENT_FIELDS = ("job_id", "started", "ended", "state", "exit_code", "items", "wall_seconds", "resumed_from")


def _segments(ctx: RunContext) -> list[dict]:
    """The earlier segments of a resumed run, the one that just ended last."""
    if ctx.restored is None:
        return []
    previous: dict = dict(rd.read_run(ctx.results) or {})
    last = {k: previous.get(k) for k in SEGMENT_FIELDS}
    if last["state"] == "RUNNING":  # as `status` says of a job gone without recording its end
        last.update({"state": "FAILED", "reason": "killed before it could record its end"})
    return [*previous.get("segments", []), last]


RESERVE = "reserve"
RESERVE_BYTES = 256 * 1024


def begin(ctx: RunContext) -> float:
    """Create the results directory and record the run as RUNNING; return the start time.

    A directory that cannot be written (a full disk, a quota, a read-only mount) refuses the run in
    one line, and leaves nothing of it behind: what this call wrote and what the run created to
    start (``ctx.created``) are removed, and a resumed run keeps its ``run.json`` as it was (the
    reserve is written first, and ``run.json`` is replaced whole or not at all)."""
    made: list[Path] = []
    hold_stops()
    try:
        for sub in ("", rd.Layout.LOGS, rd.Layout.PARTS, rd.Layout.OUTPUTS):
            made += rd.new_private_dir(ctx.results / sub)
        segments = _segments(ctx)
        if ctx.restored is not None:
            cut_back(ctx.results, ctx.restored)
            for stale in (ctx.results / rd.Layout.PARTS).glob("metrics-*.json"):
                stale.unlink()
        # room for the final records, should the outputs fill the disk (see end())
        reserve = ctx.results / rd.Layout.PARTS / RESERVE
        made.append(reserve)
        with os.fdopen(os.open(reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
            fh.write(bytes(RESERVE_BYTES))
        if ctx.restored is None:
            made.append(ctx.results / rd.Layout.RUN)  # a new run's directory holds no run.json (check_new)
        rd.write_json(ctx.results / rd.Layout.RUN, {**_record(ctx), "started": rd.now(), "ended": None,
                                                     "state": "RUNNING", "exit_code": None, "error": None,
                                                     "segments": segments,
                                                     "resumed_from": ctx.restored.seq if ctx.restored else None})
    except OSError as exc:
        rd.remove_created([*ctx.created, *made])
        release_stops()
        raise UsageError(f"cannot write the results directory {ctx.results}: {exc.strerror or exc}; "
                         "give a writable --results directory (or --results-root)") from None
    return time.time()


def read_parts(ctx: RunContext) -> list[dict]:
    parts = []
    for path in sorted((ctx.results / rd.Layout.PARTS).glob("metrics-*.json")):
        part = rd.read_json(path)
        if part:
            parts.append(part)
    return parts


def combine(outcomes: list[Outcome]) -> Outcome:
    """One outcome for the run: a PE failure wins over a stop, a stop over completion. A stop signal
    wins over a process that only stopped because another one told it (Aborted: FAILED with no
    error), which happens when a peer's word comes before the signal itself."""
    for o in outcomes:
        if o.error:
            return Outcome("FAILED", None, o.error)
    for o in sorted(outcomes, key=lambda o: o.signum is None):
        if o.state != "COMPLETED":
            return o
    return Outcome()


def end(ctx: RunContext, t0: float, outcome: Outcome, extra: dict | None = None) -> dict:
    """Merge the per-process metrics, write ``metrics.json`` (this segment's figures, the earlier
    segments', and the run's totals over them all: :mod:`~d4p_hpc.mappings.runtime.totals`) and the
    final ``run.json``; return the latter."""
    wall = time.time() - t0
    parts = read_parts(ctx)
    instances = [inst for part in parts for inst in part.get("instances", [])]
    record = dict(rd.read_run(ctx.results) or _record(ctx))
    earlier = record.get("segments") or []
    process_list = [{k: part.get(k) for k in ("process", "host", "pid", "max_rss_mb", "state")} for part in parts]
    extra = {"roots_spread": spread_roots(ctx.plan, instances), **(extra or {})}  # (the dynamic mappings' own)
    segments = [*totals.earlier(ctx.results, earlier),
                totals.entry(len(earlier) + 1, {**record, "state": outcome.state}, wall, instances, process_list,
                             extra)]
    order = [node.key for node in ctx.plan.pes]
    items = sum(inst["items_in"] for inst in instances)
    metrics = {"mapping": ctx.mapping, "processes": ctx.processes, "process_list": process_list,
               **totals.combine(segments, order), "segments": segments}
    reserve = ctx.results / rd.Layout.PARTS / RESERVE
    try:
        rd.write_json(ctx.results / rd.Layout.METRICS, metrics)
    except OSError as exc:
        reserve.unlink(missing_ok=True)  # the full disk now has room for the record of how it ended
        if outcome.state == "COMPLETED" or outcome.error is None:
            outcome = Outcome("FAILED", None, {"pe": None, "process": None, "traceback": _io_error(ctx, exc)})
    outcome = dataclasses.replace(outcome, unrecorded=False)  # the run's record is written below
    record.update({"ended": rd.now(), "state": outcome.state, "exit_code": outcome.exit_code,
                   "error": outcome.error, "wall_seconds": round(wall, 6), "items": items,
                   "checkpoint": latest(ctx.results) if ctx.checkpoints else None})
    try:
        rd.write_json(ctx.results / rd.Layout.RUN, record)
    except OSError:
        reserve.unlink(missing_ok=True)
        rd.write_json(ctx.results / rd.Layout.RUN, record)
    reserve.unlink(missing_ok=True)
    return record


def write_metrics_part(ctx: RunContext, proc: int, stats: list[dict], outcome: Outcome) -> None:
    """Write process ``proc``'s part of the run's metrics (merged by :func:`end`)."""
    rd.write_json(ctx.results / rd.Layout.PARTS / f"metrics-{proc:05d}.json",
                  {"process": proc, "host": liveness.host(), "pid": os.getpid(),
                   "max_rss_mb": liveness.peak_rss_mb(),
                   "instances": stats, "state": outcome.state, "signum": outcome.signum, "error": outcome.error})


def run_process(ctx: RunContext, proc: int, transport: Transport | None,
                on_stop: Callable[[Outcome], None] | None = None,
                make_runtime: Callable[[Sink], Any] | None = None, hold: Any = None) -> Outcome:
    """Run the instances placed on ``proc``; always leave its outputs flushed and its part written.

    ``on_stop`` is called when this process ends other than COMPLETED, to tell the others.
    ``make_runtime(sink)`` builds something with ``run()`` and ``stats()`` other than the static
    :class:`Runtime` (the dynamic mappings' workers). ``hold(signum)`` is called for the walltime
    signal instead of stopping (checkpoints on: a checkpoint comes first).
    """
    sink = Sink(ctx.results, proc)
    runtime = None
    outcome = Outcome()
    snapshots = ctx.snapshots(proc) if make_runtime is None else None
    with redirect_output(ctx.results / rd.Layout.LOGS / f"{proc:05d}.log"):
        try:
            # a stop signal held since the run began (the parent's begin(), inherited) is raised here
            raise_on_signals(hold=snapshots.request_stop if snapshots is not None else hold)
            if make_runtime is not None:
                runtime = make_runtime(sink)
            else:
                runtime = Runtime(ctx.plan, proc, sink, transport, ctx.feeds, copy.deepcopy, restored=ctx.restored)
                if snapshots is not None:
                    runtime.checkpoints = ChandyLamport(runtime, snapshots)
            with sampling(ctx, proc, sink, runtime):
                runtime.run()
        except CheckpointFailed as failed:
            outcome = Outcome("FAILED", None, {"pe": failed.pe, "process": proc,
                                               "traceback": failed.traceback or str(failed)})
            _say(f"checkpoint failed: {failed}")
        except PEFailed as failed:
            outcome = Outcome("FAILED", None, {"pe": failed.pe, "process": proc, "traceback": failed.traceback})
            _say(f"PE {failed.pe} failed:\n{failed.traceback}")
        except Interrupted as stop:
            outcome = Outcome(stop.state, stop.signum)
            _say(f"stopped by signal {stop.signum}: {stop.state}")
        except Aborted:
            outcome = Outcome("FAILED")
            on_stop = None  # the others know already
            _say("stopped: another process of the run failed or was stopped")
        except D4pHpcError as refused:
            # a refusal of ours in the middle of the run (a checkpoint part it may not load): its one
            # line says what and what to do
            outcome = Outcome("FAILED", None, {"pe": None, "process": proc, "traceback": str(refused)})
            _say(f"process {proc} failed: {refused}")
        except OSError as exc:
            # the results directory failed under us (full disk, quota, lost mount): one line says so,
            # and the part a write broke off is cut back to whole items
            sink.abandon()
            why = _io_error(ctx, exc)
            outcome = Outcome("FAILED", None, {"pe": None, "process": proc, "traceback": why})
            _say(f"process {proc} failed: {why}")
        except Exception:
            # outside PE code: an item that cannot be pickled, a transport error, a bug of ours
            why = traceback.format_exc()
            outcome = Outcome("FAILED", None, {"pe": None, "process": proc, "traceback": why})
            _say(f"process {proc} failed:\n{why}")
        finally:
            ignore_signals()
            outcome = _close(ctx, proc, sink, runtime, outcome)
        if outcome.state != "COMPLETED" and on_stop is not None:
            on_stop(outcome)
    return outcome


def _close(ctx: RunContext, proc: int, sink: Sink, runtime: Any, outcome: Outcome) -> Outcome:
    """Flush this process's outputs and write its part; a write that fails (a full disk) cuts the
    outputs back to whole items and makes the process FAILED, saying why once."""
    try:
        sink.flush()
        sink.close()
    except OSError as exc:
        sink.abandon()
        if outcome.error is None:
            why = _io_error(ctx, exc)
            outcome = Outcome("FAILED", None, {"pe": None, "process": proc, "traceback": why})
            _say(f"process {proc} failed: {why}")
    try:
        write_metrics_part(ctx, proc, runtime.stats() if runtime else [], outcome)
    except OSError:
        outcome = dataclasses.replace(outcome, unrecorded=True)
    return outcome


def _io_error(ctx: RunContext, exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return (f"cannot write the results directory {ctx.results}: {exc.strerror or exc}{where}; "
            "outputs written before that are kept")


def _say(text: str) -> None:
    """Print to this process's log, which may sit on the very file system that is full."""
    with contextlib.suppress(OSError):
        print(text, flush=True)
