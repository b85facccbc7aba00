"""Jobs on real clusters: the emulated 4-node Slurm of .ci/slurm-up.sh and the real 2-node OpenPBS
of .ci/pbs-up.sh, every node in its own network namespace. Each test runs on both (the ``cluster``
fixture).

A cluster that does not answer is skipped, with the reason; with D4P_HPC_SLURM=1 / D4P_HPC_PBS=1
(set by .ci/run once the cluster is up) its tests fail instead. Independent jobs of a test are
submitted together and run side by side.
"""

import json
import re
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from helpers.clusters import SLEEP, TIMEOUT, finished, job_logs
from helpers.dynamic import needs_redis
from helpers.runs import items, processes_mentioning, wait_for

from d4p_hpc.jobs import state as jobs
from d4p_hpc.results import read_metrics, read_run
from d4p_hpc.schedulers import slurm


def hosts_of(job) -> set:
    return {p["host"] for p in read_metrics(job.directory)["process_list"]}


def launcher_and_workers(job) -> tuple[list[int], list[int]]:
    """pids of the job's worker launcher (mpiexec or srun, on the first node) and of its workers."""
    found = processes_mentioning(f"--connection {job.directory}/redis.json")
    launchers = [pid for pid, argv in found.items() if os.path.basename(argv[0]) in ("mpiexec", "srun")]
    workers = [pid for pid, argv in found.items() if "d4p_hpc.mappings.redis.worker" in argv and
               os.path.basename(argv[0]).startswith("python")]
    return launchers, workers


def _node_address(host: str) -> str:
    for pair in os.environ.get("D4P_SLURM_NODE_ADDRS", "").split():
        name, _, address = pair.partition("=")
        if name == host:
            return address
    try:
        return socket.gethostbyname(host)  # the PBS testbed names its nodes in /etc/hosts
    except OSError:
        return "127.0.0.1"


SHAPES = {"mpi 2x1": ("mpi", 1, 1), "mpi 2x2": ("mpi", 2, 1), "mpi 2x1 -c 2": ("mpi", 1, 2),
          "dyn_redis 2x1": ("dyn_redis", 1, 1), "hybrid_redis 2x1": ("hybrid_redis", 1, 1)}


@needs_redis
def test_ranks_and_workers_are_placed_on_every_node(cluster, submit):
    submitted = {shape: submit(mapping=mapping, tasks_per_node=tasks, cpus_per_task=cpus, iterations=60,
                               setup=[SLEEP] if mapping != "mpi" else [])
                 for shape, (mapping, tasks, cpus) in SHAPES.items()}
    for shape, job in submitted.items():
        mapping, tasks, cpus = SHAPES[shape]
        finished(job)
        assert sorted(i[0] for i in items(job)) == list(range(1, 61)), shape
        assert len(hosts_of(job)) >= 2, (shape, read_metrics(job.directory)["process_list"])
        if mapping == "mpi":
            assert read_run(job.directory)["processes"] == 2 * tasks
        else:
            assert len({i[1] for i in items(job)}) >= 2, (shape, items(job))
            assert not (job.directory / "redis.json").exists()
            assert not processes_mentioning(str(job.directory))
        if cluster.name == "pbs":
            assert f"MPI placement: mpiexec --map-by ppr:{tasks}:node:PE={cpus}" in job_logs(job), shape


def test_status_goes_pending_with_the_schedulers_reason_then_running_completed(cluster, submit):
    cluster.blocker(4)
    job = submit(mapping="mpi", tasks_per_node=1, iterations=8, setup=["export D4P_TEST_SLEEP=0.3"])
    seen = []
    finished(job, on_poll=lambda s: seen.append((s.state, s.reason)))
    states = [state for state, _ in seen]
    assert states[0] == "PENDING" and "RUNNING" in states and states[-1] == "COMPLETED", seen
    if cluster.name == "pbs":  # PBS's own comment, e.g. "Not Running: Not enough free nodes available"
        assert seen[0][1].startswith("Not Running"), seen


@needs_redis
def test_cancel_a_queued_and_a_running_job(cli, cluster, submit):
    cluster.blocker(3)
    queued = submit(mapping="mpi", tasks_per_node=1)
    running = submit(mapping="dyn_redis", iterations=5000, tasks_per_node=1, setup=[SLEEP])
    assert jobs.status([queued])[0].state == "PENDING"
    jobs.cancel(queued)
    wait_for(lambda: jobs.status([queued])[0].state == "CANCELLED", 60)
    assert not (queued.directory / "state" / "started").exists()
    who = {"pbs": "PBS", "slurm": "Slurm"}[cluster.name]
    assert f"(no {who} stdout: " in cli("logs", queued.directory).output  # said, not passed over

    wait_for(lambda: items(running), TIMEOUT)
    connection = json.loads((running.directory / "redis.json").read_text())
    jobs.cancel(running)
    finished(running, "CANCELLED")
    wait_for(lambda: not processes_mentioning(str(running.directory)), timeout=60)
    with pytest.raises(OSError):
        socket.create_connection((_node_address(connection["host"]), connection["port"]), timeout=3).close()
    # one final state per process, however many signals it got (the scheduler's and the launcher's)
    metrics = read_metrics(running.directory)
    assert "COMPLETED" not in [p["state"] for p in metrics["process_list"]]
    # the driver and both workers counted, also the second node's, which PBS does not signal (the
    # run stops it through its Redis, which outlives the driver's final accounting)
    assert len(metrics["process_list"]) == 3 and len(hosts_of(running)) == 2, metrics["process_list"]
    assert metrics["pes"]["Where"]["items_out"] == len(items(running)), metrics["process_list"]
    assert "Traceback" not in job_logs(running)


@pytest.mark.slow
def test_walltime_ends_timeout_with_partial_outputs(submit):
    # Slurm sends --signal up to its 30 s time-limit check early: 60 s before a 2-minute limit
    # comes after the run has started
    job = submit(mapping="mpi", walltime="2", signal_seconds=60, iterations=100000,
                 setup=["export D4P_TEST_SLEEP=0.01"])
    finished(job, "TIMEOUT")
    assert read_run(job.directory)["state"] == "TIMEOUT"
    assert 0 < len(items(job)) < 100000
    assert not processes_mentioning(str(job.directory))


def test_a_failing_pe_fails_the_job_naming_it(submit):
    job = submit(mapping="mpi", setup=["export D4P_TEST_FAIL_AT=5"])  # raised on a rank of node 2
    final = finished(job, "FAILED")
    assert "PE Where raised ValueError: item 5 is cursed" in final.reason, final


def test_a_rendered_script_submitted_by_hand(cli, cluster, isolated_config, where_graph):
    result = cli("render", where_graph, "--scheduler", cluster.name, "-m", "mpi", "-N", "2", "-i", "8",
                 "-o", "job.sh")
    assert result.exit_code == 0, result.output
    job_id = cluster.submit_plain("job.sh")
    directory = isolated_config / "d4p-results" / f"where-{job_id}"
    wait_for(lambda: (directory / "state" / "finished").exists(), TIMEOUT)
    assert "COMPLETED" in cli("status", directory).output
    assert "COMPLETED" in cli("status", job_id).output
    report = cli("results", job_id).output
    assert "Where.output: 8 items" in report, report
    assert not (directory / "state" / "submitted").exists()


def test_logs_follow_shows_the_jobs_stdout_while_it_runs(cluster, submit):
    job = submit(mapping="mpi", tasks_per_node=1, iterations=40,
                 setup=["echo hello from the job", "export D4P_TEST_SLEEP=0.2"])
    follow = subprocess.Popen([shutil.which("d4p-hpc"), "logs", "-f", str(job.directory)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lines = []
        for line in follow.stdout:
            lines.append(line)
            if "hello from the job" in line:
                break
        assert "hello from the job" in "".join(lines), lines
        assert jobs.status([job])[0].state == "RUNNING"
        rest = follow.communicate(timeout=TIMEOUT)[0]
    finally:
        follow.kill()
    assert follow.returncode == 0 and "COMPLETED" in rest, rest


@needs_redis
def test_workers_that_cannot_reach_redis_fail_the_job_at_once(cluster, submit):
    # Redis on loopback: the worker on the second node cannot reach it
    job = submit(mapping="dyn_redis", tasks_per_node=1, iterations=5000, redis_bind="127.0.0.1", setup=[SLEEP])
    final = finished(job, "FAILED")
    assert final.ended - final.started < 30, final
    error = read_run(job.directory)["error"]["traceback"]
    joined = r"a worker could not join the run: Error: worker on \S+: cannot reach Redis at 127\.0\.0\.1"
    assert re.search(joined, error), error
    wait_for(lambda: not processes_mentioning(str(job.directory)), timeout=60)


@needs_redis
def test_every_worker_gone_fails_the_job_and_one_gone_is_redone(cluster, submit):
    claim = "export D4P_HPC_CLAIM_IDLE=2"  # a dead worker's tasks are taken over after 2 s
    all_gone = submit(mapping="dyn_redis", tasks_per_node=1, iterations=5000, setup=[SLEEP])
    one_gone = submit(mapping="dyn_redis", tasks_per_node=1, iterations=200, setup=[SLEEP, claim])

    wait_for(lambda: len(items(one_gone)) >= 10 and len(launcher_and_workers(one_gone)[1]) == 2, TIMEOUT)
    os.kill(launcher_and_workers(one_gone)[1][0], signal.SIGKILL)
    wait_for(lambda: items(all_gone) and launcher_and_workers(all_gone)[0], TIMEOUT)
    killed_at = time.time()
    os.kill(launcher_and_workers(all_gone)[0][0], signal.SIGKILL)

    final = finished(all_gone, "FAILED")
    assert final.ended - killed_at < 30, final
    assert "every worker is gone: their launcher" in read_run(all_gone.directory)["error"]["traceback"]
    finished(one_gone)
    assert sorted(i[0] for i in items(one_gone)) == list(range(1, 201))  # none lost, none twice
    for job in all_gone, one_gone:
        wait_for(lambda job=job: not processes_mentioning(str(job.directory)), timeout=60)


@pytest.mark.parametrize("raw, state, reason", [
    ("PENDING", "PENDING", ""), ("RUNNING", "RUNNING", ""), ("COMPLETING", "RUNNING", "completing"),
    ("CANCELLED by 0", "CANCELLED", "cancelled"), ("OUT_OF_MEMORY", "FAILED", "out of memory"),
    ("NODE_FAIL", "FAILED", "node failure"), ("TIMEOUT", "TIMEOUT", "hit the walltime"),
    ("PREEMPTED", "PENDING", "preempted"), ("BRAND_NEW", "RUNNING", "Slurm state BRAND_NEW"),
])
def test_slurm_states(raw, state, reason):
    got = slurm._state(raw, "")
    assert (got.state, got.reason) == (state, reason)
