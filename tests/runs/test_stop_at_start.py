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

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

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
        # and again: a child whose fork was under way as the group stopped can be left stopped
        for pause in (0.05, 0.2):
            time.sleep(pause)
            with contextlib.suppress(ProcessLookupError):
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


def start_running(mapping: str, results: Path) -> subprocess.Popen:
    """A long run of g_long.py in a session of its own, seen RUNNING for 0.3 s (its processes started)."""
    proc = subprocess.Popen([*d4p_hpc_cmd(), "run", str(DATA / "g_long.py"), "-m", mapping, "-n", "3", "-i",
                             "1000000", "--results", str(results)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while (read_json(results / "run.json") or {}).get("state") != "RUNNING" and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    return proc


@pytest.mark.parametrize("mapping", ["simple", "multi", "dyn_multi", pytest.param("dyn_redis", marks=needs_redis),
                                     pytest.param("hybrid_redis", marks=needs_redis)])
def test_stop_signals_after_the_first_do_not_change_how_the_run_ends(mapping, tmp_path):
    """A batch system may signal a job twice (PBS signals every process, and mpiexec passes the script's
    on), a user presses Ctrl-C twice. The walltime signal, then SIGTERM to the whole group every
    millisecond until the run has exited: it still ends recorded, TIMEOUT, exit 138 (or CANCELLED, 143).
    Before, the mappings put the default handlers back before the end was written (and the run's own
    Redis put back the default it had found at its start): a later signal killed the process, leaving
    run.json RUNNING."""
    results = tmp_path / "r"
    proc = start_running(mapping, results)
    try:
        deadline = time.monotonic() + 60
        os.killpg(proc.pid, signal.SIGUSR1)
        storm = 0
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                break
            storm += 1
            time.sleep(0.001)
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc.pid)
    assert storm, "the run had exited before the second signal"
    record = read_json(results / "run.json")
    # the first signal's state as a rule; on a loaded machine a process may meet the SIGTERM that came
    # a millisecond later first (signals held while it starts are taken lowest number first), and then
    # the run is CANCELLED: either way recorded, with the exit code that says so
    assert (proc.returncode, record["state"]) in ((138, "TIMEOUT"), (143, "CANCELLED")), \
        f"exit {proc.returncode} after {storm} SIGTERMs, run.json {record['state']}\n{out}\n{err}"
    assert record["exit_code"] == proc.returncode and record["ended"], record
    assert not processes_mentioning(str(results))


def test_sigterm_to_one_worker_of_dyn_multi_cancels_the_run_as_under_the_static_mappings(tmp_path):
    """A worker stopped by SIGTERM stops the run (dyn_multi's workers are not replaced): CANCELLED, 143,
    as when one process of multi gets it; before, the driver, which only saw the run stop, made it
    FAILED with no error at all."""
    results = tmp_path / "r"
    proc = start_running("dyn_multi", results)
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children, "no worker found"
        os.kill(int(children[0]), signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc.pid)
    assert proc.returncode == 143, f"exit {proc.returncode}\n{out}\n{err}"
    record = read_json(results / "run.json")
    assert record["state"] == "CANCELLED" and record["exit_code"] == 143, record
    assert not processes_mentioning(str(results))
