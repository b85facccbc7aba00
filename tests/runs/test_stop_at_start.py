"""A stop signal that comes the moment a run is recorded as RUNNING (``run.json`` written), while its
processes are still being forked and have no handlers yet: the run still ends in the signal's state,
with its exit code, and leaves no process behind. The walltime signal with checkpoints on is a
checkpoint, then TIMEOUT.

Before, such a signal met the default action (the run killed, ``run.json`` left RUNNING), or a parent
that passed it on to children not forked yet (dropped: the run went on to the end), or a child that
ran its copy of the parent's handler. The process is stopped (SIGSTOP) as soon as ``run.json``
appears, so that it is caught in that window, then gets the signal and is continued; the signal
goes to the process alone or, as a batch system sends it, to the whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from helpers.dynamic import needs_redis
from helpers.runs import DATA, complete_checkpoints, d4p_hpc_cmd, kill_group, processes_mentioning, read_json

CASES = [("multi", signal.SIGUSR1, True, False), ("multi", signal.SIGTERM, False, True),
         ("dyn_multi", signal.SIGUSR1, True, True), ("dyn_multi", signal.SIGINT, False, False),
         pytest.param("dyn_redis", signal.SIGUSR1, True, False, marks=needs_redis),
         pytest.param("hybrid_redis", signal.SIGTERM, False, True, marks=needs_redis)]
STATES = {signal.SIGUSR1: "TIMEOUT", signal.SIGTERM: "CANCELLED", signal.SIGINT: "CANCELLED"}


@pytest.mark.parametrize("mapping,signum,checkpoints,group", CASES)
def test_a_stop_signal_as_the_run_begins_ends_it_in_that_state(mapping, signum, checkpoints, group, tmp_path):
    results = tmp_path / "r"
    argv = [*d4p_hpc_cmd(), "run", str(DATA / "g_long.py"), "-m", mapping, "-n", "3", "-i", "1000000",
            "--results", str(results), *(["--checkpoint"] if checkpoints else [])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (results / "run.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            pass  # no sleep: the window is a few milliseconds
        os.killpg(proc.pid, signal.SIGSTOP)
        (os.killpg if group else os.kill)(proc.pid, signum)
        os.killpg(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc.pid)
    left = processes_mentioning(str(results))
    assert proc.returncode == 128 + signum, f"exit {proc.returncode}\n{out}\n{err}"
    record = read_json(results / "run.json")
    assert record["state"] == STATES[signum] and record["exit_code"] == 128 + signum and record["ended"], record
    assert not left, f"processes left running: {left}"
    if checkpoints:
        assert complete_checkpoints(results), "no checkpoint was taken before the stop"
