"""Unit and integration tests of the workflow runtime (issue 2).

Plan (instance counts, placement), the deterministic group-by hash, routing
by grouping, the dispel4py-compatible workflow API, graph loading, the
results directory, end-of-stream termination, PE failures, bad input, and
runs stopped by signals. Graph files used here live in tests/data/.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections import Counter

import pytest

from runtime_support import (DATA, EXAMPLES, REPO, alive, cli, d4p_hpc_cmd, explain, outputs, processes_mentioning,
                             raw_items, read_json, run_simple, wait_for)

import d4p_hpc
from d4p_hpc.errors import GraphError, InputsError
from d4p_hpc.mappings.core import Route
from d4p_hpc.mappings.plan import build_plan, group_key, stable_hash
from d4p_hpc.workflow import (CompositePE, GenericPE, IterativePE, ProducerPE, SimpleFunctionPE, WorkflowGraph,
                              create_iterative_chain)


# --- plan ----------------------------------------------------------------------------------------

class PE(GenericPE):
    """A PE with given inputs (and groupings), outputs and numprocesses, for building plans."""

    def __init__(self, name, inputs=(), outputs=("output",), numprocesses=1, grouping=None):
        GenericPE.__init__(self)
        self.name = name
        for inp in inputs:
            self._add_input(inp, grouping=grouping)
        for out in outputs:
            self._add_output(out)
        self.numprocesses = numprocesses


def chain(*specs):
    """root -> specs[0] -> specs[1] ...; each spec is (numprocesses, grouping)."""
    g = WorkflowGraph()
    prev = PE("Root")
    pes = [prev]
    for k, (num, grouping) in enumerate(specs):
        pe = PE(f"P{k}", inputs=["input"], numprocesses=num, grouping=grouping)
        g.connect(prev, "output", pe, "input")
        pes.append(pe)
        prev = pe
    return g, pes


def diamond():
    g = WorkflowGraph()
    root = PE("Root", outputs=["left", "right"])
    a = PE("A", ["input"], numprocesses=2)
    b = PE("B", ["input"], numprocesses=3)
    c = PE("C", ["l", "r"], grouping=[0], numprocesses=2)
    d = PE("D", ["input"], grouping="global", numprocesses=4)
    g.connect(root, "left", a, "input")
    g.connect(root, "right", b, "input")
    g.connect(a, "output", c, "l")
    g.connect(b, "output", c, "r")
    g.connect(c, "output", d, "input")
    return g


def two_roots():
    g = WorkflowGraph()
    r1, r2 = PE("R1", numprocesses=3), PE("R2")
    m = PE("M", ["x", "y"])
    s = PE("S", ["input"], numprocesses=2)
    g.connect(r1, "output", m, "x")
    g.connect(r2, "output", m, "y")
    g.connect(m, "output", s, "input")
    return g


SHAPES = {
    "chain6": lambda: chain((1, None), (1, None), (1, None), (1, None), (1, None))[0],
    "wordcount": lambda: chain((2, None), (3, [0]))[0],
    "diamond": diamond,
    "two_roots": two_roots,
    "greedy": lambda: chain((10, None), (1, None), (1, None))[0],
}


def counts(plan):
    return {p.key: p.count for p in plan.pes}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("n", range(1, 10))
def test_plan_placement_is_monotone_and_complete(shape, n):
    graph = SHAPES[shape]()
    graph.flatten()
    plan = build_plan(graph, n)
    assert all(p.count >= 1 for p in plan.pes)
    assert len(plan.placement) == plan.instances
    used = min(n, plan.instances)
    assert set(plan.placement) == set(range(used)), "every used process hosts an instance; none outside"
    for c in plan.connections:
        src = [plan.placement[g] for g in plan.pes[c.src].gids]
        dst = [plan.placement[g] for g in plan.pes[c.dst].gids]
        assert max(src) <= min(dst), f"edge {plan.pes[c.src].key}->{plan.pes[c.dst].key} goes backwards"
    for root in plan.roots():
        assert root.count == 1
    again = build_plan(SHAPES[shape](), n)
    assert counts(again) == counts(plan) and again.placement == plan.placement


def test_explicit_requests_kept_and_default_pes_share_the_spare_processes():
    graph, _ = chain((2, None), (1, None))
    plan = build_plan(graph, 6)
    assert counts(plan) == {"Root": 1, "P0": 2, "P1": 3}
    assert plan.notices == []
    assert plan.placement == [0, 1, 2, 3, 4, 5]


def test_requests_beyond_the_processes_are_scaled_down_with_a_notice():
    graph, _ = chain((2, None), (3, [0]))
    plan = build_plan(graph, 4)
    assert counts(plan) == {"Root": 1, "P0": 1, "P1": 2}
    assert plan.instances == 4
    text = "\n".join(plan.notices)
    assert "P0" in text and "P1" in text and "2" in text and "3" in text


def test_scaled_down_counts_follow_the_requests():
    """Requests that do not fit are scaled in proportion: the PE that asked for most keeps most,
    every PE keeps one, and only those bumps to one may put more instances than processes."""
    for n in range(4, 12):
        plan = build_plan(SHAPES["greedy"](), n)
        got = sorted((p.count for p in plan.pes if p.count), reverse=True)
        greedy = max(p.count for p in plan.pes)
        assert greedy >= (n - 1) * 10 // 12, f"-n {n}: {counts(plan)}"
        assert plan.instances <= n + len(plan.pes) - 1, f"-n {n}: {counts(plan)} {plan.notices}"
        assert any("asks for 10 instances" in notice for notice in plan.notices), plan.notices
        assert plan.placement == sorted(plan.placement) and max(plan.placement) < n, got


def test_fewer_processes_than_pes():
    graph = SHAPES["chain6"]()
    plan = build_plan(graph, 2)
    assert all(p.count == 1 for p in plan.pes) and plan.instances == 6
    assert sorted(set(plan.placement)) == [0, 1] and plan.placement == sorted(plan.placement)
    assert any("share 2 processes" in notice for notice in plan.notices)
    one = build_plan(SHAPES["diamond"](), 1)
    assert all(p.count == 1 for p in one.pes) and set(one.placement) == {0}


def test_global_grouping_and_roots_get_one_instance():
    plan = build_plan(diamond(), 20)
    got = counts(plan)
    assert got["D"] == 1 and got["Root"] == 1
    assert got["A"] >= 2 and got["B"] >= 3 and got["C"] >= 2
    plan = build_plan(two_roots(), 8)
    assert counts(plan)["R1"] == 1


def test_plan_rejects_zero_processes_and_cycles():
    graph, _ = chain((1, None))
    with pytest.raises(GraphError):
        build_plan(graph, 0)
    g = WorkflowGraph()
    a, b, c = PE("A", ["input"]), PE("B", ["input"]), PE("C", ["input"])
    g.connect(a, "output", b, "input")
    g.connect(b, "output", c, "input")
    g.connect(c, "output", a, "input")
    with pytest.raises(GraphError, match="cycle"):
        build_plan(g, 2)


def test_a_two_pe_cycle_is_not_turned_into_a_duplicate_edge():
    """connect(B -> A) after connect(A -> B): the graph's one undirected edge must not record it as A -> B."""
    g = WorkflowGraph()
    a, b = PE("A", ["input"]), PE("B", ["input"])
    g.connect(a, "output", b, "input")
    try:
        g.connect(b, "output", a, "input")
    except GraphError:
        return  # refusing the cycle at connect time is fine
    with pytest.raises(GraphError, match="cycle"):
        build_plan(g, 2)


# --- deterministic hash --------------------------------------------------------------------------

HASH_KEYS = ["the", "fox", "", "naïve", "日本語", ("the", 1), ("fox", 2.5), 1, -7, 2 ** 70, None,
             b"raw", (1, ("nested", None)), frozenset({"a", "b"})] + [f"word-{i}" for i in range(100)]

HASH_SCRIPT = f"""
import json, sys
from d4p_hpc.mappings.plan import stable_hash
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


def instances_of(results, pe):
    return read_json(results / "metrics.json")["pes"][pe]["instances"]


def test_group_by_sends_each_key_to_exactly_one_instance(routing_run):
    items = raw_items(routing_run, "ByKey", "output")
    owners = {}
    for tag, key, count in items:
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


# --- workflow API --------------------------------------------------------------------------------

def api_run(tmp_path, attr, inputs):
    results = tmp_path / attr
    record = run_simple(DATA / "g_api.py", inputs, results, attr=attr)
    assert record["state"] == "COMPLETED", record
    return results


def test_generic_pe_return_and_write_iterative_none(tmp_path):
    results = api_run(tmp_path, "write_return_graph", 5)
    assert sorted(raw_items(results, "WriteAndReturn", "returned")) == [1, 2, 3, 4, 5]
    assert sorted(raw_items(results, "WriteAndReturn", "written")) == sorted([10, 20, 30, 40, 50, -1, -2, -3, -4, -5])
    assert sorted(raw_items(results, "OddOnly", "output")) == [1, 3, 5]
    assert sorted(raw_items(results, "Identity", "output")) == [[x, "Identity", True] for x in range(1, 6)]
    pes = read_json(results / "metrics.json")["pes"]
    assert pes["WriteAndReturn"]["items_in"] == 5 and pes["WriteAndReturn"]["items_out"] == 15
    assert pes["OddOnly"]["items_out"] == 3 and pes["Numbers"]["items_out"] == 5


def test_consumer_pe_prints_and_logs_to_the_process_log(tmp_path):
    results = tmp_path / "results"
    proc = cli("run", DATA / "g_api.py", "--attr", "consumer_graph", "-m", "simple", "-i", 3, "--results", results)
    assert proc.returncode == 0, explain(proc)
    assert outputs(results) == {}
    log = (results / "logs" / "00000.log").read_text()
    for x in (1, 2, 3):
        assert f"consumed {x}\n" in log and f"logged {x}" in log
    assert "consumed" not in proc.stdout + proc.stderr


def test_pe_prints_reach_the_log_when_sys_stdout_is_not_fd_1(tmp_path, monkeypatch):
    """A library run from Jupyter or an IDE, where sys.stdout is not file descriptor 1, still logs PE prints."""
    import io

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    results = api_run(tmp_path, "consumer_graph", 3)
    escaped = sys.stdout.getvalue()
    monkeypatch.undo()
    log = (results / "logs" / "00000.log").read_text()
    assert "consumed 1" in log and "logged 1" in log, f"log: {log!r}; printed elsewhere: {escaped!r}"


@pytest.mark.parametrize("mapping", ["multi", "mpi"], ids=["multi-n2", "mpi-n2"])
def test_consumer_output_goes_to_the_log_of_its_process(mapping, tmp_path):
    results = tmp_path / "results"
    proc = cli("run", DATA / "g_api.py", "--attr", "consumer_graph", "-m", mapping, "-n", 2, "-i", 4,
               "--results", results)
    assert proc.returncode == 0, explain(proc)
    printer = instances_of(results, "Printer")
    assert len(printer) == 1
    logs = {p.name: p.read_text() for p in (results / "logs").iterdir()}
    assert sorted(logs) == ["00000.log", "00001.log"]
    where = f"{printer[0]['process']:05d}.log"
    assert all(f"consumed {x}" in logs[where] and f"logged {x}" in logs[where] for x in range(1, 5))
    assert all("consumed" not in text for name, text in logs.items() if name != where)


def test_simple_function_pe_and_iterative_chain(tmp_path):
    results = api_run(tmp_path, "functions_graph", 6)
    assert sorted(map(tuple, raw_items(results, "Tag", "output"))) == [("tagged", 2 * x * x + 1) for x in range(1, 7)]
    assert {"PE_square", "PE_double", "PE_add"} <= set(read_json(results / "metrics.json")["pes"])

    def inc(x, by=1):
        return x + by

    pe = SimpleFunctionPE(inc, {"by": 5})
    assert pe.name == "PE_inc" and pe.process({"input": 1}) == {"output": 6}
    comp = create_iterative_chain([inc, (inc, {"by": 10})])
    first, first_in = comp.inputmappings["input"]
    last, last_out = comp.outputmappings["output"]
    assert (first.params, last.params, first_in, last_out) == ({}, {"by": 10}, "input", "output")


def test_composites_flatten_including_composite_to_composite_and_nested(tmp_path):
    def expected(x):
        return -(((x + 1) * 2 + 10) * 2) + 5

    results = api_run(tmp_path, "composites_graph", 6)
    want = sorted(("tagged", expected(x)) for x in range(1, 7))
    assert sorted(map(tuple, raw_items(results, "Tag", "output"))) == want
    multi = tmp_path / "multi"
    proc = cli("run", DATA / "g_api.py", "--attr", "composites_graph", "-m", "multi", "-n", 4, "-i", 6,
               "--results", multi)
    assert proc.returncode == 0, explain(proc)
    assert outputs(multi) == outputs(results)

    from d4p_hpc.loader import load_graph

    graph = load_graph(str(DATA / "g_api.py"), "composites_graph")
    objects = [n.get_contained_object() for n in graph.graph.nodes()]
    assert len(objects) == 8 and all(hasattr(o, "inputconnections") and not hasattr(o, "inputmappings")
                                     for o in objects)


def test_producer_iterative_and_generic_pe_basics():
    class Gen(ProducerPE):
        def _process(self, inputs):
            return 42

    class It(IterativePE):
        def _process(self, data):
            return None if data < 0 else data * 2

    gen, it = Gen(), It()
    assert gen.process({}) == {"output": 42} and list(gen.outputconnections) == ["output"]
    assert it.process({"input": 3}) == {"output": 6} and it.process({"input": -1}) is None
    assert gen.name == "Gen" and isinstance(gen.id, str) and gen.numprocesses == 1
    p = PE("G", ["a", "b"], ["x"], grouping=[1])
    assert p.inputconnections["a"]["grouping"] == [1] and list(p.outputconnections) == ["x"]
    g = WorkflowGraph()
    g.connect(gen, "output", it, "input")
    assert sorted(pe.name for pe in g.get_contained_objects()) == ["Gen", "It"]
    comp = CompositePE()
    assert comp.inputmappings == {} and comp.outputmappings == {}


# --- loader --------------------------------------------------------------------------------------

def test_loader_picks_the_attr_and_explains_none_or_several():
    from d4p_hpc.loader import load_graph

    graph = load_graph(str(DATA / "g_api.py"), "functions_graph")
    assert isinstance(graph, WorkflowGraph) or hasattr(graph, "objToNode")
    with pytest.raises(GraphError, match="several graphs") as several:
        load_graph(str(DATA / "g_api.py"))
    assert "functions_graph" in str(several.value) and "--attr" in str(several.value)
    with pytest.raises(GraphError, match="no WorkflowGraph"):
        load_graph(str(DATA / "g_nograph.py"))  # a composite PE at module level is not a graph
    with pytest.raises(GraphError, match="nope"):
        load_graph(str(DATA / "g_api.py"), "nope")
    with pytest.raises(GraphError, match="not a WorkflowGraph"):
        load_graph(str(DATA / "g_api.py"), "square")
    with pytest.raises(GraphError, match="does not exist"):
        load_graph(str(DATA / "missing.py"))
    with pytest.raises(GraphError, match="no graph file or module"):
        load_graph("no_such_module_d4p")


def test_loader_inputs():
    from d4p_hpc.loader import parse_inputs, resolve_feeds

    assert parse_inputs(None, None, None) == 1 and parse_inputs(7, None, None) == 7
    assert parse_inputs(None, '{"A": [{"input": 1}], "B": 3}', None) == {"A": [{"input": 1}], "B": 3}
    for bad in ("[1, 2]", '{"A": "x"}', '{"A": -1}', '{"A": true}', "{nope"):
        with pytest.raises(InputsError):
            parse_inputs(None, bad, None)
    with pytest.raises(InputsError):
        parse_inputs(3, "{}", None)
    plan = build_plan(two_roots(), 4)
    feeds = resolve_feeds(plan, {"R1": [{"a": 1}], "R2": 2})
    assert feeds == {plan.by_key("R1").index: [{"a": 1}], plan.by_key("R2").index: 2}
    assert resolve_feeds(plan, 5) == {plan.by_key("R1").index: 5, plan.by_key("R2").index: 5}
    with pytest.raises(InputsError, match="not in the graph"):
        resolve_feeds(plan, {"Nope": 1})
    with pytest.raises(InputsError, match="root"):
        resolve_feeds(plan, {"M": 1})


def test_graph_given_as_a_module_name_and_default_results_dir(tmp_path):
    proc = cli("run", "g_api", "--attr", "functions_graph", "-i", 3, cwd=tmp_path,
               env={"PYTHONPATH": str(DATA)})
    assert proc.returncode == 0, explain(proc)
    runs = list((tmp_path / "d4p-results").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("g_api-simple-"), runs
    record = read_json(runs[0] / "run.json")
    assert record["graph"] == "g_api" and record["attr"] == "functions_graph" and record["state"] == "COMPLETED"
    assert sorted(map(tuple, raw_items(runs[0], "Tag", "output"))) == [("tagged", 2 * x * x + 1) for x in (1, 2, 3)]


# --- results directory ---------------------------------------------------------------------------

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


# ids are not bare mapping names: pytest-mpi skips (without --with-mpi) any test with an "mpi" keyword
@pytest.fixture(scope="module", params=["simple", "multi", "mpi"], ids=["simple-n1", "multi-n4", "mpi-n4"])
def layout_run(request, tmp_path_factory):
    mapping = request.param
    results = tmp_path_factory.mktemp(f"layout-{mapping}") / "results"
    n = 1 if mapping == "simple" else 4
    proc = cli("run", EXAMPLES / "numpy_pipeline.py", "-m", mapping, "-n", n, "-i", 12, "--results", results)
    assert proc.returncode == 0, explain(proc)
    return mapping, n, results, proc


def test_run_json_fields(layout_run):
    mapping, n, results, proc = layout_run
    record = read_json(results / "run.json")
    graph = EXAMPLES / "numpy_pipeline.py"
    assert record["graph"] == str(graph.resolve())
    assert record["graph_sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
    assert record["attr"] is None and record["mapping"] == mapping and record["processes"] == n
    assert record["inputs"] == 12
    assert ISO.match(record["started"]) and ISO.match(record["ended"])
    assert dt.datetime.fromisoformat(record["ended"]) >= dt.datetime.fromisoformat(record["started"])
    assert record["state"] == "COMPLETED" and record["exit_code"] == 0 and record["error"] is None
    assert record["d4p_hpc_version"] == d4p_hpc.__version__
    assert "COMPLETED" in proc.stdout and str(results.name) in proc.stdout  # the summary


def test_metrics_json_fields(layout_run):
    mapping, n, results, _ = layout_run
    metrics = read_json(results / "metrics.json")
    assert metrics["wall_seconds"] > 0
    pes = metrics["pes"]
    assert set(pes) == {"MakeSignal", "Spectrum", "Summarise"}
    assert metrics["items"] == sum(pe["items_in"] for pe in pes.values())
    assert metrics["items_per_second"] == pytest.approx(metrics["items"] / metrics["wall_seconds"], rel=0.05)
    for name, pe in pes.items():
        insts = pe["instances"]
        assert sorted(i["instance"] for i in insts) == list(range(len(insts)))
        for i in insts:
            assert {"instance", "process", "items_in", "items_out", "busy_seconds"} <= set(i)
            assert 0 <= i["process"] < n and i["busy_seconds"] >= 0
        for k in ("items_in", "items_out"):
            assert pe[k] == sum(i[k] for i in insts)
        assert pe["busy_seconds"] == pytest.approx(sum(i["busy_seconds"] for i in insts), abs=1e-5)
    assert pes["MakeSignal"]["items_in"] == 12 and pes["MakeSignal"]["items_out"] == 12
    assert pes["Spectrum"]["items_in"] == 12 and pes["Summarise"]["items_out"] == 24
    if mapping != "simple":
        assert len(pes["Spectrum"]["instances"]) == 2


def test_outputs_logs_and_private_modes(layout_run):
    mapping, n, results, _ = layout_run
    parts = sorted(p.relative_to(results).as_posix() for p in (results / "outputs").rglob("*") if p.is_file())
    assert parts, "no output parts"
    for part in parts:
        assert re.fullmatch(r"outputs/Summarise\.(summary/part-\d{5}\.jsonl|head/part-\d{5}\.pickle)", part), part
    assert sorted(p.name for p in (results / "logs").iterdir()) == [f"{k:05d}.log" for k in range(n)]
    bad = []
    for path in [results, *results.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if mode != want:
            bad.append(f"{path.relative_to(results.parent)} {oct(mode)}")
    assert not bad, f"not private ({mapping}): {bad}"


def test_a_results_dir_is_never_mixed_with_an_earlier_run(tmp_path):
    """Reusing --results DIR: either refused (exit 2, earlier run intact) or a clean run; never both runs' data."""
    results = tmp_path / "results"
    first = cli("run", EXAMPLES / "split_merge.py", "-m", "multi", "-n", 4, "-i", 10, "--results", results)
    assert first.returncode == 0, explain(first)
    before = outputs(results)
    assert sum(before["Merge.output"].values()) == 10
    again = cli("run", EXAMPLES / "split_merge.py", "-m", "simple", "-i", 10, "--results", results)
    if again.returncode == 2:
        assert again.stderr.strip().splitlines()[-1].startswith("Error:")
        assert outputs(results) == before and read_json(results / "run.json")["mapping"] == "multi"
    else:
        assert again.returncode == 0, explain(again)
        assert outputs(results) == before, "the outputs of both runs were mixed"
        metrics = read_json(results / "metrics.json")
        procs = {i["process"] for pe in metrics["pes"].values() for i in pe["instances"]}
        assert procs == {0} and metrics["pes"]["Merge"]["items_in"] == 10, "stale metrics of the first run"


# --- termination ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mapping,n", [("simple", 1), ("multi", 3), ("multi", 5)])
def test_postprocess_once_per_instance_after_all_upstream(mapping, n, tmp_path):
    items = 12
    results = tmp_path / "results"
    proc = cli("run", DATA / "g_termination.py", "-m", mapping, "-n", n, "-i", items, "--results", results)
    assert proc.returncode == 0, explain(proc)
    totals = [tuple(x) for x in raw_items(results, "Stateful", "output")]
    assert dict(totals) == {k: sum(x for x in range(1, items + 1) if x % 3 == k) for k in range(3)}
    assert len(totals) == 3, "a key was emitted by several instances"
    calls = raw_items(results, "Slow", "calls") + raw_items(results, "Stateful", "calls")
    metrics = read_json(results / "metrics.json")["pes"]
    for pe in ("Slow", "Stateful"):
        mine = [c for c in calls if c["pe"] == pe]
        assert len(mine) == len(metrics[pe]["instances"]), f"{pe}: {len(mine)} postprocess reports"
        assert len({c["tag"] for c in mine}) == len(mine)
        assert all(c["pre"] == 1 and c["post"] == 1 for c in mine), mine
        assert sum(c["process"] for c in mine) == items
    slow_done = max(c["post_ended"] for c in calls if c["pe"] == "Slow")
    for c in calls:
        if c["pe"] == "Stateful":
            assert c["post_started"] >= slow_done, "Stateful.postprocess ran before every Slow instance ended"
    if n == 5:
        assert len(metrics["Slow"]["instances"]) == 2 and len(metrics["Stateful"]["instances"]) == 2


# --- failures ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mapping,n", [("simple", 1), ("multi", 2), ("multi", 4), ("mpi", 2)])
def test_failing_pe_fails_the_run_and_keeps_earlier_outputs(mapping, n, tmp_path):
    results = tmp_path / "results"
    # many items: the producer is still sending (and may be blocked on a full queue) when Boom fails
    proc = cli("run", DATA / "g_failing.py", "-m", mapping, "-n", n, "-i", 200000, "--results", results,
               timeout=120)
    assert proc.returncode == 1, explain(proc)
    record = read_json(results / "run.json")
    assert record["state"] == "FAILED" and record["exit_code"] == 1 and record["ended"], record
    assert record["error"]["pe"] == "Boom"
    assert "ValueError: boom at 5" in record["error"]["traceback"]
    assert "g_failing.py" in record["error"]["traceback"]
    assert "Boom" in proc.stdout + proc.stderr and "FAILED" in proc.stdout + proc.stderr
    kept = raw_items(results, "Boom", "kept")
    assert len(kept) == len(set(kept)) and 5 not in kept
    if len(instances_of(results, "Boom")) == 1:
        assert sorted(kept) == [1, 2, 3, 4]
    else:
        assert kept, "outputs written before the failure were lost"
    assert read_json(results / "metrics.json") is not None
    assert not processes_mentioning(str(results))


PHASE_RUNS = [(phase, m, n) for phase in ("preprocess", "postprocess") for m, n in [("multi", 3), ("mpi", 2)]]


@pytest.mark.parametrize("phase,mapping,n", PHASE_RUNS, ids=[f"{p}-{m}-n{n}" for p, m, n in PHASE_RUNS])
def test_failure_in_preprocess_or_postprocess(phase, mapping, n, tmp_path):
    """Boom fails one second late: the producer has sent everything and finished by then."""
    results = tmp_path / "results"
    proc = cli("run", DATA / "g_failing.py", "-m", mapping, "-n", n, "-i", 300, "--results", results,
               env={"G_FAIL_PHASE": phase, "G_FAIL_DELAY": "1"}, timeout=120)
    record = read_json(results / "run.json")
    assert proc.returncode == 1, explain(proc)
    assert record["state"] == "FAILED" and record["exit_code"] == 1, f"{record}\n{explain(proc)}"
    assert record["error"]["pe"] == "Boom" and f"boom in {phase}" in record["error"]["traceback"]
    if phase == "postprocess":
        assert sorted(raw_items(results, "Boom", "kept")) == list(range(1, 301))  # written before postprocess
    assert not processes_mentioning(str(results))


@pytest.mark.parametrize("mapping,n", [("multi", 2), ("mpi", 2)], ids=["multi-n2", "mpi-n2"])
def test_a_killed_process_fails_the_run(mapping, n, tmp_path):
    """A process killed outright (OOM killer, SIGKILL) leaves no hang and no RUNNING record behind."""
    results = tmp_path / "results"
    proc = cli("run", DATA / "g_killed.py", "-m", mapping, "-n", n, "-i", 100000, "--results", results, timeout=120)
    left = processes_mentioning(str(results))
    record = read_json(results / "run.json")
    assert proc.returncode not in (0, 2), explain(proc)
    assert record["state"] == "FAILED" and record["exit_code"] == proc.returncode and record["ended"], record
    assert record["error"] and record["error"].get("traceback"), "the record does not say what went wrong"
    assert not left, left


@pytest.mark.parametrize("mapping,n", [("multi", 2), ("mpi", 2)], ids=["multi-n2", "mpi-n2"])
def test_items_that_cannot_travel_between_processes_fail_the_run(mapping, n, tmp_path):
    """An unpicklable item fails outside any PE call (when a batch is sent): FAILED with the cause, no hang."""
    results = tmp_path / "results"
    proc = cli("run", DATA / "g_unpicklable.py", "-m", mapping, "-n", n, "-i", 3, "--results", results, timeout=25)
    record = read_json(results / "run.json")
    assert proc.returncode == 1, explain(proc)
    assert record["state"] == "FAILED" and record["error"], record
    assert "pickle" in record["error"]["traceback"], record["error"]
    assert not processes_mentioning(str(results))


@pytest.mark.parametrize("mapping,n", [("multi", 5), ("mpi", 5)], ids=["multi-n5", "mpi-n5"])
def test_pe_instances_sharing_a_process_work_or_fail_clearly(mapping, n, tmp_path):
    results = tmp_path / "results"
    proc = cli("run", DATA / "g_uncopyable.py", "-m", mapping, "-n", n, "-i", 20, "--results", results, timeout=25)
    record = read_json(results / "run.json")
    if proc.returncode == 0:
        assert sorted(raw_items(results, "Pass1", "output")) == list(range(1, 21))
    else:
        assert proc.returncode == 1 and record["state"] == "FAILED", f"{record}\n{explain(proc)}"
        assert "Locked" in json.dumps(record["error"]), f"the error does not name the PE: {record['error']}"
    assert not processes_mentioning(str(results))


# --- bad input -----------------------------------------------------------------------------------

BAD_INPUTS = {
    "missing-file": (["{tmp}/nope.py", "-i", "1"], "nope.py"),
    "no-graph": ([DATA / "g_nograph.py", "-i", "1"], "no WorkflowGraph"),
    "several-graphs": ([DATA / "g_api.py", "-i", "1"], "--attr"),
    "unknown-attr": ([DATA / "g_api.py", "--attr", "nope", "-i", "1"], "nope"),
    "broken-file": ([DATA / "g_broken.py", "-i", "1"], "broken on purpose"),
    "unknown-mapping": ([EXAMPLES / "word_count.py", "-i", "1", "-m", "bogus"], "bogus"),
    "n-zero": ([EXAMPLES / "word_count.py", "-i", "1", "-n", "0"], "0"),
    "bad-json": ([EXAMPLES / "producer_input.py", "-d", '{"ReadNumbers": ['], "JSON"),
    "json-not-object": ([EXAMPLES / "producer_input.py", "-d", "[1, 2]"], "JSON object"),
    "unknown-pe": ([EXAMPLES / "producer_input.py", "-d", '{"Nope": [{"input": 1}]}'], "Nope"),
    "non-root-pe": ([EXAMPLES / "producer_input.py", "-d", '{"Square": 3}'], "Square"),
    "i-and-d": ([EXAMPLES / "producer_input.py", "-i", "2", "-d", '{"ReadNumbers": 1}'], "only one"),
    "missing-inputs-file": ([EXAMPLES / "producer_input.py", "-f", "{tmp}/nope.json"], "nope.json"),
}
BAD_CASES = [(case, m) for case in BAD_INPUTS for m in ("multi", "mpi")] + \
    [(case, "simple") for case in ("missing-file", "several-graphs", "bad-json", "unknown-pe", "i-and-d")]


@pytest.mark.parametrize("case,mapping", BAD_CASES, ids=[f"{c}-{m}" for c, m in BAD_CASES])
def test_bad_input_exits_2_with_one_error_line_and_runs_nothing(case, mapping, tmp_path):
    args, hint = BAD_INPUTS[case]
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
    if "-m" not in args:
        args += ["-m", mapping]
        if "-n" not in args:
            args += ["-n", "2"]
    results = tmp_path / "results"
    work = tmp_path / "cwd"
    work.mkdir()
    proc = cli("run", *args, "--results", results, cwd=work, timeout=60)
    assert proc.returncode == 2, explain(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], explain(proc)
    assert hint in errors[0], explain(proc)
    assert "Traceback" not in proc.stderr and proc.stdout == "", explain(proc)
    assert not results.exists() and list(work.iterdir()) == [], "something ran or was created"


def test_inputs_from_a_file_and_by_pe_id(tmp_path):
    data = {"ReadNumbers": [{"input": 2}, {"input": 3}]}
    (tmp_path / "inputs.json").write_text(json.dumps(data))
    runs = {}
    for label, args in {"d-name": ["-d", json.dumps(data)],
                        "d-id": ["-d", json.dumps({"ReadNumbers0": data["ReadNumbers"]})],
                        "f": ["-f", tmp_path / "inputs.json"]}.items():
        results = tmp_path / label
        proc = cli("run", EXAMPLES / "producer_input.py", "-m", "multi", "-n", 3, *args, "--results", results)
        assert proc.returncode == 0, explain(proc)
        runs[label] = outputs(results)
    want = Counter(("seq", c, i, i * i) for c in (2, 3) for i in range(1, c + 1))
    assert runs["d-name"] == runs["d-id"] == runs["f"] == {"Square.output": want}


def test_mpi_without_mpiexec_is_a_usage_error(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    results = tmp_path / "results"
    proc = cli("run", EXAMPLES / "word_count.py", "-m", "mpi", "-n", 2, "--results", results,
               env={"PATH": str(empty)})
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip().splitlines()[-1].startswith("Error:") and "mpiexec" in proc.stderr
    assert not results.exists()


def test_messages_between_processes_are_batched_pickle5_and_ordered(tmp_path):
    """Drive two Runtimes by hand: process 0 sends far fewer messages than items; process 1 gets them all."""
    import numpy as np

    from d4p_hpc.mappings.core import Runtime, Sink

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


# --- signals -------------------------------------------------------------------------------------

def start_long_run(mapping, n, results):
    proc = subprocess.Popen(d4p_hpc_cmd() + ["run", str(DATA / "g_long.py"), "-m", mapping, "-n", str(n),
                                             "-i", "1000000", "--results", str(results)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    started = wait_for(lambda: (read_json(results / "run.json") or {}).get("state") == "RUNNING", timeout=30)
    if not started or proc.poll() is not None:
        proc.kill()
        pytest.fail(f"the run did not start: {proc.communicate()}")
    time.sleep(2.0)  # let it produce some outputs (batches of 256 items reach the last PE)
    return proc


def stop_and_check(proc, signum, results, state):
    proc.send_signal(signum)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    stopped = proc.returncode is not None
    left = processes_mentioning(str(results)) if stopped else []
    pids = [p.get("pid") for p in (read_json(f) for f in (results / ".parts").glob("metrics-*.json")) if p]
    try:  # leave no strays behind for the next tests (the run is in its own session)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out, err = proc.communicate(timeout=30)
    assert stopped, f"the run did not stop within 60 s of signal {signum}:\n{out}\n{err}"
    record = read_json(results / "run.json")
    assert not left, f"processes left running after the run exited ({record['state']}): {left}"
    assert proc.returncode == 128 + signum, f"exit {proc.returncode}\n{out}\n{err}"
    assert record["state"] == state and record["exit_code"] == 128 + signum and record["ended"], record
    assert pids and not any(alive(pid) for pid in pids)
    items = raw_items(results, "Pass", "output")
    assert items, "the outputs produced before the signal were lost"
    assert len(items) == len(set(items)) and len(items) < 1000000
    ticks = read_json(results / "metrics.json")["pes"]["Ticks"]["items_in"]
    assert 0 < max(items) <= ticks


SIGNAL_RUNS = [(sig, state, m, n) for sig, state in [("SIGTERM", "CANCELLED"), ("SIGUSR1", "TIMEOUT")]
               for m, n in [("simple", 1), ("multi", 3), ("mpi", 2)]] + [("SIGINT", "CANCELLED", "multi", 3)]


@pytest.mark.slow
@pytest.mark.parametrize("signame,state,mapping,n", SIGNAL_RUNS, ids=[f"{s}-{m}-n{n}" for s, _, m, n in SIGNAL_RUNS])
def test_signal_stops_the_run_cleanly(signame, state, mapping, n, tmp_path):
    results = tmp_path / "results"
    proc = start_long_run(mapping, n, results)
    stop_and_check(proc, getattr(signal, signame), results, state)
