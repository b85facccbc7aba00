"""Slurm: ``sbatch --parsable``, ``squeue`` then ``sacct`` (or ``sacct -c``), ``scancel``.

``squeue -t all`` knows jobs until ``MinJobAge`` after they end; older ones are
asked of ``sacct`` with an explicit ``--starttime`` (its default window starts
at midnight), or of the job completion file with ``sacct -c`` where accounting
is disabled. A job none of them knows is reported as unknown, never as done.
What a job used (CPU time, peak memory) is ``sacct``'s TotalCPU and MaxRSS.
"""

from __future__ import annotations

from pathlib import Path

from d4p_hpc import units
from d4p_hpc.errors import CancelError, QueryError, SubmitError
from d4p_hpc.schedulers import register
from d4p_hpc.schedulers.base import (ArrayLimits, ArraySubmission, Scheduler, SchedulerState, Submission, Usage,
                                     run_command)

# Slurm job state -> (our state, plain reason); requeued and preempted jobs are not over
SLURM_STATES = {
    "PENDING": ("PENDING", ""), "CONFIGURING": ("PENDING", "nodes are being configured"),
    "REQUEUED": ("PENDING", "requeued"), "REQUEUE_HOLD": ("PENDING", "requeued and held"),
    "REQUEUE_FED": ("PENDING", "requeued"), "RESV_DEL_HOLD": ("PENDING", "held"),
    "PREEMPTED": ("PENDING", "preempted"), "SUSPENDED": ("RUNNING", "suspended"),
    "RUNNING": ("RUNNING", ""), "COMPLETING": ("RUNNING", "completing"), "STAGE_OUT": ("RUNNING", "staging out"),
    "SIGNALING": ("RUNNING", "being signalled"), "RESIZING": ("RUNNING", "resizing"), "STOPPED": ("RUNNING", "stopped"),
    "COMPLETED": ("COMPLETED", ""),
    "FAILED": ("FAILED", "non-zero exit code"), "NODE_FAIL": ("FAILED", "node failure"),
    "BOOT_FAIL": ("FAILED", "node boot failure"), "OUT_OF_MEMORY": ("FAILED", "out of memory"),
    "SPECIAL_EXIT": ("FAILED", "special exit"), "LAUNCH_FAILED": ("FAILED", "launch failed"),
    "CANCELLED": ("CANCELLED", "cancelled"), "REVOKED": ("CANCELLED", "revoked"),
    "TIMEOUT": ("TIMEOUT", "hit the walltime"), "DEADLINE": ("TIMEOUT", "hit its deadline"),
}
SACCT_WINDOW = "now-60days"
# the accounting is asked for a report: a busy controller is not waited for as long as for a state
USAGE_TIMEOUT = 20


@register
class Slurm(Scheduler):
    """Slurm through its command-line tools."""

    name = "slurm"
    title = "Slurm"
    template = "slurm/job.sh.j2"
    array_template = "slurm/array.sh.j2"
    directive = "#SBATCH"
    launchers = ("srun", "mpiexec")
    options = frozenset({"memory", "partition", "account", "qos", "constraint", "gres", "gpus_per_node",
                         "exclusive"})
    command = "sbatch"
    # above PBS: Slurm sites often install qsub too, as a wrapper (slurm-torque)
    priority = 20

    def submit(self, script: str, job: Submission) -> str:
        """``sbatch --parsable`` with the script on standard input; returns the job id."""
        return self._sbatch(script)

    def submit_array(self, script: str, array: ArraySubmission) -> list[str]:
        """``sbatch`` of the array script; element i is ``<array job id>_<i>``, which ``squeue -r``,
        ``sacct`` and ``scancel`` all take."""
        job_id = self._sbatch(script)
        return [f"{job_id}_{i}" for i in range(len(array.directories))]

    def array_limits(self) -> ArrayLimits:
        """``MaxArraySize`` (the highest index plus one: default 1001) and ``MaxJobCount`` of
        ``scontrol show config``."""
        out = run_command(["scontrol", "show", "config"], retries=2, error=QueryError).stdout
        found = {}
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("MaxArraySize", "MaxJobCount") and value.strip().isdigit():
                found[key.strip()] = int(value.strip())
        return ArrayLimits(found.get("MaxArraySize"), found.get("MaxJobCount"), "scontrol show config",
                           "MaxArraySize")

    def array_of(self, element: str) -> str | None:
        """``123`` of ``123_4``."""
        return element.rsplit("_", 1)[0]

    def _sbatch(self, script: str) -> str:
        out = run_command(["sbatch", "--parsable"], input=script, retries=2, error=SubmitError).stdout.strip()
        job_id = out.splitlines()[-1].split(";")[0] if out else ""
        if not job_id.isdigit():
            raise SubmitError(f"sbatch printed no job id: {out!r}", ["sbatch", "--parsable"], 0, out)
        return job_id

    def query(self, jobs: dict[str, Path]) -> dict[str, SchedulerState]:
        """``squeue -t all`` for all ids at once, then ``sacct`` for the ones it forgot."""
        found = self._squeue(list(jobs))
        missing = [j for j in jobs if j not in found]
        if missing:
            found.update(self._sacct(missing))
        return found

    def cancel(self, job_id: str, results_dir: Path) -> None:
        """``scancel JOB``."""
        run_command(["scancel", job_id], retries=2, error=CancelError)

    def usage(self, job_id: str) -> Usage:
        """``sacct`` (accounting), else ``sacct -c`` (the job completion file), which has the allocation
        and elapsed time but no CPU or memory use."""
        fields = "JobID,AllocCPUS,Elapsed,TotalCPU,MaxRSS"
        for extra in ([], ["-c"]):
            result = run_command(["sacct", *extra, "-j", job_id, "--noheader", "--parsable2", "-o", fields],
                                 timeout=USAGE_TIMEOUT, check=False)
            rows = [line.split("|") for line in (result.stdout if result.returncode == 0 else "").splitlines()
                    if line.count("|") == 4]
            main = [r for r in rows if r[0] == job_id]
            if main:
                found: Usage = {"cores": int(main[0][1]) if main[0][1].isdigit() else None,
                                "wall_seconds": units.clock_seconds(main[0][2]),
                                "source": "sacct" + " -c" * bool(extra)}
                cpu = units.clock_seconds(main[0][3])
                if cpu:
                    found["cpu_seconds"] = cpu
                rss = [m for m in (units.memory_mb(r[4]) for r in rows) if m]
                if rss:
                    found["memory_mb"] = max(rss)
                return found
        return {}

    def _squeue(self, ids: list[str]) -> dict[str, SchedulerState]:
        # -r: an array's pending elements one per line (else one line, 123_[4-9%2], for them all)
        result = run_command(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%r"],
                             retries=2, check=False)
        if result.returncode and "Invalid job id" not in result.stderr:
            raise QueryError(f"squeue failed: {result.stderr.strip()}", result.args, result.returncode,
                              result.stdout, result.stderr)
        found = {}
        for line in result.stdout.splitlines():
            job_id, raw, reason = (line.split("|") + ["", ""])[:3]
            found[job_id.strip()] = _state(raw, "" if reason in ("None", "(null)") else reason)
        return found

    def _sacct(self, ids: list[str]) -> dict[str, SchedulerState]:
        fields = ["-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,ExitCode"]
        result = run_command(["sacct", "--starttime", SACCT_WINDOW, *fields], retries=2, check=False)
        if result.returncode:  # accounting disabled: the job completion file may still know
            result = run_command(["sacct", "-c", *fields], check=False)
        found = {}
        for line in result.stdout.splitlines() if result.returncode == 0 else []:
            job_id, raw, exit_code = (line.split("|") + ["", ""])[:3]
            if job_id.strip() in ids:
                found[job_id.strip()] = _state(raw, f"exit code {exit_code}" if exit_code not in ("", "0:0") else "")
        return found


def _state(raw: str, detail: str) -> SchedulerState:
    word = raw.split()[0] if raw.strip() else "UNKNOWN"  # sacct says "CANCELLED by 1000"
    state, reason = SLURM_STATES.get(word, ("RUNNING", f"Slurm state {word}"))
    reason = "; ".join(r for r in (reason, detail) if r)
    return SchedulerState(state, reason, raw.strip())
