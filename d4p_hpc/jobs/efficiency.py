"""How well a run used what it was given: CPU seconds against cores x wall time, peak memory
against ``--mem``.

The allocation comes from the job's ``spec.json`` (nodes x tasks per node x CPUs per task,
memory per node), or for a ``d4p-hpc run`` from its process count. What was used comes from
the scheduler where it keeps the figures (:meth:`~d4p_hpc.schedulers.Scheduler.usage`: Slurm
``sacct`` TotalCPU and MaxRSS, PBS ``resources_used``), else from the run's own samples (CPU
seconds of every process, in ``timeseries/``) and peak RSS (``metrics.json``, summed per node).
Each figure says where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from d4p_hpc import schedulers, units
from d4p_hpc.errors import SchedulerError
from d4p_hpc.results import Layout, Metrics, last_samples, read_json, read_metrics, read_run
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
    def cpu_percent(self) -> float | None:
        if not (self.cores and self.wall_seconds and self.cpu_seconds is not None):
            return None
        return 100 * self.cpu_seconds / (self.cores * self.wall_seconds)

    def line(self) -> str:
        """``CPU efficiency 71% of 8 cores; memory 2.1 of 8 GB`` (the parts that are known)."""
        parts = []
        if self.cpu_percent is not None:
            parts.append(f"CPU efficiency {self.cpu_percent:.0f}% of {self.cores} core{'s' * (self.cores != 1)}")
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


def _sampled_cpu(directory: Path) -> float | None:
    samples = last_samples(directory)
    return sum(s.get("cpu", 0.0) for s in samples.values()) if samples else None


def _peak_per_node(metrics: Metrics) -> float | None:
    per_host: dict[str, float] = {}
    for proc in metrics.get("process_list", []):
        if (rss := proc.get("max_rss_mb")) is not None:
            per_host[proc["host"]] = per_host.get(proc["host"], 0.0) + rss
    return max(per_host.values()) if per_host else None


def measure(directory: Path, scheduler: str | None = None, job_id: str | None = None) -> Efficiency:
    """The efficiency of the run in ``directory``; asks ``scheduler`` (by name) about ``job_id``."""
    layout = Layout(directory)
    run, metrics = read_run(directory) or {}, read_metrics(directory) or {}
    spec = (read_json(layout.spec) or {}).get("spec") or {}
    eff = Efficiency(wall_seconds=metrics.get("wall_seconds") or run.get("wall_seconds"),
                     cpu_seconds=_sampled_cpu(directory), memory_mb=_peak_per_node(metrics),
                     memory_limit_mb=units.memory_mb(spec.get("memory")) if spec.get("memory") else None)
    if spec:
        eff.cores = spec.get("nodes", 1) * spec.get("tasks_per_node", 1) * spec.get("cpus_per_task", 1)
        finished, started = (read_json(layout.marker(m)) or {} for m in (Layout.FINISHED, Layout.STARTED))
        if finished.get("epoch") and started.get("epoch"):
            # the job's time, start-up included (whole seconds: never less than the run's own)
            eff.wall_seconds = max(finished["epoch"] - started["epoch"], eff.wall_seconds or 0)
    else:
        eff.cores = run.get("processes")
    usage = _usage(scheduler, job_id)
    eff.cores = usage.get("cores") or eff.cores
    eff.wall_seconds = usage.get("wall_seconds") or eff.wall_seconds
    if usage.get("cpu_seconds") is not None:
        eff.cpu_seconds, eff.cpu_source = usage["cpu_seconds"], usage["source"]
    if eff.memory_mb is None and usage.get("memory_mb") is not None:  # ours is per node, as --mem
        eff.memory_mb, eff.memory_source = usage["memory_mb"], usage["source"]
    return eff
