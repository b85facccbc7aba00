"""The state of one PE object in a checkpoint: captured at a clean point (no PE call under way),
restored into a fresh copy of the PE on resume."""

from __future__ import annotations

import hashlib
import pickle
import traceback
from typing import Any

from d4p_hpc.errors import D4pHpcError

#: What the mappings put on a PE object; not the PE's own state.
WIRED = frozenset({"inputconnections", "outputconnections", "log", "rank", "pickleIgnore", "wrapper"})


class CheckpointFailed(D4pHpcError):
    """The state of PE ``pe`` cannot be saved; ``traceback``: where its ``checkpoint()`` raised, if it did."""

    def __init__(self, message: str, pe: str, traceback: str = "") -> None:
        super().__init__(message)
        self.pe = pe
        self.traceback = traceback


def capture(key: str, pe: Any) -> bytes:
    """The pickled state of PE object ``pe`` (named ``key`` in messages)."""
    hook = getattr(pe, "checkpoint", None)
    if callable(hook):
        try:
            state: tuple = ("hook", hook())
        except Exception as exc:
            raise CheckpointFailed(f"PE {key}: its checkpoint() raised {type(exc).__name__}: {exc}", key,
                                   traceback.format_exc()) from None
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
                               "methods", key) from None


def fingerprint(pe: Any) -> bytes | None:
    """A digest of PE object ``pe``'s state, pickled, to tell whether a call changed it: its
    ``checkpoint()`` hook's where it has one, else every attribute of its own (those in
    ``pickleIgnore`` too: a file it reads from is state). None if that cannot be pickled (or the
    hook raises): unknown. A digest, not the pickle: a root that holds a large table keeps one copy."""
    hook = getattr(pe, "checkpoint", None)
    try:
        state = ("hook", hook()) if callable(hook) else ("dict", {k: v for k, v in vars(pe).items() if k not in WIRED})
        return hashlib.blake2b(pickle.dumps(state, protocol=5), digest_size=32).digest()
    except Exception:
        return None


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

