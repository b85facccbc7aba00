"""``d4p-hpc run`` as a user types it: the graph given as a file or a module, the default results
directory, inputs by name, by PE id or from a file, and bad input refused with exit code 2 and
one error line before anything runs."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter

import pytest

from helpers.runs import DATA, EXAMPLES, cli, d4p_hpc_cmd, explain, outputs, raw_items, read_json


def test_graph_given_as_a_module_name_and_default_results_dir(tmp_path):
    proc = cli("run", "g_api", "--attr", "functions_graph", "-i", 3, cwd=tmp_path,
               env={"PYTHONPATH": str(DATA)})
    assert proc.returncode == 0, explain(proc)
    runs = list((tmp_path / "d4p-results").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("g_api-simple-"), runs
    record = read_json(runs[0] / "run.json")
    assert record["graph"] == "g_api" and record["attr"] == "functions_graph" and record["state"] == "COMPLETED"
    assert sorted(map(tuple, raw_items(runs[0], "Tag", "output"))) == [("tagged", 2 * x * x + 1) for x in (1, 2, 3)]


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


def merged(*args, cwd=None) -> subprocess.CompletedProcess:
    """``d4p-hpc ARGS`` with stderr into stdout, so that the order of the two can be checked."""
    env = {k: v for k, v in os.environ.items() if k != "D4P_HPC_QUIET"}
    return subprocess.run(d4p_hpc_cmd() + [str(a) for a in args], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120, env=env)


def test_the_plan_notices_come_before_the_run(tmp_path):
    """#18 item 7: "asks for 3 instances; it gets 1" is said by --check and at a run's start, once."""
    notice = "notice: PE CountWords asks for 3 instances; it gets 1 (2 processes)"
    check = cli("run", EXAMPLES / "word_count.py", "-m", "multi", "-n", 2, "--check", cwd=tmp_path)
    assert check.returncode == 0 and notice in check.stderr.splitlines(), explain(check)
    assert check.stdout == "ok: 3 PEs, 3 instances under multi with 2 processes\n", explain(check)
    proc = merged("run", EXAMPLES / "word_count.py", "-m", "multi", "-n", 2, "-i", 3, "--results", tmp_path / "r1",
                  cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines.count(notice) == 1, explain(proc)
    assert lines.index(notice) < next(k for k, line in enumerate(lines) if line.startswith("COMPLETED")), lines
    # under simple too: the PE asked for 3 and runs one instance
    simple = cli("run", EXAMPLES / "word_count.py", "-i", 3, "--results", tmp_path / "r2", cwd=tmp_path)
    assert "notice: PE CountWords asks for 3 instances; it gets 1 (1 process)" in simple.stderr, explain(simple)
    assert "(simple, 1 process)" in simple.stdout, explain(simple)


@pytest.mark.parametrize("words", [["run", "simple", "g.py"], ["simple", "g.py"], ["run", "-n", "2", "multi", "g.py"]])
def test_dispel4py_word_order_gets_the_command_to_type(words, tmp_path):
    proc = cli(*words, cwd=tmp_path)
    mapping = "simple" if "simple" in words else "multi"
    rest = " -n 2" if "-n" in words else ""
    want = f"Error: the graph comes first, then -m MAPPING: did you mean `d4p-hpc run{rest} g.py -m {mapping}`?"
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == want, explain(proc)
    assert list(tmp_path.iterdir()) == []


ONE_ITEM = """
from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph

class Source(ProducerPE):
    def _process(self, inputs):
        return 1

class Deep(IterativePE):
    def _process(self, data):
        return ping(data if DEPTH is None else DEPTH)

def ping(n):
    return pong(n - 1) if n > 0 else n

def pong(n):
    return ping(n - 1) if n > 0 else n

DEPTH = None
graph = WorkflowGraph()
graph.connect(Source(), "output", Deep(), "input")
"""


def test_counts_agree_with_their_nouns_and_a_huge_traceback_is_one_line(tmp_path):
    graph = tmp_path / "deep.py"
    graph.write_text(ONE_ITEM)
    proc = cli("run", graph, "--results", tmp_path / "one", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert "(simple, 1 process)" in proc.stdout and "  Deep.output: 1 item\n" in proc.stdout, explain(proc)
    # ping/pong alternate, so Python cannot fold the traceback: thousands of lines, said in one
    graph.write_text(ONE_ITEM.replace("DEPTH = None", "DEPTH = 100000"))
    proc = cli("run", graph, "--results", tmp_path / "deep", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, explain(proc)
    (line,) = [line for line in proc.stderr.splitlines() if "failed" in line]
    assert line.startswith("PE Deep failed (process 0): RecursionError: maximum recursion depth exceeded"), line
    assert "lines, is in run.json and the logs)" in line, line
    assert "RecursionError" in read_json(tmp_path / "deep" / "run.json")["error"]["traceback"]
