"""Every view of a run describes the whole run (issue 18, items 4 and 5): a run stopped at its
walltime three times and resumed each time (four segments) keeps every segment's samples and
figures, and ``results``, ``report`` and the efficiency line sum them; the CPU efficiency of a
run of milliseconds is never above 100%."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from helpers.runs import EXAMPLES, cli, d4p_hpc_cmd, explain, kill_group, read_json

from d4p_hpc.results import read_series

GRAPH = EXAMPLES / "long_count.py"
SLOW = {"LONG_COUNT_SECONDS": "0.02", "D4P_HPC_SAMPLE_SECONDS": "0.2"}


def _segment(results, resume: bool) -> dict:
    """One segment of the run: started (resumed), stopped by the walltime signal once it works."""
    env = {k: v for k, v in os.environ.items() if k != "D4P_HPC_QUIET"}
    argv = d4p_hpc_cmd() + ["run", str(GRAPH), "-a", "graph", "-m", "multi", "-n", "3", "-i", "300",
                            "--checkpoint-every", "1", "--results", str(results)] + ["--resume"] * resume
    proc = subprocess.Popen(argv, env={**env, **SLOW}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # working: its samples say items went through the slow PE in this segment
        while not _working(results, resume):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGUSR1)  # the walltime signal: a checkpoint, then TIMEOUT
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc.pid)
    assert proc.returncode == 128 + signal.SIGUSR1, f"{out}\n{err}"
    return read_json(results / "run.json")


def _working(results, resumed: bool) -> bool:
    if not (results / "run.json").exists() or read_json(results / "run.json")["state"] != "RUNNING":
        return False
    segment = len(read_json(results / "run.json").get("segments") or []) + 1 if resumed else 1
    return any(row[0] == "Slow" and row[2] > 10 for _head, samples in read_series(results).values()
               for s in samples if s.get("seg") == segment for row in s["i"])


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (apt-get install chromium)")
def test_results_and_report_of_a_run_in_four_segments_sum_every_segment(tmp_path):
    from helpers.browser import open_page

    results = tmp_path / "r"
    for k in range(3):
        assert _segment(results, resume=k > 0)["state"] == "TIMEOUT"
    last = cli("run", GRAPH, "-a", "graph", "-m", "multi", "-n", 3, "-i", 300, "--results", results, "--resume",
               env=SLOW)
    assert last.returncode == 0, explain(last)
    run, metrics = read_json(results / "run.json"), read_json(results / "metrics.json")
    assert [s["state"] for s in run["segments"]] + [run["state"]] == ["TIMEOUT"] * 3 + ["COMPLETED"]

    # metrics.json: each segment's own figures, and the run's the sum of them
    segments = metrics["segments"]
    assert [s["segment"] for s in segments] == [1, 2, 3, 4]
    assert all(s["source"] == "metrics.json" and s["items"] > 0 for s in segments), segments
    assert metrics["items"] == sum(s["items"] for s in segments)
    assert metrics["wall_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in segments), abs=1e-5)
    for pe, totals in metrics["pes"].items():
        assert totals["items_in"] == sum(i["items_in"] for s in segments for i in s["instances"] if i["pe"] == pe)
    assert list(metrics["pes"]) == ["Lines", "Slow", "Count"], "in pipeline order"
    # every segment's samples are kept, in every process's file
    series = read_series(results)
    assert all({s["seg"] for s in samples} == {1, 2, 3, 4} for _head, samples in series.values()), series.keys()

    shown = cli("results", results)
    assert shown.returncode == 0, explain(shown)
    assert f"{metrics['items']:,} items in {metrics['wall_seconds']:.2f} s" in shown.stdout, shown.stdout
    efficiency = re.search(r"CPU efficiency (\d+)% of 3 cores", shown.stdout)
    assert efficiency and int(efficiency[1]) <= 100, shown.stdout
    # the run's time is its segments' together, in the header and in status (an outside attack saw the last one's)
    clocks = [re.search(r"COMPLETED after (\d+):(\d+):(\d+)", shown.stdout),
              re.search(r"COMPLETED\s+(\d+):(\d+):(\d+)", cli("status", results).stdout)]
    for found in clocks:
        assert found, shown.stdout
        seconds = int(found[1]) * 3600 + int(found[2]) * 60 + int(found[3])
        assert abs(seconds - metrics["wall_seconds"]) <= 1.5, (seconds, metrics["wall_seconds"])

    made = cli("report", results, "-o", tmp_path / "report.html")
    assert made.returncode == 0, explain(made)
    dom = open_page((tmp_path / "report.html").resolve().as_uri()).dom
    assert f"{metrics['wall_seconds']:.2f} s over 4 segments" in dom
    assert f"<td>{metrics['items']:,}</td>" in dom or f">{metrics['items']:,}<" in dom
    for s in segments:  # the segments table: each one's wall time and items
        assert f"{s['wall_seconds']:.2f} s" in dom and f"{s['items']:,}" in dom
    # the time charts (throughput, memory, timeline) draw the three boundaries between the four segments
    for label in ("segment 2", "segment 3", "segment 4"):
        assert dom.count(f'<g class="segment-boundary"><title>{label}</title>') >= 3, label


def test_cpu_efficiency_of_a_run_of_milliseconds_is_at_most_100_percent(tmp_path):
    """The CPU of the interpreter's start and of the graph's import is not set against the run's
    wall time (milliseconds): both are measured over the same window."""
    results = tmp_path / "r"
    done = cli("run", EXAMPLES / "word_count.py", "-m", "simple", "-i", 1, "--results", results)
    assert done.returncode == 0, explain(done)
    assert read_json(results / "metrics.json")["wall_seconds"] < 1.0
    line = cli("results", results).stdout.strip().splitlines()[-1]
    found = re.fullmatch(r"CPU efficiency (\d+)% of 1 core(?: \(capped: .*\))?; memory peak [\d.]+ GB", line)
    assert found and int(found[1]) <= 100, line
    made = cli("report", results, "-o", tmp_path / "report.html")
    assert made.returncode == 0, explain(made)
    shown = re.search(r"CPU efficiency (\d+)%", (tmp_path / "report.html").read_text())
    assert shown and int(shown[1]) <= 100
