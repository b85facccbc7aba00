"""Runs that fail: a PE that raises (in process, preprocess or postprocess), a process killed
outright or ended by a PE without a word, items that cannot travel between processes, a PE that
cannot be copied. The run ends FAILED, saying where and why, keeps what was written before, and
leaves nothing running. And one that must not fail: a chain of 500 PEs."""

from __future__ import annotations

import json

import pytest

from helpers.dynamic import needs_redis
from helpers.runs import DATA, cli, every_mapping, explain, instances_of, processes_mentioning, raw_items, read_json


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


@pytest.mark.parametrize("mapping,n", [("simple", 1), ("multi", 2), ("mpi", 2)], ids=["simple", "multi-n2", "mpi-n2"])
def test_a_pe_that_ends_its_process_without_a_word_fails_the_run_naming_it(mapping, n, tmp_path):
    """os._exit in a PE (or a crash in native code): the run's own process supervises the one that
    ran it, so the run ends FAILED (exit code 1) naming the PE, not RUNNING with no word."""
    results = tmp_path / "results"
    proc = cli("run", DATA / "g_exit.py", "-m", mapping, "-n", n, "-i", 20, "--results", results, timeout=60)
    assert proc.returncode == 1, explain(proc)
    record = read_json(results / "run.json")
    assert (record["state"], record["exit_code"]) == ("FAILED", 1) and record["ended"], record
    assert record["error"]["pe"] == "Die", record["error"]
    why = record["error"]["traceback"]
    assert "\n" not in why and "exit code 3" in why and "PE Die called os._exit" in why, why
    assert "PE Die failed" in proc.stdout + proc.stderr and "exit code 3" in proc.stdout + proc.stderr, explain(proc)
    assert not processes_mentioning(str(results))


@pytest.mark.parametrize("mapping", ["dyn_multi", pytest.param("hybrid_redis", marks=needs_redis)])
def test_a_pe_that_cannot_be_copied_to_the_workers_fails_in_one_line_naming_it(mapping, tmp_path):
    """The dynamic mappings give every worker a copy of a stateless PE: one holding a lock cannot be
    copied. One line names the PE and the attribute, and says to create it in preprocess()."""
    results = tmp_path / "results"
    proc = cli("run", DATA / "g_uncopyable.py", "-m", mapping, "-n", 2, "-i", 20, "--results", results, timeout=60)
    assert proc.returncode == 1, explain(proc)
    record = read_json(results / "run.json")
    assert record["state"] == "FAILED" and record["error"]["pe"] == "Locked", record["error"]
    why = record["error"]["traceback"]
    assert "\n" not in why and "Traceback" not in why, why
    assert "PE Locked cannot be copied for a worker: its attribute 'lock'" in why and "preprocess()" in why, why
    assert "Traceback" not in proc.stdout + proc.stderr, explain(proc)
    assert not processes_mentioning(str(results))


@pytest.mark.parametrize("mapping,n", [("simple", 1), ("multi", 3), ("mpi", 2)])
def test_a_chain_of_500_pes_runs_and_keeps_the_order_of_its_items(mapping, n, tmp_path):
    """Local deliveries go depth first, and past a depth once the writing call returns: no
    RecursionError, and the PE at the end sees the items in the order they were written."""
    results = tmp_path / "results"
    proc = cli("run", DATA / "g_chain.py", "-m", mapping, "-n", n, "-i", 30, "--results", results, timeout=120)
    assert proc.returncode == 0, explain(proc)
    assert raw_items(results, "Order", "output") == [list(range(501, 531))]


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


@pytest.mark.parametrize("mapping", every_mapping())
def test_every_mapping_fails_alike_when_a_pe_raises(mapping, tmp_path):
    """Whatever the mapping, a PE that raises ends the run FAILED with exit code 1, run.json names the
    PE and its exception, what Boom wrote before the failing item is kept (once; the failing item never),
    and no process of the run is left."""
    results = tmp_path / "results"
    proc = cli("run", DATA / "g_failing.py", "-m", mapping, "-n", 2, "-i", 30, "--results", results, timeout=120)
    assert proc.returncode == 1, explain(proc)
    record = read_json(results / "run.json")
    assert (record["state"], record["exit_code"]) == ("FAILED", 1) and record["ended"], record
    assert record["error"]["pe"] == "Boom", record["error"]
    assert "ValueError: boom at 5" in record["error"]["traceback"], record["error"]
    kept = raw_items(results, "Boom", "kept")
    assert len(kept) == len(set(kept)) and {1, 2, 3, 4} <= set(kept) and 5 not in kept, kept
    assert not processes_mentioning(str(results))
