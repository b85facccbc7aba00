"""``d4p-hpc run`` as a user types it: the graph given as a file or a module, the default results
directory, inputs by name, by PE id or from a file, and bad input refused with exit code 2 and
one error line before anything runs."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from helpers.runs import DATA, EXAMPLES, cli, explain, outputs, raw_items, read_json


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
