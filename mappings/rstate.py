"""The state of one Redis-mapped run, kept in Redis, and the one script that changes it.

Keys (prefix ``d4p:<run id>:``)::

    tasks           stream of queue entries (pickled task lists), consumer group "g"
    inst:<gid>      stream of one stateful instance (hybrid_redis), group "g"
    pending         hash: PE index -> tasks queued, "g<gid>" -> items queued for an instance
    done / eos / idone   hashes: PEs finished / end-of-stream sent to a stateful PE / instances finished
    closing, closed:<PE>  hashes: stateless PEs told to close / workers that closed their copy
    ctl:<proc>      control stream of one worker (close messages; "end" when the run ends), group "g"
    ended           stream with one entry once the run has ended (the driver blocks on it)
    topo            the plan, as the script needs it (JSON)
    state           RUNNING, COMPLETED, FAILED or CANCELLED
    sizes           hash: part file -> bytes written by acknowledged units
    work, redeliveries, procs, workers, owners, exited, active, alive:w<proc>

Every commit runs :data:`COMMIT` atomically: acknowledge (and delete) the unit's
entry, unless another worker already did (then nothing happens); queue what
the unit wrote; move the counters; then walk the PEs in topological order.
A stateless PE whose upstream PEs are all done and which has no task queued
gets no more tasks: it is *closing*, and every worker is told on its control
stream ``ctl:<proc>`` to postprocess its copy; the PE is done when every live
worker has committed that (what ``postprocess`` wrote is queued and counted
by then). A stateful PE whose upstream PEs are done gets an end-of-stream
entry at the end of each instance's stream (after every item sent to it), and
is done when all its instances have run ``postprocess`` and committed. When
every PE is done the run is COMPLETED. Root PEs are closed by the driver.
"""

from __future__ import annotations

import json

from d4p_hpc.mappings.plan import Plan
from d4p_hpc.mappings.tasks import stateful_indices

#: Key naming the run that workers attach to (JSON: id, graph, attr, mapping, ...).
ANNOUNCE = "d4p:run"
GROUP = "g"

COMMIT = r"""
local p = ARGV[1]
if redis.call('GET', p..'state') ~= 'RUNNING' then return {2, 0} end
if ARGV[3] ~= '' then
  if redis.call('XACK', p..ARGV[2], 'g', ARGV[3]) == 0 then return {0, 0} end
  redis.call('XDEL', p..ARGV[2], ARGV[3])
end
local i = 10
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HINCRBY', p..'pending', ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('XADD', p..ARGV[i], '*', 'b', ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', p..'sizes', ARGV[i], ARGV[i + 1]); i = i + 2 end
if ARGV[4] ~= '0' then
  redis.call('HINCRBY', p..'work', 'tasks', ARGV[4])
  redis.call('HINCRBYFLOAT', p..'work', 'busy', ARGV[5])
end
if ARGV[6] ~= '' then redis.call('HSET', p..'done', ARGV[6], 1) end
if ARGV[7] ~= '' then redis.call('HSET', p..'idone', ARGV[7], 1) end
if ARGV[8] ~= '' then redis.call('HSET', p..'closed:'..ARGV[8], ARGV[9], 1) end
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

#: A worker joins: its record, heartbeat and control stream; PEs already closing are closed for it
#: (it never had a copy of them).
REGISTER = r"""
local p, w = ARGV[1], ARGV[2]
redis.call('HSET', p..'workers', w, ARGV[3])
redis.call('SET', p..'alive:w'..w, 1, 'PX', ARGV[4])
redis.call('XGROUP', 'CREATE', p..'ctl:'..w, 'g', '0', 'MKSTREAM')
for _, pe in ipairs(redis.call('HKEYS', p..'closing')) do redis.call('HSET', p..'closed:'..pe, w, 1) end
return 1
"""

#: Set the state only while the run is RUNNING (a failure or a stop must not undo completion).
STOP = r"""
if redis.call('GET', KEYS[1]) == 'RUNNING' then
  redis.call('SET', KEYS[1], ARGV[1])
  if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'NX') end
  local p = ARGV[3]
  for _, w in ipairs(redis.call('HKEYS', p..'workers')) do redis.call('XADD', p..'ctl:'..w, '*', 'end', 1) end
  redis.call('XADD', p..'ended', '*', 'state', ARGV[1])
  return 1
end
return 0
"""


def stop_run(client, keys: "Keys", state: str, error: dict | None = None) -> bool:
    """End a RUNNING run as ``state`` (FAILED, CANCELLED), keeping the first error; False if it had ended."""
    return bool(client.eval(STOP, 2, keys.state, keys.error, state, json.dumps(error) if error else "",
                            keys.prefix))


def topology(plan: Plan) -> list[dict]:
    """What COMMIT needs of the plan: per PE in topological order, its upstream PEs, and
    (stateful PEs) its instances."""
    roots = {node.index for node in plan.roots()}
    stateful = stateful_indices(plan)
    topo = []
    for node in plan.pes:
        pe = {"i": node.index, "root": node.index in roots, "up": sorted({c.src for c in plan.incoming(node.index)})}
        if node.index in stateful:  # absent, not null: cjson's null is true in Lua
            pe["gids"] = list(node.gids)
        topo.append(pe)
    return topo


def stateful_gids(plan: Plan) -> list[int]:
    """Gids of every stateful instance, in plan order."""
    return [gid for i in sorted(stateful_indices(plan)) for gid in plan.pes[i].gids]


class Keys:
    """Key names of run ``run_id``."""

    def __init__(self, run_id: str) -> None:
        self.prefix = f"d4p:{run_id}:"

    def __getattr__(self, name: str) -> str:
        return self.prefix + name

    def stream(self, gid: int) -> str:
        """Suffix of the stream a task or item for ``gid`` goes to (-1: the shared queue)."""
        return "tasks" if gid < 0 else f"inst:{gid}"

    def alive(self, proc: int) -> str:
        return f"{self.prefix}alive:w{proc}"


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
