"""Jobs as their results directories: find them, tell their state, cancel them, wait for them.

The markers a job script writes into ``state/`` are the truth: ``started``
first thing, ``finished`` (state, exit code, reason) from its exit trap. The
scheduler is asked only about jobs with no ``finished`` marker, to tell a
pending job from a running one and to explain a job that died before its trap
could run (out of memory, node failure, walltime kill). Success is never
inferred from a job's absence from the scheduler. A marker that cannot be read
(cut short by a kill, changed by hand, of the wrong shape) counts as absent,
and the state decided without it says so. A ``d4p-hpc run`` has no markers:
its ``run.json`` and whether its process lives tell its state.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import signal
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from d4p_hpc import liveness, schedulers, units
from d4p_hpc.errors import D4pHpcError, JobNotFoundError, ResultsError, UsageError
from d4p_hpc.jobs import index
from d4p_hpc.records import Ended, Marker, RunRecord, SpecFields
from d4p_hpc.results import Layout, read_marker, read_run, read_spec, write_json
from d4p_hpc.schedulers import RUN
from d4p_hpc.schedulers.base import SchedulerState

TERMINAL: tuple[str, ...] = typing.get_args(Ended)
_FINISHED = f"{Layout.STATE}/{Layout.FINISHED}"  # as messages name it
# a finished marker may reach a shared file system a little after the scheduler saw the job end; and
# while a resume moves a segment's markers aside, a job briefly has none (on any scheduler)
MARKER_GRACE_SECONDS = 15.0


@dataclass(frozen=True)
class Job:
    """A job's results directory and what identifies it."""

    directory: Path
    job_id: str
    name: str
    #: the scheduler's name; :data:`~d4p_hpc.schedulers.RUN` for a ``d4p-hpc run``
    scheduler: str

    @property
    def layout(self) -> Layout:
        """The names of its results directory."""
        return Layout(self.directory)

    def marker(self, name: str) -> Marker | None:
        """The content of ``state/<name>``; None when it is missing or cannot be read (see
        :meth:`unreadable`): the markers are written by shell scripts that a kill can cut short."""
        return _marker(self.layout.marker(name))

    def unreadable(self, name: str) -> str:
        """Why ``state/<name>`` cannot be read ("" when it can, or is missing)."""
        try:
            read_marker(self.layout.marker(name))
        except ResultsError as err:
            return str(err)
        return ""


class _Times(TypedDict, total=False):
    """The times of a :class:`JobStatus`, as keyword arguments."""

    submitted: float | None
    started: float | None
    ended: float | None


@dataclass(frozen=True)
class JobStatus:
    """The state of a job, with its reason and times (seconds since the epoch)."""

    job: Job
    state: str
    reason: str = ""
    submitted: float | None = None
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    #: decided without a finished marker, from the scheduler's word or its silence
    inferred: bool = False

    @property
    def terminal(self) -> bool:
        """Whether the job is over."""
        return self.state in TERMINAL

    @property
    def elapsed(self) -> float | None:
        """Seconds the job has run (so far)."""
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started


def open_job(directory: str | Path) -> Job:
    """The job whose results directory is ``directory``."""
    directory = Path(directory).resolve()
    layout = Layout(directory)
    spec = _spec(directory)
    stamp = _marker(layout.marker(Layout.SUBMITTED)) or _marker(layout.marker(Layout.STARTED)) or {}
    if not spec and not stamp:
        record = read_run(directory)  # a run's record cut short says so
        if record is not None and "mapping" in record:
            return Job(directory, directory.name, Path(str(record.get("graph") or directory.name)).stem, RUN)
        raise JobNotFoundError(f"{directory} is not the results directory of a job or of a run "
                               f"(no {Layout.SPEC}, {Layout.STATE}/ or {Layout.RUN})")
    name = spec.get("job_name") or directory.name.rsplit("-", 1)[0]
    job_id = stamp.get("job_id") or directory.name[len(name) + 1:]
    return Job(directory, str(job_id), name, stamp.get("scheduler") or spec.get("scheduler", "local"))


def find(job: str, root: Path) -> Job:
    """The job ``job``: a results directory, or a job id looked up under ``root``, else in the
    user's index of submitted jobs (:mod:`d4p_hpc.jobs.index`)."""
    for directory in (Path(job), Path(root) / job):
        if directory.is_dir():
            return open_job(directory)
    matches = [Path(p) for p in glob.glob(str(Path(root) / f"*-{glob.escape(job)}")) if Path(p).is_dir()]
    if len(matches) == 1:
        return open_job(matches[0])
    gone: list[Path] = []
    if not matches:  # submitted with another results root: the user's index of jobs knows where
        matches, gone = index.lookup(job)
        if len(matches) == 1:
            return open_job(matches[0])
    if matches:
        raise JobNotFoundError(f"job id {job} matches several directories; give one: "
                               + ", ".join(str(m) for m in matches))
    if gone:
        raise JobNotFoundError(f"job {job} was in {', '.join(map(str, gone))}, which is gone (deleted, or on a file "
                               "system not mounted here)")
    raise JobNotFoundError(f"no job {job}: not a directory, no <name>-{job}/ under {root}, and not in the index "
                           f"of your jobs ({index.folder()}): see `d4p-hpc list`, or give the job's results "
                           "directory")


def list_jobs(root: Path, unreadable: list[str] | None = None) -> list[Job]:
    """The jobs (and runs) under ``root``, oldest first.

    A directory whose record cannot be read is left out, its one-line reason appended to
    ``unreadable``: one broken directory must not hide the others.
    """
    found = []
    try:
        # (a link is a successor job's id for the directory of the run it continues: listed once)
        directories = [d for d in Path(root).iterdir() if d.is_dir() and not d.is_symlink()] \
            if Path(root).is_dir() else []
    except OSError as exc:
        raise JobNotFoundError(f"cannot list the results root {root}: {exc.strerror}") from None
    for directory in directories:
        if any((directory / name).exists() for name in (Layout.SPEC, Layout.STATE, Layout.RUN)):
            try:
                found.append(open_job(directory))
            except JobNotFoundError:
                continue
            except ResultsError as err:
                if unreadable is not None:
                    unreadable.append(str(err))
    return sorted(found, key=lambda j: j.directory.stat().st_mtime)


def status(jobs: list[Job]) -> list[JobStatus]:
    """The state of each job; one scheduler query per scheduler for the unfinished ones."""
    answers: dict[str, SchedulerState] = {}
    errors: dict[str, str] = {}
    for name in {j.scheduler for j in jobs if j.scheduler != RUN and j.marker(Layout.FINISHED) is None}:
        open_ = {j.job_id: j.directory for j in jobs if j.scheduler == name and j.marker(Layout.FINISHED) is None}
        try:
            answers.update(schedulers.get(name).query(open_))
        except D4pHpcError as err:
            errors[name] = str(err)
    return [_decide_run(j) if j.scheduler == RUN else _decide(j, answers.get(j.job_id), errors.get(j.scheduler))
            for j in jobs]


def cancel(job: Job) -> None:
    """Ask the scheduler to cancel ``job``, noting the request in ``state/cancel_requested``."""
    current = status([job])[0]
    if current.terminal and not current.inferred:
        raise UsageError(f"job {job.job_id} has already ended: {current.state}")
    if job.scheduler == RUN:
        _stop_run(job, current)
        return
    write_json(job.layout.marker(Layout.CANCEL_REQUESTED), {"epoch": time.time()})
    schedulers.get(job.scheduler).cancel(job.job_id, job.directory)


def wait(job: Job, poll: float = 1.0, timeout: float | None = None, on_poll=None) -> JobStatus:
    """Poll until ``job`` ends; ``on_poll(status)`` is called after each poll.

    A job the scheduler says has ended but whose ``finished`` marker is missing
    is polled for :data:`MARKER_GRACE_SECONDS` more before its inferred state is
    accepted.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    grace_until: float | None = None
    while True:
        if job.scheduler != RUN:  # a job that requeued itself goes on as its successor, in the same directory
            job = open_job(job.directory)
        current = status([job])[0]
        if on_poll:
            on_poll(current)
        if current.terminal and not current.inferred:
            return current
        if current.terminal:  # inferred: the finished marker may still be on its way
            grace_until = grace_until or time.monotonic() + MARKER_GRACE_SECONDS
            if time.monotonic() >= grace_until:
                return current
        if deadline is not None and time.monotonic() >= deadline:
            if current.terminal:  # inferred, and no marker came in time to say otherwise
                return current
            raise D4pHpcError(f"job {job.job_id} is still {current.state} after {timeout:g} s")
        time.sleep(poll)


def log_files(job: Job) -> list[Path]:
    """The job's scheduler stdout/stderr files, then its per-process logs."""
    logs = sorted(job.layout.logs.glob("*.log")) if job.layout.logs.is_dir() else []
    if job.scheduler == RUN:
        return logs
    return [*schedulers.get(job.scheduler).log_files(job.directory, job.job_id), *logs]


def unfinished(jobs: list[Job]) -> list[Job]:
    """The jobs and runs whose end nothing has recorded: a job without its finished marker, a run
    whose ``run.json`` says RUNNING (alive, or gone without recording its end)."""
    def open_(job: Job) -> bool:
        if job.scheduler != RUN:
            return job.marker(Layout.FINISHED) is None
        decided = _decide_run(job)
        return not decided.terminal or decided.inferred

    return [j for j in jobs if open_(j)]


def _decide(job: Job, said: SchedulerState | None, error: str | None) -> JobStatus:
    decided = _decide_markers(job, said, error)
    unreadable = job.unreadable(Layout.FINISHED)
    if unreadable:  # decided as if it were missing: say why first
        return dataclasses.replace(decided, reason=f"{unreadable}; without it: {decided.reason}")
    return decided


def _decide_markers(job: Job, said: SchedulerState | None, error: str | None) -> JobStatus:
    submitted, started, finished = (job.marker(m) or {} for m in (Layout.SUBMITTED, Layout.STARTED, Layout.FINISHED))
    times: _Times = {"submitted": submitted.get("epoch"), "started": started.get("epoch"),
                     "ended": finished.get("epoch")}
    if finished:
        state, reason = finished.get("state", "FAILED"), finished.get("reason", "")
        if state == "CANCELLED" and said and said.state == "TIMEOUT":  # Slurm's SIGTERM at the limit
            state, reason = "TIMEOUT", "killed at the walltime"
        if state in ("CANCELLED", "TIMEOUT") and _completed_run(job):  # the stop came as the run was ending
            state, reason = "COMPLETED", f"the run had completed when the job was stopped ({reason})"
        if state == "COMPLETED" and (unrun := _unrecorded(job)):
            state, reason = "FAILED", unrun
        if state == "FAILED":
            reason = "; ".join(r for r in (reason, _run_error(job) or _first_error_line(job)) if r)
        return JobStatus(job, state, reason, exit_code=finished.get("exit_code"), **times)
    if said is not None and said.state not in TERMINAL:
        return JobStatus(job, said.state, said.reason, **times)
    if said is not None:
        if said.state == "COMPLETED":  # no marker: the script did not get to its end
            return JobStatus(job, "FAILED", f"the scheduler says COMPLETED, but the job wrote no {_FINISHED}",
                             inferred=True, **times)
        when = f"after it started, without writing {_FINISHED}" if started else "before it started"
        return JobStatus(job, said.state, f"{said.reason or said.state.lower()} ({when})", inferred=True, **times)
    if error is not None:
        return JobStatus(job, "RUNNING" if started else "PENDING", f"from state markers only: {error}", **times)
    if job.marker(Layout.CANCEL_REQUESTED):
        return JobStatus(job, "CANCELLED", "cancelled (d4p-hpc cancel)", inferred=True, **times)
    if started:
        return JobStatus(job, "FAILED", f"the job ended without writing {_FINISHED}: killed before its exit "
                         "trap ran (out of memory, node failure, SIGKILL?)", inferred=True, **times)
    return JobStatus(job, "FAILED", f"the {job.scheduler} scheduler has no record of job {job.job_id} and it "
                     "never started", inferred=True, **times)


def _completed_run(job: Job) -> bool:
    """Whether this job's own run recorded that it COMPLETED (its outputs are whole), whatever stopped
    the job script afterwards."""
    run = _read_run(job)
    return run.get("state") == "COMPLETED" and run.get("job_id") == job.job_id


def _unrecorded(job: Job) -> str:
    """Why a job whose finished marker says COMPLETED did not complete ("" when it did): the marker
    says only that the job's run command exited 0, and a command that ends with 0 before its run
    recorded itself (a graph file calling ``os._exit(0)`` as it is imported) ran nothing; nor
    did a run whose ``run.json`` still says RUNNING finish."""
    if not job.layout.run.exists():
        return (f"the job's run command exited 0, but the run never recorded itself (no {Layout.RUN}): it ended "
                "before the run started (a graph file that calls os._exit at import?)")
    if _read_run(job).get("state") == "RUNNING":
        return (f"the job's run command exited 0, but {Layout.RUN} says RUNNING: the run ended without recording "
                "its end")
    return ""


def _decide_run(job: Job) -> JobStatus:
    """The state of a ``d4p-hpc run`` from its run.json, telling a dead run from a live one."""
    try:
        record = read_run(job.directory) or {}
    except ResultsError as err:
        return JobStatus(job, "FAILED", str(err), inferred=True)
    times: _Times = {"started": units.epoch(record.get("started")), "ended": units.epoch(record.get("ended"))}
    state = record.get("state") or "FAILED"
    if state == "RUNNING":
        where = f"pid {record.get('pid')} on {record.get('host')}"
        alive = liveness.run_alive(record)
        if alive is False:
            return JobStatus(job, "FAILED", f"the run's process ({where}) is gone without recording its end: "
                             "killed (SIGKILL, out of memory, node lost?)", inferred=True, **times)
        return JobStatus(job, "RUNNING", "" if alive else f"{where}; cannot check that host from here", **times)
    reason = _run_error(job) if state == "FAILED" else ""
    return JobStatus(job, state, reason, exit_code=record.get("exit_code"), **times)


def _stop_run(job: Job, current: JobStatus) -> None:
    """SIGTERM to a live ``d4p-hpc run``, which then ends CANCELLED with its outputs flushed."""
    record = _read_run(job)
    if current.state != "RUNNING" or liveness.run_alive(record) is not True:
        raise D4pHpcError(f"cannot cancel run {job.directory}: {current.state}"
                          + (f" ({current.reason})" if current.reason else "")
                          + "; a run is cancelled from the host it runs on")
    os.kill(int(record["pid"]), signal.SIGTERM)


def _run_error(job: Job) -> str:
    error = _read_run(job).get("error")
    if not isinstance(error, dict):
        return ""
    last = (error.get("traceback") or "").strip().splitlines()[-1:] or [""]
    pe = error.get("pe")
    return f"PE {pe} raised {last[0]}".strip() if pe and not last[0].startswith(f"PE {pe}") else last[0]


def _first_error_line(job: Job) -> str:
    """The first ``Error: ...`` line the job's commands printed (a run refused at its start)."""
    for path in log_files(job):
        try:
            with open(path, errors="replace") as fh:
                for line in fh:
                    if line.startswith("Error: "):
                        return line.strip()
        except OSError:
            continue
    return ""


def _marker(path: Path) -> Marker | None:
    try:
        return read_marker(path)
    except ResultsError:
        return None


def _spec(directory: Path) -> SpecFields:
    """What ``spec.json`` says of the job; {} when it is missing or cannot be read (a job is then
    told by its markers and its directory's name)."""
    try:
        found = read_spec(directory)
    except ResultsError:
        return {}
    return found["spec"] if found else {}


def _read_run(job: Job) -> RunRecord:
    """The job's ``run.json``, {} when it is missing or unreadable (as a marker: see :func:`_read_json`)."""
    try:
        return read_run(job.directory) or {}
    except ResultsError:
        return {}
