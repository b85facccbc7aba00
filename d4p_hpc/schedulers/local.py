"""The local scheduler: the generated job script, run here as a detached background job.

``submit`` gives the job an id (``local-<hex>``), creates its results directory,
writes a node file listing this host once per task, and starts the script with
bash in its own session (so its own process group), with ``D4P_JOB_ID`` and
``D4P_NODEFILE`` set, stdout and stderr going to ``job.out``/``job.err``. The
job outlives the command that submitted it. ``cancel`` sends SIGTERM to the
whole group, as a batch system signals every process of a job, then SIGKILL
to whatever is left after a grace period. It is the default scheduler where
neither ``sbatch`` nor ``qsub`` is found.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

from d4p_hpc.errors import SubmitError
from d4p_hpc.schedulers.base import Scheduler, SchedulerState
from d4p_hpc.spec import JobSpec

RECORD = Path("state") / "local.json"
NODEFILE = Path("state") / "nodefile"
GRACE_SECONDS = 10.0


def start(script: str | os.PathLike, env: dict, cwd: str | os.PathLike, stdout: str | os.PathLike,
          stderr: str | os.PathLike) -> int:
    """Start ``bash script`` detached, in a new session and process group; return its pid.

    Tests use it to run any rendered script (PBS ones too) with the environment
    a scheduler would give it.
    """
    with open(stdout, "ab") as out, open(stderr, "ab") as err:
        proc = subprocess.Popen(["bash", str(script)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True)
    return proc.pid


def alive(pid: int, started: int | None = None) -> bool:
    """Whether process ``pid`` runs (not a zombie) and, if given, started at clock tick ``started``."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and (started is None or int(fields[19]) == started)


class Local(Scheduler):
    """Jobs as background process groups on this host."""

    name = "local"

    def submit(self, script: str, spec: JobSpec) -> str:
        """Create the results directory, write ``job.sh`` and start it; returns the job id."""
        while True:
            job_id = f"local-{secrets.token_hex(4)}"
            directory = spec.results_dir(job_id)
            try:
                (directory / "state").mkdir(parents=True)
                break
            except FileExistsError:
                continue
        (directory / "job.sh").write_text(script)
        (directory / NODEFILE).write_text(f"{socket.gethostname()}\n" * spec.total_tasks)
        env = dict(os.environ, D4P_JOB_ID=job_id, D4P_NODEFILE=str(directory / NODEFILE))
        pid = start(directory / "job.sh", env, os.getcwd(), directory / "job.out", directory / "job.err")
        fields = _stat(pid)
        record = {"pid": pid, "started": int(fields[19]) if fields else None}
        (directory / RECORD).write_text(json.dumps(record) + "\n")
        return job_id

    def query(self, jobs: dict[str, Path]) -> dict[str, SchedulerState]:
        """RUNNING for the jobs whose script still runs; nothing for the others."""
        found = {}
        for job_id, directory in jobs.items():
            record = _record(directory)
            if record and alive(record["pid"], record.get("started")):
                found[job_id] = SchedulerState("RUNNING", "", "running")
        return found

    def cancel(self, job_id: str, results_dir: Path) -> None:
        """SIGTERM to the job's process group; SIGKILL after :data:`GRACE_SECONDS`."""
        record = _record(results_dir)
        if record is None:
            raise SubmitError(f"{results_dir} was not started by the local scheduler (no {RECORD})")
        if not alive(record["pid"], record.get("started")):
            return
        group = record["pid"]
        for signum, patience in ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(group, signum)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + patience
            while time.monotonic() < deadline:
                _reap(group)
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)


def _record(directory: Path) -> dict | None:
    try:
        return json.loads((Path(directory) / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name: [state, ppid, ...]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _reap(pid: int) -> None:
    # the job is our child when submitted by this very process (submit --wait, tests)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
