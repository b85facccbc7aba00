"""A cancelled Redis-mapped job, reproduced without a scheduler: its processes as a 2-node job has
them (the per-job Redis supervisor, the driver and one worker on the first node, one worker on the
second), started as the job script starts them, each in a session of its own, and a real
redis-server.

A cancel sends SIGTERM to every process of the first node, redis-server included (as a scheduler
that tracks a job's processes by cgroup does), and to the second node's worker too (Slurm) or not
(PBS without TM support: its other nodes get no signal). Either way the run ends CANCELLED (exit
143); every worker is in metrics.json's process list, and the items each counted equal the lines
of its own output part (nothing it wrote is lost or cut, nothing is counted twice); no log holds a
traceback; the worker that got no signal stops as told (its log says "stopped", its part holds no
error); and nothing is left: no process, no redis-server, no connection file. When the driver is
SIGKILLed instead, nobody does the final accounting: the supervisor still stops Redis, within its
bounded release time, and the other node's worker, finding Redis gone, stops just as quietly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers.dynamic import needs_redis, python_module, server_pid, tagged_env, tagged_pids, wait_file, wait_gone
from helpers.runs import WHERE_GRAPH, alive, d4p_hpc_cmd, kill_group, raw_items, read_json, wait_for

redis = pytest.importorskip("redis")
pytestmark = needs_redis

ENDLESS = 100000


class TwoNodeJob:
    """The processes of a 2-node Redis job, each in its own session, with their stderr in files."""

    def __init__(self, tmp_path: Path, mapping: str) -> None:
        self.base = tmp_path
        self.results = tmp_path / "results"
        self.tag = uuid.uuid4().hex
        self.env = {**tagged_env(self.tag), "D4P_TEST_SLEEP": "0.01"}
        self.started: dict[str, subprocess.Popen] = {}
        graph = tmp_path / "where.py"
        graph.write_text(WHERE_GRAPH)
        connection = self.results / "redis.json"
        self.server = self._spawn("server", python_module("d4p_hpc.mappings.redis.server", "--results",
                                                          str(self.results), "--bind", "127.0.0.1"))
        conn = wait_file(connection, self.server)
        self.redis_pid = server_pid(conn)
        self.client = redis.Redis(host="127.0.0.1", port=conn["port"], password=conn["password"])
        self.workers = [self._spawn(f"worker{k}", python_module("d4p_hpc.mappings.redis.worker", "--connection",
                                                                str(connection))) for k in (1, 2)]
        self.driver = self._spawn("driver", d4p_hpc_cmd() + [
            "run", str(graph), "-m", mapping, "-n", "2", "--redis-connection", str(connection), "--external-workers",
            "--results", str(self.results), "-i", str(ENDLESS)])

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.base / f"{name}.err", "w") as err:
            self.started[name] = subprocess.Popen(argv, env=self.env, start_new_session=True,
                                                  stdout=subprocess.DEVNULL, stderr=err)
        return self.started[name]

    def busy_workers(self) -> dict[int, int]:
        """pid -> process number of both workers, once each has committed outputs."""
        def both():
            run = self.client.get("d4p:run")
            if run is None:
                return None
            registered = self.client.hgetall(f"d4p:{json.loads(run)['id']}:workers")
            procs = {json.loads(info)["pid"]: int(proc) for proc, info in registered.items()}
            parts = [self.part(proc) for proc in procs.values()]
            return procs if len(procs) == 2 and all(p.exists() and p.stat().st_size for p in parts) else None
        return wait_for(both, 120)

    def part(self, proc: int) -> Path:
        return self.results / "outputs" / "Where.output" / f"part-{proc:05d}.jsonl"

    def stderr(self, name: str) -> str:
        return (self.base / f"{name}.err").read_text(errors="replace")

    def wait(self, name: str) -> int:
        """The exit code of process ``name``, which must end by itself."""
        try:
            return self.started[name].wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still running 60 s after the cancel:\n{self.stderr(name)}") from None

    def close(self) -> None:
        self.client.close()
        for proc in self.started.values():
            kill_group(proc.pid)
            proc.wait()


@pytest.fixture
def job_of(tmp_path):
    made: list[TwoNodeJob] = []

    def make(mapping: str) -> TwoNodeJob:
        made.append(TwoNodeJob(tmp_path, mapping))
        return made[-1]
    yield make
    for job in made:
        job.close()


def redis_first(job: TwoNodeJob) -> None:
    """SIGTERM to the Redis supervisor and to redis-server, and until redis-server has it: gone, or
    holding it (blocked, as it starts). The rest of the job gets its signal after that."""
    for pid in (job.server.pid, job.redis_pid):
        os.kill(pid, signal.SIGTERM)

    def has_it() -> bool:
        try:
            status = Path(f"/proc/{job.redis_pid}/status").read_text()
        except OSError:
            return True
        pending = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("ShdPnd:", "SigPnd:"))]
        return not alive(job.redis_pid) or any(mask >> (signal.SIGTERM - 1) & 1 for mask in pending)
    wait_for(has_it, 30)


def nothing_left(job: TwoNodeJob) -> None:
    """No process of the job (all inherit its tag), no redis-server, no connection file."""
    assert wait_gone(job.redis_pid, 30), "redis-server outlived the job"
    wait_for(lambda: not tagged_pids(job.tag), 30)
    assert not (job.results / "redis.json").exists()


def no_traceback(job: TwoNodeJob) -> None:
    for log in (job.results / "logs").glob("*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), f"{log.name}:\n{log.read_text()}"
    for name in job.started:
        assert "Traceback" not in job.stderr(name), f"{name}:\n{job.stderr(name)}"


CANCELS = [("hybrid_redis", "first node"), ("hybrid_redis", "every node"), ("dyn_redis", "first node")]


@pytest.mark.parametrize("mapping, signalled", CANCELS, ids=[f"{m}-{s.replace(' ', '-')}" for m, s in CANCELS])
def test_a_cancel_counts_every_worker_and_leaves_nothing_whichever_nodes_it_signals(job_of, mapping, signalled):
    job = job_of(mapping)
    procs = job.busy_workers()
    job.client.close()  # the test's own connection must not look like a worker's to the supervisor
    near, far = job.workers  # far: on the second node
    # what the scheduler signals, Redis first: it must outlive the others all the same
    redis_first(job)
    # the workers before the driver, so that a signalled one hears of the stop from its signal
    for pid in (near.pid, *([far.pid] if signalled == "every node" else []), job.driver.pid):
        os.kill(pid, signal.SIGTERM)

    assert job.wait("driver") == 128 + signal.SIGTERM, job.stderr("driver")
    assert job.wait("server") == 0, job.stderr("server")
    assert job.wait("worker1") == 128 + signal.SIGTERM, job.stderr("worker1")
    far_code = job.wait("worker2")
    record = read_json(job.results / "run.json")
    assert (record["state"], record["exit_code"], record["error"]) == ("CANCELLED", 143, None)

    metrics = read_json(job.results / "metrics.json")
    listed = {p["process"]: p for p in metrics["process_list"]}
    assert sorted(listed) == [0, *sorted(procs.values())], metrics["process_list"]
    assert {listed[proc]["pid"] for proc in procs.values()} == set(procs)
    assert "COMPLETED" not in [p["state"] for p in listed.values()]
    for proc in procs.values():
        counted = sum(i["items_out"] for i in metrics["pes"]["Where"]["instances"] if i["process"] == proc)
        written = len(job.part(proc).read_text().splitlines())
        assert counted == written > 0, (proc, counted, written)
    assert metrics["pes"]["Where"]["items_out"] == len(raw_items(job.results, "Where", "output")) < ENDLESS

    far_proc = procs[far.pid]
    far_part = read_json(job.results / ".parts" / f"metrics-{far_proc:05d}.json")
    far_log = (job.results / "logs" / f"{far_proc:05d}.log").read_text()
    if signalled == "first node":  # it heard of the cancel from Redis alone
        assert (far_code, far_part["state"], far_part["error"]) == (1, "FAILED", None), far_log
        assert "stopped: another process of the run failed or was stopped" in far_log
        assert "failed" not in far_log.replace("failed or was stopped", ""), far_log
    else:
        assert (far_code, far_part["state"]) == (128 + signal.SIGTERM, "CANCELLED"), far_log
    no_traceback(job)
    nothing_left(job)


def test_a_worker_that_finds_redis_gone_stops_quietly_when_the_driver_was_killed(job_of):
    job = job_of("dyn_redis")
    procs = job.busy_workers()
    job.client.close()
    near, far = job.workers
    redis_first(job)
    near.send_signal(signal.SIGTERM)
    job.driver.send_signal(signal.SIGKILL)  # no final accounting: Redis is kept for nobody

    assert job.wait("server") == 0, job.stderr("server")
    assert job.wait("worker1") == 128 + signal.SIGTERM, job.stderr("worker1")
    assert job.wait("worker2") == 1, job.stderr("worker2")
    far_proc = procs[far.pid]
    far_log = (job.results / "logs" / f"{far_proc:05d}.log").read_text()
    assert "lost the Redis at 127.0.0.1:" in far_log and "the run is over or its Redis stopped" in far_log
    assert "stopped: another process of the run failed or was stopped" in far_log
    far_part = read_json(job.results / ".parts" / f"metrics-{far_proc:05d}.json")
    assert (far_part["state"], far_part["error"]) == ("FAILED", None)
    assert read_json(job.results / "run.json")["state"] == "RUNNING"  # the driver never recorded its end
    no_traceback(job)
    nothing_left(job)
