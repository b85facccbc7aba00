"""Checkpoints inside a root's call, and replaying that call on resume.

The usual dispel4py producer reads a whole file and writes every line in ONE ``process`` call:
checkpoints taken only between root calls would never come. So a checkpoint may also be taken
at a root's *write point*, once everything downstream of that write has been processed (simple:
the write's local delivery has returned; multi and mpi: the Chandy-Lamport markers follow it on
every channel; the dynamic mappings: the driver quiesces the run). It then keeps the root's state
as it was when the call began, how many items the call had written (K) and a digest of them. A
resumed run calls the root again, from that state, with the same input, drops its first K writes
and checks that they digest the same: the call must write the same items again, given its state.

A root whose calls cannot be replayed (it reads a stream, or uses random numbers or the time
without keeping them in its state) says so with ``deterministic = False``: it is checkpointed
between calls only, as before.

Only *long* calls are recorded (a root's first call, and each call after one that took
:data:`LONG_CALL` or more): recording costs a capture of the root's state at the call's start
and a digest of each write, and a short call reaches a checkpoint between calls soon enough.
"""

from __future__ import annotations

import hashlib
from typing import Any

from d4p_hpc.mappings.checkpoint.pe_state import capture
from d4p_hpc.mappings.checkpoint.store import Restored
from d4p_hpc.mappings.runtime.plan import stable_bytes
from d4p_hpc.mappings.runtime.process import PEFailed

#: seconds: a root call at least this long makes the root's next call recorded
LONG_CALL = 0.05
#: the part field (a plain dict): ``{gid: {"writes": K, "digest": hex}}`` for roots checkpointed inside a call
PART_FIELD = "replay"

DETERMINISM = ("a checkpoint inside a call replays the call from the state it began with, so it must write the "
               "same items again: keep what it depends on (a random seed, a stream's position) in the PE's state "
               "or in checkpoint() and restore(state) methods, or set deterministic = False on the PE (it is then "
               "checkpointed between calls only); start a new run")


class Call:
    """A root's call under way, recorded: where a checkpoint may be taken inside it.

    ``state`` is the root's state as the call began (None: it cannot be saved, and no checkpoint
    is taken inside the call: the one between calls says why); ``skip`` and ``expect`` are set on
    resume, for the writes the checkpoint holds already."""

    __slots__ = ("key", "state", "writes", "digest", "skip", "expect")

    def __init__(self, key: str, state: bytes | None, replay: dict | None = None) -> None:
        self.key = key
        self.state = state
        self.writes = 0
        self.digest = hashlib.blake2b(digest_size=16)
        self.skip = replay["writes"] if replay else 0
        self.expect = replay["digest"] if replay else None

    @classmethod
    def begin(cls, key: str, pe: Any, replay: dict | None) -> Call:
        try:
            state: bytes | None = capture(key, pe)
        except Exception:  # (a checkpoint between calls says what, if one is taken)
            state = None
        return cls(key, state, replay)

    def wrote(self, output: str, data: Any) -> bool:
        """Count and digest one write (before anything downstream may change the item); True if
        a resumed run drops it: the checkpoint holds its effects already."""
        self.writes += 1
        self.digest.update(output.encode() + b"\0" + stable_bytes(data))
        if self.writes > self.skip:
            return False
        if self.writes == self.skip and self.digest.hexdigest() != self.expect:
            raise PEFailed(self.key, f"PE {self.key} is not deterministic: on resume, the first {self.skip:,} items "
                                     f"its call wrote differ from those the checkpoint holds; {DETERMINISM}")
        return True

    def ended(self) -> None:
        """The call returned: a resumed call must have written at least what the checkpoint holds."""
        if self.writes < self.skip:
            raise PEFailed(self.key, f"PE {self.key} is not deterministic: on resume its call wrote {self.writes:,} "
                                     f"items, the checkpoint holds {self.skip:,}; {DETERMINISM}")

    def record(self) -> dict:
        """What a checkpoint keeps of the call (its part's :data:`PART_FIELD` entry)."""
        return {"writes": self.writes, "digest": self.digest.hexdigest()}


def pending(restored: Restored, gid: int) -> dict | None:
    """The call of root ``gid`` that the checkpoint was taken inside, to replay, if any."""
    for part in restored.parts:
        found = part.get(PART_FIELD, {}).get(gid)
        if found is not None:
            return found
    return None

