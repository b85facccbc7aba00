"""The test clusters: the emulated Slurm of .ci/slurm-up.sh and the OpenPBS of .ci/pbs-up.sh.

``connect(name)`` gives the cluster or skips the test with the reason (fails it instead when
D4P_HPC_SLURM=1 / D4P_HPC_PBS=1 say the cluster is up); the ``cluster`` and ``submit`` fixtures
in conftest.py use it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest

from helpers.runs import wait_for

from d4p_hpc.jobs import state as jobs
from d4p_hpc import schedulers

TIMEOUT = 300
SLEEP = "export D4P_TEST_SLEEP=0.05"


@dataclass(frozen=True)
class Cluster:
    """One of the test clusters, and the few plain scheduler commands the tests need."""

    name: str
    nodes: int

    def submit_plain(self, *args: str) -> str:
        """The job id of ``sbatch ARGS`` / ``qsub ARGS``."""
        argv = ["sbatch", "--parsable", *args] if self.name == "slurm" else ["qsub", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip().split(";")[0]

    def blocker(self, seconds: int) -> str:
        """A job holding every node for ``seconds``, running once this returns: the next job waits."""
        if self.name == "slurm":
            job_id = self.submit_plain(f"--nodes={self.nodes}", "--exclusive", "-t", "1", "-o", "/dev/null",
                                       "--wrap", f"sleep {seconds}")
        else:
            job_id = self.submit_plain("-l", f"select={self.nodes}:ncpus=1", "-l", "place=scatter:excl",
                                       "-o", "/dev/null", "-j", "oe", "--", "/bin/sleep", str(seconds))
        scheduler = schedulers.get(self.name)
        wait_for(lambda: getattr(scheduler.query({job_id: None}).get(job_id), "state", "") == "RUNNING", 60)
        return job_id


def slurm_nodes() -> tuple[int, str | None]:
    if not shutil.which("sbatch"):
        return 0, "no sbatch on PATH (the emulated cluster: bash .ci/install.sh && bash .ci/slurm-up.sh)"
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%D %T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return 0, "sinfo timed out: no Slurm controller answers"
    if result.returncode or not result.stdout.strip():
        return 0, f"no Slurm cluster answers sinfo: {result.stderr.strip()}"
    return sum(int(line.split()[0]) for line in result.stdout.splitlines() if "down" not in line), None


def pbs_nodes() -> tuple[int, str | None]:
    if not shutil.which("qsub") or not shutil.which("pbsnodes"):
        return 0, "no qsub/pbsnodes on PATH (the OpenPBS testbed: bash .ci/pbs-up.sh; . /tmp/pbslab/env.sh)"
    try:
        result = subprocess.run(["pbsnodes", "-a", "-F", "json"], capture_output=True, text=True, timeout=20)
        nodes = json.loads(result.stdout)["nodes"].values() if result.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError, KeyError):
        nodes = None
    if nodes is None:
        return 0, f"no PBS server answers pbsnodes: {result.stderr.strip()}"
    return sum("down" not in n["state"] and "offline" not in n["state"] for n in nodes), None


def job_logs(job) -> str:
    return "".join(p.read_text(errors="replace") for p in jobs.log_files(job) if p.is_file())


def finished(job, expected="COMPLETED", **kw):
    final = jobs.wait(job, poll=0.3, timeout=TIMEOUT, **kw)
    assert final.state == expected, f"{final}\n{job_logs(job)}"
    return final




def connect(name: str) -> Cluster:
    """The cluster called ``name`` with at least 2 usable nodes; else skip (or fail under CI)."""
    count, reason = slurm_nodes() if name == "slurm" else pbs_nodes()
    if reason is None and count < 2:
        reason = f"the {name} cluster has {count} usable node(s); these tests need 2"
    flag = f"D4P_HPC_{name.upper()}"
    if reason and os.environ.get(flag) == "1":
        pytest.fail(f"{flag}=1 says the cluster is up, but: {reason}")
    if reason:
        pytest.skip(reason)
    return Cluster(name, count)
