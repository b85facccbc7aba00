"""Jobs on a real Slurm cluster: the emulated multi-node one of .ci/slurm-up.sh.

Skipped (with the reason) where no Slurm cluster answers; with D4P_HPC_SLURM=1
(set by .ci/run once the cluster is up) they fail instead of skipping.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import items, processes_mentioning, wait_for

from d4p_hpc import jobs, schedulers
from d4p_hpc.render import render_script
from d4p_hpc.results import read_run
from d4p_hpc.schedulers import slurm
from d4p_hpc.spec import JobSpec

pytestmark = pytest.mark.slurm
TIMEOUT = 300


def _why_no_slurm() -> str | None:
    if not shutil.which("sbatch"):
        return "no sbatch on PATH (the emulated cluster: bash .ci/install.sh && bash .ci/slurm-up.sh)"
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%D %T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: no Slurm controller answers"
    if result.returncode or not result.stdout.strip():
        return f"no Slurm cluster answers sinfo: {result.stderr.strip()}"
    nodes = sum(int(line.split()[0]) for line in result.stdout.splitlines() if "down" not in line)
    return None if nodes >= 2 else f"the Slurm cluster has {nodes} usable node(s); these tests need 2"


@pytest.fixture(scope="module")
def cluster():
    reason = _why_no_slurm()
    if reason and os.environ.get("D4P_HPC_SLURM") == "1":
        pytest.fail(f"D4P_HPC_SLURM=1 says the cluster is up, but: {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture
def submit(cluster, tmp_path, where_graph):
    def go(**kw):
        values = dict(graph=str(where_graph), results_root=str(tmp_path / "results"), scheduler="slurm",
                      python=sys.executable, walltime="5", iterations=16, nodes=2, tasks_per_node=2)
        spec = JobSpec(**{**values, **kw})
        _, directory = schedulers.submit(spec, render_script(spec))
        return jobs.open_job(directory)
    return go


def finished(job, expected="COMPLETED", **kw):
    final = jobs.wait(job, poll=0.3, timeout=TIMEOUT, **kw)
    logs = "".join(p.read_text(errors="replace") for p in jobs.log_files(job) if p.is_file())
    assert final.state == expected, f"{final}\n{logs}"
    return final



def nodes_of(job):
    return {item[2] for item in items(job)}



def test_mpi_ranks_on_two_nodes(submit):
    job = submit(mapping="mpi")
    finished(job)
    assert read_run(job.directory)["processes"] == 4
    assert sorted(i[0] for i in items(job)) == list(range(1, 17))
    assert len(nodes_of(job)) >= 2, items(job)
    assert (job.directory / "job.out").is_file() and not list(job.directory.parent.glob("*.out"))


@pytest.mark.parametrize("mapping", ["dyn_redis", "hybrid_redis"])
def test_redis_workers_on_two_nodes(submit, mapping):
    job = submit(mapping=mapping, iterations=60, tasks_per_node=1, setup=["export D4P_TEST_SLEEP=0.05"])
    finished(job)
    assert sorted(i[0] for i in items(job)) == list(range(1, 61))
    assert len(nodes_of(job)) >= 2, items(job)
    assert not (job.directory / "redis.json").exists()
    assert not processes_mentioning(str(job.directory))


def test_status_goes_pending_running_completed(submit):
    job = submit(mapping="mpi", extra_directives=["#SBATCH --begin=now+3"], setup=["export D4P_TEST_SLEEP=0.3"])
    seen = []
    finished(job, on_poll=lambda s: seen.append(s.state))
    assert seen[0] == "PENDING" and "RUNNING" in seen and seen[-1] == "COMPLETED", seen


def _node_address(host: str) -> str:
    for pair in os.environ.get("D4P_SLURM_NODE_ADDRS", "").split():
        name, _, address = pair.partition("=")
        if name == host:
            return address
    try:
        return socket.gethostbyname(host)
    except OSError:
        return "127.0.0.1"


def test_cancel_mid_run_leaves_no_redis_or_worker(submit):
    job = submit(mapping="dyn_redis", iterations=5000, tasks_per_node=1, setup=["export D4P_TEST_SLEEP=0.05"])
    wait_for(lambda: items(job), TIMEOUT)
    connection = json.loads((job.directory / "redis.json").read_text())
    jobs.cancel(job)
    finished(job, "CANCELLED")
    wait_for(lambda: not processes_mentioning(str(job.directory)), timeout=60)
    with pytest.raises(OSError):
        socket.create_connection((_node_address(connection["host"]), connection["port"]), timeout=3).close()


def test_walltime_ends_timeout_with_partial_outputs(submit):
    job = submit(mapping="mpi", walltime="1", signal_seconds=45, iterations=100000,
                 setup=["export D4P_TEST_SLEEP=0.01"])
    finished(job, "TIMEOUT")
    assert read_run(job.directory)["state"] == "TIMEOUT"
    assert 0 < len(items(job)) < 100000
    assert not processes_mentioning(str(job.directory))


def test_a_rendered_script_submitted_with_plain_sbatch(cli, cluster, isolated_config, where_graph):
    result = cli("render", where_graph, "--scheduler", "slurm", "-m", "mpi", "-N", "2", "-i", "8", "-o", "job.sh")
    assert result.exit_code == 0, result.output
    submitted = subprocess.run(["sbatch", "--parsable", "job.sh"], capture_output=True, text=True, check=True)
    job_id = submitted.stdout.strip().split(";")[0]
    directory = isolated_config / "d4p-results" / f"where-{job_id}"
    wait_for(lambda: (directory / "state" / "finished").exists(), TIMEOUT)
    assert "COMPLETED" in cli("status", directory).output
    assert "COMPLETED" in cli("status", job_id).output
    report = cli("results", job_id).output
    assert "Where.output: 8 items" in report, report
    assert not (directory / "state" / "submitted").exists()


@pytest.mark.parametrize("raw, state, reason", [
    ("PENDING", "PENDING", ""), ("RUNNING", "RUNNING", ""), ("COMPLETING", "RUNNING", "completing"),
    ("CANCELLED by 0", "CANCELLED", "cancelled"), ("OUT_OF_MEMORY", "FAILED", "out of memory"),
    ("NODE_FAIL", "FAILED", "node failure"), ("TIMEOUT", "TIMEOUT", "hit the walltime"),
    ("PREEMPTED", "PENDING", "preempted"), ("BRAND_NEW", "RUNNING", "Slurm state BRAND_NEW"),
])
def test_slurm_states(raw, state, reason):
    got = slurm._state(raw, "")
    assert (got.state, got.reason) == (state, reason)
