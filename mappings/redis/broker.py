"""The broker of the Redis mappings: streams, a consumer group, and one atomic commit script.

Delivery: a worker reads entries with ``XREADGROUP`` (several per call when
units are quick, one at a time when they are slow, so slow tasks spread). An
entry stays pending in the group until the commit that acknowledges it, which
also queues everything the unit wrote and records how far the worker's result
files were written; a unit's results therefore count once or not at all.

Redelivery: each worker refreshes ``alive:w<proc>`` (time to live: the claim
idle time) from a heartbeat thread, which keeps beating while a PE takes
minutes. Every half idle time a worker looks for entries pending longer than
the idle time at consumers whose heartbeat has expired, takes them over with
``XCLAIM`` and counts them in ``redeliveries``. A live but slow worker keeps
its tasks.

Idle costs nothing: news comes as stream entries, so both threads block on
Redis instead of polling. The main loop blocks on its streams until an entry
comes (a task, a close, the run's end on its control stream) or its next duty
(a look for dead workers' entries, every half idle time). The heartbeat beats
four times per idle time and blocks on ``ended`` in between, so a unit learns
of a stop at once. In an autoscaled run it beats every :data:`POOL_BEAT` and
reads the pool, waking a parked main loop through its control stream when the
worker joins the pool.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import socket
import threading
import time
import zlib
from pathlib import Path

from d4p_hpc import settings
from d4p_hpc.mappings.dynamic.autoscale import TICK
from d4p_hpc.mappings.dynamic.loops import COMPLETED, READ_COUNT, RUNNING, Unit
from d4p_hpc.mappings.dynamic.accounting import commit_fields
from d4p_hpc.mappings.dynamic.tasks import (CONTROL_QUEUE, ENTRY_TASKS, RETURNED, SHARED_QUEUE, SLOW_UNIT, TaskRuntime,
                                            pack, shared_entries, truncate_parts)
from d4p_hpc.mappings.redis.keys import COMMIT, GROUP, REGISTER, Keys, pe_costs, stateful_gids, stop_run

#: Heartbeats per claim idle time (the liveness key's time to live): three can be missed.
BEATS = 4
#: Longest time between two heartbeats in an autoscaled run: how soon a worker parks or resumes.
POOL_BEAT = 0.5
#: Redis ends a blocked read at its next timer tick (every 1/hz s, hz 10 by default): a read that
#: must end in time asks for that much less.
REDIS_TICK = 0.1
#: While stateful instances have no host: how often to try to claim them, and for how long only a fair share.
OWN_EVERY = 0.5
OWN_GRACE = 3.0
#: A queue entry's pickle longer than this is compressed (zlib, level 1) if that makes it a quarter
#: shorter: Redis's cost of an entry of thousands of tasks is mostly its bytes, copied in and out
#: (``benchmarks/broker_cost.py``: an entry of 15,000 light tasks, 0.06 µs per task as a pickle, 0.03
#: compressed); the workers, which scale, pay for it (about 0.1 µs per task both ways).
SQUEEZE_BYTES = 16 << 10
#: Most entries of one owned instance read at once, run and committed as one unit. A unit of shared tasks
#: writes an entry per instance its items go to, small when the instances are many (at 32 workers, an
#: entry of 4,000 tasks gives 31 instances about 130 items each): each would otherwise cost a commit.
OWNED_ENTRIES = 32


def cut_unacknowledged(results: Path, kept: dict[str, int], proc: int, sizes: dict[str, int]) -> int:
    """Cut worker ``proc``'s part files back to what commits acknowledged (``sizes``: the run's, or
    ``kept``: what a checkpoint holds of earlier segments, whichever is more); return how many were cut.

    In a COMPLETED run every unit was acknowledged once, so anything beyond is a unit written twice:
    by a worker thought dead whose entries were redone, and which went on (paused, then resumed)."""
    parts = [str(p.relative_to(results)) for p in results.glob(f"outputs/*/part-{proc:05d}.*")]
    return truncate_parts(results, {rel: max(sizes.get(rel, 0), kept.get(rel, 0)) for rel in parts})


def claim_idle() -> float:
    """The configured claim idle time in seconds."""
    return settings.claim_idle()


def squeeze(payload: bytes) -> bytes:
    """A queue entry's pickle as it goes to Redis: compressed when long and compressible (see
    :data:`SQUEEZE_BYTES`). A pickle begins with its protocol byte (0x80), zlib's stream with 0x78."""
    if len(payload) > SQUEEZE_BYTES:
        packed = zlib.compress(payload, 1)
        if len(packed) < len(payload) * 3 // 4:
            return packed
    return payload


def entry_items(raw: bytes) -> list:
    """The tasks (or items) of a queue entry as read from Redis: what :func:`squeeze` made of its pickle."""
    return pickle.loads(zlib.decompress(raw) if raw[:1] == b"\x78" else raw)


def merge_owned(units: list[Unit]) -> list[Unit]:
    """The units read, with the items of each owned instance's entries as one unit, in stream order (its
    ``ref``: their references, which one commit acknowledges). Its end of stream, last in its stream,
    stays a unit of its own, after them."""
    merged: list[Unit] = []
    heads: dict[int, Unit] = {}
    for unit in units:
        if unit.gid < 0 or unit.eos:
            merged.append(unit)
        elif (head := heads.get(unit.gid)) is None:
            heads[unit.gid] = unit
            unit.ref = [unit.ref]
            merged.append(unit)
        else:
            head.items += unit.items
            head.ref.append(unit.ref)
    return merged


class RedisBroker:
    """One process's view of a Redis-mapped run (the driver is process 0).

    Parameters
    ----------
    conn
        :class:`~d4p_hpc.mappings.redis.conn.Connection` of the Redis.
    keys
        Key names of the run.
    proc
        This process's number.
    workers
        Size of the pool (for cutting entries and sharing stateful instances).
    idle
        Claim idle time in seconds.
    autoscaled
        Whether the driver sizes the pool (dyn_auto_redis): then the heartbeat follows ``active``.
    """

    def __init__(self, conn, keys: Keys, proc: int, workers: int, idle: float, autoscaled: bool = False) -> None:
        self.conn = conn
        self.client = conn.client()
        self.keys = keys
        self.proc = proc
        self.consumer = f"w{proc}"
        self.workers = workers
        self.idle = idle
        self.beat = min(POOL_BEAT, idle / BEATS) if autoscaled else idle / BEATS
        self.autoscaled = autoscaled
        self._commit = self.client.register_script(COMMIT)
        self.runtime: TaskRuntime  # set by attach (workers) or the driver, before any commit
        self.count = 1
        self.sizes: dict[str, int] = {}
        self._state = RUNNING
        #: why Redis was found gone (the heartbeat's or the main loop's error), if it was
        self.lost: Exception | None = None
        self._active = True
        self._closed = threading.Event()
        self._beat_lock = threading.Lock()
        self._next_claim = time.monotonic() + idle / 2
        self._unowned: list[int] = []
        self._attached = self._next_own = time.monotonic()
        #: a task's cost as last measured or read (see _task_seconds), and when the driver reads it next
        self._cost: float | None = None
        self._cost_read = 0.0
        #: what a task of each PE (by index) cost over the pool, as last read (the heartbeat; the driver's
        #: _task_seconds)
        self._pe_costs: dict[int, float] = {}

    # --- both sides ------------------------------------------------------------------------------
    def commit(self, unit: Unit | None, outbox: dict, done: dict, seconds: float, close: int | None = None,
               runtime: TaskRuntime | None = None) -> int:
        """Run :data:`~d4p_hpc.mappings.redis.keys.COMMIT`, with the sizes of this worker's parts."""
        node_of = self.runtime.node_of
        fields = commit_fields(unit, outbox, done, seconds, close, lambda gid: node_of[gid].index, self.proc)
        streams, payloads = [], []
        cost = self._task_seconds(unit, done, seconds)
        costs = runtime.known_costs(self._pe_costs) if runtime else self._pe_costs
        queues = {target: [items[k:k + ENTRY_TASKS] for k in range(0, len(items), ENTRY_TASKS)]
                  for target, items in outbox.items() if target not in (SHARED_QUEUE, RETURNED)}
        queues[SHARED_QUEUE] = shared_entries(outbox, self.workers, lambda gid: node_of[gid].index, costs, cost)
        for target, entries in queues.items():
            for entry in entries:
                for payload in pack(entry):
                    streams.append(self.keys.stream(target))
                    payloads.append(squeeze(payload))
        sizes = self.runtime.sink.sizes() if self.proc else {}
        fields.update(prefix=self.keys.prefix, entries=streams, sizes=sizes)
        if unit is not None:
            fields.update(stream=self.keys.stream(unit.gid, self.proc), ref=unit.ref)
            if runtime and unit.gid == SHARED_QUEUE:
                fields.update(costs=runtime.unit_costs)
        status, backlog, *completed = self._commit(args=[json.dumps(fields), *payloads])
        if status == 1:
            self.sizes.update(sizes)
            if completed and completed[0]:
                self._state = COMPLETED  # this commit ended the run
        elif status == 0:
            # another worker took this unit over (we were thought dead) and committed it first
            truncate_parts(self.runtime.sink.results, self.sizes)
            print(f"unit {fields['ref']} was committed by another worker; its results here are dropped", flush=True)
        else:
            self._state = self.fresh_state()
        if unit is not None and unit.gid == SHARED_QUEUE:
            # by the shared tasks only: a host of stateful instances, whose items are quick, must not
            # take several slow shared entries at once while other workers have none; and no more
            # than an entry's worth of tasks at once (an entry that turns out slow is not held back)
            self.count = 1 if seconds > SLOW_UNIT else \
                min(READ_COUNT, self.count + 1, max(1, ENTRY_TASKS // max(1, len(unit.items))))
        return backlog

    def _task_seconds(self, unit: Unit | None, done: dict, seconds: float) -> float | None:
        """What a task costs, as far as this process knows: a worker, from its last unit of tasks;
        the driver, from the run's figures (read at most every TICK)."""
        if unit is not None:
            if unit.gid == SHARED_QUEUE and (n := sum(done.values())):
                self._cost = seconds / n
            return self._cost
        now = time.monotonic()
        if now >= self._cost_read:
            self._cost_read = now + TICK
            work = self.client.hgetall(self.keys.work)
            tasks, busy = work.get(b"tasks"), work.get(b"busy")
            self._cost = float(busy) / int(tasks) if tasks and int(tasks) and busy else None
            self._pe_costs = pe_costs(work)
        return self._cost

    def fresh_state(self) -> str:
        """The run's state, read now."""
        raw = self.client.get(self.keys.state)
        return raw.decode() if raw else "GONE"

    def stop(self, state: str, error: dict | None = None) -> bool:
        """End a RUNNING run as ``state`` (FAILED, CANCELLED); False if it had ended already."""
        return stop_run(self.client, self.keys, state, error)

    # --- worker side -----------------------------------------------------------------------------
    def attach(self, runtime: TaskRuntime) -> TaskRuntime:
        """Register this worker and start its heartbeat; return ``runtime`` (now served by this broker)."""
        self.runtime = runtime
        self._unowned = stateful_gids(runtime.plan)
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
        self.client.eval(REGISTER, 0, json.dumps({"prefix": self.keys.prefix, "proc": self.proc, "info": info,
                                                  "ttl": int(self.idle * 1000)}))
        self._beat(self.client)
        threading.Thread(target=self._heartbeat, name="d4p-heartbeat", daemon=True).start()
        return runtime

    def _beat(self, client) -> None:
        """Refresh the liveness key; read the state and the pool."""
        with self._beat_lock:
            if self._closed.is_set():  # a beat after close() would revive a worker that has left
                return
            pipe = client.pipeline(transaction=False)
            pipe.set(self.keys.alive(self.proc), 1, px=int(self.idle * 1000))
            pipe.get(self.keys.state)
            pipe.hgetall(self.keys.work)
            if self.autoscaled:  # only the driver of an autoscaled run sets the pool (every beat counts at scale)
                pipe.get(self.keys.active)
            _, state, work, *pool = pipe.execute()
            active = pool[0] if pool else None
        self._state = state.decode() if state else "GONE"
        self._pe_costs = pe_costs(work)
        parked = not self._active
        self._active = self._member(active)
        if parked and self._active:  # the main loop may block for a while on its control stream alone
            client.xadd(self.keys.prefix + self.keys.stream(CONTROL_QUEUE, self.proc), {"pool": 1})

    def _member(self, active: bytes | None) -> bool:
        """Whether ``active`` (the pool the driver chose; None: no autoscaling) holds this worker."""
        return active is None or str(self.proc) in active.decode().split(",")

    def _heartbeat(self) -> None:
        client = self.conn.client()
        # a beat that short (a claim idle time under 0.8 s) hears of a stop soon enough, and Redis could
        # not end a blocked read in time for it
        block = int((self.beat - REDIS_TICK) * 1000) if self.beat > 2 * REDIS_TICK else 0
        try:
            while not self._closed.is_set():
                if block and self._state == RUNNING and self._active:
                    # returns at once when the run ends (an entry in ``ended``): a unit under way hears of a stop
                    client.xread({self.keys.ended: "0-0"}, count=1, block=block)
                else:  # parked (no unit runs), ended, or a short beat
                    self._closed.wait(self.beat)
                self._beat(client)
        except Exception as exc:  # Redis gone: the main loop finds out and ends
            self.lost = exc
            self._state = f"GONE ({exc})"
        finally:
            client.close()

    def close(self, reachable: bool = True) -> None:
        """Stop the heartbeat; drop the liveness key so that our pending entries are claimed soon
        (not when Redis was found gone: each call would only retry for seconds)."""
        with self._beat_lock:
            self._closed.set()
            if reachable:
                self.client.delete(self.keys.alive(self.proc))

    def state(self) -> str:
        """The state as the heartbeat last read it (or an ``end`` entry made it read)."""
        return self._state

    def active(self) -> bool:
        """Whether this worker is in the pool, as last read."""
        return self._active

    def take(self, parked: bool) -> list[Unit]:
        """Claim unhosted instances and dead workers' entries when due, then block on the streams."""
        now = time.monotonic()
        if self._unowned and now >= self._next_own:
            self._next_own = now + OWN_EVERY
            self._own(now)
        if now >= self._next_claim and not parked:
            self._next_claim = now + max(0.5, self.idle / 2)
            units = self._reclaim()
            if units:
                return units
        # wait for an entry or the next duty: every other news comes as an entry on the control stream
        due = now + self.idle / 2 if parked else self._next_claim
        if self._unowned:
            due = min(due, self._next_own)
        gids = (CONTROL_QUEUE,) if parked else (CONTROL_QUEUE, SHARED_QUEUE, *self.runtime.owned)
        streams = {self.keys.prefix + self.keys.stream(gid, self.proc): ">" for gid in gids}
        units, woken = [], []
        for stream, entries in self.client.xreadgroup(GROUP, self.consumer, streams, count=self.count,
                                                      block=max(1, int((due - now) * 1000))) or []:
            kind, _, number = stream.decode()[len(self.keys.prefix):].partition(":")
            gid = SHARED_QUEUE if kind == "tasks" else CONTROL_QUEUE if kind == "ctl" else int(number)
            for ref, fields in entries:
                if b"end" in fields:  # the run ended (COMMIT or STOP): read its state now, not at the next beat
                    self._state = self.fresh_state()
                elif b"pool" in fields:  # we may have joined the pool: read it now
                    woken.append(ref)
                elif b"checkpoint" in fields:  # the driver has quiesced the run (acknowledged with the pool news)
                    units.append(Unit(CONTROL_QUEUE, [], checkpoint=int(fields[b"checkpoint"])))
                    woken.append(ref)
                elif b"close" in fields:
                    units.append(Unit(CONTROL_QUEUE, [], ref.decode(), close=int(fields[b"close"])))
                elif b"eos" in fields:
                    units.append(Unit(gid, [], ref.decode(), eos=True))
                else:
                    units.append(Unit(gid, entry_items(fields[b"b"]), ref.decode()))
        # an owned instance whose read was full may have more entries waiting: take them now, for one commit
        full = [gid for gid in self.runtime.owned if sum(u.gid == gid and not u.eos for u in units) >= self.count]
        if full and self.count < OWNED_ENTRIES:
            for stream, entries in self.client.xreadgroup(
                    GROUP, self.consumer, {self.keys.prefix + self.keys.stream(gid): ">" for gid in full},
                    count=OWNED_ENTRIES - self.count) or []:
                gid = int(stream.decode().rpartition(":")[2])
                units += [Unit(gid, [], ref.decode(), eos=True) if b"eos" in fields else
                          Unit(gid, entry_items(fields[b"b"]), ref.decode()) for ref, fields in entries]
        units = merge_owned(units)
        if woken:
            ctl = self.keys.prefix + self.keys.stream(CONTROL_QUEUE, self.proc)
            *_, active = self.client.pipeline(transaction=False).xack(ctl, GROUP, *woken).xdel(ctl, *woken) \
                .get(self.keys.active).execute()
            self._active = self._member(active)
        return units

    def _reclaim(self) -> list[Unit]:
        idle_ms = int(self.idle * 1000)
        pending = self.client.xpending_range(self.keys.tasks, GROUP, min="-", max="+", count=256, idle=idle_ms)
        consumers = sorted({p["consumer"].decode() for p in pending} - {self.consumer})
        if not consumers:
            return []
        pipe = self.client.pipeline(transaction=False)
        for name in consumers:
            pipe.exists(self.keys.alive(int(name[1:])))
        dead = {name for name, alive in zip(consumers, pipe.execute(), strict=True) if not alive}
        ids = [p["message_id"] for p in pending if p["consumer"].decode() in dead]
        if not ids:
            return []
        claimed = [(ref, f) for ref, f in self.client.xclaim(self.keys.tasks, GROUP, self.consumer, idle_ms, ids)
                   if f]
        if claimed:
            # the dead workers' results of these units are cut at the end (dyn_redis._finish): they are redone here
            owners = {p["message_id"]: p["consumer"].decode()[1:] for p in pending}
            self.client.pipeline(transaction=False).incrby(self.keys.redeliveries, len(claimed)) \
                .hset(self.keys.taken, mapping={owners[ref]: 1 for ref, _ in claimed}).execute()
            print(f"took over {len(claimed)} entries of dead worker(s) {', '.join(sorted(dead))}", flush=True)
        return [Unit(SHARED_QUEUE, entry_items(f[b"b"]), ref.decode()) for ref, f in claimed]

    def _own(self, now: float) -> None:
        """Claim stateful instances nobody hosts: a fair share at first, any leftovers later."""
        owners = {int(g): int(p) for g, p in self.client.hgetall(self.keys.owners).items()}
        self._unowned = [gid for gid in self._unowned if gid not in owners]
        total = len(self._unowned) + len(owners)
        share = math.ceil(total / self.workers) if now - self._attached < OWN_GRACE else total
        mine = sum(1 for p in owners.values() if p == self.proc)
        for gid in list(self._unowned):
            if mine >= share:
                break
            if self.client.hsetnx(self.keys.owners, gid, self.proc):
                self.runtime.own(gid)
                self._unowned.remove(gid)
                mine += 1

