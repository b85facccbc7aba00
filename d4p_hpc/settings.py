"""d4p-hpc's tuning knobs in the environment: the one reader of each, and its validation.

=============================  ========================================================  ==========
variable                       what it sets                                              default
=============================  ========================================================  ==========
``D4P_HPC_SAMPLE_SECONDS``     seconds between two samples of a run (``0``: no samples)  1
``D4P_HPC_PROGRESS_SECONDS``   seconds between two plain progress lines (a log, a pipe)  30
``D4P_HPC_MAX_PROCESSES``      processes ``d4p-hpc run -n`` may fork on one host         4 per core, at least 16
``D4P_HPC_CLAIM_IDLE``         seconds before a silent Redis worker's tasks are taken    10
``D4P_HPC_MAX_BACKLOG``        tasks the dynamic driver lets wait before it pauses       by workers
``D4P_HPC_UNIT_SECONDS``       work a dynamic queue entry of quick tasks is filled to    by workers
``D4P_HPC_QUIET``              any value: no progress line                               unset
``D4P_HPC_NOFILE_LIMIT``       the open-files hard limit of the job's first node         this host's
``D4P_HPC_JOB_ID``             the job a run belongs to (set by the job script)          unset
=============================  ========================================================  ==========

A value that is not what its knob takes is refused in one line naming the variable, its value and
what to give instead (``D4P_HPC_SAMPLE_SECONDS=abc: not a number of seconds; unset it or give
e.g. 1``), never taken as the default in silence. ``d4p-hpc run`` calls :func:`check` before it
starts anything, so a bad value never reaches a worker process.

Read elsewhere, beside what they stand for: the job keys of the configuration layers
(``D4P_HPC_<KEY>``, ``D4P_HPC_PROFILE``: :mod:`d4p_hpc.submission.config`); the Redis server
binary and password (``D4P_HPC_REDIS_SERVER``, ``D4P_HPC_REDIS_PASSWORD``: the ``--redis-server``
and ``--redis`` options of :mod:`d4p_hpc.mappings.redis`); and the switches only tests set
(``D4P_HPC_CRASH_*``, ``D4P_HPC_CHECKPOINT_EVERY_TEST``: :mod:`d4p_hpc.durable`).
"""

from __future__ import annotations

import math
import os

from d4p_hpc.errors import UsageError

SAMPLE_SECONDS = "D4P_HPC_SAMPLE_SECONDS"
PROGRESS_SECONDS = "D4P_HPC_PROGRESS_SECONDS"
MAX_PROCESSES = "D4P_HPC_MAX_PROCESSES"
CLAIM_IDLE = "D4P_HPC_CLAIM_IDLE"
MAX_BACKLOG = "D4P_HPC_MAX_BACKLOG"
UNIT_SECONDS = "D4P_HPC_UNIT_SECONDS"
QUIET = "D4P_HPC_QUIET"
NOFILE_LIMIT = "D4P_HPC_NOFILE_LIMIT"
JOB_ID = "D4P_HPC_JOB_ID"

#: the most inputs a root PE may be fed (-i N, or {"PE": N}): far above any run, below what a counter holds
MAX_COUNT = 10**12
#: ``--checkpoint-every``'s range in seconds: checkpoints more often than every second would cost
#: more than the work between them; 30 days is longer than any walltime
CHECKPOINT_EVERY_RANGE = (1.0, 30 * 86400.0)


def sample_seconds() -> float:
    """Seconds between two samples of a run; 0: no samples."""
    value = _number(SAMPLE_SECONDS, 1.0, "1")
    if value != 0:
        _within(SAMPLE_SECONDS, value, 0.05, 3600, "1", "0 (no samples) or ")
    return value


def progress_seconds() -> float:
    """Seconds between two plain (not live) progress lines."""
    return _within(PROGRESS_SECONDS, _number(PROGRESS_SECONDS, 30.0, "30"), 0.1, 86400, "30")


def max_processes() -> int:
    """Processes one ``d4p-hpc run`` may fork on this host."""
    default = max(16, 4 * (os.cpu_count() or 1))
    return int(_within(MAX_PROCESSES, _whole(MAX_PROCESSES, default, str(default)), 1, 10**6, str(default)))


def claim_idle() -> float:
    """Seconds a Redis worker may stay silent before its tasks are taken over."""
    return _within(CLAIM_IDLE, _number(CLAIM_IDLE, 10.0, "10"), 0.1, 86400, "10")


def max_backlog() -> int | None:
    """Tasks the dynamic driver lets wait before it pauses feeding; None: the mapping's own figure."""
    if not os.environ.get(MAX_BACKLOG):
        return None
    return int(_within(MAX_BACKLOG, _whole(MAX_BACKLOG, 0, "4096"), 1, 10**9, "4096"))


def unit_seconds() -> float | None:
    """Seconds of work a dynamic queue entry of quick tasks is filled to; None: the pool's own
    figure (:func:`~d4p_hpc.mappings.dynamic.tasks.unit_seconds`)."""
    if not os.environ.get(UNIT_SECONDS, "").strip():
        return None
    return _within(UNIT_SECONDS, _number(UNIT_SECONDS, 0.0, "0.4"), 0.001, 3600, "0.4")


def nofile_limit() -> int:
    """The open-files hard limit (``ulimit -Hn``) of the node the per-job Redis runs on, as far as
    the submit host knows: its own, unless the user says the compute nodes' differs."""
    if os.environ.get(NOFILE_LIMIT, "").strip():
        return int(_within(NOFILE_LIMIT, _whole(NOFILE_LIMIT, 0, "65536"), 1, 2**31, "65536"))
    return host_nofile_limit()


def host_nofile_limit() -> int:
    """This process's open-files hard limit (``ulimit -Hn``; unlimited: 2**31), which what it starts inherits."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if hard != resource.RLIM_INFINITY else 2**31


def quiet() -> bool:
    """Whether progress lines are off."""
    return bool(os.environ.get(QUIET))


def job_id() -> str | None:
    """The id of the job this process runs in, or None outside a job."""
    return os.environ.get(JOB_ID) or None


def check() -> None:
    """Read every knob once: the first bad one raises its :class:`~d4p_hpc.errors.UsageError`."""
    sample_seconds(), progress_seconds(), max_processes(), claim_idle(), max_backlog(), unit_seconds(), nofile_limit()


def checkpoint_every(value: float) -> float:
    """``value`` if it is a finite number of seconds within :data:`CHECKPOINT_EVERY_RANGE`, else a
    :class:`~d4p_hpc.errors.UsageError` saying what to give (``nan`` and ``inf`` included)."""
    low, high = CHECKPOINT_EVERY_RANGE
    if not (math.isfinite(value) and low <= value <= high):
        raise UsageError(f"--checkpoint-every {value:g}: give a number of seconds from {_plain(low)} to "
                         f"{_plain(high)} (30 days), e.g. 600; for a checkpoint at the walltime signal only, "
                         "use --checkpoint")
    return value


def checkpoint_every_option(_ctx: object, _param: object, value: float | None) -> float | None:
    """The click callback of ``--checkpoint-every``: :func:`checkpoint_every` of a value given."""
    return None if value is None else checkpoint_every(value)


def _number(name: str, default: float, example: str) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UsageError(f"{name}={text}: not a number of seconds; unset it or give e.g. {example}")
    return value


def _whole(name: str, default: int, example: str) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name}={text}: not a whole number; unset it or give e.g. {example}") from None


def _within(name: str, value: float, low: float, high: float, example: str, also: str = "") -> float:
    if not low <= value <= high:
        raise UsageError(f"{name}={os.environ.get(name, '').strip()}: must be {also}from {_plain(low)} to "
                         f"{_plain(high)}; unset it or give e.g. {example}")
    return value


def _plain(number: float) -> str:
    """``2592000`` rather than ``2.592e+06``."""
    return f"{number:.0f}" if number == int(number) else f"{number:g}"
