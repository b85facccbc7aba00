"""Runs stopped by a signal, as a terminal (SIGINT), a cancel (SIGTERM) or a scheduler's walltime
warning (SIGUSR1) stops them: the state and exit code it means, the outputs kept, no process left.
The same signals over every mapping: tests/runs/test_run_directories.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from helpers.runs import DATA, alive, d4p_hpc_cmd, kill_group, processes_mentioning, raw_items, read_json, wait_for


def start_long_run(mapping, n, results):
    """A run of g_long.py in its own session (so that a test can kill all of it), seen RUNNING."""
    proc = subprocess.Popen(d4p_hpc_cmd() + ["run", str(DATA / "g_long.py"), "-m", mapping, "-n", str(n),
                                             "-i", "1000000", "--results", str(results)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or (read_json(results / "run.json") or {}).get("state") == "RUNNING",
                 timeout=30)
        assert proc.poll() is None, f"it exited with {proc.returncode}"
    except AssertionError as why:
        kill_group(proc.pid)
        pytest.fail(f"the run did not start ({why}): {proc.communicate()}")
    time.sleep(2.0)  # let it produce some outputs (batches of 256 items reach the last PE)
    return proc


def stop_and_check(proc, signum, results, state):
    proc.send_signal(signum)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    stopped = proc.returncode is not None
    left = processes_mentioning(str(results)) if stopped else {}
    pids = [p.get("pid") for p in (read_json(f) for f in (results / ".parts").glob("metrics-*.json")) if p]
    kill_group(proc.pid)  # leave no strays behind for the next tests (the run is in its own session)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out, err = proc.communicate(timeout=30)
    assert stopped, f"the run did not stop within 60 s of signal {signum}:\n{out}\n{err}"
    record = read_json(results / "run.json")
    assert not left, f"processes left running after the run exited ({record['state']}): {left}"
    assert proc.returncode == 128 + signum, f"exit {proc.returncode}\n{out}\n{err}"
    assert record["state"] == state and record["exit_code"] == 128 + signum and record["ended"], record
    assert pids and not any(alive(pid) for pid in pids)
    items = raw_items(results, "Pass", "output")
    assert items, "the outputs produced before the signal were lost"
    assert len(items) == len(set(items)) and len(items) < 1000000
    ticks = read_json(results / "metrics.json")["pes"]["Ticks"]["items_in"]
    assert 0 < max(items) <= ticks


SIGNAL_RUNS = [(sig, state, m, n) for sig, state in [("SIGTERM", "CANCELLED"), ("SIGUSR1", "TIMEOUT")]
               for m, n in [("simple", 1), ("multi", 3), ("mpi", 2)]] + [("SIGINT", "CANCELLED", "multi", 3)]


@pytest.mark.parametrize("signame,state,mapping,n", SIGNAL_RUNS, ids=[f"{s}-{m}-n{n}" for s, _, m, n in SIGNAL_RUNS])
def test_signal_stops_the_run_cleanly(signame, state, mapping, n, tmp_path):
    results = tmp_path / "results"
    proc = start_long_run(mapping, n, results)
    stop_and_check(proc, getattr(signal, signame), results, state)
