"""Running tasks instead of placed instances: the executor of the dynamic mappings.

A *task* is ``(gid, input name, data)``, the item format of the core's batches;
for a stateless PE any of its gids names the PE. A worker keeps one copy of
every stateless PE it has met (preprocessed on first use) and the stateful
instances it owns (hybrid_redis). Work arrives as *units*: a list of tasks
(one queue entry), items for one owned stateful instance, or the news that a
stateless PE gets no more tasks (then each worker postprocesses its copy).

What a unit writes is handled so that load spreads without flooding the queue:
the first item each task writes to a stateless PE runs at once, in the same
worker (depth first, so a pipeline of stateless PEs costs one queue round
trip per item); the rest go to the outbox as new tasks for any worker, so a
fan-out is shared out. Items for a stateful instance always go to the outbox,
addressed to that instance's own queue: it runs where its state is.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from d4p_hpc import settings
from d4p_hpc.errors import MappingError
from d4p_hpc.mappings.checkpoint import pe_state, store
from d4p_hpc.mappings.runtime import replay
from d4p_hpc.mappings.runtime.core import MAX_DEPTH, Runtime
from d4p_hpc.mappings.runtime.hosting import Instance, calls_under_way, pe_copy
from d4p_hpc.mappings.runtime.sink import Sink
from d4p_hpc.mappings.runtime.spread import Unchanged, silenced
from d4p_hpc.mappings.runtime.plan import Plan

#: The queues of a dynamic run besides a stateful instance's own (named by its gid), as an outbox
#: key and a unit's ``gid``: the queue of tasks that any worker may take ...
SHARED_QUEUE = -1
#: ... and a worker's control queue: close a stateless PE (postprocess this worker's copy), write a
#: checkpoint part. (Not the core's ``CONTROL``, which marks a control entry in a batch.)
CONTROL_QUEUE = -2
#: An outbox key, not a queue: tasks of a unit handed back unrun (see TaskRuntime.run_tasks), which go
#: to the shared queue again and stay counted as queued, not as new or finished
RETURNED = -3
#: Most tasks in one queue entry while their cost is unknown; what a worker reads at once.
ENTRY_TASKS = 128
#: Most tasks in one queue entry of tasks measured quick: entries are filled to :func:`unit_seconds`
#: of work, so that quick tasks cost the broker a commit per thousands, not per 128 (a pool of 10,000
#: workers at 1 ms per task fills entries of 15,000: ``benchmarks/broker_cost.py``), and to at most
#: :data:`ENTRY_BYTES`.
QUICK_ENTRY_TASKS = 16_384
#: Most bytes of one pickled queue entry (of more than one task): large items travel in small
#: entries, so that a worker's, the queue's and Redis's memory stay bounded.
ENTRY_BYTES = 1 << 20
#: The Redis CPU of one entry's round (the commit that queues it, the read and the commit of the unit
#: that runs it), about 750 µs for an entry of 10,000 tasks as measured (``benchmarks/broker_cost.py``),
#: over the share of one core a pool's rounds may take (a half): a pool's units last at least this long
#: per worker, so that their rounds stay within that share however many workers there are.
COMMIT_SECONDS = 750e-6 / 0.5
#: A unit that has run this long, and twice the work its entry was filled to, hands back the tasks
#: it has not run (see TaskRuntime.run_tasks): a shorter one is not worth a second commit (128 tasks
#: of unknown cost, 1 ms each, would otherwise be cut in two)
SPLIT_AFTER = 1.0
#: Calls of a PE run at once (chained) that are timed while no unit of its tasks has run here: the
#: quickest is its cost (see TaskRuntime.sampled)
SAMPLES = 8
#: A unit (an entry's tasks) that takes longer is slow: slow tasks travel in small entries, so that
#: they spread over the pool, and workers read one entry at a time.
SLOW_UNIT = 0.05
#: The input name of a task that is one call of a root PE spread over the workers (its data: the
#: call's inputs, as :func:`~d4p_hpc.mappings.runtime.core.root_feed` gives them). No other task
#: has None: an end of stream never travels as a task here (the accounting ends streams).
ROOT_CALL = None


def refuse_stateful(plan: Plan, mapping: str) -> None:
    """Raise MappingError, naming the PE, if ``plan`` has a stateful PE (all dyn_* mappings)."""
    for index in sorted(plan.stateful_indices()):
        node = plan.pes[index]
        why = ("is marked stateful" if getattr(node.pe, "stateful", False) else
               # two edges may feed one input: name it once
               "has a grouped input (" + ", ".join(dict.fromkeys(f"{c.input}: {c.grouping!r}"
                                                                 for c in plan.incoming(index)
                                                                 if c.grouping is not None)) + ")")
        raise MappingError(f"PE {node.key} {why}: {mapping} runs any PE on any worker, so its state would be "
                           f"split; use -m hybrid_redis, which gives stateful PEs fixed instances")


def keep_notices(plan: Plan) -> None:
    """Drop the plan's notices about instance counts and placement, except for stateful PEs:
    other PEs have no fixed instances under the dynamic mappings."""
    keys = [plan.pes[i].key for i in plan.stateful_indices()]
    plan.notices = [n for n in plan.notices if n.startswith("root PE ") or any(n.startswith(f"PE {key} ")
                                                                              for key in keys)]


def unit_seconds(workers: int) -> float:
    """The work a queue entry of quick tasks is filled to: :data:`SLOW_UNIT`, and more in a pool
    so large that its commits would take more than their share of Redis (:data:`COMMIT_SECONDS`):
    0.05 s up to 33 workers, 1.5 s at 1,000, 15 s at 10,000. ``$D4P_HPC_UNIT_SECONDS`` sets it: longer
    units cost the broker less per task, and leave a stream's last tasks to fewer workers."""
    return settings.unit_seconds() or max(SLOW_UNIT, workers * COMMIT_SECONDS)


def chunk(tasks: list, workers: int, task_seconds: float | None = None, most: int = ENTRY_TASKS) -> list[list]:
    """Cut tasks into queue entries: at most ENTRY_TASKS each, and, for a short list, about two
    entries per worker, so that a few slow tasks still spread over the pool. Tasks known to be quick
    (``task_seconds``, the mean measured so far) fill entries up to :func:`unit_seconds` of work and
    ``most`` tasks: each entry costs the broker a commit, and a large pool would otherwise get
    entries of a few tasks."""
    size = max(1, min(ENTRY_TASKS, math.ceil(len(tasks) / (2 * max(1, workers)))))
    if task_seconds:
        size = max(size, min(most, int(unit_seconds(workers) / task_seconds)))
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


def shared_entries(outbox: dict, workers: int, pe_of: Callable[[int], int], costs: dict[int, float],
                   fallback: float | None) -> list[list]:
    """The shared queue's entries of a unit's ``outbox``: the tasks it wrote (:func:`cut` by what they
    cost) and those it handed back unrun (``RETURNED``: their cost proved out of date, so as if unknown)."""
    return cut(outbox.get(SHARED_QUEUE, []), workers, pe_of, costs, fallback) + chunk(outbox.get(RETURNED, []), workers)


def cut(tasks: list, workers: int, pe_of: Callable[[int], int], costs: dict[int, float],
        fallback: float | None) -> list[list]:
    """Queue entries of shared tasks. When a task of each of their PEs has a measured cost
    (``costs``, seconds by PE index), entries are filled by it, up to :data:`QUICK_ENTRY_TASKS`;
    otherwise by ``fallback`` (a cost not of their PEs: the unit that wrote them, the run's mean), up
    to ENTRY_TASKS, since a quick PE's cost would pack thousands of a slow PE's tasks into one entry."""
    total = 0.0
    for task in tasks:
        cost = costs.get(pe_of(task[0]))
        if cost is None:
            return chunk(tasks, workers, fallback)
        total += cost
    return chunk(tasks, workers, total / len(tasks) if tasks else None, QUICK_ENTRY_TASKS)


def pack(entry: list) -> list[bytes]:
    """Pickle one queue entry, halved until each part holds one task or fits in :data:`ENTRY_BYTES`."""
    payload = pickle.dumps(entry, protocol=5)
    if len(payload) <= ENTRY_BYTES or len(entry) == 1:
        return [payload]
    half = len(entry) // 2
    return pack(entry[:half]) + pack(entry[half:])


def truncate_parts(results: Path, sizes: dict[str, int]) -> int:
    """Cut part files back to their acknowledged sizes (see ``Sink.sizes``); return how many were cut.

    A part file longer than its acknowledged size holds results of a unit that
    was never acknowledged and has been (or would be) redone elsewhere.
    """
    cut = 0
    for rel, size in sizes.items():
        path = results / rel
        try:
            if path.stat().st_size > size:
                os.truncate(path, size)
                cut += 1
        except FileNotFoundError:
            pass
    return cut


class TaskRuntime(Runtime):
    """The core's PE executor (calls, busy time, routes, sink), hosting PEs by task, not by placement.

    Parameters
    ----------
    plan
        The run's plan; its instance counts fix the stateful instances and routing.
    proc
        This process's number (0 is the driver).
    sink
        Where unconnected outputs go.
    chain
        Whether the first item each task writes to a stateless PE runs here at
        once (workers) or is queued like the others (the driver, which feeds).
    """

    def __init__(self, plan: Plan, proc: int, sink: Sink, chain: bool = True,
                 copy_pe: Callable[[Any], Any] = copy.deepcopy, restored: store.Restored | None = None) -> None:
        # no instance is bound to this process: all come by task
        super().__init__(plan, proc, sink, None, {}, copy_pe, gids=())
        self.copy_pe = copy_pe
        self.chain = chain
        self.stateful = plan.stateful_indices()
        self.node_of = {gid: node for node in plan.pes for gid in node.gids}
        self.copies: dict[int, Instance] = {}
        self.owned: dict[int, Instance] = {}
        # not the core's ``outbox`` (batches per process, which it flushes by itself): tasks per queue
        self.unsent: dict[int, list] = {}
        self.queued = 0
        #: called after each task put in the outbox: the driver ships them while a root's call still
        #: writes (and waits there while the backlog is too long), so one call cannot fill memory
        self.on_queued: Callable[[], None] | None = None
        #: the driver with checkpoints on: called at each write point of a recorded root call
        self.on_write: Callable[[], None] | None = None
        self._budget = 0
        self.restored = restored
        #: each spread root's copy here (by PE index), whose calls must leave it as it is
        self._roots: dict[int, Unchanged] = {}
        #: seconds a queued task of each PE (by index) took here, with what it ran at once: its last unit's mean
        self.costs: dict[int, float] = {}
        #: the same, of PEs not run here as tasks yet: the quickest of their first calls run at once (chained;
        #: the first of a worker may wait for the machine, as every worker starts) and how many were timed
        self.sampled: dict[int, float] = {}
        self._samples: dict[int, int] = {}
        #: the same, of the last unit's PEs only (the pool's figures: the last unit committed wins)
        self.unit_costs: dict[int, float] = {}
        #: seconds spent making this process's copies of PEs (see copy_of)
        self.hosting = 0.0

    # --- hosting ---------------------------------------------------------------------------------
    def copy_of(self, index: int) -> Instance:
        """This process's copy of PE ``index``, preprocessed when first needed."""
        inst = self.copies.get(index)
        if inst is None:
            began = time.perf_counter()
            node = self.plan.pes[index]
            inst = self._host(node.first_gid, self.proc)
            self.copies[index] = inst
            saved = self.restored.copies(self.proc).get(index) if self.restored is not None else None
            if saved is not None:
                self._call(inst, pe_state.restore, inst.pe, saved)
            self.hosting += time.perf_counter() - began
        return inst

    def own(self, gid: int) -> Instance:
        """Host stateful instance ``gid`` here, from a fresh copy of its PE."""
        inst = self._host(gid, None)
        self.owned[gid] = inst
        saved = self.restored.instance(gid) if self.restored is not None else None
        if saved is not None:
            self._call(inst, pe_state.restore, inst.pe, saved["state"])
        return inst

    def saved(self) -> dict:
        """This process's part of a checkpoint (taken while the run is quiesced): the state of its
        copies, by PE index (a root inside a recorded call: as the call began), and of the stateful
        instances it owns, the root calls to replay, and its output sizes."""
        return {"copies": {index: inst.saved_state() for index, inst in self.copies.items()},
                "instances": {gid: {"state": pe_state.capture(inst.node.key, inst.pe), "eos_left": 0, "done": False}
                              for gid, inst in self.owned.items()},
                replay.PART_FIELD: calls_under_way(self.copies.values()),
                "parts": self.sink.checkpoint_sizes()}

    def _checkpointing(self) -> bool:
        return self.on_write is not None

    def _write_point(self) -> None:
        if self.on_write is not None:
            self.on_write()

    def _host(self, gid: int, label: int | None) -> Instance:
        node = self.node_of[gid]
        inst = Instance(gid, node, pe_copy(node, self.copy_pe, "for a worker" if self.chain else "for the driver"), 0)
        if label is not None:
            inst.index = label  # a PE's copies are told apart by the process that ran them
        self._wire(inst)
        if self.proc and not self.plan.incoming(node.index):
            with silenced(inst.pe):  # a worker's copy of a spread root: the driver's writes what preprocess writes
                self._call(inst, inst.pe.preprocess)
        else:
            self._call(inst, inst.pe.preprocess)
        return inst

    # --- units -----------------------------------------------------------------------------------
    def run_tasks(self, tasks: list, check: Callable[[], None]) -> dict[int, int]:
        """Run a unit of tasks, calling ``check`` (which raises to stop) before each;
        return ``{PE index: tasks finished}`` for the accounting.

        An entry is filled by a cost measured earlier, which may be out of date (a stream that turns
        slow), or by none: once a unit has taken twice the work an entry is filled to, and at least
        :data:`SPLIT_AFTER`, its tasks not yet run are handed back (``RETURNED`` in the outbox), to be
        shared out again in entries of an unknown cost's size, rather than kept by one worker while
        others wait."""
        done: dict[int, int] = {}
        spent: dict[int, float] = {}
        roots: set[int] = set()
        budget = max(2 * unit_seconds(self.plan.processes), SPLIT_AFTER)
        began = started = time.perf_counter()
        for k, (gid, input_name, data) in enumerate(tasks):
            if started - began > budget:
                self.unsent[RETURNED] = tasks[k:]
                break
            check()
            index = self.node_of[gid].index
            inst = self.copy_of(index)
            if input_name is ROOT_CALL:
                if index not in self._roots:
                    self._roots[index] = Unchanged(inst, "the workers")
                roots.add(index)
                self._process(inst, data)
            else:
                self._process(inst, {input_name: data})
            ended = time.perf_counter()  # one clock read per task: a quick task is a few microseconds
            spent[index] = spent.get(index, 0.0) + ended - started
            started = ended
            done[index] = done.get(index, 0) + 1
        for index in roots:
            # once per unit: a change that stays is seen at the end of the unit that made it
            self._roots[index].check()
        self.unit_costs = {index: seconds / done[index] for index, seconds in spent.items()}
        self.costs.update(self.unit_costs)
        return done

    def known_costs(self, pool: dict[int, float]) -> dict[int, float]:
        """What a task of each PE costs (seconds, by PE index), as best known here: by this process's last
        unit of them, else by the pool's (``pool``), else by the calls it ran at once."""
        return {**self.sampled, **pool, **self.costs}

    def queue_call(self, gid: int, inputs: Any) -> None:
        """Queue one call of root ``gid`` for any worker (a spread root: see :mod:`~d4p_hpc.mappings.dynamic.loops`)."""
        self.unsent.setdefault(SHARED_QUEUE, []).append((gid, ROOT_CALL, inputs))
        self.queued += 1

    def run_items(self, gid: int, items: list, check: Callable[[], None]) -> None:
        """Run items of owned stateful instance ``gid``, calling ``check`` before each."""
        inst = self.owned[gid]
        for _gid, input_name, data in items:
            check()
            self._process(inst, {input_name: data})

    def finish(self, inst: Instance) -> None:
        """Run ``postprocess`` of ``inst``; what it writes goes to the outbox as usual."""
        self._call(inst, inst.pe.postprocess)

    def take_outbox(self) -> dict[int, list]:
        """Hand over (and forget) what the last units wrote for other workers."""
        box, self.unsent, self.queued = self.unsent, {}, 0
        return box

    def close(self, index: int) -> None:
        """PE ``index`` will get no more tasks: postprocess this process's copy, if it has one."""
        inst = self.copies.get(index)
        if inst is not None:
            self.finish(inst)

    # --- routing (overrides of the core) ---------------------------------------------------------
    def _process(self, inst: Instance, inputs: Any) -> None:
        # each task may run its first stateless output here; its own outputs get their own budget
        saved, self._budget = self._budget, 1 if self.chain else 0
        try:
            super()._process(inst, inputs)
        finally:
            self._budget = saved

    def _enqueue(self, gid: int, input_name: str | None, data: Any) -> None:
        node = self.node_of[gid]
        if node.index in self.stateful:
            self.unsent.setdefault(gid, []).append((gid, input_name, data))
        elif self._budget > 0:
            self._budget -= 1
            inst = self.copy_of(node.index)
            index = node.index
            if index in self.costs or self._samples.get(index, 0) >= SAMPLES or self._depth >= MAX_DEPTH \
                    or self._deferred:  # (then not this call alone)
                self._local(inst, input_name, data)
            else:
                # a cost for free: a fan-out's tasks for this PE are queued in entries filled by it (see cut),
                # not by the writer's, before any unit of them has run
                began, hosting = time.perf_counter(), self.hosting
                self._local(inst, input_name, data)
                # less the copies its chain made on the way (deep copies, preprocess: once per worker)
                took = time.perf_counter() - began - (self.hosting - hosting)
                self.sampled[index] = min(took, self.sampled.get(index, took))
                self._samples[index] = self._samples.get(index, 0) + 1
            return
        else:
            self.unsent.setdefault(SHARED_QUEUE, []).append((gid, input_name, data))
        self.queued += 1
        if self.on_queued is not None:
            self.on_queued()

    def stats(self) -> list[dict]:
        """Per-instance statistics of this process's copies and owned instances."""
        return [inst.stats(self.proc) for inst in (*self.copies.values(), *self.owned.values())]
