"""End-of-stream accounting: the Redis scripts (keys.COMMIT, REGISTER, STOP, in a real redis-server)
against accounting.Accounting, the executable specification that dyn_multi runs.

Both get the same seeded random sequences of what runs do, on random topologies: the driver feeds
and closes roots; workers finish tasks and write new ones, take items of stateful instances,
handle end-of-stream entries and close messages (writing what ``postprocess`` writes), join late
and die; the driver's watch walks the PEs; now and then a run is stopped. After every step the
two must hold the same state: tasks and items queued, the PEs closing, with end-of-stream sent and
done, the instances finished, who closed what, the messages each worker and instance got, the
run's state and counters, and the commit's answer. What a broker sends on a step (close messages
to every registered worker, end-of-stream to each instance, "end" to everyone) is part of what is
compared, so is the Lua's fan-out.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from d4p_hpc.mappings.redis.server import RedisServer
from d4p_hpc.mappings.dynamic.accounting import Accounting
from d4p_hpc.mappings.dynamic.tasks import CONTROL_QUEUE
from d4p_hpc.mappings.redis.keys import COMMIT, REGISTER, STOP, Keys
from helpers.dynamic import needs_redis

pytest.importorskip("redis")

SEQUENCES = 200
STEPS = 60
#: highest worker number; workers 1..WORKERS may join
WORKERS = 4
TTL_MS = 600_000  # nobody's heartbeat expires during a sequence: deaths are explicit
STATES = {Accounting.RUNNING: "RUNNING", Accounting.COMPLETED: "COMPLETED", Accounting.STOPPED: "STOPPED"}


def random_topology(rng: random.Random) -> list[dict]:
    """PEs in topological order: one or two roots, then PEs fed by one or two earlier PEs, about a
    third of them stateful with one to three instances (as accounting.topology writes them)."""
    n = rng.randint(2, 7)
    roots = rng.randint(1, min(2, n - 1))
    topo, gid = [], 0
    for i in range(n):
        pe = {"i": i, "root": i < roots, "up": []}
        if i >= roots:
            pe["up"] = sorted(rng.sample(range(i), rng.randint(1, min(2, i))))
            if rng.random() < 0.35:
                count = rng.randint(1, 3)
                pe["gids"] = list(range(gid, gid + count))
                gid += count
        topo.append(pe)
    return topo


class World:
    """What the workers and the driver of a run could do next, given the messages sent so far."""

    def __init__(self, rng: random.Random, topo: list[dict]) -> None:
        self.rng = rng
        self.topo = topo
        self.children = {pe["i"]: [c for c in topo if pe["i"] in c["up"]] for pe in topo}
        self.pe_of = {g: pe["i"] for pe in topo for g in pe.get("gids", ())}
        self.open_roots = [pe["i"] for pe in topo if pe["root"]]
        self.tasks: Counter = Counter()  # stateless PE -> tasks queued
        self.items: Counter = Counter()  # gid -> items queued
        self.inbox: dict[int, list[int]] = {}  # worker -> close messages not handled yet
        self.eos_due: list[int] = []  # gids whose end-of-stream entry came and is not handled
        self.registered: list[int] = []
        self.alive: set[int] = set()
        self.ctl: dict[int, list] = {w: [] for w in range(1, WORKERS + 1)}  # what each worker was sent
        self.inst: Counter = Counter()  # gid -> end-of-stream entries sent
        self.ended = 0

    def writes(self, source: int, fields: dict) -> dict:
        """Add to ``fields`` what a unit of ``source`` wrote: tasks and items for its children."""
        tasks, items = fields["tasks"], fields["items"]
        for child in self.rng.sample(self.children[source], min(len(self.children[source]), self.rng.randint(0, 2))):
            n = self.rng.randint(1, 3)
            if "gids" in child:
                gid = self.rng.choice(child["gids"])
                items[gid] = items.get(gid, 0) + n
                self.items[gid] += n
            else:
                tasks[child["i"]] = tasks.get(child["i"], 0) + n
                self.tasks[child["i"]] += n
        return fields

    def next_action(self) -> tuple:
        """``("commit", fields)``, ``("join", w)``, ``("die", w)``, ``("stop",)``: one of what could happen."""
        rng, live = self.rng, sorted(self.alive)
        choices = [("watch", 1)]
        if self.open_roots:
            choices.append(("feed", 3))
        if live:
            choices += [("tasks", 6 * bool(+self.tasks)), ("items", 4 * bool(+self.items)),
                        ("eos", 4 * bool(self.eos_due)), ("close", 6 * any(self.inbox.get(w) for w in live)),
                        ("die", 0.3)]
        if len(self.registered) < WORKERS:
            choices.append(("join", 0.6))
        choices.append(("stop", 0.08))
        kind = rng.choices([c for c, _ in choices], [w for _, w in choices])[0]
        if kind == "join":
            return "join", len(self.registered) + 1
        if kind == "die":
            return "die", rng.choice(live)
        if kind == "stop":
            return ("stop",)
        if kind == "watch":
            return "commit", _fields(0)
        if kind == "feed":
            root = rng.choice(self.open_roots)
            fields = self.writes(root, _fields(0))
            if rng.random() < 0.3:
                self.open_roots.remove(root)
                fields["close"] = root
            return "commit", fields
        worker = rng.choice(live)
        if kind == "tasks":
            pe = rng.choice(sorted(+self.tasks))
            n = rng.randint(1, self.tasks[pe])
            self.tasks[pe] -= n
            return "commit", self.writes(pe, _fields(worker, tasks={pe: -n}, done=n, busy=rng.randint(1, 1000) / 1000))
        if kind == "items":
            gid = rng.choice(sorted(+self.items))
            n = rng.randint(1, self.items[gid])
            self.items[gid] -= n
            return "commit", self.writes(self.pe_of[gid], _fields(worker, items={gid: -n}))
        if kind == "eos":
            gid = self.eos_due.pop(rng.randrange(len(self.eos_due)))
            return "commit", self.writes(self.pe_of[gid], _fields(worker, finished=gid))
        worker = rng.choice([w for w in live if self.inbox.get(w)])
        pe = self.inbox[worker].pop(0)
        return "commit", self.writes(pe, _fields(worker, closed=pe))

    def heard(self, closing: list[int], eos: list[int], ended: bool) -> None:
        """What the brokers send on a step: close messages to every registered worker, end-of-stream to
        each instance, and at the end "end" to every worker and one entry in ``ended``."""
        for pe in closing:
            for w in self.registered:
                self.ctl[w].append(("close", pe))
                self.inbox.setdefault(w, []).append(pe)
        for pe in eos:
            gids = self.topo[pe]["gids"]
            self.inst.update(gids)
            self.eos_due += gids
        if ended:
            for w in self.registered:
                self.ctl[w].append(("end",))
            self.ended += 1


def _fields(proc: int, **given) -> dict:
    """A commit's fields as accounting.commit_fields makes them: those of a unit that did nothing, and ``given``."""
    return {"tasks": {}, "items": {}, "done": 0, "busy": 0.0, "proc": proc, **given}


def spec_state(books: Accounting, world: World) -> dict:
    pes, row = range(len(world.topo)), WORKERS + 1
    pending = {str(i): n for i, n in enumerate(books.pending) if n}
    pending.update({f"g{g}": n for g, n in enumerate(books.queued) if n})
    return {
        "state": STATES[books.state], "pending": pending,
        "done": {i for i in pes if books.done[i]}, "eos": {i for i in pes if books.eos[i]},
        "closing": {i for i in pes if books.closing[i]},
        "idone": {g for g in range(len(books.finished)) if books.finished[g]},
        "closed": {i: {w for w in range(1, row) if books.closed[i * row + w]} for i in pes},
        "registered": {w for w in range(1, row) if books.registered[w]},
        "alive": {w for w in range(1, row) if books.alive[w]},
        "work": (int(books.values[1]), pytest.approx(books.values[2], abs=1e-9)),
        "ctl": {w: world.ctl[w] for w in range(1, row)}, "inst": dict(world.inst), "ended": world.ended,
    }


def redis_state(client, keys: Keys, topo: list[dict]) -> dict:
    workers = range(1, WORKERS + 1)
    gids = [g for pe in topo for g in pe.get("gids", ())]
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.state).hgetall(keys.pending).hkeys(keys.done).hkeys(keys.eos).hkeys(keys.closing)
    pipe.hkeys(keys.idone).hkeys(keys.workers).hgetall(keys.work).xlen(keys.ended)
    for pe in topo:
        pipe.hkeys(f"{keys.prefix}closed:{pe['i']}")
    for w in workers:
        pipe.exists(keys.alive(w))
    for w in workers:
        pipe.xrange(keys.prefix + keys.stream(CONTROL_QUEUE, w))
    for g in gids:
        pipe.xrange(keys.prefix + keys.stream(g))
    found = iter(pipe.execute())
    state, pending, done, eos, closing, idone, registered, work, ended = (next(found) for _ in range(9))
    closed = [next(found) for _ in topo]
    alive = [next(found) for _ in workers]
    ctl = [next(found) for _ in workers]
    inst = list(found)
    state = state.decode()
    return {
        "state": state if state in ("RUNNING", "COMPLETED") else "STOPPED",
        "pending": {k.decode(): int(v) for k, v in pending.items() if int(v)},
        "done": _ints(done), "eos": _ints(eos), "closing": _ints(closing), "idone": _ints(idone),
        "closed": {pe["i"]: _ints(c) for pe, c in zip(topo, closed, strict=True)},
        "registered": _ints(registered), "alive": {w for w, a in zip(workers, alive, strict=True) if a},
        "work": (int(work.get(b"tasks", 0)), float(work.get(b"busy", 0))),
        "ctl": {w: [("close", int(f[b"close"])) if b"close" in f else ("end",) for _ref, f in entries]
                for w, entries in zip(workers, ctl, strict=True)},
        "inst": {g: len(entries) for g, entries in zip(gids, inst, strict=True) if entries}, "ended": ended,
    }


def _ints(names) -> set[int]:
    return {int(n) for n in names}


def run_sequence(client, commit, seed: int) -> str:
    """Feed one random sequence to both; return how the run ended (RUNNING if it did not)."""
    rng = random.Random(seed)
    topo = random_topology(rng)
    keys = Keys(f"acc{seed}")
    client.set(keys.topo, json.dumps(topo))
    client.set(keys.state, "RUNNING")
    books, world = Accounting(topo, WORKERS), World(rng, topo)
    history: list = []
    after_end = 0
    for _ in range(rng.randint(1, 3)):
        history.append(("join", len(world.registered) + 1))
        _join(client, keys, books, world, history[-1][1])
    while len(history) < STEPS and after_end < 3:
        action = world.next_action()
        history.append(action)
        if action[0] == "join":
            _join(client, keys, books, world, action[1])
        elif action[0] == "die":
            client.delete(keys.alive(action[1]))
            books.alive[action[1]] = 0
            world.alive.discard(action[1])
            world.inbox.pop(action[1], None)
        elif action[0] == "stop":
            stopped = bool(client.eval(STOP, 0, json.dumps({"prefix": keys.prefix, "state": "FAILED",
                                                             "error": json.dumps({"pe": None})})))
            assert stopped == books.stop(), _explain(seed, topo, history)
            world.heard([], [], stopped)
        else:
            fields = action[1]
            answer = commit(args=[json.dumps({**fields, "prefix": keys.prefix, "entries": [], "sizes": {}})])
            step = books.commit(**fields)
            expected = [2, 0] if step is None else [1, step.backlog, int(step.completed)]
            assert answer == expected, _explain(seed, topo, history)
            if step is not None:
                world.heard(step.closing, step.eos, step.completed)
        assert redis_state(client, keys, topo) == spec_state(books, world), _explain(seed, topo, history)
        after_end += books.state != Accounting.RUNNING
    return STATES[books.state]


def _join(client, keys: Keys, books: Accounting, world: World, proc: int) -> None:
    client.eval(REGISTER, 0, json.dumps({"prefix": keys.prefix, "proc": proc, "info": "{}", "ttl": TTL_MS}))
    books.register(proc)
    world.registered.append(proc)
    world.alive.add(proc)


def _explain(seed: int, topo: list[dict], history: list) -> str:
    steps = "\n".join(f"  {k}: {a}" for k, a in enumerate(history))
    return f"seed {seed}, topology {topo}; the steps, the last one differing:\n{steps}"


@pytest.fixture(scope="module")
def redis_client():
    with RedisServer() as conn:
        client = conn.client()
        yield client
        client.close()


@pytest.mark.parametrize("first", [pytest.param(first, marks=needs_redis) for first in range(0, SEQUENCES, 25)])
def test_lua_accounting_equals_the_specification(redis_client, first):
    commit = redis_client.register_script(COMMIT)
    endings = Counter(run_sequence(redis_client, commit, seed) for seed in range(first, first + 25))
    # the sequences must reach the interesting endings, not just wander about
    assert endings["COMPLETED"] >= 8 and endings["COMPLETED"] + endings["STOPPED"] >= 15, endings


def test_keys_are_declared():
    keys = Keys("r1")
    assert (keys.pending, keys.alive(3), keys.stream(CONTROL_QUEUE, 2), keys.stream(7)) == \
        ("d4p:r1:pending", "d4p:r1:alive:w3", "ctl:2", "inst:7")
    with pytest.raises(AttributeError):
        keys.pendng  # noqa: B018
    with pytest.raises(AttributeError):
        keys.pendng = "d4p:r1:pendng"


def test_scripts_name_only_declared_keys():
    per_process = {"alive:w", "ctl:", "closed:", "inst:"}  # Keys.alive and Keys.stream, closed:<PE>
    for script in (COMMIT, REGISTER, STOP):
        names = set(re.findall(r"p\.\.'([^']*)'", script))
        assert names and names <= set(Keys.NAMES) | per_process, names - set(Keys.NAMES) - per_process
