"""End-of-stream accounting of the dynamic mappings, specified once, executably.

:class:`Accounting` decides when a PE gets no more work and when the run is
COMPLETED, from the commits of units (:func:`commit_fields`) on the plan's
:func:`topology`. dyn_multi runs it itself, in shared memory under one lock;
the Redis mappings run its Lua implementation (:data:`d4p_hpc.mappings.redis.keys.COMMIT`),
which tests/runs/test_accounting.py checks against it on random sequences of commits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from d4p_hpc.mappings.dynamic.tasks import CONTROL_QUEUE, RETURNED, SHARED_QUEUE
from d4p_hpc.mappings.runtime.plan import Plan


class Step(NamedTuple):
    """What one commit changed that others must hear of."""

    backlog: int
    #: stateless PEs now closing: every registered worker is to postprocess its copy
    closing: list[int]
    #: stateful PEs whose instances now get an end-of-stream entry
    eos: list[int]
    #: every PE is done: the run is COMPLETED
    completed: bool


def _list(_typecode: str, size: int) -> list:
    return [0] * size


class Accounting:
    """End-of-stream accounting, the executable specification.

    Per PE: tasks queued and not finished, and whether it is *closing*
    (stateless: every worker was told to postprocess its copy), has had its
    *eos* sent (stateful: to each instance, after every item sent to it) and is
    *done*. Per stateful instance: items queued, and whether it has finished
    (run ``postprocess`` and committed). Per worker: registered, alive, and the
    closing PEs it has closed. A commit adds the tasks a unit created and takes
    off the ones it finished in one step, so a PE whose upstream PEs are done
    reaches zero only when nothing is left for it. Then, walking the PEs in
    topological order: a stateless PE is done once every live registered worker
    has closed it, a stateful one once all its instances have finished; the run
    is COMPLETED when every PE is done. Roots are done when the driver closes them. The walk is
    taken only by a commit that can make a PE ready: one that brings a PE's tasks to zero, closes a
    root, finishes an instance or closes a copy, or changes no count (the driver's watch, which walks
    after a worker's death): the others, most commits of a busy run, cost no walk.

    Parameters
    ----------
    topo
        :func:`topology` of the plan.
    workers
        The highest worker number that may register.
    array
        ``array(typecode, size)`` makes a zeroed array: plain lists by default,
        ``multiprocessing.RawArray`` for state shared by forked workers (the
        caller then serialises commits).
    """

    RUNNING, COMPLETED, STOPPED = range(3)

    def __init__(self, topo: list[dict], workers: int, array: Callable[[str, int], Any] = _list) -> None:
        self.workers = workers
        self.order = [(pe["i"], pe["root"], tuple(pe["up"]), tuple(pe.get("gids", ()))) for pe in topo]
        pes, gids = len(topo), 1 + max((g for pe in topo for g in pe.get("gids", ())), default=-1)
        self.pending = array("q", pes)
        self.queued = array("q", gids)
        self.closing = array("b", pes)
        self.eos = array("b", pes)
        self.done = array("b", pes)
        self.finished = array("b", gids)
        self.closed = array("b", pes * (workers + 1))
        self.registered = array("b", workers + 1)
        self.alive = array("b", workers + 1)
        self.values = array("d", 3)  # state, tasks done, busy seconds

    @property
    def state(self) -> int:
        """RUNNING, COMPLETED or STOPPED."""
        return int(self.values[0])

    def register(self, proc: int) -> None:
        """Worker ``proc`` joins, alive; PEs already closing are closed for it (it has no copy of them)."""
        self.registered[proc] = self.alive[proc] = 1
        for index in range(len(self.order)):
            if self.closing[index]:
                self.closed[index * (self.workers + 1) + proc] = 1

    def commit(self, tasks: dict[int, int], items: dict[int, int], done: int, busy: float, proc: int,
               close: int | None = None, finished: int | None = None, closed: int | None = None) -> Step | None:
        """Apply one commit; None (and no change) once the run is not RUNNING.

        Parameters
        ----------
        tasks, items
            Change of the tasks queued per PE index, and of the items queued per stateful gid.
        done, busy
            Tasks the unit finished and the seconds it took (for autoscaling).
        proc
            The committing process (0: the driver).
        close
            A root PE the driver has fed to its end.
        finished
            A stateful instance (gid) that ran ``postprocess``.
        closed
            A stateless PE whose copy worker ``proc`` postprocessed.
        """
        if self.state != self.RUNNING:
            return None
        # only these can make a PE ready, so only then is the walk taken (a worker's death, the other
        # thing, is walked by the driver's watch, a commit that changes no count)
        walk = close is not None or finished is not None or closed is not None or not (tasks or items)
        for index, n in tasks.items():
            self.pending[index] += n
            walk = walk or self.pending[index] == 0
        for gid, n in items.items():
            self.queued[gid] += n
        if done:
            self.values[1] += done
            self.values[2] += busy
        if close is not None:
            self.done[close] = 1
        if finished is not None:
            self.finished[finished] = 1
        if closed is not None:
            self.closed[closed * (self.workers + 1) + proc] = 1
        return self._walk() if walk else Step(self.backlog(), [], [], False)

    def _walk(self) -> Step:
        closing, eos, everything = [], [], True
        row = self.workers + 1
        for index, root, up, gids in self.order:
            if self.done[index]:
                continue
            ready = not root and all(self.done[u] for u in up)
            if ready and gids:
                if not self.eos[index]:
                    self.eos[index] = 1
                    eos.append(index)
                ready = all(self.finished[g] for g in gids)
            elif ready and self.pending[index] == 0:
                if not self.closing[index]:
                    self.closing[index] = 1
                    closing.append(index)
                ready = all(self.closed[index * row + w] or not self.alive[w]
                            for w in range(1, row) if self.registered[w])
            else:
                ready = False
            if ready:
                self.done[index] = 1
            else:
                everything = False
        if everything:
            self.values[0] = self.COMPLETED
        return Step(self.backlog(), closing, eos, everything)

    def stop(self) -> bool:
        """End a RUNNING run (a failure or a stop); False if it had ended."""
        if self.state != self.RUNNING:
            return False
        self.values[0] = self.STOPPED
        return True

    def backlog(self) -> int:
        """Tasks and items queued and not finished."""
        return sum(self.pending) + sum(self.queued)

    def load(self) -> tuple[int, int, float]:
        """``(backlog, tasks done, busy seconds)``, for autoscaling."""
        return self.backlog(), int(self.values[1]), self.values[2]


def commit_fields(unit: Any, outbox: dict, done: dict[int, int], seconds: float, close: int | None,
                  pe_of: Callable[[int], int], proc: int) -> dict:
    """The accounting's named fields (:meth:`Accounting.commit`'s keywords) of a commit by ``proc``
    of ``unit`` (None: the driver), which wrote ``outbox`` and finished ``done`` tasks per PE index;
    ``pe_of(gid)`` is the PE index of a gid."""
    tasks = {index: -n for index, n in done.items()}
    items: dict[int, int] = {}
    if unit is not None and unit.gid >= 0 and not unit.eos:
        items[unit.gid] = -len(unit.items)
    for target, queued in outbox.items():
        if target == RETURNED:  # still queued: neither finished nor new
            continue
        if target == SHARED_QUEUE:
            for gid, _input, _data in queued:
                index = pe_of(gid)
                tasks[index] = tasks.get(index, 0) + 1
        else:
            items[target] = items.get(target, 0) + len(queued)
    fields = {"tasks": tasks, "items": items, "done": sum(done.values()), "busy": seconds, "proc": proc}
    if close is not None:
        fields["close"] = close
    if unit is not None and unit.eos:
        fields["finished"] = unit.gid
    if unit is not None and unit.gid == CONTROL_QUEUE:
        fields["closed"] = unit.close
    return fields


def topology(plan: Plan) -> list[dict]:
    """What the accounting needs of the plan: per PE in topological order, its upstream PEs, and
    (stateful PEs) its instances."""
    roots = {node.index for node in plan.roots()}
    stateful = plan.stateful_indices()
    topo = []
    for node in plan.pes:
        pe = {"i": node.index, "root": node.index in roots, "up": sorted({c.src for c in plan.incoming(node.index)})}
        if node.index in stateful:  # absent, not null: cjson's null is true in Lua
            pe["gids"] = list(node.gids)
        topo.append(pe)
    return topo
