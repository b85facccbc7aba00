"""The state of one Redis-mapped run, kept in Redis, and the scripts that change it.

Its keys are those :class:`Keys` declares, under the prefix ``d4p:<run id>:``.
:data:`COMMIT`, :data:`REGISTER` and :data:`STOP` implement
:class:`~d4p_hpc.mappings.dynamic.accounting.Accounting` (the executable
specification, which tests/runs/test_accounting.py checks them against) in Redis.
Every commit runs :data:`COMMIT` atomically: acknowledge (and delete) the unit's
entry, unless another worker already did (then nothing happens); queue what
the unit wrote; then the accounting's step. The scripts take one JSON table of
named fields (:func:`~d4p_hpc.mappings.dynamic.accounting.commit_fields`), never positions.
"""

from __future__ import annotations

import json

from d4p_hpc.mappings.dynamic.accounting import topology
from d4p_hpc.mappings.dynamic.tasks import CONTROL_QUEUE, SHARED_QUEUE
from d4p_hpc.mappings.runtime.plan import Plan

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
    work: str  # tasks done, busy seconds (autoscaling), backlog (queued, unfinished); c:<PE> (entry sizes)
    redeliveries: str  # entries taken over from dead workers
    taken: str  # worker number -> 1 once another worker took entries over from it (its unit was redone)
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
        """Suffix (the scripts add the prefix) of the stream of ``gid``: the shared queue (SHARED_QUEUE),
        worker ``proc``'s control stream (CONTROL_QUEUE), or stateful instance ``gid``'s."""
        return "tasks" if gid == SHARED_QUEUE else f"ctl:{proc}" if gid == CONTROL_QUEUE else f"inst:{gid}"

    def alive(self, proc: int) -> str:
        """Heartbeat key of worker ``proc``."""
        return f"{self.prefix}alive:w{proc}"


#: :class:`~d4p_hpc.mappings.dynamic.accounting.Accounting` in Redis. ARGV[1]: JSON of
#: :func:`~d4p_hpc.mappings.dynamic.accounting.commit_fields` plus ``prefix``, the unit's
#: ``stream`` and ``ref`` (absent for the driver), ``sizes`` (part file -> acknowledged bytes),
#: ``costs`` (a shared unit's seconds per task, by PE) and ``entries`` (stream suffixes); ``ref`` is a
#: list for the entries of an owned instance taken together (:func:`~d4p_hpc.mappings.redis.broker.merge_owned`);
#: ARGV[1 + k] is the payload of ``entries[k]``. Returns
#: {1, backlog, completed}, {0, 0} if another worker committed the unit first, {2, 0} if the run has ended.
COMMIT = r"""
local a = cjson.decode(ARGV[1])
local p = a.prefix
if redis.call('GET', p..'state') ~= 'RUNNING' then return {2, 0} end
if a.ref then
  -- several entries of an owned instance's stream, taken as one unit (nobody else takes them: all or none)
  local refs = type(a.ref) == 'table' and a.ref or {a.ref}
  if redis.call('XACK', p..a.stream, 'g', unpack(refs)) == 0 then return {0, 0} end
  redis.call('XDEL', p..a.stream, unpack(refs))
end
-- the walk only where a PE may have become ready (see Accounting.commit)
local walk = a.close or a.finished or a.closed or (next(a.tasks) == nil and next(a.items) == nil)
local change = 0
for pe, n in pairs(a.tasks) do
  if redis.call('HINCRBY', p..'pending', pe, n) == 0 then walk = true end
  change = change + n
end
for gid, n in pairs(a.items) do
  redis.call('HINCRBY', p..'pending', 'g'..gid, n)
  change = change + n
end
if change ~= 0 then redis.call('HINCRBY', p..'work', 'backlog', change) end
for k, stream in ipairs(a.entries) do redis.call('XADD', p..stream, '*', 'b', ARGV[k + 1]) end
for part, size in pairs(a.sizes) do redis.call('HSET', p..'sizes', part, size) end
if a.done ~= 0 then
  redis.call('HINCRBY', p..'work', 'tasks', a.done)
  redis.call('HINCRBYFLOAT', p..'work', 'busy', a.busy)
end
if a.costs then
  for pe, seconds in pairs(a.costs) do redis.call('HSET', p..'work', 'c:'..pe, seconds) end
end
if a.close then redis.call('HSET', p..'done', a.close, 1) end
if a.finished then redis.call('HSET', p..'idone', a.finished, 1) end
if a.closed then redis.call('HSET', p..'closed:'..a.closed, a.proc, 1) end
local backlog = tonumber(redis.call('HGET', p..'work', 'backlog') or '0')
if not walk then return {1, backlog, 0} end
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
return {1, backlog, all and 1 or 0}
"""

#: :meth:`~d4p_hpc.mappings.dynamic.accounting.Accounting.register` in Redis, with the worker's
#: record, heartbeat and control stream. ARGV[1]: JSON {prefix, proc, info (the record), ttl (ms)}.
REGISTER = r"""
local a = cjson.decode(ARGV[1])
local p, w = a.prefix, a.proc
redis.call('HSET', p..'workers', w, a.info)
redis.call('SET', p..'alive:w'..w, 1, 'PX', a.ttl)
redis.call('XGROUP', 'CREATE', p..'ctl:'..w, 'g', '0', 'MKSTREAM')
for _, pe in ipairs(redis.call('HKEYS', p..'closing')) do redis.call('HSET', p..'closed:'..pe, w, 1) end
return 1
"""

#: :meth:`~d4p_hpc.mappings.dynamic.accounting.Accounting.stop` in Redis: set the state only while
#: the run is RUNNING (a failure or a stop must not undo completion), keep the first error, tell
#: everyone. ARGV[1]: JSON {prefix, state, error (JSON, optional)}.
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


def pe_costs(work: dict) -> dict[int, float]:
    """What a task of each PE (by index) cost in the last unit of it committed in the pool: ``c:I`` of
    the ``work`` hash as read (``HGETALL``), which :data:`COMMIT` sets. The last, not the mean over the
    run: a stream that turns slow must be seen as slow at once."""
    return {int(key[2:]): float(value) for key, value in work.items() if key.startswith(b"c:")}
