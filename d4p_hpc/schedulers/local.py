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

import os
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

from d4p_hpc import liveness, supervisor
from d4p_hpc.errors import CancelError, ResultsError
from d4p_hpc.records import Marker
from d4p_hpc.results import Layout, read_marker, write_json
from d4p_hpc.schedulers import register
from d4p_hpc.schedulers.base import Scheduler, SchedulerState, Submission


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

    def submit(self, script: str, job: Submission) -> str:
        """Create the results directory, write ``job.sh`` and start it; returns the job id."""
        while True:
            job_id = f"local-{secrets.token_hex(4)}"
            layout = Layout(job.results_dir(job_id))
            try:
                layout.state.mkdir(parents=True, exist_ok=job.continues)
                break
            except FileExistsError:
                continue
        nodefile = layout.marker(Layout.NODEFILE)
        env = dict(os.environ, D4P_JOB_ID=job_id, **{self.nodefile: str(nodefile)})
        earlier = _record(layout) if job.after else None
        if earlier and liveness.run_alive(earlier):
            env["D4P_AFTER_PID"] = str(earlier["pid"])  # its script waits for the job it continues
        try:
            layout.script.write_text(script)
            nodefile.write_text(f"{socket.gethostname()}\n" * job.tasks)
            pid = start(layout.script, env, os.getcwd(), *layout.scheduler_logs)
        except BaseException:
            if not job.continues:  # a job that never started leaves no directory (a disk full, a bad cwd)
                shutil.rmtree(layout.directory, ignore_errors=True)
            raise
        # what tells the job's process from a later one given the same pid (see d4p_hpc.liveness)
        write_json(layout.marker(Layout.LOCAL), {"pid": pid, "host": liveness.host(),
                                                 "pid_token": liveness.token(pid)})
        return job_id

    def query(self, jobs: dict[str, Path]) -> dict[str, SchedulerState]:
        """RUNNING for the jobs whose script still runs; nothing for the others."""
        found = {}
        for job_id, directory in jobs.items():
            record = _record(Layout(directory))
            if record and liveness.run_alive(record):
                found[job_id] = SchedulerState("RUNNING", "", "running")
        return found

    def cancel(self, job_id: str, results_dir: Path) -> None:
        """SIGTERM to the job's process group; SIGKILL after :data:`~d4p_hpc.supervisor.GRACE_SECONDS`."""
        layout = Layout(results_dir)
        record = _record(layout)
        if record is None:
            raise CancelError(f"{results_dir} was not started by the local scheduler "
                              f"(no {Layout.STATE}/{Layout.LOCAL})")
        if liveness.run_alive(record):
            supervisor.stop_group(record["pid"], supervisor.GRACE_SECONDS)


def _record(layout: Layout) -> Marker | None:
    """The job's process as ``submit`` recorded it (pid, host, pid_token), or None."""
    try:
        return read_marker(layout.marker(Layout.LOCAL))
    except ResultsError:
        return None
