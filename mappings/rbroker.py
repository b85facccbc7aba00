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
"""

from __future__ import annotations

import json
import math
import os
import pickle
import socket
import threading
import time

from d4p_hpc.mappings.dynamic import COMPLETED, READ_COUNT, RUNNING, SLOW_UNIT, Unit
from d4p_hpc.mappings.rstate import COMMIT, GROUP, REGISTER, Keys, stateful_gids, stop_run
from d4p_hpc.mappings.tasks import CONTROL, ENTRY_TASKS, SHARED, TaskRuntime, chunk, truncate_parts

#: Default seconds before a dead worker's tasks are taken over (``$D4P_HPC_CLAIM_IDLE``).
CLAIM_IDLE = 10.0
BLOCK_MS = 250
OWN_GRACE = 3.0


def claim_idle() -> float:
    """The configured claim idle time in seconds."""
    return float(os.environ.get("D4P_HPC_CLAIM_IDLE") or CLAIM_IDLE)


class RedisBroker:
    """One process's view of a Redis-mapped run (the driver is process 0).

    Parameters
    ----------
    conn
        :class:`~d4p_hpc.mappings.rconn.Connection` of the Redis.
    keys
        Key names of the run.
    proc
        This process's number.
    workers
        Size of the pool (for cutting entries and sharing stateful instances).
    idle
        Claim idle time in seconds.
    """

    def __init__(self, conn, keys: Keys, proc: int, workers: int, idle: float) -> None:
        self.conn = conn
        self.client = conn.client()
        self.keys = keys
        self.proc = proc
        self.consumer = f"w{proc}"
        self.workers = workers
        self.idle = idle
        self._commit = self.client.register_script(COMMIT)
        self.runtime: TaskRuntime | None = None
        self.count = 1
        self.sizes: dict[str, int] = {}
        self._state = RUNNING
        self._active = True
        self._beating = threading.Event()
        self._next_claim = time.monotonic() + idle / 2
        self._unowned: list[int] = []
        self._attached = self._next_own = time.monotonic()

    # --- both sides ------------------------------------------------------------------------------
    def commit(self, unit: Unit | None, outbox: dict, done: dict, seconds: float, close: int | None = None) -> int:
        node_of = self.runtime.node_of
        deltas: dict[str, int] = {}
        for index, n in done.items():
            deltas[str(index)] = deltas.get(str(index), 0) - n
        if unit is not None and unit.gid >= 0 and not unit.eos:
            deltas[f"g{unit.gid}"] = -len(unit.items)
        adds: list = []
        for target, items in outbox.items():
            if target == SHARED:
                for entry in chunk(items, self.workers):
                    adds += ["tasks", pickle.dumps(entry, protocol=5)]
                for gid, _input, _data in items:
                    key = str(node_of[gid].index)
                    deltas[key] = deltas.get(key, 0) + 1
            else:
                for k in range(0, len(items), ENTRY_TASKS):
                    adds += [self.keys.stream(target), pickle.dumps(items[k:k + ENTRY_TASKS], protocol=5)]
                deltas[f"g{target}"] = deltas.get(f"g{target}", 0) + len(items)
        sizes = self.runtime.sink.sizes() if self.proc else {}
        args = [self.keys.prefix, self._stream(unit.gid) if unit else "", unit.ref if unit else "",
                sum(done.values()), seconds, "" if close is None else close,
                unit.gid if unit is not None and unit.eos else "",
                unit.close if unit is not None and unit.gid == CONTROL else "", self.proc,
                len(deltas), *[x for kv in deltas.items() for x in kv], len(adds) // 2, *adds,
                len(sizes), *[x for kv in sizes.items() for x in kv]]
        status, backlog, *completed = self._commit(args=args)
        if status == 1:
            self.sizes.update(sizes)
            if completed and completed[0]:
                self._state = COMPLETED  # this commit ended the run
        elif status == 0:
            # another worker took this unit over (we were thought dead) and committed it first
            truncate_parts(self.runtime.sink.results, self.sizes)
            print(f"unit {unit.ref} was committed by another worker; its results here are dropped", flush=True)
        else:
            self._state = self.fresh_state()
        self.count = 1 if seconds > SLOW_UNIT else min(READ_COUNT, self.count + 1)
        return backlog

    def _stream(self, gid: int) -> str:
        return f"ctl:{self.proc}" if gid == CONTROL else self.keys.stream(gid)

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
        self.client.eval(REGISTER, 0, self.keys.prefix, self.proc, info, int(self.idle * 1000))
        self._beat_once(self.client)
        threading.Thread(target=self._heartbeat, name="d4p-heartbeat", daemon=True).start()
        return runtime

    def _beat_once(self, client) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.set(self.keys.alive(self.proc), 1, px=int(self.idle * 1000))
        pipe.get(self.keys.state)
        pipe.get(self.keys.active)
        _, state, active = pipe.execute()
        self._state = state.decode() if state else "GONE"
        self._active = active is None or str(self.proc) in active.decode().split(",")

    def _heartbeat(self) -> None:
        client = self.conn.client()
        period = min(0.25, self.idle / 4)
        while not self._beating.wait(period):
            try:
                self._beat_once(client)
            except Exception as exc:  # Redis gone: the main loop finds out and ends
                self._state = f"GONE ({exc})"
                return
        client.close()

    def close(self) -> None:
        """Stop the heartbeat; drop the liveness key so that our pending entries are claimed soon."""
        self._beating.set()
        self.client.delete(self.keys.alive(self.proc))

    def state(self) -> str:
        return self._state

    def active(self) -> bool:
        return self._active

    def take(self, parked: bool) -> list[Unit]:
        now = time.monotonic()
        if self._unowned and now >= self._next_own:
            self._next_own = now + 0.5
            self._own(now)
        if now >= self._next_claim and not parked:
            self._next_claim = now + max(0.5, self.idle / 2)
            units = self._reclaim()
            if units:
                return units
        gids = (CONTROL,) if parked else (CONTROL, SHARED, *self.runtime.owned)
        streams = {self.keys.prefix + self._stream(gid): ">" for gid in gids}
        units = []
        for stream, entries in self.client.xreadgroup(GROUP, self.consumer, streams, count=self.count,
                                                      block=BLOCK_MS) or []:
            kind, _, number = stream.decode()[len(self.keys.prefix):].partition(":")
            gid = SHARED if kind == "tasks" else CONTROL if kind == "ctl" else int(number)
            for ref, fields in entries:
                if b"end" in fields:  # the run ended (see rstate): read its state now, not at the next beat
                    self._state = self.fresh_state()
                elif b"close" in fields:
                    units.append(Unit(CONTROL, [], ref.decode(), close=int(fields[b"close"])))
                elif b"eos" in fields:
                    units.append(Unit(gid, [], ref.decode(), eos=True))
                else:
                    units.append(Unit(gid, pickle.loads(fields[b"b"]), ref.decode()))
        return units

    def _reclaim(self) -> list[Unit]:
        idle_ms = int(self.idle * 1000)
        pending = self.client.xpending_range(self.keys.tasks, GROUP, min="-", max="+", count=256, idle=idle_ms)
        consumers = sorted({p["consumer"].decode() for p in pending} - {self.consumer})
        if not consumers:
            return []
        pipe = self.client.pipeline(transaction=False)
        for name in consumers:
            pipe.exists(self.keys.prefix + "alive:" + name)
        dead = {name for name, alive in zip(consumers, pipe.execute()) if not alive}
        ids = [p["message_id"] for p in pending if p["consumer"].decode() in dead]
        if not ids:
            return []
        claimed = [(ref, f) for ref, f in self.client.xclaim(self.keys.tasks, GROUP, self.consumer, idle_ms, ids)
                   if f]
        if claimed:
            self.client.incrby(self.keys.redeliveries, len(claimed))
            print(f"took over {len(claimed)} entries of dead worker(s) {', '.join(sorted(dead))}", flush=True)
        return [Unit(SHARED, pickle.loads(f[b"b"]), ref.decode()) for ref, f in claimed]

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

