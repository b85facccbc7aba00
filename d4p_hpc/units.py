"""Units and clocks: the one reader and writer of sizes, durations, times and counted nouns.

What a user writes in a job spec (walltimes ``MM``, ``HH:MM:SS``, ``D-HH:MM:SS``; memory
``4G``, ``500M``) is read strictly, and anything else is refused with a
:class:`~d4p_hpc.errors.SpecError` that lists the formats. What a scheduler prints (Slurm's
``MaxRSS`` ``2000K``, PBS's ``1234kb``, ``[D-]HH:MM:SS[.sss]``) is read leniently: None for what
cannot be read, since a figure of the accounting is never worth an error.
"""

from __future__ import annotations

import datetime
import re

from d4p_hpc.errors import SpecError

_MEMORY = re.compile(r"(\d+)\s*([KMGT]?)B?", re.IGNORECASE)
_WALLTIME = re.compile(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)|(\d+)")
_SCHEDULER_MEMORY = re.compile(r"\s*([0-9.]+)\s*([KMGT]?)B?\s*")
_SCHEDULER_CLOCK = re.compile(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)")
_MB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}


def normalise_memory(value: str) -> str:
    """A memory request as a whole number and one unit letter (``4gb`` -> ``4G``, ``500`` -> ``500M``)."""
    match = _MEMORY.fullmatch(value.strip())
    if not match:
        raise SpecError(f"memory {value!r} is not a size: use a number with an optional unit K, M, G "
                        f"or T, e.g. 4G or 500M (no unit means M)")
    return f"{int(match[1])}{(match[2] or 'M').upper()}"


def walltime_seconds(value: str) -> int:
    """Seconds of a walltime written ``MM`` (minutes), ``HH:MM:SS`` or ``D-HH:MM:SS``."""
    match = _WALLTIME.fullmatch(value)
    if not match:
        raise SpecError(f"walltime {value!r} is not valid: use MM (minutes), HH:MM:SS or D-HH:MM:SS")
    days, hours, minutes, seconds, only_minutes = match.groups()
    if only_minutes is not None:
        return int(only_minutes) * 60
    if int(minutes) > 59 or int(seconds) > 59:
        raise SpecError(f"walltime {value!r}: minutes and seconds must be below 60")
    return ((int(days or 0) * 24 + int(hours)) * 60 + int(minutes)) * 60 + int(seconds)


def memory_mb(text: str | None) -> float | None:
    """MB of a size such as ``4G``, ``500M``, ``2000K`` or PBS's ``1234kb`` (no unit: MB)."""
    match = _SCHEDULER_MEMORY.fullmatch((text or "").upper())
    return float(match[1]) * _MB[match[2] or "M"] if match else None


def clock_seconds(text: str | None) -> float | None:
    """Seconds of ``[D-]HH:MM:SS[.sss]`` or ``MM:SS.sss`` (Slurm, PBS)."""
    match = _SCHEDULER_CLOCK.fullmatch((text or "").strip())
    if not match:
        return None
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def clock(seconds: float, days: bool = False) -> str:
    """``HH:MM:SS`` (hours may exceed 24), or ``D-HH:MM:SS`` with ``days``."""
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if days and hours >= 24:
        return f"{hours // 24}-{hours % 24:02d}:{minutes:02d}:{sec:02d}"
    return f"{hours:02d}:{minutes:02d}:{sec:02d}"


def epoch(stamp: str | None) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (as run records write them), or None."""
    try:
        return datetime.datetime.fromisoformat(stamp).timestamp() if stamp else None
    except (TypeError, ValueError):
        return None


def plural(n: int, word: str, number: bool = True) -> str:
    """``n`` and ``word``, the word made plural unless ``n`` is 1: ``1 process``, ``2 processes``,
    ``1,024 instances``; without ``number`` the word alone (``ranks`` in ``ranks 1-7``)."""
    if n != 1:
        word += "es" if word.endswith(("s", "sh", "ch", "x")) else "s"
    return f"{n:,} {word}" if number else word
