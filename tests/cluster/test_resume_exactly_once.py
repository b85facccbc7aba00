"""``d4p-hpc resume JOB`` exactly once on the emulated Slurm cluster (.ci/slurm-up.sh).

As tests/jobs/test_resume_exactly_once.py on the local scheduler: two resumes of one cancelled
job started together give one successor (the other says in one line that the run is being resumed
or continues in that job), 20 times; ``status`` names the successor while it is queued or runs, and
no bogus segment; ``cancel`` stops it; resumed again, the run completes with the outputs of one
uninterrupted run (followed to its end in the first tries; later ones cancel their successor).
On Slurm two successors could run at once on two nodes (each would cut the outputs back and write
them again): the lock held by ``resume`` is what prevents it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.clusters import TIMEOUT, connect, job_logs
from helpers.runs import EXAMPLES, cli, d4p_hpc_cmd, diff, explain, outputs, run_simple, wait_for

from d4p_hpc.jobs import state as jobs
from d4p_hpc.mappings.checkpoint import store
from d4p_hpc.submission.render import render_script
from d4p_hpc.submission.spec import JobSpec
from d4p_hpc.submission.submit import submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
GRAPH = EXAMPLES / "long_count.py"
ITEMS = 300
SECONDS_PER_LINE = 0.02
TRIES = 20
#: the tries whose successor is followed to its end (outputs exact); the others' is cancelled once
#: the race is decided: what is tested 20 times is that two resumes at once give one successor
FOLLOWED = 3
CONTINUES = re.compile(r"^job (\S+) continues ")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    os.environ["LONG_COUNT_SECONDS"] = "0"
    try:
        results = tmp_path_factory.mktemp("reference") / "r"
        assert run_simple(GRAPH, ITEMS, results, attr="graph")["state"] == "COMPLETED"
        return outputs(results)
    finally:
        del os.environ["LONG_COUNT_SECONDS"]


@pytest.fixture(scope="module")
def cancelled(tmp_path_factory) -> Path:
    """An mpi job on two nodes, cancelled after its first checkpoint: what every try copies."""
    connect("slurm")
    spec = JobSpec(graph=str(GRAPH), attr="graph", iterations=ITEMS, mapping="mpi", scheduler="slurm", nodes=2,
                   tasks_per_node=1, python=sys.executable, walltime="5", checkpoint_every=1,
                   results_root=str(tmp_path_factory.mktemp("results")),
                   setup=[f"export LONG_COUNT_SECONDS={SECONDS_PER_LINE}"])
    _, directory = submit(spec, render_script(spec))
    job = jobs.open_job(directory)
    wait_for(lambda: store.complete_seqs(directory), TIMEOUT)
    jobs.cancel(job)
    final = jobs.wait(job, poll=0.5, timeout=TIMEOUT)
    assert final.state == "CANCELLED", f"{final}\n{job_logs(job)}"
    return directory


def test_two_resumes_of_a_slurm_job_at_once_give_one_successor(cancelled, tmp_path, reference):
    cancelled_later: list[Path] = []
    for attempt in range(TRIES):
        directory = tmp_path / f"try-{attempt}"
        shutil.copytree(cancelled, directory, symlinks=True)
        argv = [*d4p_hpc_cmd(), "resume", str(directory)]
        both = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        ended = []
        for proc in both:
            out, err = proc.communicate(timeout=300)
            ended.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
        assert sorted(e.returncode for e in ended) == [0, 2], [explain(e) for e in ended]
        winner, loser = sorted(ended, key=lambda e: e.returncode)
        successor = CONTINUES.match(winner.stdout).group(1)
        said = [line for line in loser.stderr.splitlines() if line.startswith("Error: ")]
        assert "Traceback" not in loser.stderr and len(said) == 1, explain(loser)
        assert f"job {successor} continues this run (" in said[0] or "is being resumed by d4p-hpc resume" in said[0]
        assert sorted(d.name for d in (directory / "state" / "segments").iterdir()) == ["001"]
        shown = cli("status", directory)
        assert re.search(rf"^{successor} .* (PENDING|RUNNING|COMPLETED) ", shown.stdout, re.M), explain(shown)
        assert "job None" not in shown.stdout and "FAILED" not in shown.stdout, explain(shown)
        if attempt >= FOLLOWED:  # the race is decided: its successor is cancelled, and not waited for here
            job = jobs.open_job(directory)
            assert job.job_id == successor
            jobs.cancel(job)
            cancelled_later.append(directory)
            continue
        if attempt == 0:
            job = jobs.open_job(directory)
            assert job.job_id == successor
            jobs.cancel(job)
            assert jobs.wait(job, poll=0.5, timeout=TIMEOUT).state == "CANCELLED", job_logs(job)
            again = cli("resume", directory)
            assert again.returncode == 0, explain(again)
        final = jobs.wait(jobs.open_job(directory), poll=0.5, timeout=TIMEOUT)
        assert final.state == "COMPLETED", f"{final}\n{job_logs(final.job)}"
        got = outputs(directory)
        assert got == reference, f"try {attempt}: {diff(got, reference)}"
    # every successor cancelled has left the cluster (a job cancelled while queued writes no marker:
    # Slurm's word is enough here)
    wait_for(lambda: all(s.terminal for s in jobs.status([jobs.open_job(d) for d in cancelled_later])), TIMEOUT)
