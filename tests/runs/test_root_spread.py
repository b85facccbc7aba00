"""A root's calls spread when the root is found stateless (#21 item 4): over the workers under the
dynamic mappings, over the instances it asks for (``numprocesses``) under ``multi`` and ``mpi``.

The driver makes a root's first calls itself and compares the PE's state before and after each;
unchanged, the other calls become tasks any worker runs. Proven through ``d4p-hpc run``, counting
rather than timing: ``metrics.json`` names the spread roots, and the root's calls are counted on
the workers that made them (the driver keeps only its probe calls); outputs equal ``simple``'s as
multisets. Roots whose calls change them, whose state is outside what can be compared (a file
they read from, in ``pickleIgnore``), or that say ``stateful = True`` are called in the driver in
order, as before, and give ``simple``'s exact values. Under the static mappings the root's first
instance makes the probe calls and then hands the others round its instances; a spread root stopped
at the walltime signal, killed and resumed gives every output once. Wall times (the skewed producer beside
``simple``) are in ``benchmarks/load_balance.py``, not here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from helpers.dynamic import needs_redis, write_graph
from helpers.runs import (cli, complete_checkpoints, d4p_hpc_cmd, diff, explain, instances_of,
                          kill_after_its_next_checkpoint, kill_group, outputs, processes_mentioning, raw_items,
                          read_json, run_simple, wait_for)

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


# --- the static mappings: over the instances a root asks for ---------------------------------------

STATIC = ["multi", "mpi"]


def asking(graph: str, root: str, instances: int = 3) -> str:
    """``graph`` with its root PE ``root`` asking for ``instances`` instances, as a dispel4py user asks."""
    return graph + (f"\nfor _node in graph.graph.nodes():\n    if type(_node.get_contained_object()).__name__ == "
                    f"{root!r}:\n        _node.get_contained_object().numprocesses = {instances}\n")


def calls_by_instance(results, root: str) -> list[tuple[int, int]]:
    return sorted((i["instance"], i["items_in"]) for i in instances_of(results, root))


@pytest.mark.parametrize("mapping", STATIC)
def test_a_stateless_roots_calls_are_handed_round_its_instances_and_outputs_equal_simple(mapping, tmp_path):
    graph = write_graph(tmp_path, asking(SKEWED, "Emit"))
    assert run_simple(graph, {"Emit": [{"n": n} for n in range(CALLS)]}, tmp_path / "simple")["state"] == "COMPLETED"
    proc = cli("run", graph, "-m", mapping, "-n", 5, "-d", DATA, "--results", tmp_path / "r")
    assert proc.returncode == 0, explain(proc)
    metrics = read_json(tmp_path / "r" / "metrics.json")
    assert metrics["roots_spread"] == ["Emit"], metrics
    calls = calls_by_instance(tmp_path / "r", "Emit")
    assert [k for k, _ in calls] == [0, 1, 2] and sum(n for _, n in calls) == CALLS, calls
    # the first made its 3 probe calls and its turns after them; each other made a third of the rest
    assert calls == [(0, 3 + 12), (1, 13), (2, 12)], calls
    assert len({i["process"] for i in instances_of(tmp_path / "r", "Emit")}) == 3
    got, want = outputs(tmp_path / "r"), outputs(tmp_path / "simple")
    assert got == want, diff(got, want)


@pytest.mark.parametrize("mapping", STATIC)
@pytest.mark.parametrize("case", ["counter", "file it reads"])
def test_a_static_root_not_found_stateless_makes_every_call_in_its_first_instance(case, mapping, tmp_path):
    root = "Lines" if case == "file it reads" else "Count"
    graph = write_graph(tmp_path, asking({"counter": COUNTER, "file it reads": READER}[case], root))
    (tmp_path / "lines.txt").write_text("".join(f"line {k}\n" for k in range(30)))
    proc = cli("run", graph, "-m", mapping, "-n", 4, "-i", 30, "--results", tmp_path / "r")
    assert proc.returncode == 0, explain(proc)
    assert read_json(tmp_path / "r" / "metrics.json")["roots_spread"] == []
    assert calls_by_instance(tmp_path / "r", root) == [(0, 30), (1, 0), (2, 0)]
    assert run_simple(graph, 30, tmp_path / "simple")["state"] == "COMPLETED"
    got, want = outputs(tmp_path / "r"), outputs(tmp_path / "simple")
    assert got == want, diff(got, want)
    if case == "counter":
        assert sorted(got["Same.output"]) == list(range(1, 31))


def test_a_root_that_says_stateful_gets_one_instance_and_a_notice(tmp_path):
    graph = write_graph(tmp_path, asking(DECLARED, "Count"))
    proc = cli("run", graph, "-m", "multi", "-n", 4, "-i", 30, "--results", tmp_path / "r")
    assert proc.returncode == 0, explain(proc)
    notice = "root PE Count asks for 3 instances; it gets 1, as it says stateful = True"
    assert notice in read_json(tmp_path / "r" / "run.json")["notices"] and notice in proc.stderr + proc.stdout
    assert calls_by_instance(tmp_path / "r", "Count") == [(0, 30)]


@pytest.mark.parametrize("mapping", STATIC)
def test_a_root_spread_over_its_instances_that_changes_later_fails_the_run_saying_what_to_do(mapping, tmp_path):
    graph = write_graph(tmp_path, asking(LATE, "Late"))
    data = '{"Late": [' + ", ".join(f'{{"n": {n}}}' for n in range(40)) + "]}"
    proc = cli("run", graph, "-m", mapping, "-n", 4, "-d", data, "--results", tmp_path / "r")
    assert proc.returncode == 1, explain(proc)
    record = read_json(tmp_path / "r" / "run.json")
    assert record["state"] == "FAILED" and record["error"]["pe"] == "Late", record
    assert "root PE Late changed its state in a call after its first 3 left it unchanged, so its calls were " \
        "spread over its instances" in record["error"]["traceback"], record["error"]
    assert not processes_mentioning(str(tmp_path / "r"))


#: SKEWED's root, each call 10 ms: long enough for checkpoints to be taken among its calls
STEADY_CALLS = 600
STEADY = asking(SKEWED.replace("time.sleep(0.02 + 0.03 * (n % 3 == 0))", "time.sleep(0.01)"), "Emit")


@pytest.mark.parametrize("mapping", STATIC)
def test_a_spread_root_stopped_at_the_walltime_then_killed_then_resumed_gives_each_output_once(mapping, tmp_path):
    """Stopped at the walltime signal after a checkpoint (calls handed to its other instances in
    flight, or queued there), the resumed segment killed with its whole process group, the third
    completing: every output once, as simple's."""
    graph = write_graph(tmp_path, STEADY)
    data = tmp_path / "data.json"
    data.write_text('{"Emit": [' + ", ".join(f'{{"n": {n}}}' for n in range(STEADY_CALLS)) + "]}")
    results = tmp_path / "r"
    argv = [*d4p_hpc_cmd(), "run", str(graph), "-m", mapping, "-n", "5", "-f", str(data), "--results", str(results),
            "--checkpoint-every", "1"]

    def start(*extra: str) -> subprocess.Popen:
        return subprocess.Popen([*argv, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    first = start()
    wait_for(lambda: complete_checkpoints(results) or first.poll() is not None, 60)
    assert first.poll() is None, first.communicate()
    time.sleep(0.3)
    first.send_signal(signal.SIGUSR1)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 138, out + err
    assert read_json(results / "run.json")["state"] == "TIMEOUT"
    second = start("--resume")
    if kill_after_its_next_checkpoint(second, results):
        if read_json(results / "run.json")["state"] != "COMPLETED":
            third = start("--resume")
            out, err = third.communicate(timeout=120)
            assert third.returncode == 0, out + err
    kill_group(second.pid)
    assert read_json(results / "run.json")["state"] == "COMPLETED"
    assert run_simple(graph, {"Emit": [{"n": n} for n in range(STEADY_CALLS)]}, tmp_path / "simple")["state"] == \
        "COMPLETED"
    got, want = outputs(results), outputs(tmp_path / "simple")
    assert got == want, diff(got, want)
    assert not processes_mentioning(str(results))


#: A root asking for $ROOT_INSTANCES instances (e.g. set in a job's environment), writing in its preprocess.
ASKING_FROM_ENV = '''
import os
import time
from dispel4py.base import GenericPE, IterativePE
from dispel4py.workflow_graph import WorkflowGraph

class Emit(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("n")
        self._add_output("output")
    def preprocess(self):
        self.write("output", -1)
    def process(self, inputs):
        time.sleep(float(os.environ.get("EMIT_SECONDS", "0")))
        self.write("output", inputs["n"])

class Plus(IterativePE):
    def _process(self, data):
        return data + 1

emit = Emit()
emit.numprocesses = int(os.environ.get("ROOT_INSTANCES", "1"))
graph = WorkflowGraph()
graph.connect(emit, "output", Plus(), "input")
'''


@pytest.mark.parametrize("mapping", [*STATIC, "dyn_multi", pytest.param("dyn_redis", marks=needs_redis)])
def test_what_a_spread_roots_preprocess_writes_is_written_once_as_by_simple(mapping, tmp_path):
    """Its other instances (workers' copies) run preprocess too, but what it writes is the first's."""
    graph = write_graph(tmp_path, ASKING_FROM_ENV)
    assert run_simple(graph, {"Emit": [{"n": n} for n in range(CALLS)]}, tmp_path / "simple")["state"] == "COMPLETED"
    proc = cli("run", graph, "-m", mapping, "-n", 4, "-d", DATA, "--results", tmp_path / "r",
               env={"ROOT_INSTANCES": "3"})
    assert proc.returncode == 0, explain(proc)
    assert read_json(tmp_path / "r" / "metrics.json")["roots_spread"] == ["Emit"]
    got, want = outputs(tmp_path / "r"), outputs(tmp_path / "simple")
    assert got == want, diff(got, want)
    assert got["Plus.output"][0] == 1  # -1 + 1, once


def test_a_resume_whose_pes_have_other_instance_counts_is_refused_in_one_line(tmp_path):
    """The same total of instances (4), shared otherwise: a root's numprocesses that came from the
    environment changed between the segments. Resumed, the checkpoint's states and items in flight
    would land on other instances."""
    graph = write_graph(tmp_path, ASKING_FROM_ENV)
    results = tmp_path / "r"
    first = subprocess.Popen([*d4p_hpc_cmd(), "run", str(graph), "-m", "multi", "-n", "4", "-d", DATA, "--results",
                              str(results), "--checkpoint"], env={**os.environ, "ROOT_INSTANCES": "1",
                                                                  "EMIT_SECONDS": "0.5"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: (results / "run.json").exists() or first.poll() is not None)
    first.send_signal(signal.SIGUSR1)  # the walltime: a checkpoint, then the run stops
    out, err = first.communicate(timeout=60)
    assert first.returncode == 138, out + err
    refused = cli("run", graph, "-m", "multi", "-n", 4, "-d", DATA, "--results", results, "--resume",
                  env={"ROOT_INSTANCES": "2"})
    assert refused.returncode == 2, explain(refused)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "has PE Emit in 1 instances and -m multi -n 4 gives it 2: a numprocesses changed " \
        "since; resume with the numprocesses the run had" in lines[0], refused.stderr
    again = cli("run", graph, "-m", "multi", "-n", 4, "-d", DATA, "--results", results, "--resume",
                env={"ROOT_INSTANCES": "1"})
    assert again.returncode == 0, explain(again)


#: Writes each call's number with the process that made it.
WHO = '''
from dispel4py.base import GenericPE
from dispel4py.workflow_graph import WorkflowGraph

class Emit(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("n")
        self._add_output("output")
    def process(self, inputs):
        self.write("output", [inputs["n"], self.rank])

emit = Emit()
emit.numprocesses = 3
graph = WorkflowGraph()
graph.add(emit)
'''


@pytest.mark.parametrize("mapping", STATIC)
def test_calls_whose_cost_repeats_with_the_instance_count_do_not_all_land_on_one_instance(mapping, tmp_path):
    """Every third call of 300 stands for a slow one: handed round in a fixed order, all of them would
    go to one instance of the three (an outside attack: 3.1 s where 1.1 s was possible); each round's
    order is drawn anew, so none gets more than 60 % of them. Counted, not timed."""
    graph = write_graph(tmp_path, WHO)
    data = '{"Emit": [' + ", ".join(f'{{"n": {n}}}' for n in range(300)) + "]}"
    proc = cli("run", graph, "-m", mapping, "-n", 3, "-d", data, "--results", tmp_path / "r")
    assert proc.returncode == 0, explain(proc)
    made = [tuple(item) for item in raw_items(tmp_path / "r", "Emit", "output")]
    assert sorted(n for n, _ in made) == list(range(300))
    every_third = [rank for n, rank in made if n >= 3 and n % 3 == 0]
    shares = {rank: every_third.count(rank) / len(every_third) for rank in set(every_third)}
    assert len(shares) == 3 and max(shares.values()) <= 0.6, shares
