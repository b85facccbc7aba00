"""``d4p-hpc resume JOB`` exactly once, on the local scheduler.

Two resumes of one cancelled job started together give one successor: the other says in one
line that the run is being resumed or already continues in that job, and submits nothing. While
the successor runs, ``status`` names it and no bogus segment; ``cancel`` stops it (and nothing of
the run is left running); resumed again, the run completes with the outputs of one uninterrupted
run, each item once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers.runs import EXAMPLES, cli, d4p_hpc_cmd, diff, explain, outputs, processes_mentioning, wait_for

from d4p_hpc.jobs import resume as job_resume
from d4p_hpc.jobs import state as jobs
from d4p_hpc.mappings.checkpoint import store

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("resume-exactly-once")]
GRAPH = EXAMPLES / "long_count.py"
ITEMS = 150
ENV = {"LONG_COUNT_SECONDS": "0.02"}
TRIES = 20
CONTINUES = re.compile(r"^job (\S+) continues ")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    results = tmp_path_factory.mktemp("reference") / "r"
    done = cli("run", GRAPH, "-a", "graph", "-i", ITEMS, "--results", results, env=ENV)
    assert done.returncode == 0, explain(done)
    return outputs(results)


@pytest.fixture(scope="module")
def cancelled(tmp_path_factory) -> Path:
    """A local multi job cancelled after its first checkpoint: what every try copies. On a loaded
    machine the cancel (a command that starts in about a second) may reach the job after its 3 s of
    work have ended (ci42: 0.14 s after): that job COMPLETED, and another is submitted."""
    for _ in range(3):
        root = tmp_path_factory.mktemp("jobs")
        done = cli("submit", GRAPH, "-a", "graph", "-m", "multi", "--tasks-per-node", 2, "-i", ITEMS, "--scheduler",
                   "local", "--checkpoint-every", 1, "--results-root", root,
                   env={**ENV, "D4P_HPC_CHECKPOINT_EVERY_TEST": "0.3"})  # (a checkpoint early in the 3 s of work)
        assert done.returncode == 0, explain(done)
        directory = Path(re.search(r"^results (.+)$", done.stdout + done.stderr, re.M).group(1))
        wait_for(lambda d=directory: store.complete_seqs(d), 60)
        assert cli("cancel", directory).returncode == 0
        state = jobs.wait(jobs.open_job(directory), poll=0.2, timeout=60).state
        wait_for(lambda d=directory: not processes_mentioning(str(d)), 30)
        if state != "COMPLETED":
            break
    assert state == "CANCELLED", state
    return directory


def resume_twice_at_once(directory: Path) -> tuple[str, subprocess.CompletedProcess]:
    """Two ``d4p-hpc resume DIR`` started together: the successor's id, and how the other ended."""
    argv = [*d4p_hpc_cmd(), "resume", str(directory)]
    both = [subprocess.Popen(argv, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    ended = []
    for proc in both:
        out, err = proc.communicate(timeout=120)
        ended.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    assert sorted(e.returncode for e in ended) == [0, 2], [explain(e) for e in ended]
    winner, loser = sorted(ended, key=lambda e: e.returncode)
    successor = CONTINUES.match(winner.stdout).group(1)
    said = [line for line in loser.stderr.splitlines() if line.startswith("Error: ")]
    assert "Traceback" not in loser.stderr and len(said) == 1, explain(loser)
    assert f"job {successor} continues this run (" in said[0] or " is being resumed by d4p-hpc resume (pid " \
        in said[0], said
    return successor, loser


def segments(directory: Path) -> list[str]:
    """The archived segments of the run in ``directory``, which are private like everything else there."""
    root = directory / "state" / "segments"
    assert all(stat.S_IMODE(d.stat().st_mode) == 0o700 for d in [root, *root.iterdir()])
    return sorted(d.name for d in root.iterdir())


def one_try(cancelled: Path, directory: Path, reference: dict, cancel: bool) -> None:
    shutil.copytree(cancelled, directory, symlinks=True)
    successor, _ = resume_twice_at_once(directory)
    assert segments(directory) == ["001"]
    shown = cli("status", directory)
    assert shown.returncode == 0 and re.search(rf"^{successor} .* (PENDING|RUNNING|COMPLETED) ", shown.stdout, re.M), \
        explain(shown)
    assert "job None" not in shown.stdout and "FAILED" not in shown.stdout, explain(shown)
    if cancel:
        stopped = cli("cancel", directory)
        if stopped.returncode == 0:  # (it may have completed already)
            assert f"cancel requested for job {successor}" in stopped.stdout, explain(stopped)
            ended = jobs.wait(jobs.open_job(directory), poll=0.2, timeout=60)
            wait_for(lambda: not processes_mentioning(str(directory)), 30)
            # a cancel that reached the job as its run was ending leaves it COMPLETED (found by CI)
            assert ended.state in ("CANCELLED", "COMPLETED"), ended
        if stopped.returncode == 0 and ended.state == "CANCELLED":
            again = cli("resume", directory, env=ENV)
            assert again.returncode == 0, explain(again)
            assert segments(directory) == ["001", "002"]
    final = jobs.wait(jobs.open_job(directory), poll=0.2, timeout=120)
    assert final.state == "COMPLETED", final
    got = outputs(directory)
    assert got == reference, f"{directory}: {diff(got, reference)}"


def test_two_resumes_of_a_job_at_once_give_one_successor_that_status_and_cancel_follow(cancelled, tmp_path,
                                                                                        reference):
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda k: one_try(cancelled, tmp_path / f"try-{k}", reference, cancel=k % 5 == 0),
                      range(TRIES)))


def test_a_job_resumed_while_its_exit_trap_ran_records_its_end_in_its_segment(tmp_path):
    """A job stopped without its finished marker yet (its exit trap still running, or on its way to a
    shared file system) may be resumed once its end is inferred: its trap then writes its end into its
    own segment, never into ``state/``, which its successor owns (where a late CANCELLED would end the
    successor's follower at once, and keep the local array runner from starting it)."""
    done = cli("submit", GRAPH, "-a", "graph", "-i", 100_000, "--scheduler", "local", "--results-root", tmp_path,
               env=ENV)
    assert done.returncode == 0, explain(done)
    directory = Path(re.search(r"^results (.+)$", done.stdout + done.stderr, re.M).group(1))
    job = jobs.open_job(directory)
    wait_for(lambda: job.marker("started"), 60)
    pid = job.marker("local.json")["pid"]
    # what resume does once the end is inferred: the markers go into a segment, the successor's come
    archive = job_resume.archive_segment(job)
    (directory / "state" / "submitted").write_text('{"job_id": "local-successor", "epoch": 1}\n')
    os.killpg(pid, signal.SIGTERM)  # the cancel, as the local scheduler sends it
    wait_for(lambda: (archive / "finished").exists(), 60)
    ended = json.loads((archive / "finished").read_text())
    assert ended["state"] == "CANCELLED" and ended["reason"].startswith("stopped by SIGTERM"), ended
    wait_for(lambda: not processes_mentioning(str(directory)), 30)
    assert not (directory / "state" / "finished").exists()
    assert job_resume.segments(jobs.open_job(directory))[0]["state"] == "CANCELLED"

    # and one whose directory has gone to another run entirely records its end nowhere, saying so
    done = cli("submit", GRAPH, "-a", "graph", "-i", 100_000, "--scheduler", "local", "--results-root", tmp_path,
               env=ENV)
    directory = Path(re.search(r"^results (.+)$", done.stdout + done.stderr, re.M).group(1))
    job = jobs.open_job(directory)
    wait_for(lambda: job.marker("started"), 60)
    pid = job.marker("local.json")["pid"]
    (directory / "state" / "submitted").write_text('{"job_id": "local-other", "epoch": 1}\n')
    os.killpg(pid, signal.SIGTERM)
    wait_for(lambda: not processes_mentioning(str(directory)), 30)
    assert not (directory / "state" / "finished").exists()
    said = (directory / "job.err").read_text()
    assert f"but {directory} now holds another job: its end is not recorded there" in said, said
