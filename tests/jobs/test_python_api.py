"""The Python API (``import d4p_hpc``), driven as a user drives it, against the real local scheduler.

What is proven, and how:

* ``submit`` -> ``wait``/``result``/``status``/``metrics``/``logs``/``efficiency``/``report`` and the
  notebook views of a real job, its result held to word counts computed here;
* a job is found by its id alone, from another directory and another process, by ``attach`` and by
  the ``d4p-hpc`` commands (the per-user index of jobs); an index entry whose directory is gone is
  skipped and kept, two directories for one id give one error naming both, and an entry another
  user owns is never followed;
* six submits at once from six processes give six jobs, six index entries, each found by its id;
* a failing graph's ``result()`` raises ``JobFailed`` with the PE, its error line, the state and the
  logs' tail; ``cancel()`` ends a running job CANCELLED with nothing left running;
* ``as_completed`` yields the job that ends first first (the other waits on a gate file the test
  opens only then: an order by construction, not by timing), and ``list_jobs`` lists and filters;
* bad keywords, types, graphs and mappings are refused in one line with nothing submitted (no
  results directory, no index entry, no job script); a script that submits itself without the
  ``__main__`` guard is stopped by the pre-check with zero jobs queued;
* a graph given as a module name or as a WorkflowGraph object of an importable module runs;
* ``run`` here: multi equals simple, a failing run leaves the caller unharmed, ``wait=False``
  returns a Run that completes later, inputs for a PE not in the graph are refused before running;
* ``resume`` of a cancelled job with checkpoints continues as a new job in the same directory to
  exact outputs; a resume that would change what the job computes is refused, saying what may change.

A user's script runs in a fresh ``python`` process (``sys.executable``) where a fresh process
matters (another working directory, the caller surviving, the graph's module found on its
``sys.path``, six at once); the rest calls the API in this process, as a notebook does. Every test
has its own index of jobs (``$XDG_STATE_HOME``), results root and working directory, and kills
whatever a failed test left running under its folder.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from helpers.runs import EXAMPLES, cli, explain, independent_word_counts, outputs, processes_mentioning, wait_for

import d4p_hpc
from d4p_hpc.jobs import index

WORD_COUNT = EXAMPLES / "word_count.py"
LONG_COUNT = EXAMPLES / "long_count.py"
#: a generous bound on any one wait: a loaded 2-core machine, never a timing assertion
DEADLINE = 180

FAILING_GRAPH = '''"""Numbers 1, 2, 3, ... -> Divide: 10 / (3 - n), which raises ZeroDivisionError at n = 3."""
from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Numbers(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class Divide(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, n):
        return 10 / (3 - n)


graph = WorkflowGraph()
graph.connect(Numbers(), "output", Divide(), "input")
'''

GATED_GRAPH = '''"""Numbers 1, 2, 3, ... -> Gate, which passes each on once the file $D4P_TEST_GATE exists."""
import os
import time

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Numbers(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class Gate(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, n):
        gate = os.environ["D4P_TEST_GATE"]
        deadline = time.monotonic() + 300
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gate} was never opened")
            time.sleep(0.05)
        return n


graph = WorkflowGraph()
graph.connect(Numbers(), "output", Gate(), "input")
'''


class Place:
    """A test's own working directory, results root and index of jobs."""

    def __init__(self, tmp: Path, work: Path) -> None:
        self.tmp = tmp
        self.work = work
        self.root = tmp / "results"
        self.index = tmp / "state" / "d4p-hpc" / "jobs"
        self.other = tmp / "other"  # another working directory, with no results root of its own
        self.other.mkdir()

    def entries(self) -> list[str]:
        """The names of the index's entries (``<id>@<digest>``)."""
        return sorted(p.name for p in self.index.iterdir()) if self.index.is_dir() else []

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def nothing_submitted(self) -> None:
        """No results root, no index entry, no job script anywhere in the test's folder."""
        assert not self.root.exists(), sorted(self.root.rglob("*"))
        assert self.entries() == []
        assert not list(self.tmp.rglob("job.sh"))
        assert not (self.work / "d4p-results").exists()


@pytest.fixture
def place(tmp_path, isolated_config, monkeypatch) -> Place:
    """No user config, a working directory, and an index of jobs of the test's own; afterwards,
    whatever the test left running under its folder is killed."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("LONG_COUNT_SECONDS", "0.05")
    monkeypatch.delenv("D4P_TEST_GATE", raising=False)
    yield Place(tmp_path, isolated_config)
    for pid in processes_mentioning(f"{tmp_path}/"):  # (its jobs' working directory is in it)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def user_script(place: Place, code: str, args: dict | None = None, cwd: Path | None = None,
                name: str = "script.py") -> subprocess.CompletedProcess:
    """Run ``code`` as a user's script, ``python script.py ARGS_JSON``, in a fresh process."""
    path = place.write(name, textwrap.dedent(code))
    return subprocess.run([sys.executable, str(path), json.dumps(args or {})], cwd=cwd or place.work,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEADLINE)


def said(proc: subprocess.CompletedProcess) -> dict:
    """The JSON a user's script printed last, once it exited 0."""
    assert proc.returncode == 0, explain(proc)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def counts(items) -> Counter:
    """``(word, count)`` items as a Counter, each word exactly once."""
    pairs = [tuple(item) for item in items]
    assert len({word for word, _ in pairs}) == len(pairs), pairs
    return Counter(dict(pairs))


def long_count_expected(iterations: int) -> tuple[Counter, Counter]:
    """examples/long_count.py's ``Slow.tagged`` and ``Count.output`` for ``iterations``, computed
    here from its corpus (read from its source, not imported)."""
    tree = ast.parse(LONG_COUNT.read_text())
    corpus = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "CORPUS" for t in node.targets))
    tagged, words = Counter(), Counter()
    for k in range(1, iterations + 1):
        for word in corpus[(k - 1) % len(corpus)].split():
            tagged[k, word] += 1
            words[word] += 1
    return tagged, words


def submit_word_count(place: Place, iterations: int = 2, **options) -> d4p_hpc.Job:
    return d4p_hpc.submit(str(WORD_COUNT), scheduler="local", mapping="simple", iterations=iterations,
                          results_root=str(place.root), **options)


# --- 1. a job, from submit to its report ------------------------------------------------------------

def test_a_submitted_word_count_completes_and_shows_itself_every_way(place, capfd):
    job = d4p_hpc.submit(str(WORD_COUNT), scheduler="local", mapping="multi", iterations=40,
                         results_root=str(place.root))
    assert isinstance(job, d4p_hpc.Job) and job.id.startswith("local-") and job.scheduler == "local"
    assert job.directory == place.root / f"word_count-{job.id}"
    assert job.wait(timeout=DEADLINE) == "COMPLETED"
    assert "COMPLETED" in capfd.readouterr().err.splitlines()[-1]  # the live line ends on the final state

    result = job.result()
    assert set(result) == {"CountWords.output"}
    assert counts(result["CountWords.output"]) == independent_word_counts(40)

    status = job.status()
    assert isinstance(status, d4p_hpc.Status) and status.state == "COMPLETED" and status.done
    assert status.elapsed is not None and status.segments == []

    metrics = job.metrics()
    assert metrics["items"] > 0 and {"ProduceLines", "SplitWords", "CountWords"} <= set(metrics["pes"])

    logs = job.logs(tail=5)
    for path in (job.directory / "job.out", job.directory / "job.err", job.directory / "logs" / "00000.log"):
        assert f"==> {path} <==" in logs, logs
    sections = [s for s in logs.split("==> ") if s]
    assert all(len(s.splitlines()) <= 1 + 5 for s in sections), logs  # its heading and at most 5 lines

    line = job.efficiency().line()
    percent = line.split("CPU efficiency ")[1].split("%")[0]
    assert 0 <= int(percent) <= 100, line

    report = job.report()
    assert isinstance(report, d4p_hpc.Report) and report.path == job.directory / "report.html"
    assert report.path.is_file() and os.fspath(report) == str(report.path)
    assert "<iframe srcdoc=" in report._repr_html_()

    assert job.id in repr(job) and str(job.directory) in repr(job) and "word_count" in repr(job)
    table = job._repr_html_()
    assert table.startswith("<table") and f"<td>{job.id}</td>" in table and "<td>COMPLETED</td>" in table


# --- 2. a job found by its id alone ------------------------------------------------------------------

FOLLOW = """
    import json, sys
    import d4p_hpc
    job = d4p_hpc.attach(json.loads(sys.argv[1])["id"])
    state = job.wait(timeout=180, progress=False)
    words = {w: n for w, n in job.result()["CountWords.output"]}
    print(json.dumps({"id": job.id, "directory": str(job.directory), "state": state, "words": words}))
"""


def test_a_job_is_found_by_its_id_alone_from_another_directory_and_process(place):
    elsewhere = place.tmp / "elsewhere"
    submitted = said(user_script(place, """
        import json, sys
        import d4p_hpc
        args = json.loads(sys.argv[1])
        job = d4p_hpc.submit(args["graph"], scheduler="local", iterations=30, results_root=args["root"])
        print(json.dumps({"id": job.id, "directory": str(job.directory)}))
    """, {"graph": str(WORD_COUNT), "root": str(elsewhere)}, name="submit.py"))  # the script ends; its job goes on
    job_id = submitted["id"]
    assert [entry.split("@")[0] for entry in place.entries()] == [job_id]

    found = said(user_script(place, FOLLOW, {"id": job_id}, cwd=place.other, name="follow.py"))
    assert found["id"] == job_id and found["directory"] == submitted["directory"]
    assert found["state"] == "COMPLETED"
    assert Counter(found["words"]) == independent_word_counts(30)

    status = cli("status", job_id, cwd=place.other)
    assert status.returncode == 0 and job_id in status.stdout and "COMPLETED" in status.stdout, explain(status)
    results = cli("results", job_id, cwd=place.other)
    assert results.returncode == 0 and submitted["directory"] in results.stdout, explain(results)
    assert f"CountWords.output: {len(independent_word_counts(30))} items" in results.stdout, explain(results)
    page = Path(submitted["directory"]) / "report.html"
    assert not page.exists()
    report = cli("report", job_id, cwd=place.other)
    assert report.returncode == 0 and str(page) in report.stdout, explain(report)
    assert page.is_file()
    assert not (place.other / "d4p-results").exists()  # nothing was looked for, or made, here


def test_an_index_entry_whose_directory_is_gone_is_skipped_and_kept(place, monkeypatch):
    """A directory gone may be a scratch file system not mounted now: its entry is skipped, not
    removed, and a lookup that finds nothing else says where the job was."""
    job = submit_word_count(place)
    assert job.wait(timeout=DEADLINE, progress=False) == "COMPLETED"
    gone = place.tmp / "gone" / job.directory.name
    gone.mkdir(parents=True)
    assert index.record(job.id, gone) is None
    shutil.rmtree(gone.parent)
    assert len(place.entries()) == 2
    monkeypatch.chdir(place.other)

    assert d4p_hpc.attach(job.id).directory == job.directory  # the stale entry is no second match
    assert len(place.entries()) == 2  # and it is kept

    job_id, directory = job.id, job.directory
    moved = place.tmp / "unmounted"
    shutil.move(directory, moved)
    with pytest.raises(d4p_hpc.UsageError) as refused:
        d4p_hpc.attach(job_id)
    assert f"job {job_id} was in " in str(refused.value) and str(directory) in str(refused.value)
    assert "which is gone" in str(refused.value) and "\n" not in str(refused.value)
    shutil.move(moved, directory)  # mounted again: found again
    assert d4p_hpc.attach(job_id).directory == directory


def test_two_directories_recorded_for_one_id_give_one_error_naming_both(place, monkeypatch):
    job = submit_word_count(place)
    assert job.wait(timeout=DEADLINE, progress=False) == "COMPLETED"
    copy = place.tmp / "copy" / job.directory.name
    shutil.copytree(job.directory, copy, symlinks=True)
    assert index.record(job.id, copy) is None
    monkeypatch.chdir(place.other)

    with pytest.raises(d4p_hpc.UsageError) as refused:
        d4p_hpc.attach(job.id)
    message = str(refused.value)
    assert "\n" not in message and f"job id {job.id} matches several directories" in message
    assert str(job.directory) in message and str(copy) in message
    proc = cli("status", job.id, cwd=place.other)
    assert proc.returncode == 2 and str(job.directory) in proc.stderr and str(copy) in proc.stderr, explain(proc)
    assert len(place.entries()) == 2  # both are real: neither is removed


@pytest.mark.skipif(os.geteuid() != 0, reason="gives an index entry to another user: needs root")
def test_an_index_entry_another_user_owns_is_never_followed(place, monkeypatch):
    job = submit_word_count(place)
    assert job.wait(timeout=DEADLINE, progress=False) == "COMPLETED"
    (own,) = place.entries()
    planted = place.tmp / "planted" / job.directory.name
    shutil.copytree(job.directory, planted, symlinks=True)
    assert index.record(job.id, planted) is None
    (foreign,) = set(place.entries()) - {own}
    os.chown(place.index / foreign, 65534, 65534)  # nobody's
    monkeypatch.chdir(place.other)

    assert d4p_hpc.attach(job.id).directory == job.directory  # not "several directories": it is not read

    os.chown(place.index / own, 65534, 65534)
    with pytest.raises(d4p_hpc.UsageError, match=f"no job {job.id}"):
        d4p_hpc.attach(job.id)
    assert place.entries() == sorted([own, foreign])  # ignored, not removed: they are not ours to remove


# --- 3. submits at once -----------------------------------------------------------------------------

def test_six_submits_at_once_from_six_processes_give_six_jobs_each_found_by_its_id(place, monkeypatch):
    go = place.tmp / "go"
    script = place.write("submit_one.py", textwrap.dedent("""
        import json, os, sys, time
        import d4p_hpc
        args = json.loads(sys.argv[1])
        deadline = time.monotonic() + 120
        while not os.path.exists(args["go"]):  # all six are started and imported before any submits
            if time.monotonic() > deadline:
                sys.exit("never told to go")
            time.sleep(0.01)
        job = d4p_hpc.submit(args["graph"], scheduler="local", mapping="simple", iterations=3,
                             results_root=args["root"])
        print(json.dumps({"id": job.id}))
    """))
    args = json.dumps({"go": str(go), "graph": str(WORD_COUNT), "root": str(place.root)})
    procs = [subprocess.Popen([sys.executable, str(script), args], cwd=place.work, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    go.touch()
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=DEADLINE)
        ids.append(said(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))["id"])

    assert len(set(ids)) == 6
    assert sorted(entry.split("@")[0] for entry in place.entries()) == sorted(ids)
    monkeypatch.chdir(place.other)
    for job_id in ids:
        job = d4p_hpc.attach(job_id)
        assert job.directory == place.root / f"word_count-{job_id}"
        assert job.wait(timeout=DEADLINE, progress=False) == "COMPLETED"
        assert counts(job.result()["CountWords.output"]) == independent_word_counts(3)


# --- 4, 5. a job that fails, a job cancelled --------------------------------------------------------

def test_the_result_of_a_failing_job_raises_job_failed_with_the_pe_and_its_error(place):
    graph = place.write("failing.py", FAILING_GRAPH)
    job = d4p_hpc.submit(str(graph), scheduler="local", iterations=5, results_root=str(place.root))
    with pytest.raises(d4p_hpc.JobFailed) as failed:
        job.result(timeout=DEADLINE)
    error = failed.value
    assert error.state == "FAILED" and error.pe == "Divide"
    assert error.error == "ZeroDivisionError: division by zero"
    assert error.job.id == job.id and error.log_tail.strip()
    assert "ZeroDivisionError" in error.log_tail and str(job.directory / "job.err") in error.log_tail
    first = str(error).splitlines()[0]
    assert first == f"job {job.id} ended FAILED: PE Divide raised ZeroDivisionError: division by zero"
    assert isinstance(error, d4p_hpc.D4pHpcError)
    assert job.state == "FAILED"
    assert not processes_mentioning(str(job.directory))


def test_cancel_of_a_running_job_ends_it_cancelled_with_nothing_left_running(place):
    job = d4p_hpc.submit(str(LONG_COUNT), attr="graph", scheduler="local", iterations=2000,
                         results_root=str(place.root))  # 100 s of work at 0.05 s a line
    wait_for(lambda: (job.directory / "run.json").exists(), timeout=DEADLINE)  # the run itself has begun
    assert job.state == "RUNNING"
    job.cancel()
    assert job.wait(timeout=DEADLINE, progress=False) == "CANCELLED"
    assert not processes_mentioning(str(job.directory))
    status = job.status()
    assert status.done and "SIGTERM" in status.reason, status
    with pytest.raises(d4p_hpc.JobFailed) as stopped:
        job.result()
    assert stopped.value.state == "CANCELLED"


# --- 6. several jobs ---------------------------------------------------------------------------------

def test_as_completed_yields_the_job_that_ends_first_first_and_list_jobs_filters(place, monkeypatch):
    gate = place.tmp / "gate"
    monkeypatch.setenv("D4P_TEST_GATE", str(gate))
    gated = d4p_hpc.submit(str(place.write("gated.py", GATED_GRAPH)), scheduler="local", iterations=3,
                           results_root=str(place.root))
    short = submit_word_count(place)
    ended = d4p_hpc.as_completed([gated, short], timeout=DEADLINE, poll=0.2)

    assert next(ended) is short  # the gated job cannot end before the gate is opened, below
    wait_for(lambda: gated.state == "RUNNING", timeout=DEADLINE)
    assert {j.id for j in d4p_hpc.list_jobs(place.root)} == {gated.id, short.id}
    assert [j.id for j in d4p_hpc.list_jobs(place.root, state="COMPLETED")] == [short.id]
    assert [j.id for j in d4p_hpc.list_jobs(place.root, state="RUNNING")] == [gated.id]

    gate.touch()
    assert next(ended) is gated
    assert list(ended) == []
    assert gated.state == "COMPLETED"
    assert sorted(gated.result()["Gate.output"]) == [1, 2, 3]
    assert {j.id for j in d4p_hpc.list_jobs(place.root, state="COMPLETED")} == {gated.id, short.id}
    assert d4p_hpc.list_jobs(place.root, state="RUNNING") == []


# --- 7. bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, said_", [
    ({"nodez": 2}, ["unknown keyword nodez", "valid:", "nodes", "walltime", "mapping"]),
    ({"nodes": "2"}, ["nodes", "must be a whole number", "'2'"]),
    ({"iterations": [1]}, ["iterations", "must be a whole number", "[1]"]),
    ({"data": object()}, ["data must be a dict", "or its JSON text", "object"]),
    ({"mapping": "nope"}, ["unknown mapping 'nope'", "multi"]),
], ids=["unknown-keyword", "nodes-as-text", "iterations-as-list", "data-as-object", "unknown-mapping"])
def test_a_bad_keyword_or_value_is_refused_in_one_line_and_nothing_is_submitted(place, options, said_):
    with pytest.raises(d4p_hpc.UsageError) as refused:
        d4p_hpc.submit(str(WORD_COUNT), scheduler="local", results_root=str(place.root), **options)
    message = str(refused.value)
    assert "\n" not in message and all(part in message for part in said_), message
    place.nothing_submitted()


def test_an_unknown_mapping_for_run_is_refused_and_nothing_runs(place):
    with pytest.raises(d4p_hpc.UsageError) as refused:
        d4p_hpc.run(str(WORD_COUNT), mapping="nope", results=str(place.root / "run"))
    message = str(refused.value)
    assert "\n" not in message and "unknown mapping 'nope'" in message and "simple" in message
    place.nothing_submitted()


def test_a_graph_built_in_a_script_run_by_python_c_is_refused_saying_what_to_do(place):
    code = textwrap.dedent("""
        import json, sys
        import d4p_hpc
        from d4p_hpc.workflow import ProducerPE, WorkflowGraph

        class One(ProducerPE):
            def __init__(self):
                ProducerPE.__init__(self)

            def _process(self, inputs):
                return 1

        graph = WorkflowGraph()
        graph.add(One())
        try:
            d4p_hpc.submit(graph, scheduler="local", iterations=1, results_root=sys.argv[1])
        except d4p_hpc.UsageError as err:
            print(json.dumps({"type": type(err).__name__, "message": str(err)}))
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(place.root)], cwd=place.work, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=DEADLINE)
    refused = said(proc)
    assert refused["type"] == "GraphError" and "\n" not in refused["message"]
    assert "cannot import it" in refused["message"] and "write its PEs and the graph to a file" in refused["message"]
    assert "d4p_hpc.submit('graph.py'" in refused["message"]
    place.nothing_submitted()


# --- 8. where the graph comes from ---------------------------------------------------------------------

SQUARES_MODULE = '''"""Two graphs, built at import: numbers -> their squares, and numbers -> their doubles.

Written against d4p_hpc.workflow, which a user's own process imports as it is (dispel4py.* is
d4p-hpc's stand-in only where d4p-hpc loads a graph file).
"""
from d4p_hpc.workflow import IterativePE, ProducerPE, WorkflowGraph


class Numbers(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class Times(IterativePE):
    def __init__(self, squared):
        IterativePE.__init__(self)
        self.squared = squared

    def _process(self, n):
        return n * n if self.squared else 2 * n


def build(squared):
    graph = WorkflowGraph()
    graph.connect(Numbers(), "output", Times(squared), "input")
    return graph


squares = build(True)
doubles = build(False)  # a second graph: the job must be told which one
'''


def test_a_graph_given_as_a_module_name_or_as_an_object_of_a_module_runs(place):
    modules = place.tmp / "modules"
    modules.mkdir()
    shutil.copy(WORD_COUNT, modules / "wc_module.py")
    (modules / "squares_module.py").write_text(SQUARES_MODULE)
    result = said(user_script(place, """
        import json, sys
        args = json.loads(sys.argv[1])
        sys.path.insert(0, args["modules"])
        import d4p_hpc
        import squares_module


        def main():
            by_name = d4p_hpc.submit("wc_module", scheduler="local", iterations=20, results_root=args["root"])
            by_object = d4p_hpc.submit(squares_module.squares, scheduler="local", iterations=6,
                                       results_root=args["root"])
            said = {}
            for how, job in (("name", by_name), ("object", by_object)):
                state = job.wait(timeout=180, progress=False)
                spec = json.loads((job.directory / "spec.json").read_text())["spec"]
                said[how] = {"state": state, "graph": spec["graph"], "attr": spec["attr"],
                             "outputs": {key: list(items) for key, items in job.result().items()}}
            print(json.dumps(said))


        if __name__ == "__main__":
            main()
    """, {"modules": str(modules), "root": str(place.root)}, cwd=place.other))
    by_name, by_object = result["name"], result["object"]
    assert by_name["state"] == "COMPLETED" and by_object["state"] == "COMPLETED", result
    assert by_name["graph"] == str(modules / "wc_module.py") and by_name["attr"] is None
    assert counts(by_name["outputs"]["CountWords.output"]) == independent_word_counts(20)
    assert by_object["graph"] == str(modules / "squares_module.py") and by_object["attr"] == "squares"
    assert by_object["outputs"] == {"Times.output": by_object["outputs"]["Times.output"]}
    assert sorted(by_object["outputs"]["Times.output"]) == [1, 4, 9, 16, 25, 36]


def test_a_script_that_submits_itself_without_the_main_guard_is_refused_and_queues_nothing(place):
    # (its values are written into it: the pre-check imports it, with the pre-check's argv)
    proc = user_script(place, """
        import d4p_hpc
        from d4p_hpc.workflow import ProducerPE, WorkflowGraph


        class One(ProducerPE):
            def __init__(self):
                ProducerPE.__init__(self)

            def _process(self, inputs):
                return 1


        graph = WorkflowGraph()
        graph.add(One())
        job = d4p_hpc.submit(graph, scheduler="local", iterations=1, results_root=ROOT)
        print("submitted", job.id)
    """.replace("ROOT", repr(str(place.root))), name="selfsubmit.py")
    assert proc.returncode != 0 and "submitted" not in proc.stdout, explain(proc)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("d4p_hpc.errors.GraphError:"), explain(proc)
    assert 'put the call under `if __name__ == "__main__":`' in last and "selfsubmit.py" in last
    assert proc.stderr.count('if __name__ == "__main__"') == 1, explain(proc)  # one error, not one per load
    place.nothing_submitted()


# --- 9. run here ---------------------------------------------------------------------------------------

def test_run_under_multi_gives_the_outputs_of_simple(place):
    multi = d4p_hpc.run(str(WORD_COUNT), mapping="multi", processes=2, iterations=40, progress=False)
    simple = d4p_hpc.run(str(WORD_COUNT), mapping="simple", iterations=40, progress=False)
    assert isinstance(multi, d4p_hpc.Run) and multi.scheduler == "run"
    assert multi.state == "COMPLETED" and simple.state == "COMPLETED"
    assert multi.directory.parent == place.work / "d4p-results" and multi.directory != simple.directory
    assert outputs(multi.directory) == outputs(simple.directory)
    assert counts(multi.result()["CountWords.output"]) == independent_word_counts(40)
    assert not processes_mentioning(str(multi.directory))


def test_a_failing_run_leaves_the_caller_unharmed_and_its_result_raises(place):
    graph = place.write("failing.py", FAILING_GRAPH)
    result = said(user_script(place, """
        import json, sys
        import d4p_hpc

        if __name__ == "__main__":
            args = json.loads(sys.argv[1])
            run = d4p_hpc.run(args["graph"], mapping="multi", processes=2, iterations=5, progress=False)
            said = {"state": run.state, "directory": str(run.directory)}
            try:
                run.result()
            except d4p_hpc.JobFailed as failed:
                said.update(raised=True, pe=failed.pe, error=failed.error, failed_state=failed.state)
            said["after"] = sum(range(10))  # the caller goes on
            print(json.dumps(said))
    """, {"graph": str(graph)}))
    assert result["state"] == "FAILED" and result["raised"] and result["failed_state"] == "FAILED"
    assert result["pe"] == "Divide" and result["error"] == "ZeroDivisionError: division by zero"
    assert result["after"] == 45
    assert not processes_mentioning(result["directory"])


def test_run_without_waiting_returns_a_run_that_completes_later(place, monkeypatch):
    gate = place.tmp / "gate"
    monkeypatch.setenv("D4P_TEST_GATE", str(gate))
    run = d4p_hpc.run(str(place.write("gated.py", GATED_GRAPH)), mapping="multi", processes=2, iterations=4,
                      wait=False)
    assert isinstance(run, d4p_hpc.Run)
    assert run.status().state in ("PENDING", "RUNNING")  # it cannot have ended: the gate is shut
    gate.touch()
    assert run.wait(timeout=DEADLINE, progress=False) == "COMPLETED"
    assert sorted(run.result()["Gate.output"]) == [1, 2, 3, 4]
    assert not processes_mentioning(str(run.directory))


def test_run_with_inputs_for_a_pe_not_in_the_graph_is_refused_before_it_runs(place):
    results = place.root / "run"
    with pytest.raises(d4p_hpc.UsageError) as refused:
        d4p_hpc.run(str(WORD_COUNT), data={"NoSuchPE": 3}, results=str(results), progress=False)
    message = str(refused.value)
    assert "\n" not in message and "NoSuchPE" in message and "ProduceLines" in message
    assert not results.exists() and not (place.work / "d4p-results").exists()
    assert place.entries() == [] and not processes_mentioning(str(results))


# --- 10. resume --------------------------------------------------------------------------------------

def test_a_cancelled_job_with_checkpoints_resumes_as_a_new_job_to_exact_outputs(place):
    iterations = 160  # 8 s of work at 0.05 s a line, a checkpoint every second
    job = d4p_hpc.submit(str(LONG_COUNT), attr="graph", scheduler="local", iterations=iterations,
                         checkpoint_every=1, walltime="00:05:00", results_root=str(place.root))
    first = job.id
    wait_for(lambda: list(job.directory.glob("checkpoints/*/complete.json")), timeout=DEADLINE)
    assert job.state == "RUNNING"
    job.cancel()
    assert job.wait(timeout=DEADLINE, progress=False) == "CANCELLED"

    with pytest.raises(d4p_hpc.UsageError) as refused:
        job.resume(mapping="simple")
    message = str(refused.value)
    assert "cannot change mapping" in message and "it may change: walltime" in message
    assert job.id == first and job.state == "CANCELLED"  # nothing was submitted

    resumed = job.resume(walltime="00:10:00")
    assert resumed.id != first and resumed.id.startswith("local-") and resumed.directory == job.directory
    assert resumed.wait(timeout=DEADLINE, progress=False) == "COMPLETED"
    spec = json.loads((job.directory / "spec.json").read_text())["spec"]
    assert spec["walltime"] == "00:10:00" and spec["mapping"] == "multi"
    segments = resumed.status().segments
    assert len(segments) == 2 and first in segments[0] and "CANCELLED" in segments[0], segments
    assert resumed.id in segments[1] and "COMPLETED" in segments[1], segments

    tagged, words = long_count_expected(iterations)
    result = resumed.result()
    assert Counter(tuple(item) for item in result["Slow.tagged"]) == tagged
    assert counts(result["Count.output"]) == words
    assert not processes_mentioning(str(job.directory))
