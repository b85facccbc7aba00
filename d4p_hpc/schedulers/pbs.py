"""PBS Professional (and OpenPBS): ``qsub``, ``qstat -x -f -F json``, ``qdel``.

Only the jobs asked about are queried (``qstat -f`` on every job loads the
server). Where ``-x``/``-F json`` are not understood (Torque), plain
``qstat -f ID`` output is parsed instead (that form is tested against fake
commands only; the rest against a real OpenPBS 23.06 server, see README).
What a job used is the same record's ``resources_used``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from d4p_hpc import units
from d4p_hpc.errors import CancelError, QueryError, SubmitError
from d4p_hpc.schedulers import register
from d4p_hpc.schedulers.base import (ArrayLimits, ArraySubmission, Scheduler, SchedulerState, Submission, Usage,
                                     run_command)

PBS_STATES = {  # qstat job_state -> (our state, plain reason)
    "Q": ("PENDING", "queued"), "H": ("PENDING", "held"), "W": ("PENDING", "waiting for its start time"),
    "T": ("PENDING", "being moved"), "M": ("PENDING", "moved to another server"),
    "S": ("RUNNING", "suspended"), "U": ("RUNNING", "suspended (workstation busy)"),
    "R": ("RUNNING", ""), "B": ("RUNNING", ""), "E": ("RUNNING", "exiting"),
}
ENDED = ("F", "X", "C")  # C: Torque's "completed"
# PBS Pro exit status of a job killed for exceeding its walltime (JOB_EXEC_KILL_WALLTIME)
KILLED_WALLTIME = -29
_TEXT_FIELD = re.compile(r"^\s+(\w+) = (.*)$")


@register
class Pbs(Scheduler):
    """PBS through its command-line tools."""

    name = "pbs"
    title = "PBS"
    template = "pbs/job.sh.j2"
    array_template = "pbs/array.sh.j2"
    requeues_elements = False
    directive = "#PBS"
    nodefile = "PBS_NODEFILE"
    # partition is the queue (-q); qos, constraint and gres have no PBS equivalent of the same meaning
    options = frozenset({"memory", "partition", "account", "gpus_per_node", "exclusive"})
    command = "qsub"
    priority = 10

    def submit(self, script: str, job: Submission) -> str:
        """``qsub`` with the script on standard input; returns the job id (``123.server``)."""
        return self._qsub(script)

    def submit_array(self, script: str, array: ArraySubmission) -> list[str]:
        """``qsub`` of the array script (``123[].server``); element i is the subjob ``123[i].server``,
        which ``qstat`` and ``qdel`` take (always as one word of their argv, never through a shell)."""
        job_id = self._qsub(script)
        if "[]" not in job_id:
            raise SubmitError(f"qsub printed no job array id: {job_id!r}", ["qsub"], 0, job_id)
        return [job_id.replace("[]", f"[{i}]", 1) for i in range(len(array.directories))]

    def array_limits(self) -> ArrayLimits:
        """The server's ``max_array_size`` (``qstat -Bf``; PBS's default is 10000)."""
        out = run_command(["qstat", "-Bf"], retries=2, error=QueryError).stdout
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "max_array_size" and value.strip().isdigit():
                return ArrayLimits(int(value.strip()), None, "qstat -Bf", "max_array_size")
        return ArrayLimits(10_000, None, "PBS's default", "max_array_size")

    def array_of(self, element: str) -> str | None:
        """``123[].server`` of ``123[4].server``: PBS takes a dependency on a whole array only."""
        return element[:element.index("[") + 1] + element[element.index("]"):]

    def _qsub(self, script: str) -> str:
        out = run_command(["qsub"], input=script, retries=2, error=SubmitError).stdout.strip()
        if not out or any(c.isspace() for c in out):
            raise SubmitError(f"qsub printed no job id: {out!r}", ["qsub"], 0, out)
        return out

    def query(self, jobs: dict[str, Path]) -> dict[str, SchedulerState]:
        """``qstat -x -f -F json IDS``; plain ``qstat -f IDS`` where that is not understood."""
        records = self._qstat(list(jobs))
        return {job_id: _state(record) for job_id in jobs
                for key, record in records.items() if key.split(".")[0] == job_id.split(".")[0]}

    def _qstat(self, ids: list[str]) -> dict:
        if len(ids) > 1:  # qstat -F json answers for the first id only (OpenPBS 23.06)
            return {key: record for one in ids for key, record in self._qstat([one]).items()}
        result = run_command(["qstat", "-x", "-f", "-F", "json", *ids], retries=2, check=False)
        if result.stdout.strip():
            try:
                return json.loads(result.stdout).get("Jobs", {})
            except ValueError:
                pass
        elif "nknown" in result.stderr:  # "Unknown Job Id": none of them is known
            return {}
        result = run_command(["qstat", "-f", *ids], retries=2, check=False)
        if result.returncode and not result.stdout.strip() and "nknown" not in result.stderr:
            raise QueryError(f"qstat failed: {result.stderr.strip()}", result.args, result.returncode,
                              result.stdout, result.stderr)
        return _parse_text(result.stdout)

    def cancel(self, job_id: str, results_dir: Path) -> None:
        """``qdel JOB``."""
        run_command(["qdel", job_id], retries=2, error=CancelError)

    def usage(self, job_id: str) -> Usage:
        """The job's ``resources_used`` and the ``ncpus`` of its ``Resource_List`` (``qstat -x -f -F json``)."""
        for record in self._qstat([job_id]).values():
            used, asked = record.get("resources_used", {}), record.get("Resource_List", {})
            return {"cores": int(asked["ncpus"]) if str(asked.get("ncpus", "")).isdigit() else None,
                    "wall_seconds": units.clock_seconds(used.get("walltime")),
                    "cpu_seconds": units.clock_seconds(used.get("cput")),
                    "memory_mb": units.memory_mb(used.get("mem")), "source": "qstat"}
        return {}

    def log_files(self, results_dir: Path, job_id: str) -> list[Path]:
        """``<job id>.OU``/``.ER`` in the results root (``-o``/``-e`` name a directory there; ``-k oed``
        has PBS write them as the job runs). A job ended before it started has none."""
        return [results_dir.parent / f"{job_id}.OU", results_dir.parent / f"{job_id}.ER"]


def _parse_text(text: str) -> dict:
    """``qstat -f`` text: ``Job Id: X`` then indented ``key = value`` lines."""
    records: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            current = records.setdefault(line.split(":", 1)[1].strip(), {})
        elif current is not None and (m := _TEXT_FIELD.match(line)):
            current[m[1]] = m[2].strip()
    return records


def _state(record: dict) -> SchedulerState:
    raw = str(record.get("job_state", "?"))
    comment = str(record.get("comment", ""))
    if raw not in ENDED:
        state, reason = PBS_STATES.get(raw, ("RUNNING", f"PBS state {raw}"))
        # PBS's own words say why a job waits ("Not Running: Not enough free nodes available")
        return SchedulerState(state, comment if state == "PENDING" and comment else reason, raw)
    code = record.get("Exit_status", record.get("exit_status"))
    if code is None:  # it never ran: deleted while queued or held
        return SchedulerState("CANCELLED", "deleted before it ran" + (f" ({comment})" if comment else ""), raw)
    code = int(code)
    if code == KILLED_WALLTIME or "walltime" in comment.lower():
        return SchedulerState("TIMEOUT", "hit the walltime", raw)
    if code == 0:
        return SchedulerState("COMPLETED", "", raw)
    if code > 256:  # killed by signal code - 256; qdel sends SIGTERM
        state = "CANCELLED" if code - 256 in (2, 9, 15) else "FAILED"
        return SchedulerState(state, f"killed by signal {code - 256}", raw)
    return SchedulerState("FAILED", f"exit status {code}" + (f": {comment}" if comment else ""), raw)
