"""What every scheduler provides: its facts, and how to submit a script, ask about jobs, cancel one.

A scheduler is one module holding a :class:`Scheduler` subclass, registered with
:func:`d4p_hpc.schedulers.register`, plus one template (:attr:`Scheduler.template`).
Everything else asks the class: the spec what it may be given, the launch step how
tasks start, the renderer which template, the configuration whether it is found here.
The job's own state markers are the truth about a job (see :mod:`d4p_hpc.jobs.state`); a
scheduler is asked only to fill the gaps: a job that has not started, or one that
died before it could write its ``finished`` marker. A scheduler knows nothing of job specs:
:class:`Submission` is what it may need of one.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypedDict

from d4p_hpc.errors import SchedulerError, SubmitError
from d4p_hpc.results import Layout

# words in the error messages of a busy or restarting Slurm/PBS server: worth another try
_TRANSIENT = ("timed out", "try again", "temporarily", "unable to contact", "connection refused",
              "Communication failure", "pbs_iff")


@dataclass(frozen=True)
class SchedulerState:
    """What the scheduler says about a job.

    Attributes
    ----------
    state
        PENDING, RUNNING, COMPLETED, FAILED, CANCELLED or TIMEOUT.
    reason
        Plain words, e.g. ``waiting for resources`` or ``out of memory``.
    raw
        The scheduler's own state word (``OUT_OF_MEMORY``, ``F``...).
    """

    state: str
    reason: str = ""
    raw: str = ""


@dataclass(frozen=True)
class Submission:
    """What a scheduler may need to know of a job besides its script.

    Attributes
    ----------
    results_dir
        Where the job with a given id keeps its results.
    continues
        Whether it continues the run of an earlier job, in that job's results directory.
    after
        The job that must end before this one starts.
    tasks
        Ranks or workers in the whole job.
    """

    results_dir: Callable[[str], Path]
    continues: bool = False
    after: str | None = None
    tasks: int = 1


@dataclass(frozen=True)
class ArraySubmission:
    """A job array: one element per task of a sweep, each running its task's own job script.

    Attributes
    ----------
    directories
        The results directory of the task each array index runs (index 0 first).
    tasks
        Ranks or workers of each of them.
    max_parallel
        Elements running at once, at most; None: as many as the scheduler starts.
    logs
        The folder for the scheduler's logs of the elements (each element moves its own into its
        results directory once it starts).
    script
        Where the array's script is kept (the local scheduler runs it from there).
    """

    directories: tuple[Path, ...]
    tasks: tuple[int, ...]
    max_parallel: int | None
    logs: Path
    script: Path


@dataclass(frozen=True)
class ArrayLimits:
    """What a scheduler allows of job arrays (None: no limit known).

    Attributes
    ----------
    max_index
        The highest index of an array, plus one (Slurm's ``MaxArraySize``, PBS's ``max_array_size``).
    max_jobs
        Jobs the scheduler keeps at once (Slurm's ``MaxJobCount``), which no sweep may exceed.
    source
        Where these figures were read, for messages.
    index_name
        What the scheduler calls the limit on the index.
    """

    max_index: int | None = None
    max_jobs: int | None = None
    source: str = ""
    index_name: str = "the array size limit"


class Usage(TypedDict, total=False):
    """What a scheduler's accounting says a job used; ``source`` names the command that said it."""

    cores: int | None
    wall_seconds: float | None
    cpu_seconds: float | None
    memory_mb: float | None
    source: str


class Scheduler(ABC):
    """One batch system: what it is told in a job script, and how to submit, query and cancel its jobs."""

    #: what ``--scheduler`` and profiles call it, and a job's ``state/submitted`` records
    name: ClassVar[str]
    #: how messages name it ("Slurm")
    title: ClassVar[str]
    #: its job script template (extending ``common/job.sh.j2``), looked up in the package's
    #: ``templates/`` and then in :attr:`template_path`
    template: ClassVar[str]
    #: more template directories, for a scheduler that keeps its template beside its own module
    template_path: ClassVar[tuple[str, ...]] = ()
    #: prefix of its directive lines (``#SBATCH``); None: its scripts read none, so raw ones are refused
    directive: ClassVar[str | None] = None
    #: what may start ranks and workers across the nodes (``--launcher``); the first is the default
    launchers: ClassVar[tuple[str, ...]] = ("mpiexec",)
    #: variable that the job's environment sets to a file listing one host per task; None where the
    #: launcher finds the nodes itself
    nodefile: ClassVar[str | None] = None
    #: whether a job's "nodes" are task slots of this host: workers are forked over the node file,
    #: mpiexec needs no placement, the per-job Redis listens on loopback only, and a one-node
    #: mapping may have several nodes
    on_this_host: ClassVar[bool] = False
    #: the requests (job spec fields marked ``request``) its job scripts pass on; any other one given
    #: is refused, so that no request is silently dropped
    options: ClassVar[frozenset[str]] = frozenset()
    #: requests it accepts knowing they mean nothing to it (documented as ignored)
    ignored: ClassVar[frozenset[str]] = frozenset()
    #: its job array template (extending :attr:`template`, with ``common/array.sh.j2`` as its body);
    #: None: it runs no sweeps
    array_template: ClassVar[str | None] = None
    #: whether a job may wait for one element of an array (``after``): a sweep's task that requeues
    #: itself at its walltime needs it
    requeues_elements: ClassVar[bool] = True
    #: the command that submits its jobs; on PATH, it says that jobs from this host go to this scheduler
    command: ClassVar[str | None] = None
    #: where several are found on PATH, the highest wins; it also orders :func:`~d4p_hpc.schedulers.names`
    priority: ClassVar[int] = 0

    @classmethod
    def detected(cls) -> bool:
        """Whether jobs submitted from this host go to this scheduler: its :attr:`command` is on PATH."""
        return cls.command is not None and shutil.which(cls.command) is not None

    @abstractmethod
    def submit(self, script: str, job: Submission) -> str:
        """Submit ``script`` (the rendered job script) and return the job id."""

    @abstractmethod
    def query(self, jobs: dict[str, Path]) -> dict[str, SchedulerState]:
        """States of the jobs (id -> results directory) the scheduler still knows.

        Raises
        ------
        QueryError
            If the scheduler cannot be asked at all.
        """

    @abstractmethod
    def cancel(self, job_id: str, results_dir: Path) -> None:
        """Cancel a job, pending or running (:class:`~d4p_hpc.errors.CancelError` if it cannot)."""

    def submit_array(self, script: str, array: ArraySubmission) -> list[str]:
        """Submit the array ``script`` (``array.directories`` elements); return each element's job id,
        as :meth:`query` and :meth:`cancel` take it."""
        raise SubmitError(f"the {self.title} scheduler runs no job arrays: a sweep cannot be submitted to it")

    def array_limits(self) -> ArrayLimits:
        """What this cluster allows of job arrays (asked of the scheduler; no limits by default)."""
        return ArrayLimits()

    def array_of(self, element: str) -> str | None:
        """The id of the array that element ``element`` belongs to, as a job's dependency (``after``)
        names it; None where the scheduler runs an array's elements in order itself."""
        return None

    def usage(self, job_id: str) -> Usage:
        """What the scheduler's accounting says the job used ({} where it keeps no figures).

        Raises
        ------
        SchedulerError
            Its accounting cannot be asked from here.
        """
        return {}

    def log_files(self, results_dir: Path, job_id: str) -> list[Path]:
        """Where the job's stdout and stderr files are (the script moves them into its directory)."""
        return Layout(results_dir).scheduler_logs


def run_command(argv: list[str], input: str | None = None, timeout: float = 60, retries: int = 0,
                check: bool = True, error: type[SchedulerError] = SchedulerError) -> subprocess.CompletedProcess:
    """Run a scheduler command, retrying transient failures with back-off.

    Parameters
    ----------
    argv
        The command.
    input
        Text for its standard input.
    timeout
        Seconds before one attempt is given up.
    retries
        Further attempts after a failure whose message looks transient (a busy controller).
    check
        Raise on a non-zero exit (after the retries).
    error
        What is raised: :class:`~d4p_hpc.errors.SubmitError` for a submission,
        :class:`~d4p_hpc.errors.QueryError` for a question, :class:`~d4p_hpc.errors.CancelError` for a
        cancel.

    Raises
    ------
    SchedulerError
        ``error``: the command is missing, timed out, or (with ``check``) failed.
    """
    for attempt in range(retries + 1):
        try:
            result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise error(f"{argv[0]} not found: is this a login node of the cluster?", argv) from None
        except OSError as exc:
            raise error(f"cannot run {argv[0]}: {exc.strerror}", argv) from None
        except subprocess.TimeoutExpired:
            result = subprocess.CompletedProcess(argv, -1, "", f"timed out after {timeout} s")
        transient = any(word.lower() in result.stderr.lower() for word in _TRANSIENT)
        if result.returncode == 0 or not transient or attempt == retries:
            break
        time.sleep(2 ** attempt)
    if check and result.returncode != 0:
        raise error(f"{' '.join(argv[:2])} failed (exit {result.returncode}): "
                    f"{result.stderr.strip() or result.stdout.strip()}",
                    argv, result.returncode, result.stdout, result.stderr)
    return result
