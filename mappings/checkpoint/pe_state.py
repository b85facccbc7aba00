"""The state of one PE object in a checkpoint: captured at a clean point (no PE call under way),
restored into a fresh copy of the PE on resume."""

from __future__ import annotations

import pickle
from typing import Any

from d4p_hpc.errors import D4pHpcError

#: What the mappings put on a PE object; not the PE's own state.
WIRED = frozenset({"inputconnections", "outputconnections", "log", "rank", "pickleIgnore", "wrapper"})


class CheckpointFailed(D4pHpcError):
    """A PE's state cannot be saved."""


def capture(key: str, pe: Any) -> bytes:
    """The pickled state of PE object ``pe`` (named ``key`` in messages)."""
    hook = getattr(pe, "checkpoint", None)
    if callable(hook):
        state: tuple = ("hook", hook())
    else:
        ignore = WIRED | set(getattr(pe, "pickleIgnore", None) or ())
        state = ("dict", {k: v for k, v in vars(pe).items() if k not in ignore})
    try:
        return pickle.dumps(state, protocol=5)
    except Exception as exc:
        culprit = next((k for k, v in state[1].items() if not _picklable(v)), None) \
            if state[0] == "dict" else None
        what = f"attribute {culprit!r}" if culprit else "its state"
        raise CheckpointFailed(f"PE {key}: {what} cannot be saved ({type(exc).__name__}: {exc}); list it in "
                               "the PE's pickleIgnore, or give the PE checkpoint() and restore(state) "
                               "methods") from None


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value, protocol=5)
        return True
    except Exception:
        return False


def restore(pe: Any, blob: bytes) -> None:
    """Give ``pe`` (a fresh copy, already preprocessed) the state :func:`capture` saved."""
    kind, state = pickle.loads(blob)
    if kind == "hook":
        pe.restore(state)
    else:
        pe.__dict__.update(state)

