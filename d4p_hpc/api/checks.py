"""The checks every function of the Python API makes of its arguments, each refusing in one line
what it cannot take (standard library only: a run imports them too)."""

from __future__ import annotations

from typing import Any

from d4p_hpc.errors import UsageError


def check_keywords(given: dict[str, Any], valid: tuple[str, ...] | list[str], what: str) -> None:
    """Refuse, in one line, a keyword ``what`` does not take, listing those it does."""
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise UsageError(f"{what} got unknown keyword{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"valid: {', '.join(sorted(valid))}")


def check_flag(name: str, value: Any, what: str) -> None:
    """Refuse a flag that is not True or False (``"no"`` is true in Python)."""
    if not isinstance(value, bool):
        raise UsageError(f"{what}: {name} must be True or False, not {value!r:.60}")


def check_timeout(timeout: Any) -> float | None:
    """A timeout in seconds (None: none), refused in one line unless a number from 0 on."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:  # (NaN too)
        raise UsageError(f"timeout must be a number of seconds from 0 on, or None, not {timeout!r:.60}")
    return float(timeout)
