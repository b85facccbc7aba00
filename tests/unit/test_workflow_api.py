"""The dispel4py-compatible workflow API (d4p_hpc.workflow) as graph files use it: what PEs
return and write, where their prints go, function PEs and chains, composites that flatten."""

from __future__ import annotations

import sys

import pytest

from helpers.runs import DATA, PE, cli, explain, instances_of, outputs, raw_items, read_json, run_simple

from d4p_hpc.workflow import (CompositePE, IterativePE, ProducerPE, SimpleFunctionPE, WorkflowGraph,
                              create_iterative_chain)


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

    from d4p_hpc.workflow.loader import load_graph

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
