"""A stateless root's calls, spread: over the workers (dynamic mappings) or over its instances
(``multi``, ``mpi``).

A root PE is found stateless, not assumed so: its first :data:`PROBE_CALLS` calls are made in one
place, its state (:func:`~d4p_hpc.mappings.checkpoint.pe_state.fingerprint`) compared before and
after each; only if none changed it are later calls made elsewhere. A root that says
``stateful = True``, whose state changes or cannot be pickled, makes every call in one place, in
order, as ``simple`` does. One that changes only later is caught by an :class:`Unchanged` watch on
each copy that makes calls, and fails the run naming the PE and the fix, rather than end with
outputs no one can trust.

Under the static mappings a root has the instances it asks for (``numprocesses``, see
:mod:`~d4p_hpc.mappings.runtime.plan`); its first instance reads the inputs and, once the root is
found stateless, hands the later calls round its instances (:data:`ROOT_CALL`), itself included,
each round in a new order (a cost that repeats every K calls would otherwise land on one instance of
K), drawn from a generator of fixed seed: a run hands out its calls as the same run did. The others
run ``preprocess`` (what it writes dropped: :func:`silenced`) but never ``postprocess``: calls left
their state as it was, so the first instance's ``preprocess`` writes and ``postprocess`` are the
run's ones, as in ``simple``. They end when the first one, after its last call, sends them its end
of stream.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from d4p_hpc.mappings.checkpoint import pe_state
from d4p_hpc.mappings.runtime.hosting import Instance
from d4p_hpc.mappings.runtime.plan import Plan
from d4p_hpc.mappings.runtime.process import PEFailed
from d4p_hpc.workflow import WRITER

#: A root's first calls, made in one place and each watched, before its others are spread
PROBE_CALLS = 3
#: The input name under which a static mapping's batch carries one call of a root to another of its
#: instances (the data: the call's inputs, as :func:`~d4p_hpc.mappings.runtime.core.root_feed` gives
#: them); no PE's input can be named so.
ROOT_CALL = "\0call"
#: A copy's state is compared after this many of its spread calls (once per call cost a fast root a
#: fifth of its speed), and after its last; and no more often than its comparison takes this many
#: times over (a root that holds a large table takes long to compare)
CHECK_EVERY = 64
CHECK_SPACING = 20
#: A call that takes longer is sent to its instance at once, not batched with the next ones
SLOW_CALL = 0.001


class _Dropped:
    def write(self, data: Any) -> None:
        pass


@contextmanager
def silenced(pe: Any) -> Iterator[None]:
    """What PE object ``pe`` writes while the block runs is dropped."""
    connections = pe.outputconnections.values()
    saved = [connection.get(WRITER) for connection in connections]
    for connection in connections:
        connection[WRITER] = _Dropped()
    try:
        yield
    finally:
        for connection, writer in zip(connections, saved, strict=True):
            connection[WRITER] = writer


class Unchanged:
    """Watches that a copy of a spread root keeps the state it had when its calls were spread."""

    def __init__(self, inst: Instance, over: str, state: bytes | None = None) -> None:
        self.inst = inst
        self.over = over
        self.state = pe_state.fingerprint(inst.pe) if state is None else state
        self.calls = 0
        self.checked = time.perf_counter()
        self.cost = 0.0  # what a comparison took

    def called(self) -> None:
        """One more call made: look now and then."""
        self.calls += 1
        if self.calls >= CHECK_EVERY and time.perf_counter() - self.checked >= CHECK_SPACING * self.cost:
            self.check()

    def check(self) -> None:
        started = time.perf_counter()
        same = pe_state.fingerprint(self.inst.pe) == self.state
        self.calls, self.checked = 0, time.perf_counter()
        self.cost = self.checked - started
        if not same:
            key = self.inst.node.key
            raise PEFailed(key, f"root PE {key} changed its state in a call after its first {PROBE_CALLS} left it "
                           f"unchanged, so its calls were spread over {self.over} and the outputs cannot be trusted: "
                           "give it stateful = True (then one place makes every call, in order)")


class Spread:
    """The calls of a root with several instances, made by ``first`` (the one that reads its inputs)
    until the root is found stateless, then round its instances, each round in a new order.

    ``forward(gid, item, now)`` hands a call to instance ``gid`` (``now``: not batched with later
    ones); ``probing``: whether it may be spread (not a root that says ``stateful = True``)."""

    def __init__(self, first: Instance, forward: Callable[[int, Any, bool], None], probing: bool) -> None:
        self.first = first
        self.forward = forward
        self.probing = probing
        self.probed = 0
        self.last: bytes | None = None
        self.watch: Unchanged | None = None
        self.turns = list(first.node.gids)
        self.turn = 0
        self.order = random.Random(first.gid)
        self.slow = False

    def call(self, make: Callable[[Instance, Any], None], item: Any) -> None:
        """Make the root's next call with ``item``: ``make(first, item)`` here, or on its turn's instance."""
        watch = self.watch
        if watch is not None:
            if self.turn == len(self.turns):
                self.order.shuffle(self.turns)
                self.turn = 0
            gid = self.turns[self.turn]
            self.turn += 1
            if gid != self.first.gid:
                self.forward(gid, item, self.slow)
                return
        # (a call that left the state as it was: its state after is the next one's before)
        before = (self.last or pe_state.fingerprint(self.first.pe)) if self.probing and watch is None else None
        started = time.perf_counter()
        make(self.first, item)
        self.slow = time.perf_counter() - started > SLOW_CALL
        if watch is not None:
            watch.called()
            return
        self.last = pe_state.fingerprint(self.first.pe) if before is not None else None
        if before is None or self.last != before:
            self.probing = False
        else:
            self.probed += 1
            if self.probed == PROBE_CALLS:
                self.watch = Unchanged(self.first, "its instances", before)
                self.turn = 1  # the first round's next call is another's: this one has made three in a row

    def close(self) -> None:
        """After the last call: its copy must still be as it was."""
        if self.watch is not None:
            self.watch.check()


def spread_roots(plan: Plan, instances: list[dict]) -> list[str]:
    """The roots whose calls were spread over their instances (``metrics.json``'s ``roots_spread``
    under the static mappings): those whose other instances made calls, by ``instances``' counters."""
    made = {i["pe"] for i in instances if i["instance"] > 0 and i["items_in"]}
    return [node.key for node in plan.roots() if node.count > 1 and node.key in made]
