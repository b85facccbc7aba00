"""A root's calls spread over the workers under the dynamic mappings when the root is found stateless (#21 item 4).

The driver makes a root's first calls itself and compares the PE's state before and after each;
unchanged, the other calls become tasks any worker runs. Proven through ``d4p-hpc run``, counting
rather than timing: ``metrics.json`` names the spread roots, and the root's calls are counted on
the workers that made them (the driver keeps only its probe calls); outputs equal ``simple``'s as
multisets. Roots whose calls change them, whose state is outside what can be compared (a file
they read from, in ``pickleIgnore``), or that say ``stateful = True`` are called in the driver in
order, as before, and give ``simple``'s exact values. Wall times (the skewed producer beside
``simple``) are in ``benchmarks/load_balance.py``, not here.
"""

from __future__ import annotations

import pytest

from helpers.dynamic import needs_redis, write_graph
from helpers.runs import cli, diff, explain, instances_of, outputs, read_json, run_simple

#: A stateless root given its inputs (-d), each call sleeping a little longer for some numbers
#: (skewed), so that a call is slow enough to be sent on its own.
SKEWED = '''
import time
from dispel4py.base import GenericPE, IterativePE
from dispel4py.workflow_graph import WorkflowGraph

class Emit(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("n")
        self._add_output("output")
    def process(self, inputs):
        n = inputs["n"]
        time.sleep(0.02 + 0.03 * (n % 3 == 0))
        self.write("output", n * n)

class Plus(IterativePE):
    def _process(self, data):
        return data + 1

graph = WorkflowGraph()
graph.connect(Emit(), "output", Plus(), "input")
'''
CALLS = 40
DATA = '{"Emit": [' + ", ".join(f'{{"n": {n}}}' for n in range(CALLS)) + "]}"

#: A counter: every call changes it.
COUNTER = '''
from dispel4py.base import ProducerPE, IterativePE
from dispel4py.workflow_graph import WorkflowGraph

class Count(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0
    def _process(self, inputs):
        self.n += 1
        return self.n

class Same(IterativePE):
    def _process(self, data):
        return data

graph = WorkflowGraph()
graph.connect(Count(), "output", Same(), "input")
'''

#: Reads a line per call from a file it keeps open, left out of its state by pickleIgnore: its
#: position is state that no comparison of its attributes sees, so it must not be spread.
READER = '''
import os
from dispel4py.base import ProducerPE, IterativePE
from dispel4py.workflow_graph import WorkflowGraph

class Lines(ProducerPE):
    pickleIgnore = ["fh"]
    def preprocess(self):
        self.fh = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "lines.txt"))
    def _process(self, inputs):
        return self.fh.readline().strip()

class Same(IterativePE):
    def _process(self, data):
        return data

graph = WorkflowGraph()
graph.connect(Lines(), "output", Same(), "input")
'''

#: Stateless for its first calls, then not: its 5th call (input 4) changes it.
LATE = '''
from dispel4py.base import GenericPE
from dispel4py.workflow_graph import WorkflowGraph

class Late(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("n")
        self._add_output("output")
        self.scale = 1
    def process(self, inputs):
        if inputs["n"] == 4:
            self.scale = 10
        self.write("output", inputs["n"] * self.scale)

graph = WorkflowGraph()
graph.add(Late())
'''

#: Stateless in fact, but says it is not.
DECLARED = COUNTER.replace("        self.n += 1\n        return self.n", "        return 7").replace(
    "class Count(ProducerPE):", "class Count(ProducerPE):\n    stateful = True")

SPREAD_MAPPINGS = ["dyn_multi", "dyn_auto_multi", pytest.param("dyn_redis", marks=needs_redis),
                   pytest.param("dyn_auto_redis", marks=needs_redis), pytest.param("hybrid_redis", marks=needs_redis)]
KEPT_MAPPINGS = ["dyn_multi", pytest.param("dyn_redis", marks=needs_redis)]


def _run(graph, mapping, results, *inputs):
    proc = cli("run", graph, "-m", mapping, "-n", 4, *inputs, "--results", results)
    assert proc.returncode == 0, explain(proc)
    assert read_json(results / "run.json")["state"] == "COMPLETED"
    return read_json(results / "metrics.json")


@pytest.mark.parametrize("mapping", SPREAD_MAPPINGS)
def test_a_stateless_roots_calls_are_made_by_the_workers_and_outputs_equal_simple(mapping, tmp_path):
    graph = write_graph(tmp_path, SKEWED)
    assert run_simple(graph, {"Emit": [{"n": n} for n in range(CALLS)]}, tmp_path / "simple")["state"] == "COMPLETED"
    metrics = _run(graph, mapping, tmp_path / "r", "-d", DATA)
    assert metrics["roots_spread"] == ["Emit"], metrics
    calls = {}
    for inst in instances_of(tmp_path / "r", "Emit"):
        calls[inst["process"]] = calls.get(inst["process"], 0) + inst["items_in"]
    assert sum(calls.values()) == CALLS and calls.get(0) == 3, calls  # the driver made its probe calls only
    if not mapping.startswith("dyn_auto"):  # (an autoscaled pool may not have grown in so short a run)
        assert len([p for p, n in calls.items() if p != 0 and n]) >= 2, calls  # shared out, not one worker's
    got, want = outputs(tmp_path / "r"), outputs(tmp_path / "simple")
    assert got == want, diff(got, want)
    assert sorted(got["Plus.output"]) == sorted(n * n + 1 for n in range(CALLS))


@pytest.mark.parametrize("mapping", KEPT_MAPPINGS)
@pytest.mark.parametrize("case", ["counter", "file it reads", "says stateful"])
def test_a_root_that_is_not_found_stateless_runs_in_the_driver_in_order(case, mapping, tmp_path):
    graph = write_graph(tmp_path, {"counter": COUNTER, "file it reads": READER, "says stateful": DECLARED}[case])
    (tmp_path / "lines.txt").write_text("".join(f"line {k}\n" for k in range(30)))
    metrics = _run(graph, mapping, tmp_path / "r", "-i", 30)
    assert metrics["roots_spread"] == [], metrics
    root = "Lines" if case == "file it reads" else "Count"
    assert [(i["process"], i["items_in"]) for i in instances_of(tmp_path / "r", root)] == [(0, 30)]
    assert run_simple(graph, 30, tmp_path / "simple")["state"] == "COMPLETED"
    got, want = outputs(tmp_path / "r"), outputs(tmp_path / "simple")
    assert got == want, diff(got, want)
    if case == "counter":
        assert sorted(got["Same.output"]) == list(range(1, 31))
    elif case == "file it reads":
        assert sorted(got["Same.output"]) == sorted(f"line {k}" for k in range(30))


@pytest.mark.parametrize("calls", [1, 3])
def test_a_root_with_no_more_calls_than_the_probe_is_not_spread(calls, tmp_path):
    graph = write_graph(tmp_path, SKEWED)
    data = '{"Emit": [' + ", ".join(f'{{"n": {n}}}' for n in range(calls)) + "]}"
    metrics = _run(graph, "dyn_multi", tmp_path / "r", "-d", data)
    assert metrics["roots_spread"] == [] and metrics["items"] == 2 * calls, metrics


@pytest.mark.parametrize("mapping", KEPT_MAPPINGS)
def test_a_spread_root_that_changes_its_state_later_fails_the_run_saying_what_to_do(mapping, tmp_path):
    """Found stateless by its first 3 calls, it changes on its 5th: the worker that made that call
    fails the run, naming the PE and the fix, rather than leave outputs no one can trust."""
    graph = write_graph(tmp_path, LATE)
    data = '{"Late": [' + ", ".join(f'{{"n": {n}}}' for n in range(40)) + "]}"
    proc = cli("run", graph, "-m", mapping, "-n", 2, "-d", data, "--results", tmp_path / "r")
    assert proc.returncode == 1, explain(proc)
    record = read_json(tmp_path / "r" / "run.json")
    assert record["state"] == "FAILED" and record["error"]["pe"] == "Late", record
    assert "root PE Late changed its state in a call after its first 3 left it unchanged" in \
        record["error"]["traceback"] and "stateful = True" in record["error"]["traceback"], record["error"]
