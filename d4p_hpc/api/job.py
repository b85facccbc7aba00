"""Jobs and runs as Python objects: a :class:`Job` is a handle on a results directory, so it outlives
the kernel or script that made it, and :func:`attach` reopens it anywhere the directory is seen.

Nothing here holds a job: a :class:`Job` keeps no process, thread or connection, and reads
everything from its directory (and asks the scheduler) when asked. Closing a notebook therefore
neither cancels nor orphans anything; a local run started by :func:`d4p_hpc.run` is a process of
its own session, which the kernel's end does not stop either. The ``d4p-hpc`` job commands are
a layer over this module: what they print, they got from here.
"""

from __future__ import annotations

import html
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from d4p_hpc import schedulers, supervisor
from d4p_hpc.api import display
from d4p_hpc.api.checks import check_flag, check_keywords, check_timeout
from d4p_hpc.errors import D4pHpcError, JobFailed, UsageError
from d4p_hpc.jobs import efficiency as _efficiency
from d4p_hpc.jobs import resume as _resume
from d4p_hpc.jobs import state as _state
from d4p_hpc.results import Layout, ResultsView, list_outputs, output_items
from d4p_hpc.schedulers import RUN

#: the lines of each log of a failed job that :class:`~d4p_hpc.errors.JobFailed` carries
LOG_TAIL = 20


@dataclass(frozen=True)
class Status:
    """What a job was doing when asked: its state, why, its times and the segments of a resumed run."""

    job: Job
    #: the job's id then (a job that requeued itself has a new one)
    id: str
    state: str
    reason: str
    #: seconds its run has run (so far), over all its segments; None before it starts
    elapsed: float | None
    segments: list[str] = field(default_factory=list)
    #: decided without the job's own word (its finished marker), from the scheduler's or its silence
    inferred: bool = False

    @property
    def done(self) -> bool:
        """Whether it has ended, whatever its state."""
        return self.state in _state.TERMINAL


class Job(ResultsView):
    """A batch job (or a ``d4p-hpc run``) and its results directory."""

    def __init__(self, found: _state.Job) -> None:
        self._job = found

    @property
    def id(self) -> str:
        """The scheduler's job id (a run's: its directory's name); a resumed job's is its newest segment's."""
        self._reopen()
        return self._job.job_id

    @property
    def directory(self) -> Path:
        """Its results directory."""
        return self._job.directory

    @property
    def name(self) -> str:
        return self._job.name

    @property
    def scheduler(self) -> str:
        """``slurm``, ``pbs``, ``local``, or ``run`` for a ``d4p-hpc run``."""
        return self._job.scheduler

    @property
    def is_run(self) -> bool:
        """Whether it is a ``d4p-hpc run`` (no scheduler, no job script) rather than a batch job."""
        return self._job.scheduler == RUN

    @property
    def state(self) -> str:
        """PENDING, RUNNING, COMPLETED, FAILED, CANCELLED or TIMEOUT, asked now."""
        return self.status().state

    def _reopen(self) -> None:
        if self._job.scheduler != RUN:  # a job that requeued itself goes on as its successor, in the same directory
            self._job = _state.open_job(self._job.directory)

    def _current(self) -> _state.JobStatus:
        self._reopen()
        return _state.status([self._job])[0]

    def status(self) -> Status:
        """Its state, the reason, its elapsed time and its segments, asked now."""
        return _status(self, self._current())

    def wait(self, timeout: float | None = None, progress: bool = True,
             on_poll: Callable[[Status], None] | None = None) -> str:
        """Wait for it to end and return its final state; ``progress``: show a live line (updated in
        place in a notebook, on a terminal's stderr otherwise); ``on_poll(status)`` after each poll.
        Raises :class:`~d4p_hpc.errors.D4pHpcError` when ``timeout`` seconds pass first (the job goes on)."""
        timeout = check_timeout(timeout)
        check_flag("progress", progress, "wait")
        shown = display.Live(self.directory) if progress else None

        def polled(current: _state.JobStatus) -> None:
            status = _status(self, current, segments=False)
            if shown:
                shown.update(status)
            if on_poll:
                on_poll(status)
        try:
            final = _state.wait(self._job, poll=1.0, timeout=timeout, on_poll=polled)
        finally:
            if shown:
                shown.close()
        self._job = final.job
        return final.state

    def result(self, timeout: float | None = None) -> dict[str, Iterator[Any]]:
        """Wait for it, then its outputs (:meth:`outputs`); raises :class:`~d4p_hpc.errors.JobFailed`,
        with the failing PE, its error line and the end of each log, if it did not complete."""
        if self.wait(timeout, progress=False) != "COMPLETED":
            raise self._failure()
        return self.outputs()

    def _failure(self) -> JobFailed:
        current = self._current()
        error = self.record().get("error")
        error = error if isinstance(error, dict) else {}
        lines = (error.get("traceback") or "").strip().splitlines()
        first = next((line for line in reversed(lines) if line.strip()), "") or current.reason
        return JobFailed(self, current.state, current.reason, error.get("pe"), first, self.logs(LOG_TAIL))

    def cancel(self) -> bool:
        """Ask the scheduler to cancel it (a run: SIGTERM to its process); it ends CANCELLED with its
        outputs so far. False if it had ended already (nothing to do)."""
        self._reopen()
        current = _state.status([self._job])[0]
        if current.terminal and not current.inferred:
            return False
        _state.cancel(self._job)
        return True

    def log_files(self) -> list[Path]:
        """The scheduler's stdout and stderr files of its newest segment, then each process's log."""
        return _state.log_files(self._job)

    def scheduler_logs(self) -> dict[Path, str]:
        """The scheduler's stdout and stderr files -> what each is ("Slurm stdout"); none for a run."""
        if self.is_run:
            return {}
        title = schedulers.scheduler_class(self.scheduler).title
        files = schedulers.get(self.scheduler).log_files(self.directory, self.id)
        return {path: f"{title} {what}" for path, what in zip(files, ("stdout", "stderr"), strict=True)}

    def logs(self, tail: int | None = 50) -> str:
        """Its logs (:meth:`log_files`), each headed by its path; the last ``tail`` lines of each
        (None: whole)."""
        parts = []
        for path in self.log_files():
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            parts.append(f"==> {path} <==\n" + "\n".join(lines if tail is None else lines[-tail:]))
        return "\n".join(parts)

    def outputs(self) -> dict[str, Iterator[Any]]:
        """``"PE.output"`` -> a lazy iterator of its items, as stored (a pickled item is unpickled
        only from a file the user alone could write: see ``d4p_hpc.trust``)."""
        return {f"{pe}.{output}": _lazy(self.directory, pe, output) for pe, output in list_outputs(self.directory)}

    def items(self, name: str) -> Iterator[Any]:
        """The items of output ``name`` ("PE.output"), lazily; an output it does not have is refused
        in one line naming those it has."""
        pe, _, output = name.rpartition(".")
        if (pe, output) not in list_outputs(self.directory):
            known = ", ".join(f"{p}.{o}" for p, o in list_outputs(self.directory)) or "none yet"
            raise UsageError(f"no output {name} in {self.directory}; outputs: {known}")
        return _lazy(self.directory, pe, output)

    def efficiency(self) -> _efficiency.Efficiency:
        """CPU and memory used against what was allocated (``.line()`` says it in one line)."""
        return _efficiency.measure(self.directory, self.scheduler, self.id)

    def resume(self, **changes: Any) -> Job:
        """Continue it from its last checkpoint as a new job in its directory (TIMEOUT, CANCELLED or
        FAILED); ``changes``: a new ``walltime``, ``requeue`` count, ``account``, ... (never what it
        computes: see ``d4p_hpc.jobs.resume.CHANGEABLE``). Returns it, as its successor."""
        return resume(self, changes=changes)[0]

    def report(self, path: str | Path | None = None, png: bool = False) -> Report:
        """Write its HTML report (default: ``report.html`` in its directory), and with ``png`` each
        plot as a PNG (needs Chromium); in a notebook the returned :class:`Report` shows the page."""
        from d4p_hpc.report import page

        target = Path(path) if path is not None else self.directory / "report.html"
        return Report(target, tuple(page.write(self.directory, target, None if self.is_run else self._job, png)))

    def __repr__(self) -> str:
        return f"<Job {self._job.job_id} {self.name} ({self.scheduler}) {self.directory}>"

    def _repr_html_(self) -> str:
        return display.status_table(statuses([self]))


class Run(Job):
    """A ``d4p-hpc run`` started by :func:`d4p_hpc.run`: here, in a process (and session) of its own."""

    def __init__(self, directory: Path, process: subprocess.Popen | None = None, said: IO[str] | None = None) -> None:
        self._directory = directory
        self._process = process
        self._said = said
        super().__init__(_state.Job(directory, directory.name, directory.name, RUN))

    def _reopen(self) -> None:
        if self._job.scheduler == RUN and Layout(self._directory).run.exists():
            self._job = _state.open_job(self._directory)

    def _current(self) -> _state.JobStatus:
        started = Layout(self._directory).run.exists()
        if self._process is not None and not started:
            if self._process.poll() is None:
                return _state.JobStatus(self._job, "PENDING", "starting")
            return _state.JobStatus(self._job, "FAILED", _refusal(self._process, self._said))
        return super()._current()

    def cancel(self) -> bool:
        """SIGTERM to the run's processes (its session), then SIGKILL to what is left after the
        grace; it ends CANCELLED with its outputs so far. Returns once it has ended; False if it had
        ended already."""
        if self._process is None:
            return super().cancel()
        if self._process.poll() is not None:
            return False
        supervisor.stop_group(self._process.pid, supervisor.GRACE_SECONDS)
        self._process.wait()
        return True

    def wait(self, timeout: float | None = None, progress: bool = True,
             on_poll: Callable[[Status], None] | None = None) -> str:
        timeout = check_timeout(timeout)
        check_flag("progress", progress, "wait")
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = display.Live(self.directory) if progress else None
        try:
            while True:
                current = _status(self, self._current(), segments=False)
                if shown:
                    shown.update(current)
                if on_poll:
                    on_poll(current)
                ended = self._process is None or self._process.poll() is not None
                if current.done and ended:
                    return current.state
                if deadline is not None and time.monotonic() >= deadline:
                    raise D4pHpcError(f"run {self.directory} is still {current.state} after {timeout:g} s")
                time.sleep(0.2 if self._process is not None else 1.0)
        finally:
            if shown:
                shown.close()

    def __repr__(self) -> str:
        return f"<Run {self.directory}>"


@dataclass(frozen=True)
class Report:
    """A written report; shown inline in a notebook (the page is self-contained and offline)."""

    path: Path
    #: every file written: the page, then the PNGs
    files: tuple[Path, ...] = ()

    def _repr_html_(self) -> str:
        page = self.path.read_text()
        return (f'<p>report: <code>{html.escape(str(self.path))}</code></p><iframe srcdoc="{html.escape(page)}" '
                'style="width:100%;height:720px;border:1px solid #ccc" sandbox></iframe>')

    def __fspath__(self) -> str:
        return str(self.path)


def find_root(results_root: str | Path | None = None, profile: str | None = None) -> Path:
    """The results root given, else the profile's (else ``./d4p-results``)."""
    from d4p_hpc.submission import config

    if not isinstance(results_root, (str, os.PathLike, type(None))) or not isinstance(profile, (str, type(None))):
        raise UsageError(f"results_root must be a path and profile a name, not {results_root!r:.60} and "
                         f"{profile!r:.60}")
    try:
        return Path(results_root).resolve(strict=Path(results_root).is_symlink()) if results_root is not None \
            else config.results_root(profile)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, before Python 3.13
        raise UsageError(f"results root {results_root or '(from the profile)'} cannot be used: {exc}; "
                         "give --results-root a directory") from None


def attach(job: str | Path, results_root: str | Path | None = None, profile: str | None = None) -> Job:
    """The job ``job`` names (an id, or a results directory), from any kernel or shell that sees
    its directory: under ``results_root`` (default: the profile's), else in the user's index of
    submitted jobs."""
    return Job(_state.find(str(job), find_root(results_root, profile)))


def list_jobs(results_root: str | Path | None = None, state: str | None = None, profile: str | None = None,
              unreadable: list[str] | None = None) -> list[Job]:
    """The jobs and runs under ``results_root`` (default: the profile's), oldest first; ``state``:
    only those in that state (e.g. ``"RUNNING"``). A directory that cannot be read is left out, and
    why appended to ``unreadable``."""
    states = ("PENDING", "RUNNING", *_state.TERMINAL)
    if state is not None and (not isinstance(state, str) or state.upper() not in states):
        raise UsageError(f"state must be one of {', '.join(states)}, not {state!r:.60}")
    found = [Job(j) for j in _state.list_jobs(find_root(results_root, profile), unreadable)]
    return found if state is None else [s.job for s in statuses(found) if s.state == state.upper()]


def unfinished(jobs: list[Job]) -> list[Job]:
    """The jobs and runs whose end nothing has recorded (a run gone without recording it included)."""
    open_ = {j.directory for j in _state.unfinished([job._job for job in jobs])}
    return [job for job in jobs if job.directory in open_]


def statuses(jobs: list[Job]) -> list[Status]:
    """The status of each job, asking each scheduler once for all its unfinished jobs."""
    for job in jobs:
        job._reopen()
    return [_status(job, current) for job, current in
            zip(jobs, _state.status([job._job for job in jobs]), strict=True)]


def as_completed(jobs: Iterable[Job | str], timeout: float | None = None, poll: float = 2.0) -> Iterator[Job]:
    """Yield each job (a :class:`Job`, or an id for :func:`attach`) as it ends (whatever its state),
    the first to end first; raises
    :class:`~d4p_hpc.errors.D4pHpcError` naming those still going after ``timeout`` seconds."""
    if isinstance(jobs, (str, Job)) or not isinstance(jobs, Iterable):
        raise UsageError(f"as_completed takes jobs (Job objects or ids), not {jobs!r:.60}")
    waiting = [job if isinstance(job, Job) else attach(job) for job in jobs]
    timeout = check_timeout(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while waiting:
        for job, current in zip(list(waiting), statuses(waiting), strict=True):
            if current.done:
                waiting.remove(job)
                yield job
        if not waiting:
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise D4pHpcError(f"{len(waiting)} job(s) still going after {timeout:g} s: "
                              + ", ".join(j.id for j in waiting))
        time.sleep(poll)


def resume(job: Job, exit_code: int | None = None, changes: dict[str, Any] | None = None) -> tuple[Job, str | None]:
    """Submit the successor of ``job`` (``d4p-hpc resume`` and :meth:`Job.resume`); returns it and a
    warning about its signal time, if any. ``exit_code``: given by a job resubmitting itself at its
    walltime stop (see :func:`d4p_hpc.jobs.resume.resume`)."""
    from d4p_hpc.api.options import SPEC_KEYWORDS

    changes = dict(changes or {})
    check_keywords(changes, SPEC_KEYWORDS, "resume")
    job._reopen()
    requeue = changes.pop("requeue", None)
    _new_id, warning = _resume.resume(job._job, exit_code, requeue, changes)
    return attach(job.directory), warning


def _status(job: Job, current: _state.JobStatus, segments: bool = True) -> Status:
    return Status(job, current.job.job_id, current.state, current.reason, _resume.run_elapsed(current),
                  _resume.describe(current) if segments else [], current.inferred)


def _lazy(directory: Path, pe: str, output: str) -> Iterator[Any]:
    """The items of one output, read only when iterated."""
    yield from output_items(directory, pe, output)


def _refusal(process: subprocess.Popen, said: IO[str] | None) -> str:
    """What a run that ended before writing its record said: its ``Error:`` line."""
    text = ""
    if said is not None:
        said.seek(0)
        text = said.read()
    lines = [line for line in text.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("Error:")), lines[-1] if lines else
                f"the run exited {process.returncode} before it started")
