"""The local scheduler: generated scripts run as detached process groups, with the real runtime."""

import json
import shutil
import socket
import sys

import pytest
from helpers.dynamic import needs_redis
from helpers.runs import items, processes_mentioning, wait_for

from d4p_hpc.jobs import state as jobs
from d4p_hpc.submission.render import render_script
from d4p_hpc.results import read_run
from d4p_hpc.submission.spec import JobSpec

needs_mpiexec = pytest.mark.skipif(not shutil.which("mpiexec"), reason="needs mpiexec (apt-get install openmpi-bin)")


@pytest.fixture
def submit(tmp_path, where_graph):
    """Submit the test graph to the local scheduler; returns the Job."""
    from d4p_hpc.submission.submit import submit

    def go(**kw):
        values = dict(graph=str(where_graph), results_root=str(tmp_path / "results"), scheduler="local",
                      python=sys.executable, walltime="10", iterations=12)
        spec = JobSpec(**{**values, **kw})
        _, directory = submit(spec, render_script(spec))
        return jobs.open_job(directory)
    return go




def test_a_job_completes_and_leaves_its_directory(submit):
    job = submit(nodes=2)
    final = jobs.wait(job, poll=0.2, timeout=120)
    assert final.state == "COMPLETED", final
    assert job.job_id.startswith("local-") and job.directory.name == f"where-{job.job_id}"
    for name in ("job.sh", "spec.json", "job.out", "job.err", "run.json", "metrics.json",
                 "state/submitted", "state/started", "state/finished"):
        assert (job.directory / name).is_file(), name
    assert json.loads((job.directory / "spec.json").read_text())["spec"]["nodes"] == 2
    assert read_run(job.directory)["processes"] == 2
    assert sorted(i[0] for i in items(job)) == list(range(1, 13))
    assert final.exit_code == 0 and final.elapsed is not None
    assert jobs.open_job(job.directory).job_id == job.job_id


def test_jobs_never_share_a_directory(submit, fake_python):
    first, second = submit(python=fake_python.path), submit(python=fake_python.path)
    assert first.directory != second.directory
    for job in (first, second):
        assert jobs.wait(job, poll=0.2, timeout=60).state == "COMPLETED"


def test_status_goes_from_running_to_completed(submit, fake_python, monkeypatch):
    monkeypatch.setenv("D4P_FAKE_SLEEP", "0.3")
    job = submit(python=fake_python.path)
    seen = []
    final = jobs.wait(job, poll=0.1, timeout=60, on_poll=lambda s: seen.append(s.state))
    assert final.state == "COMPLETED"
    assert "RUNNING" in seen and seen[-1] == "COMPLETED"


def test_a_failing_pe_makes_the_job_failed_with_its_name(submit):
    job = submit(setup=["export D4P_TEST_FAIL_AT=3"])
    final = jobs.wait(job, poll=0.2, timeout=120)
    assert final.state == "FAILED"
    assert "Where" in final.reason and "cursed" in final.reason


def test_walltime_ends_timeout_with_partial_outputs(submit):
    # walltime 60 s, warned 55 s before: the run is told to stop after 5 s
    job = submit(walltime="1", signal_seconds=55, iterations=400, setup=["export D4P_TEST_SLEEP=0.05"])
    final = jobs.wait(job, poll=0.2, timeout=120)
    assert final.state == "TIMEOUT", final
    assert 0 < len(items(job)) < 400
    assert read_run(job.directory)["state"] == "TIMEOUT"
    assert not processes_mentioning(str(job.directory))


def test_cancel_stops_the_whole_job(submit):
    job = submit(iterations=1000, setup=["export D4P_TEST_SLEEP=0.05"], nodes=2)
    wait_for(lambda: items(job))
    jobs.cancel(job)
    final = jobs.wait(job, poll=0.2, timeout=60)
    assert final.state == "CANCELLED", final
    assert not processes_mentioning(str(job.directory))
    assert (job.directory / "state" / "cancel_requested").exists()


def test_a_dead_job_without_marker_is_failed_not_completed(submit, fake_python, monkeypatch):
    monkeypatch.setenv("D4P_FAKE_SLEEP", "0.5")
    monkeypatch.setenv("D4P_FAKE_ITEMS", "100")
    job = submit(python=fake_python.path)
    wait_for(lambda: (job.directory / "state" / "started").exists())
    import os
    import signal
    pid = json.loads((job.directory / "state" / "local.json").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)  # nothing can write a finished marker now
    monkeypatch.setattr(jobs, "MARKER_GRACE_SECONDS", 0.5)
    final = jobs.wait(job, poll=0.1, timeout=30)
    assert final.state == "FAILED" and "without writing state/finished" in final.reason


@needs_mpiexec
def test_mpi_ranks_run_on_the_local_node_list(submit):
    pytest.importorskip("mpi4py")
    job = submit(mapping="mpi", nodes=2, tasks_per_node=2)
    final = jobs.wait(job, poll=0.2, timeout=180)
    assert final.state == "COMPLETED", (final, (job.directory / "job.err").read_text())
    assert read_run(job.directory)["processes"] == 4
    assert len({i[3] for i in items(job)}) >= 2


@needs_redis
@pytest.mark.parametrize("mapping", ["dyn_redis", "hybrid_redis"])
def test_redis_mappings_run_with_forked_workers(submit, mapping):
    pytest.importorskip("redis")
    job = submit(mapping=mapping, nodes=2, tasks_per_node=1, iterations=40, setup=["export D4P_TEST_SLEEP=0.02"])
    final = jobs.wait(job, poll=0.2, timeout=180)
    assert final.state == "COMPLETED", (final, (job.directory / "job.err").read_text())
    assert sorted(i[0] for i in items(job)) == list(range(1, 41))
    assert not (job.directory / "redis.json").exists()
    assert not processes_mentioning(str(job.directory))


@needs_redis
def test_cancel_leaves_no_redis_or_worker(submit):
    pytest.importorskip("redis")
    job = submit(mapping="dyn_redis", nodes=2, iterations=2000, setup=["export D4P_TEST_SLEEP=0.05"])
    wait_for(lambda: items(job))
    connection = json.loads((job.directory / "redis.json").read_text())
    jobs.cancel(job)
    assert jobs.wait(job, poll=0.2, timeout=60).state == "CANCELLED"
    assert not processes_mentioning(str(job.directory))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", connection["port"]), timeout=2).close()
