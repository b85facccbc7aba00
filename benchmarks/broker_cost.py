"""Redis's CPU per unit of work of the Redis mappings' broker, by entry size: what the model in the
README's "Scaling" section rests on, measured where Redis is the only thing that counts.

``scale.py`` runs whole graphs, and on 2 cores its figures mix Redis's cost per item with what it
spends per second whatever the items (the driver's ticks, heartbeats, timer work), and with entries
cut while a run starts (costs not yet measured, 32 workers waking at once). This script drives the
real :class:`~d4p_hpc.mappings.redis.broker.RedisBroker` and the real COMMIT script against a
redis-server configured as the per-job one (``RedisServer``: password, no saving), on the graphs of
``benchmarks/graphs/light.py``, and reads Redis's own CPU (``INFO cpu``, main thread, user + system)
around many repetitions of each step of a worker's steady state. The PEs are not run: only the
broker's work is measured.

- **produce n**: take an entry of one ``Fan`` task, commit it with ``n`` tasks for ``Light`` written
  (``Light``'s cost known: the rule cuts them into one entry of n, as a pool of 10,000 workers does at
  1 ms per task for n = 15,000: ``unit_seconds(10000)`` = 15 s);
- **consume n**: take that entry of n ``Light`` tasks, commit it (acknowledged, counted; ``Light``'s
  outputs run in the same worker, chained, so nothing is queued);
- **group n over K** (hybrid_redis, ``graph_fanout_grouped``): consume n, the unit's n items for the
  grouped ``Tally`` going to K instances (an entry each, of n / K items);
- **own 1** and **own 32**: a host of a ``Tally`` instance takes one entry of its stream, or 32 at once
  (``OWNED_ENTRIES``: one unit, one commit), and commits;
- **beat**: a worker's heartbeat (a pipeline of four commands, four times per claim idle time) and the
  blocked read of the run's end it waits in between.

Then the model (one Redis core, each worker busy with PE work of t ms per item): a worker costs Redis
``1000 / t x (produce + consume) / n`` µs per second for its tasks (a fan-out's share of ``produce``:
the tasks it queued are consumed by someone) and ``beats per second x beat``; one core feeds
``1e6`` over that. It prints, for n = 128 (the most an entry held before issue #21's broker
work), 4,096 (the cap of its first rule) and 15,000 (what a pool of 10,000 gets at 1 ms), the µs per
item, their ratio and the workers one core feeds at 1 and 10 ms per item; and for hybrid_redis, the
same with K instances of the grouped PE. A ratio measured side by side in one invocation, not an
absolute time, is what compares across machines. Entries longer than 16 KiB go compressed
(``SQUEEZE_BYTES``): the light graph's integers compress about 5x. It asserts nothing::

    python benchmarks/broker_cost.py                 # 200 repetitions of each step
    python benchmarks/broker_cost.py --repeat 1000 --json broker.json
"""
import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

from d4p_hpc.mappings.dynamic.loops import Unit
from d4p_hpc.mappings.dynamic.tasks import QUICK_ENTRY_TASKS, SHARED_QUEUE, TaskRuntime, unit_seconds
from d4p_hpc.mappings.redis import broker as broker_module
from d4p_hpc.mappings.redis.broker import BEATS, OWNED_ENTRIES, RedisBroker, claim_idle
from d4p_hpc.mappings.redis.keys import REGISTER, publish
from d4p_hpc.mappings.redis.server import RedisServer
from d4p_hpc.mappings.runtime.plan import build_plan
from d4p_hpc.mappings.runtime.sink import Sink
from d4p_hpc.workflow.loader import load_graph

LIGHT = Path(__file__).resolve().parent / "graphs" / "light.py"
#: the pool whose units are modelled: its entries of 1 ms tasks hold unit_seconds(POOL) / 1 ms tasks
POOL = 10_000
RULE = min(QUICK_ENTRY_TASKS, round(unit_seconds(POOL) / 1e-3))
#: 128: the most an entry held before issue #21's broker work; 4,096: the cap of the first rule
SIZES = (128, 4096, RULE)
INSTANCES = (16, 128, 1024)


def redis_cpu(client) -> float:
    """Seconds of CPU Redis's main thread has spent (user + system)."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])


class Bench:
    """One run's keys in a fresh Redis, and a worker's broker on them."""

    def __init__(self, conn, attr: str, processes: int, tmp: Path, instances: int = 0) -> None:
        self.client = conn.client()
        graph = load_graph(str(LIGHT), attr)
        for node in graph.graph.nodes():
            pe = node.get_contained_object()
            if instances and type(pe).__name__ == "Tally":
                pe.numprocesses = instances
        self.plan = build_plan(graph, processes)
        self.node = {node.key.split("-")[0].rstrip("0123456789"): node for node in self.plan.pes}
        self.keys = publish(self.client, f"bench{processes}{attr}", self.plan, {})
        for node in self.plan.pes:  # never zero: no end-of-stream walk on the way
            self.client.hincrby(self.keys.pending, str(node.index), 10 ** 12)
            for gid in node.gids if node.index in self.plan.stateful_indices() else ():
                self.client.hincrby(self.keys.pending, f"g{gid}", 10 ** 12)
        self.client.eval(REGISTER, 0, json.dumps({"prefix": self.keys.prefix, "proc": 1, "info": "{}",
                                                  "ttl": 600_000}))
        self.broker = RedisBroker(conn, self.keys, 1, POOL, claim_idle())
        self.runtime = TaskRuntime(self.plan, 1, Sink(tmp, 1))
        self.broker.runtime = self.runtime
        self.runtime.costs[self.node["Light"].index] = unit_seconds(POOL) / max(SIZES)
        self.idle_rate = 0.0

    def timed(self, repeat: int, stage, run) -> float:
        """Redis's CPU µs per call of ``run``: ``stage(repeat)`` queues what the calls take (not counted),
        then one window holds the ``repeat`` calls, less what Redis spends per second whatever it is asked
        (its timer, every 100 ms: ``idle_rate``) over the window's wall time."""
        stage(repeat)
        before, began = redis_cpu(self.client), time.perf_counter()
        for _ in range(repeat):
            run()
        took = time.perf_counter() - began
        return max(0.0, redis_cpu(self.client) - before - self.idle_rate * took) / repeat * 1e6

    def measure_idle(self, seconds: float = 2.0) -> None:
        """What Redis spends per second of wall time doing nothing asked (``idle_rate``)."""
        before, began = redis_cpu(self.client), time.perf_counter()
        time.sleep(seconds)
        self.idle_rate = (redis_cpu(self.client) - before) / (time.perf_counter() - began)

    def take_one(self) -> Unit:
        self.broker.count = 1
        units = [u for u in self.broker.take(parked=False) if u.gid == SHARED_QUEUE or u.gid >= 0]
        assert len(units) == 1, units
        return units[0]

    def tasks(self, pe: str, n: int, repeat: int) -> None:
        """Queue ``repeat`` entries of ``n`` tasks of ``pe`` (as a unit's commit would)."""
        payload = pickle.dumps([(self.node[pe].first_gid, "input", k) for k in range(n)], protocol=5)
        for _ in range(repeat):
            self.client.xadd(self.keys.tasks, {"b": payload})

    def produce(self, n: int):
        """A Fan unit writing n Light tasks (they stay queued: the consume step of n takes them)."""
        fan, light = self.node["Fan"], self.node["Light"]
        written = [(light.first_gid, "input", k) for k in range(n)]

        def run():
            unit = self.take_one()
            self.broker.commit(unit, {SHARED_QUEUE: list(written)}, {fan.index: 1}, 0.001, runtime=self.runtime)
        return lambda repeat: self.tasks("Fan", 1, repeat), run

    def consume(self, n: int, groups: list[int] | None = None, stage: bool = False):
        """A Light unit of n tasks; its items for the grouped PE, if any, spread over ``groups``."""
        light = self.node["Light"]
        outbox: dict[int, list] = {}
        for k in range(n if groups else 0):
            outbox.setdefault(groups[k % len(groups)], []).append((groups[k % len(groups)], "input", (k % 100, k)))

        def run():
            unit = self.take_one()
            self.broker.commit(unit, {g: list(items) for g, items in outbox.items()}, {light.index: n}, n * 0.001,
                               runtime=self.runtime)
        return (lambda repeat: self.tasks("Light", n, repeat)) if stage else (lambda repeat: None), run

    def own(self, gid: int, entries: int, items: int):
        """A host of instance ``gid`` taking ``entries`` entries of its stream as one unit."""
        stream = self.keys.prefix + self.keys.stream(gid)
        payload = pickle.dumps([(gid, "input", (k, k)) for k in range(items)], protocol=5)

        def stage(repeat):
            self.client.xtrim(stream, maxlen=0)  # what the grouped steps queued for it
            for _ in range(entries * repeat):
                self.client.xadd(stream, {"b": payload})
            self.runtime.owned = {gid: None}

        def run():
            unit = self.take_one()
            assert len(unit.ref) == entries, (len(unit.ref), entries)
            self.broker.commit(unit, {}, {}, 0.001, runtime=self.runtime)
        return stage, run

    def beat(self):
        """A heartbeat, and the read of the run's end it blocks in between as one command (a real block
        would end at Redis's next timer tick, 100 ms later)."""
        def run():
            self.broker._beat(self.client)
            self.client.xread({self.keys.ended: "0-0"}, count=1)
        return lambda repeat: None, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200, help="repetitions of each step (default 200)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as conn:
        plain = Bench(conn, "graph_fanout", 8, Path(tmp) / "a")
        plain.measure_idle()
        for n in SIZES:
            rows[f"produce {n}"] = plain.timed(args.repeat, *plain.produce(n))
            rows[f"consume {n}"] = plain.timed(args.repeat, *plain.consume(n))  # what produce queued
        rows["beat"] = plain.timed(args.repeat * 10, *plain.beat())
        for k in INSTANCES:
            grouped = Bench(conn, "graph_fanout_grouped", k + 4, Path(tmp) / f"g{k}", instances=k)
            grouped.idle_rate = plain.idle_rate
            gids = list(grouped.node["Tally"].gids)
            assert len(gids) >= k, (len(gids), k)
            rows[f"group {RULE} over {k}"] = grouped.timed(args.repeat, *grouped.consume(RULE, gids[:k], stage=True))
            if k == INSTANCES[0]:
                for entries in (OWNED_ENTRIES, 1):
                    # one entry a unit: as before the merge (a host read one entry of each stream at a time)
                    broker_module.OWNED_ENTRIES = entries
                    rows[f"own {entries}"] = grouped.timed(args.repeat, *grouped.own(gids[0], entries,
                                                                                     RULE // INSTANCES[-1] + 1))
                broker_module.OWNED_ENTRIES = OWNED_ENTRIES
    beats = BEATS / claim_idle()
    print(f"Redis CPU µs per step ({args.repeat} repetitions each; redis-server as the per-job one; Redis "
          f"idle: {plain.idle_rate * 1e6:.0f} µs per second, taken off; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}):\n")
    print("| step | Redis µs |\n|---|---|")
    for name, us in rows.items():
        print(f"| {name} | {us:.1f} |")
    print()
    per_item = {n: (rows[f"produce {n}"] + rows[f"consume {n}"]) / n for n in SIZES}
    for n in SIZES:
        feeds = {ms: 1e6 / (1000 / ms * per_item[n] + beats * rows["beat"]) for ms in (1, 10)}
        print(f"- dyn_redis, entries of {n:,}: Redis {per_item[n]:.3f} µs per item (produce + consume over n) "
              f"and {beats * rows['beat']:.1f} µs per worker-second of heartbeats: one core feeds about "
              f"**{feeds[1]:,.0f} workers at 1 ms** per item, {feeds[10]:,.0f} at 10 ms.")
    print(f"- Side by side: µs per item at entries of {SIZES[-1]:,} / at {SIZES[0]}: "
          f"**{per_item[SIZES[-1]] / per_item[SIZES[0]]:.3f}** ({per_item[SIZES[0]] / per_item[SIZES[-1]]:.0f}x less).")
    for k in INSTANCES:
        entries = min(k, RULE)
        for label, own in (("owners merging 32 entries", rows[f"own {OWNED_ENTRIES}"] / OWNED_ENTRIES),
                           ("an owner commit per entry", rows["own 1"])):
            item = (rows[f"produce {RULE}"] + rows[f"group {RULE} over {k}"] + entries * own) / RULE
            feeds = 1e6 / (1000 * item + beats * rows["beat"])
            print(f"- hybrid_redis, units of {RULE:,}, the grouped PE in {k} instances, {label}: Redis {item:.3f} "
                  f"µs per item: one core feeds about **{feeds:,.0f} workers at 1 ms**.")
    if args.json:
        args.json.write_text(json.dumps({"steps_us": rows, "per_item_us": per_item, "beats_per_second": beats},
                                        indent=1))


if __name__ == "__main__":
    sys.exit(main())
