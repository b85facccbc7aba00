"""Bad input and broken files (issue 8): one ``Error:`` line that says what to do, exit 2 for
input refused before anything ran, and nothing created, queued or changed."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from helpers.runs import DATA, EXAMPLES, cli, explain, raw_items

WORD_COUNT = EXAMPLES / "word_count.py"


def one_error_line(proc, code=2) -> str:
    assert proc.returncode == code, explain(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture
def workdir(tmp_path, isolated_config):
    """A submit directory with no config of the developer's."""
    work = isolated_config
    (work / "syntax.py").write_text("x = (\n")
    (work / "binary.json").write_bytes(bytes(range(256)))
    return work


@pytest.mark.parametrize("args, message", [
    (["syntax.py"], "SyntaxError: '(' was never closed"),
    ([WORD_COUNT, "--attr", "grpah"], "has no attribute 'grpah'; graphs in it: ['graph']"),
    ([WORD_COUNT, "-d", "[1, 2]"], "inputs must be a JSON object"),
    ([WORD_COUNT, "-d", '{"NoSuchPE": 3}'], "NoSuchPE"),
    ([WORD_COUNT, "-m", "dyn_redis"], "PE CountWords has a grouped input (input: [0])"),
    ([WORD_COUNT, "--venv", "/no/such/venv"], "venv /no/such/venv has no bin/activate"),
    ([WORD_COUNT, "--container", "/no/such/image.sif"], "container image /no/such/image.sif does not exist"),
    ([WORD_COUNT, "--conda", "/no/such/env"], "conda env /no/such/env does not exist"),
    (["."], "is a directory"),
], ids=["syntax", "attr", "data-not-object", "unknown-pe", "stateful-dyn", "venv", "container", "conda", "dir"])
@pytest.mark.parametrize("command", ["submit", "render", "dry-run"])
def test_submit_and_render_refuse_a_job_that_could_only_fail(workdir, args, message, command):
    argv = ["render" if command == "render" else "submit", *args, "--scheduler", "local",
            "--results-root", workdir / "results"] + (["--dry-run"] if command == "dry-run" else [])
    proc = cli(*argv, cwd=workdir)
    assert message in one_error_line(proc), proc.stderr
    assert not (workdir / "results").exists(), tree(workdir / "results")


def test_no_check_submits_and_status_shows_the_runs_own_first_error(workdir):
    proc = cli("submit", "syntax.py", "--scheduler", "local", "--no-check", "--wait",
               "--results-root", workdir / "results", cwd=workdir, timeout=120)
    assert proc.returncode == 1, explain(proc)
    status = cli("status", next((workdir / "results").iterdir()))
    assert "FAILED" in status.stdout and "SyntaxError: '(' was never closed" in status.stdout, status.stdout


def test_the_process_limit_is_clear_and_can_be_raised(workdir):
    line = one_error_line(cli("run", WORD_COUNT, "-m", "multi", "-n", 100000, "--results", workdir / "r"))
    assert "-n 100000 would start 100000 processes on this host" in line and "D4P_HPC_MAX_PROCESSES" in line
    assert not (workdir / "r").exists()
    ok = cli("run", WORD_COUNT, "-m", "multi", "-n", 3, "--results", workdir / "r",
             env={"D4P_HPC_MAX_PROCESSES": "3"})
    assert ok.returncode == 0, explain(ok)


def test_a_binary_inputs_file_is_refused(workdir):
    line = one_error_line(cli("run", WORD_COUNT, "-f", workdir / "binary.json", "--results", workdir / "r"))
    assert "is not text: give a JSON file" in line


def test_an_inputs_file_is_recorded_by_path_and_digest_not_content(workdir):
    inputs = workdir / "inputs.json"
    inputs.write_text(json.dumps({"ProduceLines": 3, "padding": []}).replace('"padding": []', '"ProduceLines": 3'))
    done = cli("run", WORD_COUNT, "-f", inputs, "--results", workdir / "r")
    assert done.returncode == 0, explain(done)
    recorded = json.loads((workdir / "r" / "run.json").read_text())["inputs"]
    assert recorded["file"] == str(inputs) and len(recorded["sha256"]) == 64


def test_a_pe_returning_a_non_dict_is_named(workdir):
    graph = workdir / "nondict.py"
    graph.write_text(
        "from dispel4py.core import GenericPE\nfrom dispel4py.base import ProducerPE\n"
        "from dispel4py.workflow_graph import WorkflowGraph\n"
        "class P(ProducerPE):\n    def _process(self, inputs):\n        return 1\n"
        "class Five(GenericPE):\n    def __init__(self):\n        GenericPE.__init__(self)\n"
        "        self._add_input('input')\n        self._add_output('output')\n"
        "    def process(self, inputs):\n        return 5\n"
        "graph = WorkflowGraph()\ngraph.connect(P(), 'output', Five(), 'input')\n")
    proc = cli("run", graph, "--results", workdir / "r")
    assert proc.returncode == 1, explain(proc)
    error = json.loads((workdir / "r" / "run.json").read_text())["error"]
    assert error["pe"] == "Five" and "returned a int (5); return a dict" in error["traceback"]


@pytest.fixture
def finished_run(workdir):
    results = workdir / "results" / "wc"
    done = cli("run", WORD_COUNT, "-i", 3, "--results", results)
    assert done.returncode == 0, explain(done)
    return results


@pytest.mark.parametrize("name, content, message", [
    ("run.json", '{"state": ', "run.json is not valid JSON"),
    ("run.json", "[1, 2]", "run.json holds a JSON array, not a JSON object"),
    ("metrics.json", '"metrics"', "metrics.json holds a JSON string, not a JSON object"),
    ("outputs/CountWords.output/part-00000.jsonl", '["cut", ', "line 1 is not valid JSON"),
], ids=["run-truncated", "run-array", "metrics-string", "part-truncated"])
def test_a_broken_file_of_a_run_is_one_line_in_results(finished_run, name, content, message):
    (finished_run / name).write_text(content)
    command = ["results", finished_run] + (["--show", "CountWords.output"] if "part" in name else [])
    assert message in one_error_line(cli(*command), code=1)


def test_list_names_a_broken_directory_and_shows_the_others(finished_run, workdir):
    other = workdir / "results" / "other"
    shutil.copytree(finished_run, other)
    (other / "run.json").write_text('{"cut')
    listed = cli("list", "--results-root", workdir / "results")
    assert listed.returncode == 0, explain(listed)
    assert "wc" in listed.stdout and "other" not in listed.stdout
    assert f"warning: {other / 'run.json'} is not valid JSON" in listed.stderr


def test_a_broken_state_marker_does_not_break_status(workdir):
    proc = cli("submit", WORD_COUNT, "--scheduler", "local", "--wait", "--results-root", workdir / "results",
               cwd=workdir, timeout=120)
    assert proc.returncode == 0, explain(proc)
    directory = next((workdir / "results").iterdir())
    (directory / "state" / "finished").write_text('{"state": "COMP')
    status = cli("status", directory)
    assert status.returncode == 0 and "Traceback" not in status.stderr, explain(status)


def test_a_results_root_that_is_a_symlink_loop(workdir):
    loop = workdir / "loop"
    os.symlink(workdir / "loop2", loop)
    os.symlink(loop, workdir / "loop2")
    for command in ("list", "status"):
        assert "Symlink loop" in one_error_line(cli(command, "--results-root", loop))


def test_render_to_an_unwritable_file_is_one_line(workdir):
    line = one_error_line(cli("render", WORD_COUNT, "--scheduler", "local", "-o", workdir / "no" / "job.sh",
                              cwd=workdir))
    assert "cannot write" in line and "job.sh" in line


@pytest.mark.parametrize("text, message", [
    ('profile = 5\n', "profile = 5 must be the name of a profile"),
    ('[profiles.unused]\npartitoin = "x"\n', "unknown key 'partitoin'"),
], ids=["profile-number", "typo-in-unused-profile"])
def test_profile_mistakes_are_errors_even_when_unused(workdir, text, message):
    (workdir / "d4p-hpc.toml").write_text(text)
    assert message in one_error_line(cli("submit", WORD_COUNT, "--scheduler", "local", "--dry-run", cwd=workdir))


def test_a_stateless_graph_still_runs_everywhere_after_the_checks(workdir):
    done = cli("submit", DATA / "g_long.py", "--scheduler", "local", "-m", "dyn_multi", "-i", 5, "--wait",
               "--results-root", workdir / "results", cwd=workdir, timeout=120)
    assert done.returncode == 0, explain(done)
    assert len(raw_items(next((workdir / "results").iterdir()), "Pass", "output")) == 5
