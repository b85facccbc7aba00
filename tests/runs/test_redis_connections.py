"""The per-job Redis's connection budget (#21): counted, set, and checked before anything is queued.

A worker a run forks holds :data:`~d4p_hpc.mappings.WORKER_CONNECTIONS` connections; a job's
workers share their node's relay, which holds :data:`~d4p_hpc.mappings.RELAY_CONNECTIONS`. Redis
accepts at most ``maxclients``, and no more than its open-files limit minus 32 allows (it lowers
``maxclients`` to fit). So the run's Redis gets ``maxclients`` = :func:`~d4p_hpc.mappings.connections`
of its workers (or nodes), refuses to start (one line naming the limit) where the node's hard limit cannot hold
them, and ``submit`` refuses such a job before the queue, with the numbers and the fix.

Proven with the real redis-server and a real hard limit (``setrlimit`` in the child, as a node's
``ulimit -Hn`` would be): what a running job's workers hold is counted with ``CLIENT LIST``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from d4p_hpc.mappings import OTHER_CONNECTIONS, RELAY_CONNECTIONS, WORKER_CONNECTIONS, connections, files_needed
from d4p_hpc.results import Layout
from helpers.dynamic import limited, needs_redis, python_module, tagged_env, tagged_pids, write_graph
from helpers.runs import EXAMPLES, cli, d4p_hpc_cmd, explain, outputs, processes_mentioning, run_simple, wait_for

redis = pytest.importorskip("redis")
pytestmark = needs_redis

SLOW = '''
import os, time
from dispel4py.base import ProducerPE, IterativePE, ConsumerPE
from dispel4py.workflow_graph import WorkflowGraph

class Numbers(ProducerPE):
    def _process(self, inputs):
        time.sleep(0.05)
        return 1

class Slow(IterativePE):
    def _process(self, n):
        time.sleep(0.2)
        return n

class Sink(ConsumerPE):
    def _process(self, n):
        pass

graph = WorkflowGraph()
slow = Slow()
graph.connect(Numbers(), "output", slow, "input")
graph.connect(slow, "output", Sink(), "input")
'''


def clients_while(proc: subprocess.Popen, results: Path) -> tuple[int, list[int]]:
    """The ``maxclients`` of the Redis of ``results`` and its ``INFO clients`` count (not ours),
    sampled until ``proc`` (the run or job that started it) ends."""
    conn = wait_for(lambda: Layout(results).redis.exists() and json.loads(Layout(results).redis.read_text()))
    client = redis.Redis(host=conn["host"], port=conn["port"], password=conn["password"])
    maxclients, counts = int(client.config_get("maxclients")["maxclients"]), []
    with contextlib.suppress(redis.ConnectionError):  # (it ends with the run)
        while proc.poll() is None:
            counts.append(client.info("clients")["connected_clients"] - 1)
            time.sleep(0.05)
    client.close()
    return maxclients, counts


@pytest.mark.parametrize("mapping", ["dyn_redis", "hybrid_redis"])
def test_a_runs_workers_hold_no_more_connections_than_its_redis_is_given(tmp_path, mapping):
    workers = 6
    graph, results = write_graph(tmp_path, SLOW), tmp_path / "results"
    run = subprocess.Popen([*d4p_hpc_cmd(), "run", str(graph), "-m", mapping, "-n", str(workers), "-i", "40",
                            "--results", str(results)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        maxclients, counts = clients_while(run, results)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    assert maxclients == connections(workers) == WORKER_CONNECTIONS * workers + OTHER_CONNECTIONS
    # at most the budget, and the workers' share of it: each worker holds its WORKER_CONNECTIONS
    assert WORKER_CONNECTIONS * workers <= max(counts) <= connections(workers) - 1, counts


def test_a_redis_whose_node_cannot_hold_the_runs_clients_does_not_start(tmp_path):
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(python_module("d4p_hpc.mappings.redis.server", "--results", str(tmp_path), "--clients",
                                          "1000"), env=tagged_env(tag), stderr=subprocess.PIPE, text=True,
                            preexec_fn=limited(256))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the per-job Redis on "), err
    assert ("can accept 224 clients, as the open-files hard limit there is 256 (ulimit -Hn); the run needs 1,000 "
            "(the workers' relays, or a run's own workers, and the rest): run fewer workers (a job: on fewer nodes), "
            "or ask for a hard limit of at least 1,032 where Redis runs (a job's first node)") in lines[0], err
    assert not Layout(tmp_path).redis.exists()
    assert tagged_pids(tag) == set()  # no redis-server left


def test_the_same_node_with_a_run_it_can_hold_starts(tmp_path):
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(python_module("d4p_hpc.mappings.redis.server", "--results", str(tmp_path), "--clients",
                                          str(256 - 32)), env=tagged_env(tag), stderr=subprocess.PIPE, text=True,
                            preexec_fn=limited(256))
    try:
        conn = wait_for(lambda: Layout(tmp_path).redis.exists() and json.loads(Layout(tmp_path).redis.read_text()))
        client = redis.Redis(host=conn["host"], port=conn["port"], password=conn["password"])
        assert client.config_get("maxclients") == {"maxclients": "224"}
        client.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    wait_for(lambda: tagged_pids(tag) == set(), 10)


def test_submit_refuses_a_job_whose_first_node_cannot_hold_its_connections(isolated_config):
    """A job's workers reach Redis through one relay per node: its budget grows with nodes, not workers."""
    env = {"D4P_HPC_NOFILE_LIMIT": "1024"}
    refused = cli("submit", EXAMPLES / "word_count.py", "-m", "dyn_redis", "--nodes", 200, "--tasks-per-node", 8,
                  "--scheduler", "slurm", "--dry-run", "--no-check", cwd=isolated_config, env=env)
    assert refused.returncode == 2, explain(refused)
    assert refused.stderr == ("Error: -m dyn_redis with 1,600 workers on 200 node(s) needs 1,016 connections to its "
                              "Redis (5 per node's relay, 16 for the rest), so an open-files hard limit of at least "
                              "1,048 on the job's first node; it is 1,024 (D4P_HPC_NOFILE_LIMIT): run on fewer nodes "
                              "per job, or, if the compute nodes allow more, set D4P_HPC_NOFILE_LIMIT to their ulimit "
                              "-Hn\n"), explain(refused)
    assert not (isolated_config / "d4p-results").exists()
    # 512 workers, which without their relays would need 1,552 connections: rendered with the budget of 64 relays
    fits = cli("submit", EXAMPLES / "word_count.py", "-m", "dyn_redis", "--nodes", 64, "--tasks-per-node", 8,
               "--scheduler", "slurm", "--dry-run", "--no-check", cwd=isolated_config, env=env)
    assert fits.returncode == 0, explain(fits)
    assert f" --clients 1552 --relay-clients {RELAY_CONNECTIONS * 64 + OTHER_CONNECTIONS} &\n" in fits.stdout, \
        fits.stdout
    assert connections(512) > 1024 - 32
    bad = cli("submit", EXAMPLES / "word_count.py", "-m", "dyn_redis", "--scheduler", "slurm", "--dry-run",
              "--no-check", cwd=isolated_config, env={"D4P_HPC_NOFILE_LIMIT": "lots"})
    assert bad.returncode == 2 and bad.stderr.startswith("Error: D4P_HPC_NOFILE_LIMIT=lots: not a whole number"), \
        explain(bad)


def _clients_of_a_local_job(cwd, graph, workers: int, *options: str) -> tuple[int, list[int], Path]:
    """Submit ``graph`` under dyn_redis, ``workers`` tasks on the local scheduler, and wait for it to
    succeed; its Redis's ``maxclients``, its ``INFO clients`` counts sampled meanwhile, its results."""
    job = subprocess.Popen([*d4p_hpc_cmd(), "submit", str(graph), "-m", "dyn_redis", "--tasks-per-node",
                            str(workers), "-i", "40", "--scheduler", "local", *options, "--wait"], cwd=cwd,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        root = cwd / "d4p-results"
        directory = wait_for(lambda: next((p for p in root.iterdir() if not p.is_symlink()), None)
                             if root.exists() else None)
        maxclients, counts = clients_while(job, directory)
        out, err = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 0, out + err
    return maxclients, counts, directory


def test_a_jobs_workers_that_fit_connect_directly_within_their_budget(isolated_config):
    """Where the node holds them (no ``ulimit`` here), a job's 16 workers connect to Redis themselves,
    3 each: ``INFO clients`` never counts more than theirs and the driver's and wrapper's, 51 (a worker
    that also kept the connection it first checked Redis with held 4: 63 were counted, at ``maxclients``)."""
    workers = 16
    graph = write_graph(isolated_config, SLOW)
    maxclients, counts, _directory = _clients_of_a_local_job(isolated_config, graph, workers)
    assert maxclients == connections(workers) == WORKER_CONNECTIONS * workers + OTHER_CONNECTIONS
    # the workers' 3 each, the driver's two and the Redis wrapper's one (OTHER_CONNECTIONS's first three)
    assert counts and max(counts) <= WORKER_CONNECTIONS * workers + 3, counts


def test_a_jobs_workers_beyond_what_their_own_connections_would_fit_complete_through_their_relay(isolated_config):
    """12 workers on a node whose hard limit is 64 files: Redis takes 32 clients there, and the workers'
    own connections would be 3 x 12 + 16 = 52. Through the node's relay the job needs 5 + 16: it
    completes with simple's outputs, Redis's ``INFO clients`` never counts more than that (nor anywhere
    near 36), and the relay is gone with the job. (The same arithmetic at a 1,024 limit is 330 workers,
    too many processes for this machine.)"""
    workers, limit = 12, 64
    assert files_needed(workers) > limit >= files_needed(workers, 1)
    graph = write_graph(isolated_config, SLOW)
    maxclients, counts, directory = _clients_of_a_local_job(isolated_config, graph, workers, "--setup",
                                                            f"ulimit -n {limit}")
    assert maxclients == connections(workers, 1) == RELAY_CONNECTIONS + OTHER_CONNECTIONS
    assert counts and max(counts) <= maxclients < WORKER_CONNECTIONS * workers, counts
    run_simple(graph, 40, isolated_config / "simple")
    assert outputs(directory) == outputs(isolated_config / "simple")
    wait_for(lambda: not processes_mentioning(str(directory)), 10)  # the relay too


def test_a_job_on_a_node_with_too_low_a_limit_fails_saying_so(isolated_config):
    """The job checks again on its node: the submit host's limit may not be the nodes'."""
    done = cli("submit", EXAMPLES / "word_count.py", "-m", "hybrid_redis", "--tasks-per-node", 2, "--scheduler",
               "local", "--setup", "ulimit -n 40", "--wait", cwd=isolated_config)
    assert done.returncode == 1, explain(done)
    directory = next(p for p in (isolated_config / "d4p-results").iterdir() if not p.is_symlink())
    shown = cli("status", directory, "-l", cwd=isolated_config)
    assert "FAILED" in shown.stdout and "can accept 8 clients, as the open-files hard limit there is 40" in \
        shown.stdout, explain(shown)
    ended = json.loads((directory / "state" / "finished").read_text())  # its end recorded by the job itself
    assert (ended["state"], ended["exit_code"]) == ("FAILED", 1), ended
    wait_for(lambda: not Path(directory / "redis.json").exists(), 10)


@pytest.mark.parametrize(("nofile", "refused"), [(59, True), (60, False)])
def test_run_checks_its_own_redis_against_this_hosts_limit_before_anything_starts(tmp_path, nofile, refused):
    """4 workers: 3 x 4 + 16 = 28 clients, and Redis keeps 32 files for itself: 60, not 59. A run
    refused makes nothing: no results directory, no Redis (an outside tester found both)."""
    results, tag = tmp_path / "results", uuid.uuid4().hex
    proc = subprocess.run([*d4p_hpc_cmd(), "run", str(EXAMPLES / "long_count.py"), "-a", "stateless", "-m", "dyn_redis",
                           "-n", "4", "-i", "10", "--results", str(results)], env=tagged_env(tag), capture_output=True,
                          text=True, timeout=120, preexec_fn=limited(nofile))
    if refused:
        assert proc.returncode == 2 and proc.stderr == (
            "Error: -m dyn_redis -n 4 needs 28 connections to its Redis (3 per worker, 16 for the rest), so an "
            "open-files hard limit of at least 60 here; it is 59 (ulimit -Hn): run fewer workers (-n), or raise "
            "the limit\n"), proc.stderr
        assert not results.exists()
    else:
        assert proc.returncode == 0, proc.stderr
    assert tagged_pids(tag) == set()
