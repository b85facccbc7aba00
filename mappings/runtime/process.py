"""Process plumbing of a run's processes: the two ways one stops early (:class:`PEFailed`,
:class:`Aborted`), dying with the parent, and sending a process's output to its log."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


class PEFailed(BaseException):
    """A PE raised. BaseException, so a PE's own ``except Exception`` around ``write`` cannot swallow it."""

    def __init__(self, pe: str, tb: str) -> None:
        super().__init__(f"PE {pe} failed")
        self.pe = pe
        self.traceback = tb


class Aborted(BaseException):
    """Another process of the run failed or was stopped; this one stops too. It may be raised inside a
    PE's call (a root waiting in ``write`` for the backlog to shrink) and passes through untouched."""


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """Have the kernel send ``signum`` to this process when ``parent`` dies, even by SIGKILL.

    A forked worker (or a per-job Redis) whose driver is gone has nobody to report to: it must
    stop, not run on. Linux only (``PR_SET_PDEATHSIG``); elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signum)


@contextmanager
def redirect_output(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors too) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # sys.stdout need not be fd 1 (Jupyter, IDEs): point the Python streams at the log too
    streams = sys.stdout, sys.stderr
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with suppress(OSError):  # the log may be on the file system that just filled up
                stream.close()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
