"""A job on the local scheduler killed three times (SIGKILL to its process group, as a lost node
leaves it) and continued with ``d4p-hpc resume`` each time: four segments, three of which could
not write their metrics. ``results`` and ``report`` still describe the whole run: the killed
segments' figures come from their samples, and the totals are the sums (issue 18, item 4)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

import pytest

from helpers.runs import EXAMPLES, cli, explain, read_json

from d4p_hpc.jobs import state as jobs
from d4p_hpc.results import read_series

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (apt-get install chromium)")


def _segment_running(job: jobs.Job, number: int) -> bool:
    """Whether segment ``number`` of the job's run has samples showing the slow PE at work."""
    return any(s.get("seg") == number and any(row[0] == "Slow" and row[2] > 5 for row in s["i"])
               for _head, samples in read_series(job.directory).values() for s in samples)


def test_a_job_killed_three_times_is_reported_whole(tmp_path):
    from helpers.browser import open_page

    submitted = cli("submit", EXAMPLES / "long_count.py", "-a", "graph", "-i", 400, "--scheduler", "local",
                    "-m", "multi", "--tasks-per-node", 3, "--checkpoint-every", 1, "--results-root", tmp_path,
                    "--python", sys.executable, "--setup", "export LONG_COUNT_SECONDS=0.02 D4P_HPC_SAMPLE_SECONDS=0.2")
    assert submitted.returncode == 0, explain(submitted)
    job = jobs.open_job(next(p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink()))
    try:
        for number in (1, 2, 3):
            deadline = time.monotonic() + 90
            while not (_segment_running(job, number) and (job.directory / "checkpoints").is_dir()):
                assert time.monotonic() < deadline, f"segment {number} did not start working"
                time.sleep(0.2)
            time.sleep(1.5)  # a checkpoint of this segment
            os.killpg(read_json(job.layout.marker("local.json"))["pid"], signal.SIGKILL)
            while jobs.status([job])[0].state == "RUNNING":
                assert time.monotonic() < deadline + 30, "the killed job is still RUNNING"
                time.sleep(0.2)
            resumed = cli("resume", job.directory)
            assert resumed.returncode == 0, explain(resumed)
        final = jobs.wait(job, poll=1.0, timeout=120)
    finally:
        cli("cancel", job.directory)
    assert final.state == "COMPLETED", final
    # each killed job's end, inferred without its marker, is kept in its segment as the resume found it
    for number in (1, 2, 3):
        ended = read_json(job.layout.segments / f"{number:03d}" / "finished")
        assert (ended["state"], ended["inferred"]) == ("FAILED", True), ended
        assert "killed before its exit trap ran" in ended["reason"], ended

    metrics = read_json(job.directory / "metrics.json")
    segments = metrics["segments"]
    assert [s["segment"] for s in segments] == [1, 2, 3, 4]
    assert [s["source"] for s in segments] == ["samples"] * 3 + ["metrics.json"], segments
    assert all(s["items"] > 0 and s["wall_seconds"] > 0 for s in segments), segments
    assert metrics["items"] == sum(s["items"] for s in segments)
    assert metrics["wall_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in segments), abs=1e-5)

    shown = cli("results", job.directory)
    assert shown.returncode == 0, explain(shown)
    assert f"{metrics['items']:,} items in {metrics['wall_seconds']:.2f} s" in shown.stdout, shown.stdout
    assert "4 segments" in shown.stdout, shown.stdout

    made = cli("report", job.directory, "-o", tmp_path / "report.html")
    assert made.returncode == 0, explain(made)
    dom = open_page((tmp_path / "report.html").resolve().as_uri()).dom
    assert f"{metrics['wall_seconds']:.2f} s over 4 segments" in dom
    assert dom.count("<td>FAILED</td>") == 3 and dom.count("<td>last samples</td>") == 3
    for number in (2, 3, 4):
        assert f'<g class="segment-boundary"><title>segment {number} (job ' in dom
