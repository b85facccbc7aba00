"""Processes and signals: the one place that says what a stop signal means and how a process is
stopped, and whether a process is a rank that an MPI launcher started.

Both sides use it: the runtime (a run, its forked processes, MPI ranks, the per-job Redis
supervisor and workers) and the submission side (the local scheduler's ``cancel``, the job
script templates, which are rendered with :data:`STOPS` and :data:`GRACE_SECONDS`, and ``d4p-hpc
run``, which must not start ``mpiexec`` inside an MPI world), so a state, an exit code and a grace
period mean the same everywhere. Standard library only.

The table, as batch systems use the signals:

=========  ===========  =========  ==============================================
signal     final state  exit code  sent by
=========  ===========  =========  ==============================================
SIGTERM    CANCELLED    143        ``scancel``, ``qdel``, ``d4p-hpc cancel``
SIGINT     CANCELLED    130        Ctrl-C (``d4p-hpc run`` in a terminal)
SIGUSR1    TIMEOUT      138        the pre-walltime signal (``--signal-seconds``)
=========  ===========  =========  ==============================================

A process that a stop signal ended exits 128+N once it flushed what it had. It may also
show -N (how multiprocessing and subprocess report "killed by signal N") when the signal,
sent to the whole process group, came before its handlers were installed: it had not begun
any work, so that too is a stop, not a failure (:func:`classify`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

#: stop signal -> the run's final state
STOPS: dict[int, str] = {signal.SIGTERM: "CANCELLED", signal.SIGINT: "CANCELLED", signal.SIGUSR1: "TIMEOUT"}
#: the stop signals that cancel (the others leave time to finish cleanly)
CANCELS: tuple[int, ...] = tuple(signum for signum, state in STOPS.items() if state == "CANCELLED")
#: the stop signal that leaves time to finish cleanly: with checkpoints on, a checkpoint is taken first
WALLTIME = signal.SIGUSR1
#: what a process gets to flush and leave after a stop signal, before SIGKILL
GRACE_SECONDS = 10.0
#: a process that failed and could not even record why: its results directory cannot be
#: written (sysexits' EX_IOERR)
IO_FAILED = 74
#: set by an MPI launcher in every rank (Open MPI, MPICH/Hydra, PMIx e.g. srun --mpi=pmix, PMI2)
WORLD_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK", "MPI_LOCALNRANKS")


def exit_code(signum: int) -> int:
    """The exit code of a run that the stop signal ``signum`` ended."""
    return 128 + signum


#: exit codes that mean "ended by a stop signal" (see the module docstring)
STOPPED: tuple[int, ...] = tuple(exit_code(s) for s in STOPS) + tuple(-s for s in STOPS)


def stop_signal(code: int | None) -> int | None:
    """The stop signal an exit code reports, or None."""
    if code in STOPPED:
        assert code is not None
        return code - 128 if code > 0 else -code
    return None


def classify(code: int | None) -> tuple[str, int | None]:
    """(final state, stop signal or None) for a process's exit code: COMPLETED for 0, the stop's
    state for a stop signal's code, FAILED for anything else (None: it has not ended)."""
    if code == 0:
        return "COMPLETED", None
    signum = stop_signal(code)
    return (STOPS[signum], signum) if signum is not None else ("FAILED", None)


def shell_cases() -> list[tuple[str, str]]:
    """(``case`` pattern, state) for the job script: which exit codes of the run are stops."""
    by_state: dict[str, list[str]] = {}
    for signum, state in STOPS.items():
        by_state.setdefault(state, []).append(str(exit_code(signum)))
    return [(" | ".join(sorted(codes)), state) for state, codes in by_state.items()]


class Interrupted(BaseException):
    """A stop signal arrived: ``state`` is CANCELLED or TIMEOUT. BaseException, so that a PE's own
    ``except Exception`` cannot swallow it."""

    def __init__(self, state: str, signum: int) -> None:
        super().__init__(state)
        self.state = state
        self.signum = signum


def raise_on_signals(hold: Any = None) -> None:
    """Turn the first stop signal into :class:`Interrupted`; with ``hold``, :data:`WALLTIME` calls
    ``hold(signum)`` instead (a checkpoint is taken, then the run stops by itself).

    One-shot: the first stop signal disarms them all before it is raised. A job's processes often
    get two (PBS signals every process of the job, and mpiexec passes on the script's): a second
    one raised while the first is handled would leave a second traceback and the process's
    outcome unset. Disarmed means a handler that does nothing, not SIG_IGN: Python reports a
    signal already pending when its handler became SIG_IGN with a traceback of its own.
    """
    def handler(signum: int, _frame: Any) -> None:
        if hold is not None and signum == WALLTIME:
            hold(signum)
            return
        on_signals(lambda *_: None)
        raise Interrupted(STOPS[signum], signum)
    on_signals(handler)


def hold_stops() -> None:
    """Keep stop signals pending until this process installs its handlers (:func:`on_signals` and
    :func:`restore_signals` lift the hold). Once a run is recorded as RUNNING, a signal must reach a
    handler that records its end, not the default action, which would leave it RUNNING; a process that
    forks children installs its handlers after (they may pass a signal on to every child), and each
    child inherits the hold, until it has handlers of its own (not its copy of the parent's).
    Per thread: a thread that never handles signals (they are the main thread's) holds them for good."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)


def release_stops() -> None:
    """Lift :func:`hold_stops`: a signal held back reaches the handler now in place."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)


def on_signals(handler: Any) -> None:
    """Install ``handler`` (a callable, SIG_IGN or SIG_DFL) for every stop signal; lift :func:`hold_stops`.

    A run's processes install theirs through this module (this function, :func:`restore_signals`,
    :func:`deferred`). Two places call :mod:`signal` directly: the per-job Redis server
    (``d4p_hpc.mappings.redis.server``, which also stops at SIGHUP) and the local scheduler's job
    start (``d4p_hpc.schedulers.local``, which gives a job the defaults a batch system starts it with)."""
    for signum in STOPS:
        signal.signal(signum, handler)
    release_stops()


def ignore_signals() -> None:
    """Ignore stop signals (while flushing results, or waiting for children that were told)."""
    on_signals(signal.SIG_IGN)


def restore_signals() -> None:
    """Give the stop signals back their default behaviour (after a run in this process)."""
    for signum in STOPS:
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    release_stops()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold stop signals back while the block runs, then act on them.

    An exception raised by a signal handler between a lock's acquire and the ``with`` that
    releases it leaks the lock: a multiprocessing queue whose lock leaked hangs the process at
    exit for ever. Blocking the signal (``pthread_sigmask``) is no help, as the kernel hands a
    process-directed signal to another thread and Python still runs the handler in this one; so
    the handlers are swapped for ones that only note the signal. Main thread only (elsewhere a
    no-op: handlers run in the main thread anyway).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {signum: signal.signal(signum, lambda n, _f: pending.append(n)) for signum in STOPS}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in pending:
            signal.raise_signal(signum)


def inside_mpi_world() -> bool:
    """True when this process was started by an MPI launcher (so it must not start one)."""
    return any(v in os.environ for v in WORLD_VARS)


def stop(processes: Iterable[Any], grace: float = GRACE_SECONDS, signum: int | None = signal.SIGTERM,
         patience: float = 0.0) -> list[Any]:
    """Stop ``processes`` (``multiprocessing.Process`` or ``subprocess.Popen``) and reap them.

    Each still running after ``patience`` seconds gets ``signum`` (None: none is sent, they were
    told already); those still there ``grace`` seconds later get SIGKILL, so none outlives the
    caller. Returns the processes that had to be killed.
    """
    processes = list(processes)
    _join(processes, patience)
    if signum is not None:
        for proc in processes:
            if _alive(proc):
                _signal(proc, signum)
    _join(processes, grace)
    killed = [proc for proc in processes if _alive(proc)]
    for proc in killed:
        _signal(proc, signal.SIGKILL)
    _join(killed, None)
    return killed


def stop_group(pgid: int, grace: float = GRACE_SECONDS, signum: int = signal.SIGTERM) -> bool:
    """Send ``signum`` to process group ``pgid``, as a batch system signals every process of a job,
    then SIGKILL to what is left after ``grace`` seconds. True once the group is gone."""
    for sig, wait in ((signum, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:  # the leader is our child when this very process started it (submit --wait, tests)
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:
                pass
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
    return False


def _alive(proc: Any) -> bool:
    return proc.is_alive() if hasattr(proc, "is_alive") else proc.poll() is None


def _signal(proc: Any, signum: int) -> None:
    if proc.pid:
        try:
            os.kill(proc.pid, signum)
        except ProcessLookupError:
            pass


def _join(processes: list[Any], seconds: float | None) -> None:
    deadline = None if seconds is None else time.monotonic() + seconds
    for proc in processes:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if hasattr(proc, "join"):
            proc.join(left)
        else:
            try:
                proc.wait(left)
            except subprocess.TimeoutExpired:
                pass


# How every d4p-hpc process is started, on both sides (job scripts, the precheck, mpi's own
# mpiexec): what ``python -m MODULE`` would do, without the working directory first on sys.path.
# A job submitted from a directory holding inspect.py, queue.py or a d4p_hpc/ folder must still import
# the standard library and the installed package (``python -P`` does this, but only from 3.11).
# The graph loader appends the graph's and the working directory, so helper modules still import.
SAFE_MODULE = ("-c", "import sys;sys.path[:1]==['']and sys.path.pop(0);"
                     "import runpy;runpy.run_module(sys.argv.pop(1),run_name='__main__',alter_sys=True)")
