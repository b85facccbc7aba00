"""A node lost mid-run, on the emulated Slurm (#21): named in the job's end, never CANCELLED.

Slurm stops a job whose node fails as it would cancel it (SIGTERM to the batch shell, then
NODE_FAIL), unless the job and its step say ``--no-kill``; only srun says which node (``srun: error:
Node failure on NODE``, on the job's stderr). Before, the job read "CANCELLED: stopped by SIGTERM
during the run", and Slurm's default requeue ran the script again in its results directory, where it
failed ("already holds a run"). Measured by an outside helper on this cluster (Slurm 22.05,
``ReturnToService=2``, ``JobRequeue=1``): a node set DOWN by ``scontrol`` has its processes killed
(srun: "node2: task 1: Killed") and is back in service within milliseconds, so the tests need no
repair of the cluster.

A job over 2 nodes (hybrid_redis: 3), a node other than the first set DOWN once the run works:

* ``mpi`` (ranks under srun): the job ends FAILED within seconds, its reason and ``state/finished``
  name that node, Slurm says NODE_FAIL and did not requeue it;
* ``dyn_redis`` (workers under ``srun --no-kill``, the driver on the first node): the job goes on;
  the first node's worker takes over the lost worker's tasks once its heartbeat has expired, and the
  job ends COMPLETED with ``simple``'s outputs, its reason naming the node;
* ``hybrid_redis`` with a stateful PE, lost once a worker of that node hosts one of its instances
  (their samples say so): its state is lost, and the job ends FAILED naming the node, the worker and
  the PE.

Each time nothing of the job is left running.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.clusters import TIMEOUT, connect, job_logs
from helpers.dynamic import needs_redis
from helpers.runs import EXAMPLES, diff, outputs, processes_mentioning, run_simple, wait_for

from d4p_hpc.jobs import state as jobs
from d4p_hpc.results import read_run, read_series
from d4p_hpc.submission.render import render_script
from d4p_hpc.submission.spec import JobSpec
from d4p_hpc.submission.submit import submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def scontrol(*args: str) -> str:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def job_field(job_id: str, name: str) -> str:
    fields = dict(word.split("=", 1) for word in scontrol("show", "job", job_id).split() if "=" in word)
    return fields[name]


def _lose_a_node(spec: JobSpec, hosting: str | None = None) -> tuple[str, Path, jobs.JobStatus, str]:
    """Submit ``spec``; once its run works on both nodes (and, with ``hosting``, a process on the
    other node hosts an instance of that PE), set the node that does not run the batch script DOWN;
    return the job's id, directory, final status and the node lost."""
    cluster = connect("slurm")
    job_id, directory = submit(spec, render_script(spec))
    job = jobs.open_job(directory)
    try:
        # the run works on both nodes: its record is there and items come out
        wait_for(lambda: (read_run(directory) or {}).get("state") == "RUNNING"
                 and any((directory / "outputs").glob("*")), TIMEOUT)
        nodes = subprocess.run(["scontrol", "show", "hostnames", job_field(job_id, "NodeList")], capture_output=True,
                               text=True, check=True).stdout.split()
        others = [n for n in nodes if n != job_field(job_id, "BatchHost")]
        lost = others[0]
        if hosting:  # a node whose processes host one of its instances, as their samples say
            lost = wait_for(lambda: next((head.get("host") for head, samples in read_series(directory).values()
                                          if head.get("host") in others and samples
                                          and any(row[0] == hosting for row in samples[-1].get("i", []))), None),
                            TIMEOUT)
        scontrol("update", f"NodeName={lost}", "State=DOWN", "Reason=d4p-hpc test: a node lost")
        final = jobs.wait(job, poll=0.3, timeout=180)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    wait_for(lambda: not processes_mentioning(str(directory)), 60)
    # the node is back (ReturnToService=2): the cluster is as the other tests expect it
    wait_for(lambda: connect("slurm").nodes == cluster.nodes, 120)
    return job_id, directory, final, lost


def _spec(tmp_path: Path, mapping: str, attr: str, iterations: int, seconds: float) -> JobSpec:
    return JobSpec(graph=str(EXAMPLES / "long_count.py"), attr=attr, results_root=str(tmp_path / "results"),
                   scheduler="slurm", python=sys.executable, walltime="5", iterations=iterations, nodes=2,
                   tasks_per_node=1, mapping=mapping, exclusive=True,
                   setup=[f"export LONG_COUNT_SECONDS={seconds} D4P_HPC_CLAIM_IDLE=2"])


def test_a_node_lost_mid_run_fails_an_mpi_job_naming_the_node(tmp_path):
    job_id, directory, final, lost = _lose_a_node(_spec(tmp_path, "mpi", "graph", 100_000, 0.05))
    assert final.state == "FAILED", f"{final}\n{job_logs(jobs.open_job(directory))}"
    assert final.reason.startswith(f"node failure: {lost} was lost, and the job stopped with it"), final
    marker = json.loads((directory / "state" / "finished").read_text())
    assert marker["state"] == "FAILED" and lost in marker["reason"], marker
    # Slurm's word, and no requeue of the script into this directory
    wait_for(lambda: job_field(job_id, "JobState") == "NODE_FAIL", 60)  # (COMPLETING, while its processes end)
    assert job_field(job_id, "Restarts") == "0"


@needs_redis
def test_a_node_lost_mid_run_has_its_tasks_redone_and_the_job_completes(tmp_path, monkeypatch):
    job_id, directory, final, lost = _lose_a_node(_spec(tmp_path, "dyn_redis", "stateless", 150, 0.02))
    assert final.state == "COMPLETED", f"{final}\n{job_logs(jobs.open_job(directory))}"
    assert final.reason == f"node {lost} was lost; the workers on the other nodes redid its tasks", final
    assert job_field(job_id, "JobState") == "COMPLETED" and job_field(job_id, "Restarts") == "0"
    monkeypatch.setenv("LONG_COUNT_SECONDS", "0")
    assert run_simple(EXAMPLES / "long_count.py", 150, tmp_path / "simple", "stateless")["state"] == "COMPLETED"
    got, want = outputs(directory), outputs(tmp_path / "simple")
    assert got == want, diff(got, want)


@needs_redis
def test_a_node_lost_with_stateful_instances_fails_naming_the_node_and_the_pe(tmp_path):
    # 6 workers, 2 on the first node: Count's 3 instances go one to each of the first workers to join
    # (a fair share), so at least one is on another node
    spec = replace(_spec(tmp_path, "hybrid_redis", "graph", 300, 0.05), nodes=3, tasks_per_node=2)
    _job_id, directory, final, lost = _lose_a_node(spec, hosting="Count")
    assert final.state == "FAILED", f"{final}\n{job_logs(jobs.open_job(directory))}"
    assert final.reason.startswith(f"node {lost} was lost; "), final
    error = (read_run(directory) or {}).get("error") or {}
    assert error.get("pe") == "Count" and f" on {lost}, host of instance " in error.get("traceback", ""), error
    assert "its state is lost: rerun the workflow" in error["traceback"], error
