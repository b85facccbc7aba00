"""The local scheduler: the generated job script, run here as a detached background job.

``submit`` gives the job an id (``local-<hex>``), creates its results directory,
writes a node file listing this host once per task, and starts the script with
bash in its own session (so its own process group), with ``D4P_JOB_ID`` and
``D4P_NODEFILE`` set, stdout and stderr going to ``job.out``/``job.err``. The
job outlives the command that submitted it. ``cancel`` stops the whole group
(:func:`d4p_hpc.supervisor.stop_group`), as a batch system signals every
process of a job. It is the default scheduler where no other is found.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from d4p_hpc import supervisor
from d4p_hpc.errors import SubmitError
from d4p_hpc.schedulers import register
from d4p_hpc.schedulers.base import Scheduler, SchedulerState

if TYPE_CHECKING:
    from d4p_hpc.submission.spec import JobSpec

RECORD = Path("state") / "local.json"
NODEFILE = Path("state") / "nodefile"


def start(script: str | os.PathLike, env: dict, cwd: str | os.PathLike, stdout: str | os.PathLike,
          stderr: str | os.PathLike) -> int:
    """Start ``bash script`` detached, in a new session and process group; return its pid.

    Tests use it to run any rendered script (PBS ones too) with the environment
    a scheduler would give it.
    """
    with open(stdout, "ab") as out, open(stderr, "ab") as err:
        proc = subprocess.Popen(["bash", str(script)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True, preexec_fn=_default_signals)
    return proc.pid


def _default_signals() -> None:
    """A batch system starts a job with every signal at its default; so must we. A job that submits
    its successor from its exit trap ignores the stop signals there, and a shell started with a
    signal ignored can never trap it: the successor would not hear its walltime signal."""
    import signal

    for signum in supervisor.STOPS:
        signal.signal(signum, signal.SIG_DFL)


def alive(pid: int, started: int | None = None) -> bool:
    """Whether process ``pid`` runs (not a zombie) and, if given, started at clock tick ``started``."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and (started is None or int(fields[19]) == started)


@register
class Local(Scheduler):
    """Jobs as background process groups on this host."""

    name = "local"
    title = "local"
    template = "local/job.sh.j2"
    nodefile = "D4P_NODEFILE"
    on_this_host = True
    # a cluster's requests mean nothing here; accepted, so that a profile written for the cluster
    # also runs a trial job here (README, "Local")
    ignored = frozenset({"memory", "partition", "account", "qos", "constraint", "gres", "gpus_per_node",
                         "exclusive"})
    # below every other: the last resort
    priority = -1

    @classmethod
    def detected(cls) -> bool:
        """Always: every host can run its jobs."""
        return True

    def submit(self, script: str, spec: JobSpec) -> str:
        """Create the results directory, write ``job.sh`` and start it; returns the job id."""
        while True:
            job_id = f"local-{secrets.token_hex(4)}"
            directory = spec.results_dir(job_id)
            try:
                (directory / "state").mkdir(parents=True, exist_ok=spec.continues is not None)
                break
            except FileExistsError:
                continue
        env = dict(os.environ, D4P_JOB_ID=job_id, **{self.nodefile: str(directory / NODEFILE)})
        earlier = _record(directory) if spec.after else None
        if earlier and alive(earlier["pid"], earlier.get("started")):
            env["D4P_AFTER_PID"] = str(earlier["pid"])  # its script waits for the job it continues
        (directory / "job.sh").write_text(script)
        (directory / NODEFILE).write_text(f"{socket.gethostname()}\n" * spec.total_tasks)
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
        """SIGTERM to the job's process group; SIGKILL after :data:`~d4p_hpc.supervisor.GRACE_SECONDS`."""
        record = _record(results_dir)
        if record is None:
            raise SubmitError(f"{results_dir} was not started by the local scheduler (no {RECORD})")
        if alive(record["pid"], record.get("started")):
            supervisor.stop_group(record["pid"], supervisor.GRACE_SECONDS)


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
