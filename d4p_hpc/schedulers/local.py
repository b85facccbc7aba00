"""The local scheduler: the generated job script, run here as a detached background job.

``submit`` gives the job an id (``local-<hex>``), creates its results directory,
writes a node file listing this host once per task, and starts the script with
bash in its own session (so its own process group), with ``D4P_JOB_ID`` and
``D4P_NODEFILE`` set, stdout and stderr going to ``job.out``/``job.err``. The
job outlives the command that submitted it. ``cancel`` stops the whole group
(:func:`d4p_hpc.supervisor.stop_group`), as a batch system signals every
process of a job. It is the default scheduler where no other is found.

A job array (a sweep) is run by one detached process of its own (:func:`run_array`), which starts
the elements as the jobs above, at most ``max_parallel`` at once, each with ``D4P_ARRAY_INDEX``
set; until its turn an element's record names that process and says it is queued (PENDING).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from d4p_hpc import liveness, supervisor
from d4p_hpc.errors import CancelError, ResultsError, SubmitError
from d4p_hpc.records import Marker
from d4p_hpc.results import Layout, now, read_json, read_marker, write_json
from d4p_hpc.schedulers import register
from d4p_hpc.schedulers.base import ArraySubmission, Scheduler, SchedulerState, Submission

#: the environment variable giving an array element its index
ARRAY_INDEX = "D4P_ARRAY_INDEX"
#: the reason of an element that waits for the array's runner to start it
QUEUED = "waiting for a free slot (the sweep's --max-parallel)"
#: the reason of a job whose script is gone while processes it started still run
ORPHANED = ("its job script is gone (killed?) but processes it started still run, so it has not ended: d4p-hpc "
            "cancel stops them")


def start(script: str | os.PathLike, env: dict, cwd: str | os.PathLike, stdout: str | os.PathLike,
          stderr: str | os.PathLike) -> int:
    """Start ``bash script`` detached, in a new session and process group; return its pid.

    Tests use it to run any rendered script (PBS ones too) with the environment
    a scheduler would give it.
    """
    return _spawn(script, env, cwd, stdout, stderr).pid


def _spawn(script: str | os.PathLike, env: dict, cwd: str | os.PathLike, stdout: str | os.PathLike,
           stderr: str | os.PathLike) -> subprocess.Popen:
    with open(stdout, "ab") as out, open(stderr, "ab") as err:
        return subprocess.Popen(["bash", str(script)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True, preexec_fn=_default_signals)


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
    array_template = "local/array.sh.j2"
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
        earlier = _record(layout) if job.after else None
        try:
            layout.script.write_text(script)
            env = _job_env(layout, job_id, job.tasks)
            if earlier and liveness.run_alive(earlier):
                env["D4P_AFTER_PID"] = str(earlier["pid"])  # its script waits for the job it continues
            pid = start(layout.script, env, os.getcwd(), *layout.scheduler_logs)
        except BaseException:
            if not job.continues:  # a job that never started leaves no directory (a disk full, a bad cwd)
                shutil.rmtree(layout.directory, ignore_errors=True)
            raise
        _write_record(layout, pid)
        return job_id

    def submit_array(self, script: str, array: ArraySubmission) -> list[str]:
        """Start the array's runner (:func:`run_array`) once it has recorded every element as queued;
        the script is ``array.script``, written by the caller."""
        ids = [f"local-{secrets.token_hex(4)}" for _ in array.directories]
        record = array.script.with_suffix(".json")
        write_json(record, {"script": str(array.script), "max_parallel": array.max_parallel, "cwd": os.getcwd(),
                            "elements": [{"id": i, "directory": str(d), "tasks": t}
                                         for i, d, t in zip(ids, array.directories, array.tasks, strict=False)]})
        with open(array.logs / f"{array.script.stem}.runner.log", "ab") as log:
            runner = subprocess.Popen([sys.executable, "-c", _RUNNER, str(record)], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                                      preexec_fn=_default_signals)
        assert runner.stdout is not None
        said = runner.stdout.readline()  # it says so once every element is recorded as queued
        runner.stdout.close()
        if said.strip() != b"ready":
            runner.wait()
            raise SubmitError(f"the local array runner did not start (see {log.name})")
        return ids

    def query(self, jobs: dict[str, Path]) -> dict[str, SchedulerState]:
        """RUNNING for the jobs whose script still runs, PENDING for array elements waiting for their
        turn; nothing for the others."""
        found = {}
        for job_id, directory in jobs.items():
            layout = Layout(directory)
            record = _record(layout)
            if not record:
                continue
            if not liveness.run_alive(record):
                if not record.get("queued") and liveness.session_alive(record):
                    found[job_id] = SchedulerState("RUNNING", ORPHANED, "orphaned")
                continue
            if not record.get("queued"):
                found[job_id] = SchedulerState("RUNNING", "", "running")
            elif not layout.marker(Layout.CANCEL_REQUESTED).exists():
                found[job_id] = SchedulerState("PENDING", QUEUED, "queued")
        return found

    def cancel(self, job_id: str, results_dir: Path) -> None:
        """SIGTERM to the job's process group; SIGKILL after :data:`~d4p_hpc.supervisor.GRACE_SECONDS`."""
        layout = Layout(results_dir)
        record = _record(layout)
        if record is None:
            raise CancelError(f"{results_dir} was not started by the local scheduler "
                              f"(no {Layout.STATE}/{Layout.LOCAL})")
        if record.get("queued"):  # its runner skips it (and stops it if it was starting it just now)
            if not layout.marker(Layout.FINISHED).exists():
                write_json(layout.marker(Layout.FINISHED), {"time": now(), "epoch": time.time(), "state": "CANCELLED",
                                                           "exit_code": None,
                                                           "reason": "cancelled before it started"})
        elif liveness.run_alive(record) or liveness.session_alive(record):
            supervisor.stop_group(record["pid"], supervisor.GRACE_SECONDS)


_RUNNER = ("import sys;sys.path[:1]==['']and sys.path.pop(0);"
           "from d4p_hpc.schedulers.local import run_array;run_array(sys.argv[1])")


def run_array(record_path: str) -> None:
    """Run the elements of the array recorded at ``record_path``, at most ``max_parallel`` at once,
    each a local job (its own session and process group, its record in its ``state/``).

    An element cancelled (or ended) before its turn is skipped, as is one whose task was submitted
    again since (its record no longer names this runner); one cancelled while it was being started is
    stopped at once. The runner ends with the last element.
    """
    record = read_json(record_path, dict)
    elements = record["elements"]
    me = os.getpid()
    for element in elements:
        _write_record(Layout(element["directory"]), me, queued=True)
    sys.stdout.write("ready\n")
    sys.stdout.close()
    # (the processes are kept: one dropped could be reaped by the next Popen, unseen by os.wait)
    running: dict[int, subprocess.Popen] = {}
    for index, element in enumerate(elements):
        while len(running) >= (record["max_parallel"] or len(elements)):
            running.pop(os.wait()[0], None)
        layout = Layout(element["directory"])
        if layout.marker(Layout.CANCEL_REQUESTED).exists() or layout.marker(Layout.FINISHED).exists():
            continue
        if (_record(layout) or {}).get("pid") != me:  # the task was submitted again, by another array
            continue
        env = {**_job_env(layout, element["id"], element["tasks"]), ARRAY_INDEX: str(index)}
        proc = _spawn(record["script"], env, record["cwd"], *layout.scheduler_logs)
        pid = proc.pid
        _write_record(layout, pid)
        running[pid] = proc
        if layout.marker(Layout.CANCEL_REQUESTED).exists():  # cancelled while it was being started
            supervisor.stop_group(pid, supervisor.GRACE_SECONDS)
            running.pop(pid)
    while running:
        running.pop(os.wait()[0], None)


def _job_env(layout: Layout, job_id: str, tasks: int) -> dict[str, str]:
    """The environment of a local job: its id, and its node file (this host once per task), written now."""
    nodefile = layout.marker(Layout.NODEFILE)
    nodefile.write_text(f"{socket.gethostname()}\n" * tasks)
    return dict(os.environ, D4P_JOB_ID=job_id, **{Local.nodefile: str(nodefile)})


def _write_record(layout: Layout, pid: int, **extra: bool) -> None:
    """Record the job's process: what tells it from a later one given the same pid (see d4p_hpc.liveness)."""
    write_json(layout.marker(Layout.LOCAL), {"pid": pid, "host": liveness.host(), "pid_token": liveness.token(pid),
                                             **extra})


def _record(layout: Layout) -> Marker | None:
    """The job's process as ``submit`` recorded it (pid, host, pid_token), or None."""
    try:
        return read_marker(layout.marker(Layout.LOCAL))
    except ResultsError:
        return None
