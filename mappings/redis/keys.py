"""The state of one Redis-mapped run, kept in Redis, and the scripts that change it.

Its keys are those :class:`Keys` declares, under the prefix ``d4p:<run id>:``.
The end-of-stream accounting is specified once, executably, by :class:`Accounting`:
dyn_multi runs it in shared memory, and :data:`COMMIT` is its Redis implementation,
which tests/runs/test_accounting.py checks against it on random sequences of commits.
Every commit runs :data:`COMMIT` atomically: acknowledge (and delete) the unit's
entry, unless another worker already did (then nothing happens); queue what
the unit wrote; then the accounting's step. The scripts take one JSON table of
named fields (:func:`commit_fields`), never positions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

from d4p_hpc.mappings.runtime.plan import Plan
from d4p_hpc.mappings.dynamic.tasks import CONTROL, SHARED

#: Key naming the run that workers attach to (JSON: id, graph, attr, mapping, ...).
ANNOUNCE = "d4p:run"
GROUP = "g"


class Keys:
    """Key names of run ``run_id``: one attribute per key below, and the methods for the keys of one
    worker or instance. Declared, not made up on demand: a misspelt name is an AttributeError, not a
    new key. Streams have consumer group "g"; ``pending``, ``done``, ... are hashes."""

    prefix: str
    tasks: str  # stream of queue entries (pickled task lists); also inst:<gid>, one per stateful instance
    pending: str  # PE index -> tasks queued, "g<gid>" -> items queued for a stateful instance
    done: str  # PEs finished
    eos: str  # stateful PEs whose instances got their end-of-stream entry
    idone: str  # stateful instances finished
    closing: str  # stateless PEs whose copies workers were told to close; closed:<PE>: who did
    ended: str  # stream: one entry once the run has ended (the driver and heartbeats block on it)
    topo: str  # the plan, as the accounting needs it (JSON)
    state: str  # RUNNING, COMPLETED, FAILED or CANCELLED
    error: str  # the first error (JSON)
    sizes: str  # part file -> bytes written by acknowledged units
    work: str  # tasks done, busy seconds (for autoscaling)
    redeliveries: str  # entries taken over from dead workers
    procs: str  # the last worker number given out
    workers: str  # worker number -> its record (host, pid); also alive:w<proc>, ctl:<proc>
    owners: str  # stateful instance -> the worker hosting it
    exited: str  # worker number -> how it ended
    active: str  # the workers of the pool (autoscaling), comma-separated

    NAMES = tuple(name for name in __annotations__ if name != "prefix")
    __slots__ = ("prefix", *NAMES)

    def __init__(self, run_id: str) -> None:
        self.prefix = f"d4p:{run_id}:"
        for name in self.NAMES:
            setattr(self, name, self.prefix + name)

    def stream(self, gid: int, proc: int = 0) -> str:
        """Suffix (the scripts add the prefix) of the stream of ``gid``: the shared queue (SHARED),
        worker ``proc``'s control stream (CONTROL), or stateful instance ``gid``'s."""
        return "tasks" if gid == SHARED else f"ctl:{proc}" if gid == CONTROL else f"inst:{gid}"

    def alive(self, proc: int) -> str:
        """Heartbeat key of worker ``proc``."""
        return f"{self.prefix}alive:w{proc}"


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
    is COMPLETED when every PE is done. Roots are done when the driver closes them.

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
        for index, n in tasks.items():
            self.pending[index] += n
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
        return self._walk()

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
        if target == SHARED:
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
    if unit is not None and unit.gid == CONTROL:
        fields["closed"] = unit.close
    return fields


#: :class:`Accounting` in Redis. ARGV[1]: JSON of :func:`commit_fields` plus ``prefix``, the unit's
#: ``stream`` and ``ref`` (absent for the driver), ``sizes`` (part file -> acknowledged bytes) and
#: ``entries`` (stream suffixes); ARGV[1 + k] is the payload of ``entries[k]``. Returns
#: {1, backlog, completed}, {0, 0} if another worker committed the unit first, {2, 0} if the run has ended.
COMMIT = r"""
local a = cjson.decode(ARGV[1])
local p = a.prefix
if redis.call('GET', p..'state') ~= 'RUNNING' then return {2, 0} end
if a.ref then
  if redis.call('XACK', p..a.stream, 'g', a.ref) == 0 then return {0, 0} end
  redis.call('XDEL', p..a.stream, a.ref)
end
for pe, n in pairs(a.tasks) do redis.call('HINCRBY', p..'pending', pe, n) end
for gid, n in pairs(a.items) do redis.call('HINCRBY', p..'pending', 'g'..gid, n) end
for k, stream in ipairs(a.entries) do redis.call('XADD', p..stream, '*', 'b', ARGV[k + 1]) end
for part, size in pairs(a.sizes) do redis.call('HSET', p..'sizes', part, size) end
if a.done ~= 0 then
  redis.call('HINCRBY', p..'work', 'tasks', a.done)
  redis.call('HINCRBYFLOAT', p..'work', 'busy', a.busy)
end
if a.close then redis.call('HSET', p..'done', a.close, 1) end
if a.finished then redis.call('HSET', p..'idone', a.finished, 1) end
if a.closed then redis.call('HSET', p..'closed:'..a.closed, a.proc, 1) end
local workers = redis.call('HKEYS', p..'workers')
local all = true
for _, pe in ipairs(cjson.decode(redis.call('GET', p..'topo'))) do
  local key = tostring(pe.i)
  if redis.call('HEXISTS', p..'done', key) == 0 then
    local ready = not pe.root
    for _, u in ipairs(pe.up) do
      if ready and redis.call('HEXISTS', p..'done', tostring(u)) == 0 then ready = false end
    end
    if ready and pe.gids then
      if redis.call('HSETNX', p..'eos', key, 1) == 1 then
        for _, g in ipairs(pe.gids) do redis.call('XADD', p..'inst:'..g, '*', 'eos', 1) end
      end
      for _, g in ipairs(pe.gids) do
        if ready and redis.call('HEXISTS', p..'idone', tostring(g)) == 0 then ready = false end
      end
    elseif ready and tonumber(redis.call('HGET', p..'pending', key) or '0') == 0 then
      if redis.call('HSETNX', p..'closing', key, 1) == 1 then
        for _, w in ipairs(workers) do redis.call('XADD', p..'ctl:'..w, '*', 'close', key) end
      end
      for _, w in ipairs(workers) do
        if ready and redis.call('HEXISTS', p..'closed:'..key, w) == 0
            and redis.call('EXISTS', p..'alive:w'..w) == 1 then ready = false end
      end
    else
      ready = false
    end
    if ready then redis.call('HSET', p..'done', key, 1) else all = false end
  end
end
if all then
  redis.call('SET', p..'state', 'COMPLETED')
  -- wake the workers blocked on their control stream, and the driver, now rather than at their next poll
  for _, w in ipairs(workers) do redis.call('XADD', p..'ctl:'..w, '*', 'end', 1) end
  redis.call('XADD', p..'ended', '*', 'state', 'COMPLETED')
end
local backlog = 0
for _, v in ipairs(redis.call('HVALS', p..'pending')) do backlog = backlog + tonumber(v) end
return {1, backlog, all and 1 or 0}
"""

#: :meth:`Accounting.register` in Redis, with the worker's record, heartbeat and control stream.
#: ARGV[1]: JSON {prefix, proc, info (the record), ttl (ms)}.
REGISTER = r"""
local a = cjson.decode(ARGV[1])
local p, w = a.prefix, a.proc
redis.call('HSET', p..'workers', w, a.info)
redis.call('SET', p..'alive:w'..w, 1, 'PX', a.ttl)
redis.call('XGROUP', 'CREATE', p..'ctl:'..w, 'g', '0', 'MKSTREAM')
for _, pe in ipairs(redis.call('HKEYS', p..'closing')) do redis.call('HSET', p..'closed:'..pe, w, 1) end
return 1
"""

#: :meth:`Accounting.stop` in Redis: set the state only while the run is RUNNING (a failure or a
#: stop must not undo completion), keep the first error, tell everyone.
#: ARGV[1]: JSON {prefix, state, error (JSON, optional)}.
STOP = r"""
local a = cjson.decode(ARGV[1])
local p = a.prefix
if redis.call('GET', p..'state') == 'RUNNING' then
  redis.call('SET', p..'state', a.state)
  if a.error then redis.call('SET', p..'error', a.error, 'NX') end
  for _, w in ipairs(redis.call('HKEYS', p..'workers')) do redis.call('XADD', p..'ctl:'..w, '*', 'end', 1) end
  redis.call('XADD', p..'ended', '*', 'state', a.state)
  return 1
end
return 0
"""


def stop_run(client, keys: Keys, state: str, error: dict | None = None) -> bool:
    """End a RUNNING run as ``state`` (FAILED, CANCELLED), keeping the first error; False if it had ended."""
    fields = {"prefix": keys.prefix, "state": state}
    if error:
        fields["error"] = json.dumps(error)
    return bool(client.eval(STOP, 0, json.dumps(fields)))


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


def stateful_gids(plan: Plan) -> list[int]:
    """Gids of every stateful instance, in plan order."""
    return [gid for i in sorted(plan.stateful_indices()) for gid in plan.pes[i].gids]


def publish(client, run_id: str, plan: Plan, announcement: dict) -> Keys:
    """Create the run's keys and streams, then announce it to waiting workers (last, so they find it whole)."""
    keys = Keys(run_id)
    pipe = client.pipeline(transaction=True)
    pipe.set(keys.topo, json.dumps(topology(plan)))
    pipe.set(keys.state, "RUNNING")
    pipe.xgroup_create(keys.tasks, GROUP, id="0", mkstream=True)
    for gid in stateful_gids(plan):
        pipe.xgroup_create(keys.prefix + keys.stream(gid), GROUP, id="0", mkstream=True)
    pipe.set(ANNOUNCE, json.dumps({"id": run_id, **announcement}))
    pipe.execute()
    return keys


def read_announcement(client) -> tuple[dict | None, str | None]:
    """The announced run, if any, and its state."""
    raw = client.get(ANNOUNCE)
    if raw is None:
        return None, None
    run = json.loads(raw)
    state = client.get(Keys(run["id"]).state)
    return run, state.decode() if state else None


def forget(client, keys: Keys) -> None:
    """Delete the run's keys (on a shared Redis given with --redis URL)."""
    names = list(client.scan_iter(match=keys.prefix + "*", count=1000))
    for k in range(0, len(names), 500):
        client.delete(*names[k:k + 500])
    raw = client.get(ANNOUNCE)
    if raw is not None and json.loads(raw)["id"] == keys.prefix.split(":")[1]:
        client.delete(ANNOUNCE)
