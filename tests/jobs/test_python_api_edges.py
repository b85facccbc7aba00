"""The Python API at its edges, each case found by an outside tester who tried to break it with the
README and ``help()`` only: every one now ends in one clear error before anything starts, or in
the exact result.

* ``run`` into a directory that holds a run is refused (it used to hand back the old run), and
  ``run(wait=False)`` is checked as fully as ``run()`` (it used to return a handle that failed later);
* ``cancel()`` at once after ``run(wait=False)`` stops the run (it used to say "already ended");
* the index of jobs never follows a link, nor an entry naming a directory that is not that job's,
  nor a relative ``$XDG_STATE_HOME``; a folder opened by hand is made private again;
* a run is found by its id alone, as a job is; a module inside a package runs as ``d4p-hpc run`` runs it;
* wrong types and values (timeouts, states, roots, flags, counts over the limit) are one line each.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from helpers.runs import EXAMPLES, cli, explain, processes_mentioning

import d4p_hpc
from d4p_hpc.jobs import index

WORD_COUNT = EXAMPLES / "word_count.py"
HANG = '''from dispel4py.base import ProducerPE
from dispel4py.workflow_graph import WorkflowGraph
import time


class Hang(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)

    def _process(self, inputs):
        time.sleep(3600)
        return 1


graph = WorkflowGraph()
graph.add(Hang())
'''


@pytest.fixture
def here(tmp_path, isolated_config, monkeypatch) -> Path:
    """A working directory, with an index of jobs of the test's own; whatever is left running under
    the test's folder is killed afterwards."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    yield isolated_config
    for pid in processes_mentioning(f"{tmp_path}/"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_run_into_a_directory_that_holds_a_run_is_refused(here):
    first = d4p_hpc.run(str(WORD_COUNT), results=str(here / "r"), progress=False)
    assert first.state == "COMPLETED"
    before = sorted(p.name for p in (here / "r").rglob("*"))
    for wait in (True, False):
        with pytest.raises(d4p_hpc.UsageError, match="already holds a run"):
            d4p_hpc.run(str(EXAMPLES / "split_merge.py"), results=str(here / "r"), wait=wait)
    assert sorted(p.name for p in (here / "r").rglob("*")) == before


@pytest.mark.parametrize("options, says", [
    ({"graph": "missing.py"}, "does not exist"),
    ({"data": {"Nope": 1}}, "'Nope', which is not in the graph"),
    ({"processes": 0}, "processes must be at least 1"),
    ({"results": ""}, "results must be a path"),
    ({"data": {"ProduceLines": 10**15}}, "more than the limit"),
    ({"wait": "no"}, "wait must be True or False"),
])
def test_run_without_waiting_is_checked_as_fully_as_run(here, options, says):
    options = {"graph": str(WORD_COUNT), "wait": False, **options}
    with pytest.raises(d4p_hpc.UsageError, match=says) as refused:
        d4p_hpc.run(options.pop("graph"), **options)
    assert "\n" not in str(refused.value)
    assert not (here / "d4p-results").exists() or not list((here / "d4p-results").iterdir())


def test_cancel_at_once_after_run_without_waiting_stops_the_run(here):
    graph = here / "hang.py"
    graph.write_text(HANG)
    started = d4p_hpc.run(str(graph), wait=False)
    assert started.cancel() is True
    assert started.wait(timeout=60, progress=False) in ("CANCELLED", "FAILED")
    assert not processes_mentioning(str(started.directory))
    assert started.cancel() is False  # ended: nothing to do, and no error


def test_a_run_is_found_by_its_id_alone(here, tmp_path, monkeypatch):
    ran = d4p_hpc.run(str(WORD_COUNT), results=str(tmp_path / "elsewhere" / "mine"), progress=False)
    monkeypatch.chdir(tmp_path)
    assert d4p_hpc.attach(ran.id).directory == ran.directory
    proc = cli("status", ran.id, cwd=tmp_path)
    assert proc.returncode == 0 and "COMPLETED" in proc.stdout, explain(proc)


def test_the_index_follows_no_link_and_no_entry_for_another_job(here, tmp_path):
    one = d4p_hpc.submit(str(WORD_COUNT), scheduler="local", mapping="simple")
    two = d4p_hpc.submit(str(WORD_COUNT), scheduler="local", mapping="simple")
    assert one.wait(progress=False) == two.wait(progress=False) == "COMPLETED"
    folder = index.folder()
    (entry_one,) = folder.glob(f"{one.id}@*")
    (entry_two,) = folder.glob(f"{two.id}@*")
    # one's entry replaced by a link to two's, then by a file naming two's directory
    entry_one.unlink()
    entry_one.symlink_to(entry_two)
    with pytest.raises(d4p_hpc.UsageError, match=f"no job {one.id}"):
        d4p_hpc.attach(one.id, results_root=tmp_path / "nowhere")
    entry_one.unlink()
    entry_one.write_text(str(two.directory))
    with pytest.raises(d4p_hpc.UsageError, match=f"no job {one.id}"):
        d4p_hpc.attach(one.id, results_root=tmp_path / "nowhere")
    # a folder opened by hand is made the user's alone at the next submit
    folder.chmod(0o777)
    d4p_hpc.submit(str(WORD_COUNT), scheduler="local", mapping="simple").wait(progress=False)
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_relative_state_home_is_not_used(here, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", "relstate")
    assert index.folder().is_absolute() and "relstate" not in str(index.folder())


def test_a_module_inside_a_package_runs_as_the_command_runs_it(here, monkeypatch):
    package = here / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "pes.py").write_text("from dispel4py.base import ProducerPE\n\n\nclass One(ProducerPE):\n"
                                    "    def __init__(self):\n        ProducerPE.__init__(self)\n\n"
                                    "    def _process(self, inputs):\n        return 1\n")
    (package / "flow.py").write_text("from dispel4py.workflow_graph import WorkflowGraph\n\nfrom .pes import One\n\n"
                                     "graph = WorkflowGraph()\ngraph.add(One())\n")
    monkeypatch.syspath_prepend(str(here))
    ran = d4p_hpc.run("mypkg.flow", iterations=3, progress=False)
    assert ran.state == "COMPLETED" and [list(v) for v in ran.result().values()] == [[1, 1, 1]]


@pytest.mark.parametrize("call, says", [
    (lambda: d4p_hpc.load_graph(42), "load_graph takes a graph file"),
    (lambda: d4p_hpc.list_jobs(results_root=5), "results_root must be a path"),
    (lambda: d4p_hpc.list_jobs(state="BOGUS"), "state must be one of"),
    (lambda: list(d4p_hpc.as_completed("local-x")), "as_completed takes jobs"),
    (lambda: d4p_hpc.submit(str(WORD_COUNT), scheduler="local", checkpoint_every="x" * 200_000), "whole number"),
    (lambda: d4p_hpc.submit(str(WORD_COUNT), scheduler="local", check="yes"), "check must be True or False"),
    (lambda: d4p_hpc.submit(""), "graph must name a graph file"),
])
def test_a_wrong_value_is_one_short_line(here, call, says):
    with pytest.raises(d4p_hpc.UsageError, match=says) as refused:
        call()
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 1000


def test_a_state_is_named_in_any_case_and_timeouts_are_checked(here):
    job = d4p_hpc.run(str(WORD_COUNT), progress=False)
    assert [j.directory for j in d4p_hpc.list_jobs(state="completed")] == [job.directory]
    for timeout in ("x", float("nan"), -5):
        with pytest.raises(d4p_hpc.UsageError, match="timeout must be a number"):
            job.wait(timeout=timeout)
    with pytest.raises(d4p_hpc.UsageError, match="unknown keyword bogus"):
        job.resume(bogus=1)


def test_a_directory_given_as_the_graph_is_named_a_directory(here):
    (here / "gdir").mkdir()
    with pytest.raises(d4p_hpc.UsageError, match="is a directory"):
        d4p_hpc.submit(str(here / "gdir"), scheduler="local")
    assert not (here / "d4p-results").exists()
