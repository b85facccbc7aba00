"""dyn_multi and dyn_auto_multi (and what all dynamic mappings share): a pool of workers on one task queue.

Every stateless example, with 1, 2 and 4 workers, gives simple's outputs; stateful
PEs are refused before anything runs; the autoscaling policy and its
timeline; termination that waits for slow PEs; a failing PE; SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections import Counter

import pytest

from d4p_hpc.mappings.dynamic.autoscale import SHRINK_AFTER, Autoscaler
from helpers.dynamic import (FLUSH_GRAPH, MARKED_STATEFUL_GRAPH, SLOW_GRAPH, needs_redis, reference, tagged_env,
                             tagged_pids, write_graph)
from helpers.runs import CASES, DATA, EXAMPLES, cli, d4p_hpc_cmd, diff, explain, input_args, outputs, read_json

__all__ = ["reference"]  # the shared fixture

MAPPINGS = ["dyn_multi", "dyn_auto_multi"]
STATEFUL_CASES = {"word_count": "CountWords", "groupings": "Scale"}
STATELESS_CASES = [c for c in CASES if c not in STATEFUL_CASES]


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("case", STATELESS_CASES)
def test_examples_equal_simple(case, mapping, n, reference, tmp_path):
    file, inputs = CASES[case]
    results = tmp_path / "results"
    proc = cli("run", EXAMPLES / file, "-m", mapping, "-n", n, *input_args(inputs), "--results", results)
    assert proc.returncode == 0, explain(proc)
    record = read_json(results / "run.json")
    assert (record["state"], record["mapping"], record["processes"]) == ("COMPLETED", mapping, n)
    got = outputs(results)
    assert got == reference(case), diff(got, reference(case))
    assert "notice" not in proc.stderr  # instance counts of the static mappings do not apply


@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("case", list(STATEFUL_CASES))
def test_stateful_pe_is_refused_before_anything_runs(case, mapping, tmp_path):
    file, inputs = CASES[case]
    results = tmp_path / "results"
    proc = cli("run", EXAMPLES / file, "-m", mapping, "-n", 2, *input_args(inputs), "--results", results)
    assert proc.returncode == 2, explain(proc)
    assert f"PE {STATEFUL_CASES[case]} " in proc.stderr and "hybrid_redis" in proc.stderr
    assert not results.exists()


def test_pe_marked_stateful_is_refused(tmp_path):
    graph = write_graph(tmp_path, MARKED_STATEFUL_GRAPH)
    proc = cli("run", graph, "-m", "dyn_multi", "-n", 2, "-i", 3, "--results", tmp_path / "r")
    assert proc.returncode == 2 and "PE Sum is marked stateful" in proc.stderr, explain(proc)


def test_slow_pe_does_not_end_the_run_early(tmp_path):
    """No idle timeout: 2 items taking 2.5 s each still all arrive (end-of-stream accounting)."""
    graph = write_graph(tmp_path, SLOW_GRAPH)
    results = tmp_path / "results"
    proc = cli("run", graph, "-m", "dyn_multi", "-n", 2, "-i", 2, "--results", results,
               env={"SLOW_DELAY": "2.5"})
    assert proc.returncode == 0, explain(proc)
    assert sorted(map(tuple, next(iter(outputs(results).values())).elements())) == \
        [("seq", 1, 1, "done"), ("seq", 2, 4, "done")]


@pytest.mark.parametrize("mapping", MAPPINGS + [pytest.param("dyn_redis", marks=needs_redis)])
def test_what_a_stateless_postprocess_writes_is_processed(mapping, tmp_path):
    """Each worker's copy of Flush is postprocessed before Keep finishes, and its -1 is not lost."""
    results = tmp_path / "results"
    proc = cli("run", write_graph(tmp_path, FLUSH_GRAPH), "-m", mapping, "-n", 3, "-i", 40, "--results", results)
    assert proc.returncode == 0, explain(proc)
    copies = len(read_json(results / "metrics.json")["pes"]["Flush"]["instances"])
    assert outputs(results)["Keep.output"] == Counter(list(range(1, 41)) + [-1] * copies)


@pytest.mark.parametrize("mapping", ["dyn_auto_multi", pytest.param("dyn_auto_redis", marks=needs_redis)])
def test_auto_pool_grows_with_backlog_and_is_recorded(mapping, tmp_path):
    """The pool grows with the backlog, and the parked workers it takes in do resume work."""
    graph = write_graph(tmp_path, SLOW_GRAPH)
    results = tmp_path / "results"
    # (120 tasks of 0.05 s: a backlog that lasts long enough for a loaded machine's driver to see it)
    proc = cli("run", graph, "-m", mapping, "-n", 3, "-i", 120, "--results", results,
               env={"SLOW_DELAY": "0.05"})
    assert proc.returncode == 0, explain(proc)
    metrics = read_json(results / "metrics.json")
    sizes = [n for _t, n in metrics["pool_size"]]
    assert sizes[0] == 1 and max(sizes) == 3 and metrics["pool_max"] == 3, metrics["pool_size"]
    times = [t for t, _n in metrics["pool_size"]]
    assert times == sorted(times) and times[-1] <= metrics["wall_seconds"] + 0.5
    assert metrics["pes"]["Tag"]["items_in"] == 120
    assert len([i for i in metrics["pes"]["Slow"]["instances"] if i["items_in"]]) >= 2, metrics["pes"]["Slow"]


@pytest.mark.parametrize("mapping", ["dyn_auto_multi", pytest.param("dyn_auto_redis", marks=needs_redis)])
def test_workers_parked_all_along_still_close_every_pe(mapping, tmp_path):
    """A backlog of 40 cheap tasks keeps the pool at 1 of 4 workers: the parked ones must still take
    the close messages (postprocess their copies), or the run never ends. Repeated, since which worker
    is parked when a PE closes varies (the heavy benchmark graph at -n 4 once hung on this)."""
    graph = write_graph(tmp_path, FLUSH_GRAPH)
    for k in range(4):
        results = tmp_path / f"results-{k}"
        proc = cli("run", graph, "-m", mapping, "-n", 4, "-i", 40, "--results", results, timeout=30)
        assert proc.returncode == 0, explain(proc)
        metrics = read_json(results / "metrics.json")
        assert max(n for _t, n in metrics["pool_size"]) < 4, metrics["pool_size"]
        copies = len(metrics["pes"]["Flush"]["instances"])
        assert outputs(results)["Keep.output"] == Counter(list(range(1, 41)) + [-1] * copies)


def test_parked_worker_takes_close_messages_and_wakes_the_driver(tmp_path):
    """LocalBroker: a worker outside the pool gets no tasks but does get the close of a PE; the run's
    end wakes a driver waiting in ``wait`` at once."""
    import multiprocessing

    from d4p_hpc.workflow.loader import load_graph
    from d4p_hpc.mappings.dynamic.dyn_multi import LocalBroker
    from d4p_hpc.mappings.runtime.plan import build_plan
    from d4p_hpc.mappings.dynamic.tasks import CONTROL_QUEUE, SHARED_QUEUE

    plan = build_plan(load_graph(str(write_graph(tmp_path, FLUSH_GRAPH)), None), 2)
    numbers, flush, keep = (next(n for n in plan.pes if n.key == k) for k in ("Numbers", "Flush", "Keep"))
    broker = LocalBroker(multiprocessing.get_context("fork"), plan, 2)
    broker.set_pool(1)
    # the driver queues one task for Flush and closes Numbers: Flush has work left, nothing closes yet
    broker.commit(None, {SHARED_QUEUE: [(flush.first_gid, "input", 1)]}, {}, 0.0, close=numbers.index)
    broker.proc = 2
    assert not broker.active()
    assert broker.take(parked=True) == []  # no task for a parked worker, however long it polls
    broker.proc = 1
    unit = next(u for _ in range(50) for u in broker.take(parked=False))
    assert (unit.gid, unit.items) == (SHARED_QUEUE, [(flush.first_gid, "input", 1)])
    broker.commit(unit, {}, {flush.index: 1}, 0.0)  # the last Flush task: Flush is closing
    for proc in (2, 1, 2, 1):  # Flush, then Keep, closes on both workers, parked or not
        broker.proc = proc
        unit = next(u for _ in range(50) for u in broker.take(parked=proc == 2))
        assert unit.gid == CONTROL_QUEUE and unit.close in (flush.index, keep.index)
        broker.commit(unit, {}, {}, 0.0)
    assert broker.state() == "COMPLETED"
    started = time.monotonic()
    broker.wait(5.0)
    assert time.monotonic() - started < 1.0
    broker.close()


class TestPolicy:
    def test_grows_at_once_within_bounds(self):
        scaler = Autoscaler(4, t0=0.0)
        assert scaler.update(0.1, backlog=10_000, tasks_done=0, busy_seconds=0.0) == 4
        assert Autoscaler(4, 0.0).update(0.1, backlog=2, tasks_done=10, busy_seconds=100.0) == 2  # <= tasks
        assert Autoscaler(4, 0.0).update(0.1, backlog=0, tasks_done=0, busy_seconds=0.0) == 1

    def test_sized_by_measured_cost(self):
        # 30 tasks of 0.1 s: 3 s of work, drained in about 1 s by 3 workers
        assert Autoscaler(8, 0.0).wanted(30, tasks_done=10, busy_seconds=1.0) == 3

    def test_shrinks_one_step_per_interval_and_records_changes(self):
        scaler = Autoscaler(4, t0=0.0)
        scaler.update(1.0, 10_000, 0, 0.0)
        assert scaler.update(1.1, 0, 0, 0.0) == 4  # lower demand starts the clock
        assert scaler.update(1.1 + SHRINK_AFTER, 0, 0, 0.0) == 3
        assert scaler.update(1.2 + SHRINK_AFTER, 0, 0, 0.0) == 3
        assert scaler.update(1.1 + 2 * SHRINK_AFTER, 0, 0, 0.0) == 2
        assert [n for _t, n in scaler.metrics(9.0)["pool_size"]] == [1, 4, 3, 2, 2]


def test_failing_pe_fails_the_run_and_keeps_partial_outputs(tmp_path):
    results = tmp_path / "results"
    tag = uuid.uuid4().hex
    proc = cli("run", DATA / "g_failing.py", "-m", "dyn_multi", "-n", 2, "-i", 30, "--results", results,
               env=tagged_env(tag))
    assert proc.returncode == 1, explain(proc)
    record = read_json(results / "run.json")
    assert record["state"] == "FAILED" and record["error"]["pe"] == "Boom"
    assert "boom at 5" in record["error"]["traceback"]
    kept = set(outputs(results)["Boom.kept"].elements())
    assert {1, 2, 3, 4} <= kept and 5 not in kept
    assert tagged_pids(tag) == set()


@pytest.mark.parametrize("mapping", ["dyn_multi", *(pytest.param(m, marks=needs_redis)
                                                    for m in ("dyn_redis", "hybrid_redis"))])
def test_sigterm_to_the_driver_cancels_and_leaves_no_process(mapping, tmp_path):
    """No worker and no redis-server (they inherit the tag) outlive a SIGTERMed driver."""
    graph = write_graph(tmp_path, SLOW_GRAPH)
    results = tmp_path / "results"
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(d4p_hpc_cmd() + ["run", str(graph), "-m", mapping, "-n", "2", "-i", "200",
                                             "--results", str(results)],
                            env={**tagged_env(tag), "SLOW_DELAY": "0.2"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not list(results.glob("outputs/Tag.output/part-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM, proc.stderr.read()
    assert read_json(results / "run.json")["state"] == "CANCELLED"
    time.sleep(0.2)
    assert tagged_pids(tag) == set()
