"""A node lost mid-run, on the emulated Slurm (#21): the job ends FAILED naming the node, never CANCELLED.

Slurm stops a job whose node fails as it would cancel it (SIGTERM to the batch shell, then
NODE_FAIL); only srun says which node (``srun: error: Node failure on NODE``, on the job's stderr).
Before, the job read "CANCELLED: stopped by SIGTERM during the run", and Slurm's default requeue ran
the script again in its results directory, where it failed ("already holds a run"). Measured by an
outside helper on this cluster (Slurm 22.05, ``ReturnToService=2``, ``JobRequeue=1``): a node set
DOWN by ``scontrol`` kills the job at once and is back in service within milliseconds, so the test
needs no repair of the cluster.

Per mapping (``mpi``: ranks under srun; ``dyn_redis``: workers under srun, the driver on the first
node): a job over 2 nodes, its second node set DOWN once the run works; the job ends FAILED within
seconds, its reason and ``state/finished`` name that node, Slurm says NODE_FAIL and did not requeue
it, and nothing of it is left running.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers.clusters import TIMEOUT, connect, job_logs
from helpers.dynamic import needs_redis
from helpers.runs import EXAMPLES, processes_mentioning, wait_for

from d4p_hpc.jobs import state as jobs
from d4p_hpc.results import read_run
from d4p_hpc.submission.render import render_script
from d4p_hpc.submission.spec import JobSpec
from d4p_hpc.submission.submit import submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def scontrol(*args: str) -> str:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def job_field(job_id: str, name: str) -> str:
    fields = dict(word.split("=", 1) for word in scontrol("show", "job", job_id).split() if "=" in word)
    return fields[name]


@pytest.mark.parametrize("mapping", ["mpi", pytest.param("dyn_redis", marks=needs_redis)])
def test_a_node_lost_mid_run_fails_the_job_naming_the_node(tmp_path, mapping):
    cluster = connect("slurm")
    spec = JobSpec(graph=str(EXAMPLES / "long_count.py"), attr="stateless" if mapping == "dyn_redis" else "graph",
                   results_root=str(tmp_path / "results"), scheduler="slurm", python=sys.executable, walltime="5",
                   iterations=100_000, nodes=2, tasks_per_node=1, mapping=mapping, exclusive=True,
                   setup=["export LONG_COUNT_SECONDS=0.05"])
    job_id, directory = submit(spec, render_script(spec))
    job = jobs.open_job(directory)
    try:
        # the run works on both nodes: its record is there and items come out
        wait_for(lambda: (read_run(directory) or {}).get("state") == "RUNNING"
                 and any((directory / "outputs").glob("*")), TIMEOUT)
        nodes = subprocess.run(["scontrol", "show", "hostnames", job_field(job_id, "NodeList")], capture_output=True,
                               text=True, check=True).stdout.split()
        lost = next(n for n in nodes if n != job_field(job_id, "BatchHost"))
        scontrol("update", f"NodeName={lost}", "State=DOWN", "Reason=d4p-hpc test: a node lost")
        final = jobs.wait(job, poll=0.3, timeout=120)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    assert final.state == "FAILED", f"{final}\n{job_logs(job)}"
    assert final.reason.startswith(f"node failure: {lost} was lost, and the job stopped with it"), final
    marker = json.loads((directory / "state" / "finished").read_text())
    assert marker["state"] == "FAILED" and lost in marker["reason"], marker
    # Slurm's word, and no requeue of the script into this directory
    wait_for(lambda: job_field(job_id, "JobState") == "NODE_FAIL", 60)  # (COMPLETING, while its processes end)
    assert job_field(job_id, "Restarts") == "0"
    wait_for(lambda: not processes_mentioning(str(directory)), 60)
    # the node is back (ReturnToService=2): the cluster is as the other tests expect it
    wait_for(lambda: connect("slurm").nodes == cluster.nodes, 120)
