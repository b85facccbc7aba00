"""dyn_redis, dyn_auto_redis and hybrid_redis on a real redis-server (never a fake one).

The examples with 1, 2 and 4 workers equal simple's outputs (stateful counts exact
under hybrid_redis, with the mpi mapping's group-by hash); workers started as
separate OS processes attach through the connection file; a SIGKILLed
worker's tasks are redelivered, with nothing lost and nothing twice; a slow
PE keeps its tasks; backpressure bounds Redis; the per-job Redis is private
and never outlives a run (SIGTERM to the driver: tests/runs/test_dynamic.py).
"""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections import Counter

import pytest

from d4p_hpc.mappings.redis.server import RedisServer
from helpers.dynamic import (BIG_GRAPH, MARKED_STATEFUL_GRAPH, SLOW_GRAPH, needs_redis, python_module, reference,
                             server_pid, tagged_env, tagged_pids, wait_file, wait_gone, write_graph)
from helpers.runs import (CASES, DATA, EXAMPLES, cli, d4p_hpc_cmd, diff, explain, independent_word_counts, input_args,
                          outputs, raw_items, read_json)

redis = pytest.importorskip("redis")
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402
pytestmark = needs_redis

__all__ = ["reference"]  # the shared fixture

REDIS_MAPPINGS = ["dyn_redis", "dyn_auto_redis", "hybrid_redis"]
STATEFUL_CASES = {"word_count": "CountWords", "groupings": "Scale"}
SLOW_WANT = Counter(("seq", n, n * n, "done") for n in range(1, 91))


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("mapping", REDIS_MAPPINGS)
@pytest.mark.parametrize("case", list(CASES))
def test_examples_equal_simple(case, mapping, n, reference, tmp_path):
    file, inputs = CASES[case]
    results = tmp_path / "results"
    tag = uuid.uuid4().hex
    proc = cli("run", EXAMPLES / file, "-m", mapping, "-n", n, *input_args(inputs), "--results", results,
               env=tagged_env(tag))
    if case in STATEFUL_CASES and mapping != "hybrid_redis":
        assert proc.returncode == 2, explain(proc)
        assert f"PE {STATEFUL_CASES[case]} " in proc.stderr and "hybrid_redis" in proc.stderr
        assert not results.exists()
        return
    assert proc.returncode == 0, explain(proc)
    record = read_json(results / "run.json")
    assert (record["state"], record["mapping"], record["processes"]) == ("COMPLETED", mapping, n)
    got = outputs(results)
    assert got == reference(case), diff(got, reference(case))
    metrics = read_json(results / "metrics.json")
    assert metrics["workers"] == n and metrics["redeliveries"] == 0
    if case == "word_count":
        _check_exact_counts(results, inputs, metrics, several=(n == 4))
    assert not (results / "redis.json").exists()
    assert tagged_pids(tag) == set()


def _check_exact_counts(results, iterations, metrics, several):
    items = [tuple(x) for x in raw_items(results, "CountWords", "output")]
    assert [w for w, c in Counter(w for w, _ in items).items() if c > 1] == []
    assert dict(items) == dict(independent_word_counts(iterations))
    counter = metrics["pes"]["CountWords"]["instances"]
    if several:
        assert len([i for i in counter if i["items_in"]]) > 1, counter


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec for the comparison")
def test_hybrid_instances_get_the_same_keys_as_under_mpi(tmp_path):
    """The same deterministic group-by hash: instance k of CountWords sees the same words under both."""
    loads = {}
    for mapping in ("mpi", "hybrid_redis"):
        results = tmp_path / mapping
        proc = cli("run", EXAMPLES / "word_count.py", "-m", mapping, "-n", 4, "-i", 60, "--results", results)
        assert proc.returncode == 0, explain(proc)
        instances = read_json(results / "metrics.json")["pes"]["CountWords"]["instances"]
        loads[mapping] = sorted((i["instance"], i["items_in"], i["items_out"]) for i in instances)
    assert loads["hybrid_redis"] == loads["mpi"] and len(loads["mpi"]) > 1


def test_pe_marked_stateful_gets_a_fixed_instance_under_hybrid(tmp_path):
    graph = write_graph(tmp_path, MARKED_STATEFUL_GRAPH)
    results = tmp_path / "results"
    proc = cli("run", graph, "-m", "hybrid_redis", "-n", 3, "-i", 100, "--results", results)
    assert proc.returncode == 0, explain(proc)
    # one total per instance of the plan (as under mpi), each instance's state whole
    instances = read_json(results / "metrics.json")["pes"]["Sum"]["instances"]
    totals = raw_items(results, "Sum", "output")
    assert sum(totals) == 5050 and len(totals) == len(instances) == 2


@pytest.mark.parametrize("n", [2, 5])
def test_stateful_postprocess_once_after_everything_upstream(n, tmp_path):
    """g_termination: a slow stateless PE upstream of a grouped one; postprocess order and counts."""
    results = tmp_path / "results"
    proc = cli("run", DATA / "g_termination.py", "-m", "hybrid_redis", "-n", n, "-i", 12, "--results", results)
    assert proc.returncode == 0, explain(proc)
    totals = dict(tuple(x) for x in raw_items(results, "Stateful", "output"))
    assert totals == {k: sum(x for x in range(1, 13) if x % 3 == k) for k in range(3)}
    pes = read_json(results / "metrics.json")["pes"]
    reports = {pe: [r for r in raw_items(results, pe, "calls")] for pe in ("Slow", "Stateful")}
    for pe, mine in reports.items():
        assert len(mine) == len(pes[pe]["instances"]) and {(r["pre"], r["post"]) for r in mine} == {(1, 1)}
        assert sum(r["process"] for r in mine) == 12
    last_slow = max(r["post_ended"] for r in reports["Slow"])
    assert min(r["post_started"] for r in reports["Stateful"]) >= last_slow


# --- workers as separate OS processes, attached through the connection file ----------------------

class Job:
    """What a job script does: a Redis supervisor, external workers, a driver; all separate processes."""

    def __init__(self, tmp_path, workers: int, env: dict | None = None) -> None:
        self.results = tmp_path / "results"
        self.tag = uuid.uuid4().hex
        self.env = {**tagged_env(self.tag), **(env or {})}
        self.supervisor = self._spawn(python_module("d4p_hpc.mappings.redis.server", "--results",
                                                    str(self.results), "--bind", "0.0.0.0"))
        self.conn = wait_file(self.results / "redis.json", self.supervisor)
        self.workers = [self._spawn(python_module("d4p_hpc.mappings.redis.worker", "--connection",
                                                  str(self.results / "redis.json"))) for _ in range(workers)]
        # a short run could end before a slow-starting worker joins: wait until all poll Redis
        deadline = time.monotonic() + 60
        while len(self.client().client_list()) <= workers and time.monotonic() < deadline:
            time.sleep(0.05)

    def _spawn(self, argv):
        # own sessions: neither the driver's children nor each other's
        return subprocess.Popen(argv, env=self.env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    def driver(self, graph, mapping: str, *args):
        return subprocess.Popen(d4p_hpc_cmd() + ["run", str(graph), "-m", mapping, "-n", str(len(self.workers)),
                                                 "--redis-connection", str(self.results / "redis.json"),
                                                 "--external-workers", "--results", str(self.results),
                                                 *map(str, args)],
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def client(self):
        return redis.Redis(host="127.0.0.1", port=self.conn["port"], password=self.conn["password"])

    def close(self) -> None:
        for p in self.workers + [self.supervisor]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.workers + [self.supervisor]:
            p.wait(30)


@pytest.fixture
def job_factory(tmp_path):
    jobs = []

    def make(workers, env=None):
        jobs.append(Job(tmp_path, workers, env))
        return jobs[-1]
    yield make
    for job in jobs:
        job.close()
        assert tagged_pids(job.tag) == set()


@pytest.mark.parametrize("mapping", ["dyn_redis", "hybrid_redis"])
def test_external_workers_attach_through_the_connection_file(mapping, job_factory, tmp_path):
    workers = 3 if mapping == "dyn_redis" else 4  # with 4, the plan gives CountWords 2 instances
    job = job_factory(workers, env={"SLOW_DELAY": "0.05"})
    if mapping == "dyn_redis":
        driver = job.driver(write_graph(tmp_path, SLOW_GRAPH), mapping, "-i", 90)
    else:  # long enough for every worker to join (they poll for the run, then load the graph)
        driver = job.driver(EXAMPLES / CASES["word_count"][0], mapping, "-i", 60000)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, f"{out}\n{err}"
    metrics = read_json(job.results / "metrics.json")
    if mapping == "dyn_redis":
        assert outputs(job.results)["Tag.output"] == SLOW_WANT
    else:
        _check_exact_counts(job.results, 60000, metrics, several=True)
    assert metrics["workers"] == workers
    assert {p["pid"] for p in metrics["process_list"] if p["process"]} == {w.pid for w in job.workers}
    for worker in job.workers:
        assert worker.wait(20) == 0, worker.stderr.read()


def _busy_worker(job) -> subprocess.Popen:
    """A worker holding an unacknowledged task (waits for one)."""
    client = job.client()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = client.get("d4p:run")
        prefix = f"d4p:{json.loads(run)['id']}:" if run else None
        if prefix and client.exists(prefix + "tasks"):
            for entry in client.xpending_range(prefix + "tasks", "g", "-", "+", 10):
                pid = json.loads(client.hget(prefix + "workers", entry["consumer"].decode()[1:]))["pid"]
                return next(w for w in job.workers if w.pid == pid)
        time.sleep(0.05)
    raise AssertionError("no worker took a task")


def test_sigkill_of_a_worker_loses_nothing(job_factory, tmp_path):
    job = job_factory(3, env={"SLOW_DELAY": "0.05", "D4P_HPC_CLAIM_IDLE": "1.5"})
    driver = job.driver(write_graph(tmp_path, SLOW_GRAPH), "dyn_redis", "-i", 90)
    time.sleep(0.5)
    _busy_worker(job).kill()
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, f"{out}\n{err}"
    assert outputs(job.results)["Tag.output"] == SLOW_WANT  # equal to simple's: nothing lost, nothing twice
    metrics = read_json(job.results / "metrics.json")
    assert metrics["redeliveries"] > 0
    assert metrics["pes"]["Tag"]["items_in"] >= 90 - 3


def test_results_of_a_killed_workers_unacknowledged_unit_are_cut(job_factory, tmp_path):
    """Exactly once in the results: the victim's flushed but unacknowledged results are cut at the end."""
    job = job_factory(3, env={"SLOW_DELAY": "0.05", "D4P_HPC_CLAIM_IDLE": "1.5"})
    driver = job.driver(write_graph(tmp_path, BIG_GRAPH), "dyn_redis", "-i", 90)
    victim = _busy_worker(job)
    time.sleep(0.3)  # a few 20 kB results of its current unit reach the file
    victim.kill()
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, f"{out}\n{err}"
    numbers = Counter(n for n, _x in raw_items(job.results, "Big", "output"))
    assert numbers == Counter(range(1, 91))
    metrics = read_json(job.results / "metrics.json")
    assert metrics["redeliveries"] > 0 and metrics["truncated_parts"] >= 1


def test_heartbeat_hears_the_pool_and_the_end_without_polling(tmp_path):
    """A parked worker blocks on its control stream alone, yet resumes within a beat of joining the pool;
    its heartbeat, which beats four times per claim idle time (2.5 s here), hears a stop at once."""
    import threading

    from d4p_hpc.workflow.loader import load_graph
    from d4p_hpc.mappings.runtime.sink import Sink
    from d4p_hpc.mappings.runtime.plan import build_plan
    from d4p_hpc.mappings.redis.broker import POOL_BEAT, RedisBroker
    from d4p_hpc.mappings.redis.keys import publish, stop_run
    from d4p_hpc.mappings.dynamic.tasks import TaskRuntime

    plan = build_plan(load_graph(str(write_graph(tmp_path, SLOW_GRAPH))), 2)
    with RedisServer() as conn:
        client = conn.client()
        keys = publish(client, "beat", plan, {})
        client.set(keys.active, "2")
        broker = RedisBroker(conn, keys, 1, 2, 10.0, autoscaled=True)
        broker.attach(TaskRuntime(plan, 1, Sink(tmp_path / "results", 1)))
        assert not broker.active()
        grow = threading.Timer(0.3, client.set, (keys.active, "1,2"))
        grow.start()
        started = time.monotonic()
        assert broker.take(parked=True) == []  # woken by its heartbeat, not by the 5 s timeout
        assert broker.active() and time.monotonic() - started < 0.3 + POOL_BEAT + 0.5
        grow.join()
        plain = RedisBroker(conn, keys, 2, 2, 10.0)
        plain.attach(TaskRuntime(plan, 2, Sink(tmp_path / "results", 2)))
        assert plain.beat == 2.5
        stop_run(client, keys, "CANCELLED")
        started = time.monotonic()
        while plain.state() != "CANCELLED":
            assert time.monotonic() - started < 1.0, "the heartbeat did not hear the stop at once"
            time.sleep(0.01)
        broker.close()
        plain.close()
        client.close()


def test_a_host_that_left_a_completed_run_is_no_dead_owner(tmp_path):
    """The driver looks for hosts of unfinished stateful instances without a heartbeat. Between its read
    of the finished instances and its look at a host's heartbeat, the run may complete and its workers
    leave: a 128-worker run under load was failed so, every item through. A host is dead only while its
    instance is unfinished when its heartbeat is found gone, and the run goes on."""
    from d4p_hpc.workflow.loader import load_graph
    from d4p_hpc.mappings.runtime.plan import build_plan
    from d4p_hpc.mappings.redis.dyn_redis import RedisDriverBroker
    from d4p_hpc.mappings.redis.keys import publish

    plan = build_plan(load_graph(str(EXAMPLES / CASES["word_count"][0])), 3)
    with RedisServer() as conn:
        client = conn.client()
        keys = publish(client, "owners", plan, {})
        broker = RedisDriverBroker(conn, keys, 0, 3, 10.0)
        client.hset(keys.workers, "2", json.dumps({"host": "node7", "pid": 1}))
        client.hset(keys.owners, "5", "2")  # worker 2 hosts instance 5, and has no heartbeat
        assert broker.dead_owner() == (5, 2, "node7")
        client.hset(keys.idone, "5", 1)  # finished just after the driver read what had
        assert broker.dead_owner() is None
        client.hdel(keys.idone, "5")
        client.set(keys.state, "COMPLETED")  # the run completed, its workers left
        assert broker.dead_owner() is None
        broker.client.close()
        client.close()


def test_slow_pe_keeps_its_tasks_and_does_not_end_the_run(tmp_path):
    """2 s per item with a 0.5 s claim idle time: heartbeats keep the tasks; no idle timeout ends the run."""
    graph = write_graph(tmp_path, SLOW_GRAPH)
    results = tmp_path / "results"
    proc = cli("run", graph, "-m", "dyn_redis", "-n", 2, "-i", 3, "--results", results,
               env={"SLOW_DELAY": "2", "D4P_HPC_CLAIM_IDLE": "0.5"})
    assert proc.returncode == 0, explain(proc)
    assert sum(outputs(results)["Tag.output"].values()) == 3
    assert read_json(results / "metrics.json")["redeliveries"] == 0


def test_death_of_a_stateful_instance_host_fails_the_run(job_factory):
    job = job_factory(2, env={"D4P_HPC_CLAIM_IDLE": "1"})
    file, _ = CASES["word_count"]
    driver = job.driver(EXAMPLES / file, "hybrid_redis", "-i", 2_000_000)
    client = job.client()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not client.keys("d4p:*:owners"):
        time.sleep(0.05)
    owners_key = client.keys("d4p:*:owners")[0].decode()
    owner = next(iter(client.hgetall(owners_key).values()))
    pid = json.loads(client.hget(owners_key.replace(":owners", ":workers"), owner))["pid"]
    next(w for w in job.workers if w.pid == pid).kill()
    _out, err = driver.communicate(timeout=60)
    assert driver.returncode == 1, err
    error = read_json(job.results / "run.json")["error"]
    assert error["pe"] == "CountWords" and "state is lost" in error["traceback"]


# --- the per-job Redis: private, and gone after every kind of ending -----------------------------

def _start_driver(graph, results, tag, *args, env=None):
    return subprocess.Popen(d4p_hpc_cmd() + ["run", str(graph), "--results", str(results), *map(str, args)],
                            env={**tagged_env(tag), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_per_job_redis_is_private_while_running_and_gone_after(tmp_path):
    tag = uuid.uuid4().hex
    results = tmp_path / "results"
    driver = _start_driver(write_graph(tmp_path, SLOW_GRAPH), results, tag, "-m", "dyn_redis", "-n", 2,
                           "-i", 40, env={"SLOW_DELAY": "0.05"})
    conn = wait_file(results / "redis.json", driver)
    pid = server_pid(conn)
    assert stat.S_IMODE((results / "redis.json").stat().st_mode) == 0o600
    for password in (None, "not-the-password"):
        stranger = redis.Redis(host=conn["host"], port=conn["port"], password=password,
                               retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):
            stranger.keys("*")
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, f"{out}\n{err}"
    assert wait_gone(pid) and tagged_pids(tag) == set()
    assert not (results / "redis.json").exists()
    assert (results / "logs" / "redis-server.log").exists()
    files = {p.relative_to(results): stat.S_IMODE(p.stat().st_mode) for p in results.rglob("*") if p.is_file()}
    assert {p: oct(m) for p, m in files.items() if m != 0o600} == {}
    assert {stat.S_IMODE(d.stat().st_mode) for d in (results, results / "logs")} == {0o700}


def test_no_redis_left_after_a_pe_failure(tmp_path):
    tag = uuid.uuid4().hex
    results = tmp_path / "results"
    driver = _start_driver(DATA / "g_failing.py", results, tag, "-m", "dyn_redis", "-n", 2, "-i", 30)
    _out, err = driver.communicate(timeout=120)
    assert driver.returncode == 1, err
    record = read_json(results / "run.json")
    assert record["state"] == "FAILED" and record["error"]["pe"] == "Boom"
    assert "boom at 5" in record["error"]["traceback"]
    time.sleep(0.2)
    assert tagged_pids(tag) == set()


def test_existing_redis_by_url_is_used_and_left_clean(tmp_path):
    with RedisServer() as conn:
        url = f"redis://:{conn.password}@{conn.host}:{conn.port}/0"
        results = tmp_path / "results"
        proc = cli("run", EXAMPLES / "split_merge.py", "-m", "dyn_redis", "-n", 2, "-i", 20, "--redis", url,
                   "--results", results)
        assert proc.returncode == 0, explain(proc)
        assert not (results / "redis.json").exists()
        assert redis.Redis(host=conn.host, port=conn.port, password=conn.password).keys("*") == []


def test_external_workers_need_a_redis(tmp_path):
    proc = cli("run", EXAMPLES / "split_merge.py", "-m", "dyn_redis", "--external-workers", "-i", 2,
               "--results", tmp_path / "r")
    assert proc.returncode == 2 and "--redis-connection FILE" in proc.stderr, explain(proc)


@pytest.mark.parametrize("mapping,source", [("dyn_redis", SLOW_GRAPH), ("hybrid_redis", MARKED_STATEFUL_GRAPH)],
                         ids=["dyn_redis", "hybrid_redis"])
def test_backpressure_keeps_redis_and_processes_small(mapping, source, tmp_path):
    """A fast producer and slower PEs: the backlog stays at its limit, so Redis and every process stay small."""
    results = tmp_path / "results"
    proc = cli("run", write_graph(tmp_path, source), "-m", mapping, "-n", 2, "-i", 100_000, "--results", results,
               env={"SLOW_DELAY": "0.00002", "D4P_HPC_MAX_BACKLOG": "2000"}, timeout=600)
    assert proc.returncode == 0, explain(proc)
    metrics = read_json(results / "metrics.json")
    assert metrics["pes"]["Numbers"]["items_out"] == 100_000
    # over the limit by at most one flush of the driver (2 entries of 128 per worker)
    assert metrics["backlog_limit"] == 2000 and metrics["backlog_peak"] <= 2000 + 2 * 128 * 2
    assert metrics["redis_used_memory_peak_mb"] < 100
    assert max(p["max_rss_mb"] for p in metrics["process_list"]) < 150
