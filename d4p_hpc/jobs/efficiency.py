"""How well a run used what it was given: CPU seconds against cores x wall time, peak memory
against ``--mem``; over every segment of a run that was resumed (``--requeue``, ``resume``).

The allocation comes from the job's ``spec.json`` (nodes x tasks per node x CPUs per task,
memory per node), or for a ``d4p-hpc run`` from its process count. What was used comes from
the scheduler where it keeps the figures (:meth:`~d4p_hpc.schedulers.Scheduler.usage`: Slurm
``sacct`` TotalCPU and MaxRSS, PBS ``resources_used``, summed over the jobs of the run's
segments), else from the run's own samples (CPU seconds of every process from when it began
sampling, in ``timeseries/``: the same window as the run's wall time, so that the start-up of the
interpreter is not set against a run of milliseconds) and peak RSS (``metrics.json``, summed per
node). Each figure says where it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d4p_hpc import schedulers, units
from d4p_hpc.errors import ResultsError, SchedulerError
from d4p_hpc.results import Layout, read_marker, read_metrics, read_run, read_series, read_spec
from d4p_hpc.schedulers.base import Usage


@dataclass
class Efficiency:
    """CPU and memory use against the allocation (None where a figure is unknown)."""

    cores: int | None = None
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    cpu_source: str = "samples"
    memory_mb: float | None = None
    memory_limit_mb: float | None = None
    memory_source: str = Layout.METRICS

    @property
    def measured_percent(self) -> float | None:
        """CPU seconds used per core-second allocated, in percent, as measured."""
        if not (self.cores and self.wall_seconds and self.cpu_seconds is not None):
            return None
        return 100 * self.cpu_seconds / (self.cores * self.wall_seconds)

    @property
    def cpu_percent(self) -> float | None:
        """:attr:`measured_percent`, at most 100: a share of what was allocated."""
        measured = self.measured_percent
        return None if measured is None else min(100.0, measured)

    def line(self) -> str:
        """``CPU efficiency 71% of 8 cores; memory 2.1 of 8 GB`` (the parts that are known)."""
        parts = []
        measured = self.measured_percent
        if measured is not None and self.cores:
            parts.append(f"CPU efficiency {min(100.0, measured):.0f}% of {units.plural(self.cores, 'core')}")
            if measured > 100.5:
                # more processes or threads than cores (a dynamic driver beside its -n workers, threads in
                # PE code): the figure is capped, and says so
                parts[-1] += f" (capped: {measured:.0f}% measured, more processes or threads than cores)"
        if self.memory_mb is not None:
            used = _gb(self.memory_mb)
            parts.append(f"memory {used} of {_gb(self.memory_limit_mb)} GB" if self.memory_limit_mb
                         else f"memory peak {used} GB")
        return "; ".join(parts) or "efficiency unknown (no metrics yet)"


def _gb(mb: float) -> str:
    return f"{mb / 1024:.2g}" if mb < 1024 else f"{mb / 1024:.1f}".removesuffix(".0")


def _usage(scheduler: str | None, job_id: str | None) -> Usage:
    """What ``scheduler`` (by name) says job ``job_id`` used; {} where it cannot be asked."""
    if not (scheduler and job_id) or scheduler not in schedulers.names():  # a `d4p-hpc run` has none
        return {}
    try:
        return schedulers.get(scheduler).usage(job_id)
    except SchedulerError:  # its commands are not here, or its accounting is off: our own figures stand
        return {}


def _run_usage(scheduler: str | None, job_ids: list[str]) -> Usage:
    """What ``scheduler`` says the jobs of the run's segments used together; {} unless it knows each."""
    usages = [_usage(scheduler, job_id) for job_id in job_ids]
    if not usages or not all(usages):
        return {}
    walls, cpus = [u.get("wall_seconds") for u in usages], [u.get("cpu_seconds") for u in usages]
    memory = [m for u in usages if (m := u.get("memory_mb")) is not None]
    return {"cores": max(u.get("cores") or 0 for u in usages) or None, "source": usages[-1]["source"],
            "wall_seconds": None if None in walls else sum(w or 0.0 for w in walls),
            "cpu_seconds": None if None in cpus else sum(c or 0.0 for c in cpus),
            "memory_mb": max(memory) if memory else None}


def _sampled_cpu(directory: Path) -> float | None:
    """CPU seconds of every process in every segment: the last sample of each (a segment's counters
    start from 0); None without samples."""
    last: dict[tuple[int, int], float] = {}
    try:
        series = read_series(directory)
    except ResultsError:  # the CPU figure is left out; `report` says what is wrong with the file
        return None
    for proc, (_head, samples) in series.items():
        for sample in samples:
            last[proc, sample.get("seg", 1)] = sample["cpu"]
    return sum(last.values()) if last else None


def _peak_per_node(metrics: Mapping[str, Any]) -> float | None:
    """The largest resident memory of one node in one segment: the processes of a node add up."""
    peaks: list[float] = []
    for segment in metrics.get("segments") or [metrics]:
        per_host: dict[str, float] = {}
        for proc in segment.get("process_list") or []:
            if (rss := proc.get("max_rss_mb")) is not None:
                per_host[proc["host"]] = per_host.get(proc["host"], 0.0) + rss
        peaks += per_host.values()
    return max(peaks) if peaks else None


def _job_seconds(layout: Layout) -> float:
    """The seconds the run's jobs ran, start-up included: each segment's from its state markers
    (those of the earlier segments are archived in ``state/segments/<n>/``)."""
    places = [d for d in sorted(layout.segments.iterdir()) if d.is_dir()] if layout.segments.is_dir() else []
    total = 0.0
    for place in [*places, layout.state]:
        try:
            started, finished = (read_marker(place / m) or {} for m in (Layout.STARTED, Layout.FINISHED))
        except ResultsError:  # a marker changed by hand: that segment's time is the run's own
            continue
        if started.get("epoch") and finished.get("epoch"):
            total += finished["epoch"] - started["epoch"]
    return total


def measure(directory: Path, scheduler: str | None = None, job_id: str | None = None) -> Efficiency:
    """The efficiency of the run in ``directory`` over all its segments; asks ``scheduler`` (by
    name) about ``job_id``, the job of its newest segment, and the jobs of the earlier ones."""
    layout = Layout(directory)
    run, metrics = read_run(directory) or {}, read_metrics(directory) or {}
    saved = read_spec(directory)
    spec: Mapping[str, Any] = saved["spec"] if saved else {}
    eff = Efficiency(wall_seconds=metrics.get("wall_seconds") or run.get("wall_seconds"),
                     cpu_seconds=_sampled_cpu(directory), memory_mb=_peak_per_node(metrics),
                     memory_limit_mb=units.memory_mb(spec.get("memory")) if spec.get("memory") else None)
    if spec:
        eff.cores = spec.get("nodes", 1) * spec.get("tasks_per_node", 1) * spec.get("cpus_per_task", 1)
        # the jobs' time, start-up included (whole seconds: never less than the run's own)
        eff.wall_seconds = max(_job_seconds(layout), eff.wall_seconds or 0) or None
    else:
        eff.cores = run.get("processes")
    earlier = [j for s in run.get("segments") or [] if (j := s.get("job_id")) and j != job_id]
    usage = _run_usage(scheduler, [*earlier, job_id] if job_id else [])
    eff.cores = usage.get("cores") or eff.cores
    eff.wall_seconds = usage.get("wall_seconds") or eff.wall_seconds
    if usage.get("cpu_seconds") is not None:
        eff.cpu_seconds, eff.cpu_source = usage["cpu_seconds"], usage["source"]
    if eff.memory_mb is None and usage.get("memory_mb") is not None:  # ours is per node, as --mem
        eff.memory_mb, eff.memory_source = usage["memory_mb"], usage["source"]
    return eff
