"""PBS without a PBS server: rendered scripts run in the environment PBS gives a job, and the
whole submit/status/logs/cancel path runs against fake qsub/qstat/qdel.

They run anywhere; tests/cluster/test_cluster.py runs the same jobs on a real OpenPBS server (the testbed
of .ci/pbs-up.sh). The qstat records below are the forms that server gave.
"""

import json
import os
import shutil
import signal
import socket
import stat
import sys
import time

import pytest

from helpers.runs import TESTS, processes_mentioning, wait_pid

from d4p_hpc.jobs import state as jobs
from d4p_hpc.submission.render import render_script
from d4p_hpc.results import output_items, read_run
from d4p_hpc.schedulers import local, pbs
from d4p_hpc.submission.spec import JobSpec


def pbs_spec(tmp_path, graph, **kw):
    values = dict(graph=str(graph), results_root=str(tmp_path / "results"), scheduler="pbs",
                  python=sys.executable, walltime="10", iterations=12, partition="workq")
    return JobSpec(**{**values, **kw})


def run_as_pbs(spec, tmp_path, job_id="4242.pbs-test", timeout=180):
    """Run the rendered script as PBS would run job ``job_id``; returns its Job."""
    script = tmp_path / "job.sh"
    script.write_text(render_script(spec))
    nodefile = tmp_path / "nodefile"
    nodefile.write_text(f"{socket.gethostname()}\n" * spec.total_tasks)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    workdir = tmp_path / "submitted-from"
    workdir.mkdir(exist_ok=True)
    env = dict(os.environ, PBS_JOBID=job_id, PBS_JOBNAME=spec.job_name, PBS_NODEFILE=str(nodefile),
               PBS_O_WORKDIR=str(workdir), PBS_O_HOST=socket.gethostname(), PBS_ENVIRONMENT="PBS_BATCH",
               PBS_QUEUE="workq", PBS_TASKNUM="1", PBS_NODENUM="0", HOME=str(home))
    # PBS starts the script in the home directory; it must move to PBS_O_WORKDIR itself
    pid = local.start(script, env, home, tmp_path / "pbs.out", tmp_path / "pbs.err")
    wait_pid(pid, timeout)
    return jobs.open_job(spec.results_dir(job_id))


def outcome(job):
    state = jobs.status([job])[0]
    logs = "".join(p.read_text() for p in job.directory.parent.parent.glob("pbs.*"))
    return state, logs


def test_a_pbs_script_runs_as_a_pbs_job(tmp_path, where_graph):
    spec = pbs_spec(tmp_path, where_graph, tasks_per_node=2, setup=["pwd >where-i-ran"])
    job = run_as_pbs(spec, tmp_path)
    state, logs = outcome(job)
    assert state.state == "COMPLETED", logs
    assert job.directory.name == "where-4242.pbs-test" and job.job_id == "4242.pbs-test"
    assert (tmp_path / "submitted-from" / "where-i-ran").read_text().strip() == str(tmp_path / "submitted-from")
    assert sorted(i[0] for i in output_items(job.directory, "Where", "output")) == list(range(1, 13))


@pytest.mark.skipif(not shutil.which("mpiexec"), reason="needs mpiexec (apt-get install openmpi-bin)")
def test_mpi_ranks_start_with_mpiexec_and_the_node_file(tmp_path, where_graph):
    pytest.importorskip("mpi4py")
    # one node: the node file of this fake names one host (test_cluster.py places ranks on two)
    job = run_as_pbs(pbs_spec(tmp_path, where_graph, mapping="mpi", nodes=1, tasks_per_node=2), tmp_path)
    state, logs = outcome(job)
    assert state.state == "COMPLETED", logs
    assert read_run(job.directory)["processes"] == 2
    assert "--hostfile" in (job.directory / "job.sh").read_text()
    assert "MPI placement: mpiexec --map-by ppr:2:node:PE=1" in logs


@pytest.mark.skipif(not shutil.which("mpiexec") or not shutil.which("redis-server"),
                    reason="needs mpiexec and redis-server")
def test_redis_workers_start_with_mpiexec(tmp_path, where_graph):
    pytest.importorskip("redis")
    job = run_as_pbs(pbs_spec(tmp_path, where_graph, mapping="dyn_redis", nodes=1, tasks_per_node=2,
                              iterations=30), tmp_path)
    state, logs = outcome(job)
    assert state.state == "COMPLETED", logs
    assert sorted(i[0] for i in output_items(job.directory, "Where", "output")) == list(range(1, 31))
    assert not processes_mentioning(str(job.directory))


def test_the_walltime_timer_ends_a_pbs_job_timeout(tmp_path, where_graph, fake_python, monkeypatch):
    monkeypatch.setenv("D4P_FAKE_SLEEP", "0.2")
    monkeypatch.setenv("D4P_FAKE_ITEMS", "200")
    spec = pbs_spec(tmp_path, where_graph, python=fake_python.path, walltime="1", signal_seconds=58)
    job = run_as_pbs(spec, tmp_path)
    state, logs = outcome(job)
    assert state.state == "TIMEOUT", logs
    lines = (job.directory / "outputs" / "Fake.output" / "part-00000.jsonl").read_text().split()
    assert 0 < len(lines) < 200


@pytest.fixture
def fake_pbs(tmp_path, monkeypatch):
    """qsub, qstat and qdel on PATH, backed by tests/fake_pbs.py."""
    bin_dir, spool = tmp_path / "fake-pbs-bin", tmp_path / "fake-pbs-spool"
    bin_dir.mkdir()
    spool.mkdir()
    for command in ("qsub", "qstat", "qdel"):
        path = bin_dir / command
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{TESTS / "fake_pbs.py"}" {command} "$@"\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PBS_SPOOL", str(spool))
    return spool


def test_submit_status_logs_results_through_pbs_commands(cli, isolated_config, where_graph, fake_pbs):
    result = cli("submit", where_graph, "--scheduler", "pbs", "-i", "5", "--wait")
    assert result.exit_code == 0, result.output
    assert "job 100.fakepbs" in result.output and "COMPLETED" in result.output
    logs = cli("logs", "100.fakepbs")
    assert "COMPLETED" in logs.output and "100.fakepbs.OU" in logs.output
    assert "Where.output: 5 items" in cli("results", "100.fakepbs").output


def test_cancel_through_qdel(cli, isolated_config, where_graph, fake_pbs):
    result = cli("submit", where_graph, "--scheduler", "pbs", "-i", "1000", "--setup", "export D4P_TEST_SLEEP=0.05")
    assert result.exit_code == 0, result.output
    job = jobs.find("100.fakepbs", isolated_config / "d4p-results")
    deadline = time.monotonic() + 60
    while not (job.directory / "state" / "started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert cli("cancel", "100.fakepbs").exit_code == 0
    assert cli("wait", "100.fakepbs").exit_code == 1
    assert jobs.status([job])[0].state == "CANCELLED"
    assert not processes_mentioning(str(job.directory))


def test_a_job_qstat_no_longer_knows_is_not_called_done(tmp_path, fake_pbs):
    directory = tmp_path / "results" / "lost-7.fakepbs"
    (directory / "state").mkdir(parents=True)
    (directory / "state" / "started").write_text(json.dumps({"job_id": "7.fakepbs", "epoch": 1}))
    (directory / "spec.json").write_text(json.dumps({"spec": {"job_name": "lost", "scheduler": "pbs"}}))
    state = jobs.status([jobs.open_job(directory)])[0]
    assert state.state == "FAILED" and "without writing state/finished" in state.reason


@pytest.mark.parametrize("record, expected", [
    ({"job_state": "Q"}, ("PENDING", "queued")),
    ({"job_state": "Q", "comment": "Not Running: Not enough free nodes available"},
     ("PENDING", "Not Running: Not enough free nodes available")),
    ({"job_state": "R", "comment": "Job run at Tue Dec  1 at 09:33 on (pbsn1:ncpus=1)"}, ("RUNNING", "")),
    ({"job_state": "F", "comment": "Not Running: Not enough free nodes available and terminated"},
     ("CANCELLED", "deleted before it ran (Not Running: Not enough free nodes available and terminated)")),
    ({"job_state": "H"}, ("PENDING", "held")),
    ({"job_state": "R"}, ("RUNNING", "")),
    ({"job_state": "F", "Exit_status": 0}, ("COMPLETED", "")),
    ({"job_state": "F", "Exit_status": 271}, ("CANCELLED", "killed by signal 15")),
    ({"job_state": "F", "Exit_status": -29}, ("TIMEOUT", "hit the walltime")),
    ({"job_state": "F", "Exit_status": 1, "comment": "Job run at ..."}, ("FAILED", "exit status 1: Job run at ...")),
    ({"job_state": "C", "exit_status": "0"}, ("COMPLETED", "")),
])
def test_qstat_states(record, expected):
    state = pbs._state(record)
    assert (state.state, state.reason) == expected


def test_plain_qstat_text_is_understood():
    text = ("Job Id: 12.server\n    Job_Name = x\n    job_state = R\n    exit_status = 0\n"
            "Job Id: 13.server\n    job_state = C\n    exit_status = 3\n")
    records = pbs._parse_text(text)
    assert records["12.server"]["job_state"] == "R"
    assert pbs._state(records["13.server"]).state == "FAILED"


def test_a_second_stop_signal_is_not_raised_while_the_first_is_handled():
    # PBS signals every process of a job and mpiexec passes on the script's signal too: the second
    # one may land while run_process handles the first (its except clause, its finally)
    from d4p_hpc.supervisor import Interrupted, raise_on_signals, restore_signals

    raise_on_signals()
    try:
        with pytest.raises(Interrupted) as first:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # where the second Interrupted would be raised
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    finally:
        restore_signals()
    assert first.value.signum == signal.SIGTERM
