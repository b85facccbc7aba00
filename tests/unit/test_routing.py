"""How items travel between PE instances: the group-by hash that must agree across processes,
the routes each grouping takes (as units and in a real multi run), and the batched messages
between processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from helpers.runs import DATA, REPO, cli, explain, instances_of, raw_items

from d4p_hpc.mappings.runtime.hosting import Route
from d4p_hpc.mappings.runtime.plan import build_plan, group_key, stable_hash
from d4p_hpc.workflow import GenericPE, ProducerPE, WorkflowGraph


# --- deterministic hash --------------------------------------------------------------------------

HASH_KEYS = ["the", "fox", "", "naïve", "日本語", ("the", 1), ("fox", 2.5), 1, -7, 2 ** 70, None,
             b"raw", (1, ("nested", None)), frozenset({"a", "b"})] + [f"word-{i}" for i in range(100)]

HASH_SCRIPT = f"""
import json, sys
from d4p_hpc.mappings.runtime.plan import stable_hash
keys = {HASH_KEYS!r}
print(json.dumps({{"stable": [stable_hash(k) for k in keys], "salted": hash("the fox")}}))
"""


def test_stable_hash_is_the_same_in_processes_with_different_hash_seeds():
    runs = []
    for seed in ("1", "2"):
        proc = subprocess.run([sys.executable, "-c", HASH_SCRIPT], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONHASHSEED=seed), cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout))
    assert runs[0]["salted"] != runs[1]["salted"], "the seeds did not change Python's hash(): test is void"
    assert runs[0]["stable"] == runs[1]["stable"]
    assert runs[0]["stable"] == [stable_hash(k) for k in HASH_KEYS]  # and this process (random seed)


def test_stable_hash_treats_equal_values_as_the_same_key():
    import numpy as np

    assert stable_hash(1) == stable_hash(1.0) == stable_hash(True) == stable_hash(np.int64(1))
    assert stable_hash(0.0) == stable_hash(-0.0) == stable_hash(0) == stable_hash(False)
    assert stable_hash(2.5) == stable_hash(np.float64(2.5))
    assert stable_hash(("a", 1)) == stable_hash(["a", 1.0])  # JSON turns tuples into lists
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash("1") != stable_hash(1)
    assert stable_hash("a") != stable_hash("b")
    assert stable_hash(("ab", "c")) != stable_hash(("a", "bc"))


def test_stable_hash_spreads_keys():
    buckets = Counter(stable_hash((f"key-{i}",)) % 3 for i in range(3000))
    assert min(buckets.values()) > 800, buckets


def test_group_key():
    assert group_key(("w", 1, 2), [0]) == ("w",)
    assert group_key(["w", 1, 2], [2, 0]) == (2, "w")
    assert group_key({"word": "x", "n": 1}, ["word"]) == ("x",)


# --- routing -------------------------------------------------------------------------------------

def test_route_all_global_group_by_and_default():
    gids = range(10, 13)
    assert Route("in", gids, "all", 0).targets("x") == (10, 11, 12)
    assert {Route("in", gids, "global", s).targets(v) for s in range(3) for v in range(20)} == {(10,)}
    by_key = [Route("in", gids, [0], sender) for sender in range(4)]
    for key in ["a", "b", "c", "the", 7, ("t", 1)]:
        assert len({r.targets((key, "payload")) for r in by_key}) == 1, "a key's instance depends on the sender"
        assert by_key[0].targets((key, 1)) == by_key[0].targets((key, 2))
    assert len({by_key[0].targets((f"k{i}",)) for i in range(50)}) == 3
    shuffle = Route("in", gids, None, 1)
    sent = Counter(shuffle.targets(i)[0] for i in range(300))
    assert sent == {10: 100, 11: 100, 12: 100}
    assert Route("in", range(4, 5), [0], 0).targets(("x",)) == (4,)


@pytest.fixture(scope="module")
def routing_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("routing") / "results"
    proc = cli("run", DATA / "g_routing.py", "-m", "multi", "-n", 8, "-i", 60, "--results", results)
    assert proc.returncode == 0, explain(proc)
    return results


N_ROUTED = 60
TOTAL_ROUTED = sum(range(1, N_ROUTED + 1))


def test_group_by_sends_each_key_to_exactly_one_instance(routing_run):
    items = raw_items(routing_run, "ByKey", "output")
    owners = {}
    for tag, key, _count in items:
        assert key not in owners, f"key {key} reached instances {owners[key]} and {tag}"
        owners[key] = tag
    assert {k: c for _, k, c in items} == Counter(n % 7 for n in range(1, N_ROUTED + 1))
    assert len(instances_of(routing_run, "ByKey")) == 2
    assert len(set(owners.values())) == 2, "all keys went to one instance: the grouping was not exercised"


def test_all_grouping_broadcasts_to_every_instance(routing_run):
    items = raw_items(routing_run, "ToAll", "output")
    assert len(instances_of(routing_run, "ToAll")) == 2
    assert len({tag for tag, _, _ in items}) == 2
    assert [(n, s) for _, n, s in items] == [(N_ROUTED, TOTAL_ROUTED)] * 2


def test_global_grouping_sends_everything_to_one_instance(routing_run):
    assert len(instances_of(routing_run, "ToGlobal")) == 1
    assert [(n, s) for _, n, s in raw_items(routing_run, "ToGlobal", "output")] == [(N_ROUTED, TOTAL_ROUTED)]


def test_default_grouping_delivers_each_item_once_and_balances(routing_run):
    items = raw_items(routing_run, "ToAny", "output")
    assert len(items) == len(instances_of(routing_run, "ToAny")) == 2
    assert sum(n for _, n, _ in items) == N_ROUTED and sum(s for _, _, s in items) == TOTAL_ROUTED
    sizes = [n for _, n, _ in items]
    assert max(sizes) - min(sizes) <= 1, sizes


# --- messages between processes -------------------------------------------------------------------

def test_messages_between_processes_are_batched_pickle5_and_ordered(tmp_path):
    """Drive two Runtimes by hand: process 0 sends far fewer messages than items; process 1 gets them all."""
    import numpy as np

    from d4p_hpc.mappings.runtime.core import Runtime
    from d4p_hpc.mappings.runtime.sink import Sink

    class Arrays(ProducerPE):
        def __init__(self):
            ProducerPE.__init__(self)
            self.k = 0

        def _process(self, inputs):
            self.k += 1
            return np.full(3, self.k, dtype=np.float64)

    class Collect(GenericPE):
        def __init__(self):
            GenericPE.__init__(self)
            self._add_input("input")
            self._add_output("output")

        def process(self, inputs):
            return {"output": float(inputs["input"][0])}

    g = WorkflowGraph()
    g.connect(Arrays(), "output", Collect(), "input")
    plan = build_plan(g, 2)
    assert plan.placement == [0, 1]

    class Recorder:
        def __init__(self):
            self.sent = []

        def send(self, proc, payload):
            self.sent.append((proc, payload))

        def recv(self, block):
            assert not block, "process 0 has nothing to receive, yet waits for input"
            return None

    items = 2000
    rec = Recorder()
    Runtime(plan, 0, Sink(tmp_path, 0), rec, {0: items}, lambda pe: pe).run()
    assert all(proc == 1 for proc, _ in rec.sent)
    assert 1 <= len(rec.sent) <= items // 64, f"{len(rec.sent)} sends for {items} items: not batched"
    assert all(bytes(p[:2]) == b"\x80\x05" for _, p in rec.sent), "not pickle protocol 5"

    class Replay:
        def __init__(self, payloads):
            self.payloads = list(payloads)

        def send(self, proc, payload):
            raise AssertionError("process 1 sends nothing")

        def recv(self, block):
            if self.payloads:
                return self.payloads.pop(0)
            assert not block, "process 1 would wait forever: end-of-stream never arrived"
            return None

    sink = Sink(tmp_path, 1)
    Runtime(plan, 1, sink, Replay(p for _, p in rec.sent), {}, lambda pe: pe).run()
    sink.close()
    assert sorted(raw_items(tmp_path, "Collect", "output")) == [float(k) for k in range(1, items + 1)]
