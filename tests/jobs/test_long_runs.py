"""Runs longer than their walltime, as a user submits them: ``--requeue`` and ``d4p-hpc resume``.

A stream whose work takes about 3 minutes (2 on Slurm, see LINES; a producer, a slow stateless
stage and, but for the dyn_* variant, a grouped counter) is submitted with a 1-minute walltime and ``--requeue 9``, on
the local scheduler and on the emulated Slurm, under simple, multi, mpi (2 nodes), dyn_redis
(stateless) and hybrid_redis (2 nodes). Each job must end COMPLETED after 3 or more segments with
the outputs of one uninterrupted simple run. Beside them, five jobs with ``--checkpoint-every 10``
have their whole process group SIGKILLed at different points after 25 s and are continued with
``d4p-hpc resume``. All of them run at once (the work is mostly sleep), so that the whole takes
the time of the longest.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

import pytest

from helpers.clusters import connect
from helpers.dynamic import needs_redis
from helpers.runs import EXAMPLES, cli, diff, explain, outputs, processes_mentioning, run_simple

from d4p_hpc.jobs import state as jobs, resume
from d4p_hpc import results as rd
from d4p_hpc.submission.render import render_script
from d4p_hpc.submission.spec import JobSpec
from d4p_hpc.submission.submit import submit

pytestmark = [pytest.mark.slurm, needs_redis, pytest.mark.slow]

GRAPH = EXAMPLES / "long_count.py"
# lines per scheduler: ~3 minutes of work on the local scheduler; ~2 on Slurm, which sends the --signal
# up to its time-limit check interval (30 s) early, so that a 1-minute segment there works ~25 s
LINES = {"local": 1800, "slurm": 1200}
# mapping -> (graph variable, nodes, tasks per node, seconds per line)
CASES = {
    "simple": ("graph", 1, 1, 0.1),
    "multi": ("graph", 1, 4, 0.1),
    "mpi": ("graph", 2, 2, 0.1),
    "dyn_redis": ("stateless", 1, 3, 0.3),   # three workers share the slow stage
    "hybrid_redis": ("graph", 2, 2, 0.4),    # four
}
DEADLINE = 15 * 60
# 3 to 4 segments on a quiet machine; 6 and more while 4 xdist workers share its 2 cores
REQUEUE = 9
SIGNAL_SECONDS = {"local": 12, "slurm": 5}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(graph variable, lines) -> the outputs of one uninterrupted simple run."""
    os.environ["LONG_COUNT_SECONDS"] = "0"
    try:
        found = {}
        for attr in ("graph", "stateless"):
            for lines in set(LINES.values()):
                results = tmp_path_factory.mktemp(f"ref-{attr}") / "r"
                assert run_simple(GRAPH, lines, results, attr=attr)["state"] == "COMPLETED"
                found[attr, lines] = outputs(results)
        return found
    finally:
        del os.environ["LONG_COUNT_SECONDS"]


def long_job(scheduler: str, mapping: str, root, **extra) -> jobs.Job:
    """The long stream of ``CASES[mapping]`` submitted to ``scheduler``, its results under ``root``."""
    attr, nodes, tasks, seconds = CASES[mapping]
    spec = JobSpec(graph=str(GRAPH), attr=attr, iterations=LINES[scheduler], mapping=mapping,
                   scheduler=scheduler, nodes=nodes, tasks_per_node=tasks, python=sys.executable,
                   results_root=str(root), setup=[f"export LONG_COUNT_SECONDS={seconds}"], **extra)
    _, directory = submit(spec, render_script(spec))
    return jobs.open_job(directory)


@pytest.fixture
def cancelled_at_the_end():
    """Every job a test submits here is cancelled when it ends, so that a failure leaves nothing queued."""
    submitted: list[jobs.Job] = []
    yield submitted
    for job in submitted:
        job = jobs.open_job(job.directory)
        if not jobs.status([job])[0].terminal:
            jobs.cancel(job)


def test_long_runs_continue_across_walltimes_and_kills_exactly_once(tmp_path, reference, isolated_config,
                                                                   cancelled_at_the_end):
    slurm = connect("slurm")
    requeued = [(scheduler, mapping, long_job(scheduler, mapping, tmp_path / scheduler, walltime="1",
                                            signal_seconds=SIGNAL_SECONDS[scheduler], requeue=REQUEUE,
                                            checkpoint_every=10))
                for scheduler in ("local", slurm.name) for mapping in CASES]
    rng = random.Random(11)
    killed = [(mapping, long_job("local", mapping, tmp_path / "killed", walltime="10", checkpoint_every=10),
               25 + 8 * k + rng.uniform(0, 6)) for k, mapping in enumerate(CASES)]
    started = time.monotonic()
    cancelled_at_the_end.extend([job for *_, job in requeued] + [job for _, job, _ in killed])

    # the kills: the job's whole process group (the local scheduler's job is one), as a lost node leaves it
    for mapping, job, at in sorted(killed, key=lambda k: k[2]):
        time.sleep(max(0.0, at - (time.monotonic() - started)))
        pid = rd.read_json(job.directory / "state" / "local.json")["pid"]
        assert jobs.status([job])[0].state == "RUNNING", (mapping, jobs.status([job])[0])
        os.killpg(pid, signal.SIGKILL)
    for mapping, job, _ in killed:
        deadline = time.monotonic() + 30
        while jobs.status([job])[0].state == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.5)
        gone = jobs.status([job])[0]
        assert gone.state == "FAILED" and "killed" in gone.reason, (mapping, gone)
        # it could not record its end (mpi: ranks whose launcher died end CANCELLED)...
        assert rd.read_run(job.directory)["state"] in ("RUNNING", "CANCELLED")
        assert resume.segments(job) == []
        done = cli("resume", job.directory)  # ...but its periodic checkpoints are there
        assert done.returncode == 0 and "continues" in done.stdout, explain(done)

    def final(job: jobs.Job) -> jobs.JobStatus:
        return jobs.wait(job, poll=2.0, timeout=max(1.0, DEADLINE - (time.monotonic() - started)))

    problems = []
    for scheduler, mapping, job in requeued:
        end = final(job)
        segments = resume.segments(job)
        got = outputs(job.directory)
        want = reference[CASES[mapping][0], LINES[scheduler]]
        if end.state != "COMPLETED" or len(segments) < 2 or got != want:
            record = rd.read_run(job.directory) or {}
            took = [(s["state"], round((s["ended"] or 0) - (s["started"] or 0))) for s in segments]
            problems.append(f"{scheduler} {mapping}: {end.state} ({end.reason}) after {len(segments) + 1} "
                            f"segments {took}, items {[s.get('items') for s in record.get('segments', [])]}; "
                            f"outputs {diff(got, want)}")
        elif any(s["state"] != "TIMEOUT" for s in segments):
            problems.append(f"{scheduler} {mapping}: segments {segments}")
        if processes_mentioning(str(job.directory)):
            problems.append(f"{scheduler} {mapping}: left {processes_mentioning(str(job.directory))}")
    for mapping, job, at in killed:
        end = final(job)
        got, want = outputs(job.directory), reference[CASES[mapping][0], LINES["local"]]
        if end.state != "COMPLETED" or got != want:
            problems.append(f"killed at {at:.0f} s, {mapping}: {end.state} ({end.reason}); {diff(got, want)}")
    assert not problems, "\n".join(problems)

    # what a user reads: the segments in status and results, the job followed by its first id
    scheduler, mapping, job = requeued[-1]
    shown = cli("status", job.directory)
    assert shown.returncode == 0 and "segments" in shown.stdout, explain(shown)
    assert "segment 1: job " in shown.stdout and " TIMEOUT after " in shown.stdout, shown.stdout
    report = cli("results", job.directory)
    assert "COMPLETED" in report.stdout and "segment 3: job " in report.stdout, report.stdout
    # resuming what has completed is refused in one line
    again = cli("resume", job.directory)
    assert again.returncode == 2 and "has COMPLETED: there is nothing to resume" in again.stderr, explain(again)
