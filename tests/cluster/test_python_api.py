"""The Python API (``d4p_hpc.submit`` and its :class:`~d4p_hpc.Job`) against real clusters: the
emulated 4-node Slurm of .ci/slurm-up.sh (the ``mpi`` mapping, 2 nodes x 2 ranks) and the real
2-node OpenPBS of .ci/pbs-up.sh (``hybrid_redis``, 2 nodes x 1 worker, a per-job Redis). Each test
runs on both (the ``cluster`` fixture).

What is proven, each through the API alone, as a user's script would drive it: a job submitted with
a profile of the project file (scheduler, results root on the shared file system, python, shape)
runs over two nodes, ``wait()`` returns COMPLETED, and ``result()`` gives the same outputs as a
``simple`` run (``d4p_hpc.run``) as multisets, which also equal word counts computed here; another
process finds it by its id alone (``attach``, the user's index of jobs). A PE that raises makes
``result()`` raise JobFailed naming the PE, with its error line; ``cancel()`` of a running job makes
``wait()`` return CANCELLED with the outputs so far kept, every process having stopped in order
(the metrics count every item the outputs hold; no traceback in any log). After every fault nothing
of the job is left running (on any node: the nodes are namespaces of this host) nor its Redis
connection file.

The jobs that end by themselves are submitted together, once per cluster, and run side by side.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from helpers.clusters import TIMEOUT, job_logs
from helpers.dynamic import needs_redis
from helpers.runs import (EXAMPLES, WHERE_GRAPH, canon, independent_word_counts, isolate, processes_mentioning,
                          wait_for)

import d4p_hpc

pytestmark = needs_redis  # the PBS case runs hybrid_redis, with a per-job redis-server

WORD_COUNT = EXAMPLES / "word_count.py"
LINES = 40
#: inputs of a job that runs until it is cancelled
ENDLESS = 100000
#: the mapping and shape of each cluster's jobs
SHAPES = {"slurm": {"mapping": "mpi", "tasks_per_node": 2}, "pbs": {"mapping": "hybrid_redis", "tasks_per_node": 1}}
PROFILE = """
[profiles.testcluster]
scheduler = "{scheduler}"
results_root = "{root}"
python = "{python}"
walltime = "5"
nodes = 2
mapping = "{mapping}"
tasks_per_node = {tasks_per_node}
"""


def multiset(outputs: dict) -> dict[str, Counter]:
    return {key: Counter(canon(item) for item in items) for key, items in outputs.items()}


def count(job: d4p_hpc.Job, key: str = "Where.output") -> int:
    found = job.outputs().get(key)
    return sum(1 for _ in found) if found is not None else 0


def nothing_left(job: d4p_hpc.Job) -> None:
    """No process of the job on any node, and no Redis connection file."""
    wait_for(lambda: not processes_mentioning(str(job.directory)), 60)
    assert not (job.directory / "redis.json").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Counter]:
    """The outputs of word_count under ``simple``, run here by ``d4p_hpc.run``."""
    results = tmp_path_factory.mktemp("simple") / "r"
    run = d4p_hpc.run(WORD_COUNT, mapping="simple", iterations=LINES, results=results, progress=False)
    assert run.state == "COMPLETED", run.logs()
    return multiset(run.result())


@pytest.fixture(scope="module")
def site(cluster, tmp_path_factory):
    """A user of ``cluster``: no user config, a project file with profile ``testcluster``, its
    working directory (the graph files beside it) as the current one."""
    base = tmp_path_factory.mktemp(f"api-{cluster.name}")
    home, work = base / "home", base / "work"
    home.mkdir()
    work.mkdir()
    (work / "where.py").write_text(WHERE_GRAPH)
    (work / "d4p-hpc.toml").write_text(PROFILE.format(scheduler=cluster.name, root=base / "results",
                                                      python=sys.executable, **SHAPES[cluster.name]))
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, home, work)
        yield work


@pytest.fixture(scope="module")
def submitted(site) -> dict[str, d4p_hpc.Job]:
    """The jobs that end by themselves, submitted at once: word_count, and the test graph with a
    PE raising at item 5."""
    return {"word_count": d4p_hpc.submit(WORD_COUNT, profile="testcluster", iterations=LINES),
            "failing": d4p_hpc.submit(site / "where.py", profile="testcluster", iterations=20,
                                      setup=["export D4P_TEST_FAIL_AT=5"])}


def test_a_job_over_two_nodes_completes_with_the_outputs_of_a_simple_run(cluster, submitted, reference, site,
                                                                          capsys):
    job = submitted["word_count"]
    assert job.scheduler == cluster.name
    assert job.directory.parent == site.parent / "results"  # the profile's results root
    assert job.wait(timeout=TIMEOUT) == "COMPLETED", job.logs()
    assert "COMPLETED" in capsys.readouterr().err  # the live line, as a plain line in a pipe

    got = multiset(job.result())
    assert got == reference
    assert Counter(dict(tuple(item) for item in job.result()["CountWords.output"])) == independent_word_counts(LINES)
    hosts = {p["host"] for p in job.metrics()["process_list"]}
    if SHAPES[cluster.name]["mapping"] == "mpi":
        assert len(hosts) == 2, hosts  # 2 ranks on each node
        assert len(job.metrics()["process_list"]) == 4
    nothing_left(job)


def test_another_process_attaches_to_the_job_by_its_id_alone(cluster, submitted, tmp_path):
    job = submitted["word_count"]
    job.wait(timeout=TIMEOUT, progress=False)
    script = ("import sys, d4p_hpc\n"
              "job = d4p_hpc.attach(sys.argv[1])\n"
              "print(job.directory, job.state, sum(1 for _ in job.result()['CountWords.output']))\n")
    # elsewhere, without the project file: only the index of the user's jobs knows where it is
    proc = subprocess.run([sys.executable, "-c", script, job.id], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    words = len(independent_word_counts(LINES))
    assert proc.stdout.split() == [str(job.directory), "COMPLETED", str(words)]


def test_result_of_a_job_whose_pe_raises_raises_job_failed_with_the_error_line(cluster, submitted):
    job = submitted["failing"]
    with pytest.raises(d4p_hpc.JobFailed) as failed:
        job.result(timeout=TIMEOUT)
    error = failed.value
    assert (error.state, error.pe, error.error) == ("FAILED", "Where", "ValueError: item 5 is cursed"), \
        f"{error}\n{job_logs(job)}"
    assert error.job.directory == job.directory
    assert str(error).startswith(f"job {job.id} ended FAILED: PE Where raised ValueError: item 5 is cursed")
    assert job.state == "FAILED"
    nothing_left(job)


@pytest.fixture(scope="module")
def cancelled(site) -> dict:
    """A job cancelled by ``cancel()`` once it runs and has written outputs, and what was seen of it."""
    job = d4p_hpc.submit(site / "where.py", profile="testcluster", iterations=ENDLESS,
                         setup=["export D4P_TEST_SLEEP=0.01"])
    wait_for(lambda: count(job) > 0, TIMEOUT)  # running, and its first outputs written
    seen = {"job": job, "outputs before": count(job), "state before": job.state}
    job.cancel()
    seen["final"] = job.wait(timeout=TIMEOUT, progress=False)
    return seen


def test_cancel_of_a_running_job_makes_wait_return_cancelled_with_its_outputs_so_far(cluster, cancelled):
    job = cancelled["job"]
    assert (cancelled["state before"], cancelled["final"]) == ("RUNNING", "CANCELLED"), job.logs()
    assert cancelled["outputs before"] <= count(job) < ENDLESS
    with pytest.raises(d4p_hpc.JobFailed) as stopped:
        job.result(timeout=60)
    assert (stopped.value.state, stopped.value.pe) == ("CANCELLED", None)
    assert str(stopped.value).startswith(f"job {job.id} ended CANCELLED")
    assert job.state == "CANCELLED"
    nothing_left(job)


def test_every_process_of_a_cancelled_job_stops_in_order_and_is_counted(cluster, cancelled):
    """Each process flushes its metrics with its outputs before the run's end is recorded, and none
    loses its Redis first: the metrics count every item the outputs hold, each process its own part
    (a worker on the second node too, which PBS does not signal: it stops as the run tells it)."""
    job = cancelled["job"]
    nothing_left(job)
    metrics = job.metrics()
    processes = [(p["process"], p["host"], p["state"]) for p in metrics["process_list"]]
    assert metrics["pes"].get("Where", {}).get("items_out", 0) == count(job), processes
    assert "COMPLETED" not in [state for _, _, state in processes], processes
    # every process is listed, on both nodes: the ranks (mpi), the driver and each worker (hybrid_redis)
    shape = SHAPES[cluster.name]
    assert len(processes) == 2 * shape["tasks_per_node"] + (shape["mapping"] != "mpi"), processes
    assert len({host for _, host, _ in processes}) == 2, processes
    for proc, _host, _state in processes:
        counted = sum(i["items_out"] for i in metrics["pes"]["Where"]["instances"] if i["process"] == proc)
        part = job.directory / "outputs" / "Where.output" / f"part-{proc:05d}.jsonl"
        written = len(part.read_text().splitlines()) if part.exists() else 0
        assert counted == written, (proc, counted, written, processes)
    # a process stopped by the signal or told of the stop, never one that failed with an error
    parts = [json.loads(p.read_text()) for p in (job.directory / ".parts").glob("metrics-*.json")]
    assert [p["error"] for p in parts] == [None] * len(processes), parts
    assert "Traceback" not in job.logs(tail=None), job.logs()
