"""How well a run used what it was given: CPU seconds against cores x wall time, peak memory
against ``--mem``.

The allocation comes from the job's ``spec.json`` (nodes x tasks per node x CPUs per task,
memory per node), or for a ``d4p-hpc run`` from its process count. What was used comes from
the scheduler where it keeps the figures (Slurm ``sacct`` TotalCPU and MaxRSS, PBS
``resources_used``), else from the run's own samples (CPU seconds of every process, in
``timeseries/``) and peak RSS (``metrics.json``, summed per node). Each figure says where
it came from.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from d4p_hpc import results as rd
from d4p_hpc.mappings.runtime.sampler import last_samples

_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}
QUERY_TIMEOUT = 20


@dataclass
class Efficiency:
    """CPU and memory use against the allocation (None where a figure is unknown)."""

    cores: int | None = None
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    cpu_source: str = "samples"
    memory_mb: float | None = None
    memory_limit_mb: float | None = None
    memory_source: str = "metrics.json"

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


def memory_mb(text: str | None) -> float | None:
    """MB of a size such as ``4G``, ``500M``, ``2000K`` or PBS's ``1234kb`` (no unit: MB)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)B?\s*", (text or "").upper())
    return float(match[1]) * _UNITS[match[2] or "M"] if match else None


def clock_seconds(text: str | None) -> float | None:
    """Seconds of ``[D-]HH:MM:SS[.sss]`` or ``MM:SS.sss`` (Slurm, PBS)."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", (text or "").strip())
    if not match:
        return None
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def slurm_usage(job_id: str) -> dict:
    """Slurm's figures of a job: ``sacct`` (accounting), else ``sacct -c`` (job completion file),
    which has the allocation and elapsed time but no CPU or memory use."""
    fields = "JobID,AllocCPUS,Elapsed,TotalCPU,MaxRSS"
    for extra in ([], ["-c"]):
        out = _run(["sacct", *extra, "-j", job_id, "--noheader", "--parsable2", "-o", fields])
        rows = [line.split("|") for line in (out or "").splitlines() if line.count("|") == 4]
        main = [r for r in rows if r[0] == job_id]
        if main:
            found = {"cores": int(main[0][1]) if main[0][1].isdigit() else None,
                     "wall_seconds": clock_seconds(main[0][2]), "source": "sacct" + " -c" * bool(extra)}
            cpu = clock_seconds(main[0][3])
            if cpu:
                found["cpu_seconds"] = cpu
            rss = [m for m in (memory_mb(r[4]) for r in rows) if m]
            if rss:
                found["memory_mb"] = max(rss)
            return found
    return {}


def pbs_usage(job_id: str) -> dict:
    """PBS's ``resources_used`` and ``Resource_List`` of a job (``qstat -fx -F json``)."""
    try:
        jobs = json.loads(_run(["qstat", "-fx", "-F", "json", job_id]) or "{}").get("Jobs", {})
    except ValueError:
        return {}
    for info in jobs.values():
        used, asked = info.get("resources_used", {}), info.get("Resource_List", {})
        found = {"cores": int(asked["ncpus"]) if str(asked.get("ncpus", "")).isdigit() else None,
                 "wall_seconds": clock_seconds(used.get("walltime")), "cpu_seconds": clock_seconds(used.get("cput")),
                 "memory_mb": memory_mb(used.get("mem")), "source": "qstat"}
        return {k: v for k, v in found.items() if v is not None}
    return {}


SCHEDULER_USAGE = {"slurm": slurm_usage, "pbs": pbs_usage}


def _sampled_cpu(directory: Path) -> float | None:
    samples = last_samples(directory)
    return sum(s.get("cpu", 0.0) for s in samples.values()) if samples else None


def _peak_per_node(metrics: dict) -> float | None:
    per_host: dict[str, float] = {}
    for proc in metrics.get("process_list", []):
        if proc.get("max_rss_mb") is not None:
            per_host[proc.get("host")] = per_host.get(proc.get("host"), 0.0) + proc["max_rss_mb"]
    return max(per_host.values()) if per_host else None


def measure(directory: Path, scheduler: str | None = None, job_id: str | None = None) -> Efficiency:
    """The efficiency of the run in ``directory``; asks ``scheduler`` (by name) about ``job_id``."""
    directory = Path(directory)
    run, metrics = rd.read_run(directory) or {}, rd.read_metrics(directory) or {}
    spec = (rd.read_json(directory / "spec.json") or {}).get("spec") or {}
    eff = Efficiency(wall_seconds=metrics.get("wall_seconds") or run.get("wall_seconds"),
                     cpu_seconds=_sampled_cpu(directory), memory_mb=_peak_per_node(metrics),
                     memory_limit_mb=memory_mb(spec.get("memory")) if spec.get("memory") else None)
    if spec:
        eff.cores = spec.get("nodes", 1) * spec.get("tasks_per_node", 1) * spec.get("cpus_per_task", 1)
        finished, started = (rd.read_json(directory / "state" / m) or {} for m in ("finished", "started"))
        if finished.get("epoch") and started.get("epoch"):
            # the job's time, start-up included (whole seconds: never less than the run's own)
            eff.wall_seconds = max(finished["epoch"] - started["epoch"], eff.wall_seconds or 0)
    else:
        eff.cores = run.get("processes")
    usage = SCHEDULER_USAGE.get(scheduler or "", lambda _id: {})(job_id) if job_id else {}
    eff.cores = usage.get("cores") or eff.cores
    eff.wall_seconds = usage.get("wall_seconds") or eff.wall_seconds
    if usage.get("cpu_seconds") is not None:
        eff.cpu_seconds, eff.cpu_source = usage["cpu_seconds"], usage["source"]
    if eff.memory_mb is None and usage.get("memory_mb") is not None:  # ours is per node, as --mem
        eff.memory_mb, eff.memory_source = usage["memory_mb"], usage["source"]
    return eff
