"""d4p_hpc.supervisor: the one table of stop signals, states and exit codes, stopping processes, and
whether this process is an MPI rank."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from d4p_hpc import supervisor

IGNORES_TERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                "time.sleep(60)")


@pytest.mark.parametrize("code, expected", [
    (0, ("COMPLETED", None)), (1, ("FAILED", None)), (2, ("FAILED", None)), (74, ("FAILED", None)),
    (137, ("FAILED", None)), (-9, ("FAILED", None)),
    (143, ("CANCELLED", signal.SIGTERM)), (-15, ("CANCELLED", signal.SIGTERM)),
    (130, ("CANCELLED", signal.SIGINT)), (-2, ("CANCELLED", signal.SIGINT)),
    (138, ("TIMEOUT", signal.SIGUSR1)), (-10, ("TIMEOUT", signal.SIGUSR1)),
])
def test_classify_reads_the_one_table(code, expected):
    assert supervisor.classify(code) == expected


@pytest.mark.parametrize("variable", supervisor.WORLD_VARS)
def test_a_rank_is_told_by_the_variables_its_launcher_sets(monkeypatch, variable):
    for name in supervisor.WORLD_VARS:
        monkeypatch.delenv(name, raising=False)
    assert not supervisor.inside_mpi_world()
    monkeypatch.setenv(variable, "0")
    assert supervisor.inside_mpi_world()


def test_outside_an_mpi_world_the_mpi_mapping_plans_for_n_like_the_others(monkeypatch):
    """mpi's ``processes`` hook has no opinion outside a world: the registry's default decides."""
    from d4p_hpc import mappings

    for name in supervisor.WORLD_VARS:
        monkeypatch.delenv(name, raising=False)
    assert mappings.get("mpi").processes(3) == mappings.get("multi").processes(3) == 3
    assert mappings.get("mpi").processes(None) == (os.cpu_count() or 1)


def test_the_job_script_cases_cover_every_stop_code_once():
    cases = supervisor.shell_cases()
    codes = [c.strip() for pattern, _ in cases for c in pattern.split("|")]
    assert sorted(codes) == sorted(str(supervisor.exit_code(s)) for s in supervisor.STOPS)
    for pattern, state in cases:
        for code in pattern.split("|"):
            assert supervisor.classify(int(code))[0] == state


def test_the_rendered_job_script_takes_its_codes_from_the_table():
    from d4p_hpc.submission import render
    from d4p_hpc.submission.spec import JobSpec

    graph = Path(__file__).resolve().parents[2] / "examples" / "word_count.py"
    script = render.render_script(JobSpec(graph=str(graph), scheduler="local"))
    for pattern, state in supervisor.shell_cases():
        assert f"{pattern}) state={state} " in script


def _sleeper(ignore_term: bool) -> None:
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def test_stop_kills_what_outlives_the_grace_and_reaps_everything():
    mp = multiprocessing.get_context("fork")
    polite, stubborn = mp.Process(target=_sleeper, args=(False,)), mp.Process(target=_sleeper, args=(True,))
    popen = subprocess.Popen([sys.executable, "-c", IGNORES_TERM], stdout=subprocess.PIPE, text=True)
    for proc in (polite, stubborn):
        proc.start()
    assert popen.stdout.readline() == "ready\n"
    time.sleep(0.2)  # the forked one has installed its SIG_IGN
    t0 = time.monotonic()
    killed = supervisor.stop([polite, stubborn, popen], grace=1.0)
    took = time.monotonic() - t0
    assert 1.0 <= took < 5, took
    assert killed == [stubborn, popen]
    assert polite.exitcode == -signal.SIGTERM and stubborn.exitcode == -signal.SIGKILL
    assert popen.returncode == -signal.SIGKILL
    popen.stdout.close()


def test_stop_without_a_signal_waits_then_kills():
    mp = multiprocessing.get_context("fork")
    proc = mp.Process(target=_sleeper, args=(False,))
    proc.start()
    t0 = time.monotonic()
    assert supervisor.stop([proc], grace=0.5, signum=None) == [proc]
    assert time.monotonic() - t0 >= 0.5 and proc.exitcode == -signal.SIGKILL


def test_stop_group_signals_the_whole_group_then_kills_it():
    # the group's only process is our child, which stop_group reaps: a killed grandchild would stay
    # a zombie, and keep the group in existence, until this machine's init got round to reaping it
    leader = subprocess.Popen([sys.executable, "-c", IGNORES_TERM],
                              start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert leader.stdout.readline() == "ready\n"
    t0 = time.monotonic()
    assert supervisor.stop_group(leader.pid, grace=1.0)
    assert time.monotonic() - t0 >= 1.0
    with pytest.raises(ProcessLookupError):
        os.killpg(leader.pid, 0)
    leader.stdout.close()
