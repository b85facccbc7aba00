"""32 nodes x 4 tasks on the emulated Slurm (#21): 128 ranks or workers, outputs equal ``simple``'s.

The scale tier: these tests need the 32-node cluster that ``bash .ci/scale`` brings up (each node
in its own network namespace, all on the one 2-core machine), and are not part of ``.ci/test``:
``.ci/scale`` runs them on their own (see the README, Tests). Light graphs only: 128 processes
share 2 cores. Per mapping, one job of ``--nodes 32 --tasks-per-node 4``:

* ``mpi``, 128 ranks, word_count (grouped, stateful ``CountWords``): before the timer slack around
  ``MPI_Init`` (``mappings/static/mpi.py``: ``_mpi``), no rank got through ``MPI_Init`` in 26 minutes;
* ``hybrid_redis``, 128 workers, word_count (its stateful instances on workers of many nodes);
* ``dyn_redis``, 128 workers, long_count's stateless graph.

Each ends COMPLETED, its outputs equal to a ``simple`` run's (multisets), with its 128 ranks in
the run (the Redis mappings: the workers that joined before the run ended, printed), and nothing of
it left running.
"""

from __future__ import annotations

import sys

import pytest

from helpers.clusters import connect, job_logs
from helpers.dynamic import needs_redis
from helpers.runs import EXAMPLES, diff, outputs, processes_mentioning, read_json, run_simple, wait_for

from d4p_hpc.jobs import state as jobs
from d4p_hpc.submission.render import render_script
from d4p_hpc.submission.spec import JobSpec
from d4p_hpc.submission.submit import submit

pytestmark = [pytest.mark.slurm, pytest.mark.scale, pytest.mark.slow]

NODES, TASKS = 32, 4
CASES = {
    "mpi": ("word_count.py", None, 20),
    "hybrid_redis": ("word_count.py", None, 20),
    "dyn_redis": ("long_count.py", "stateless", 50),
}


@pytest.mark.parametrize("mapping", ["mpi", pytest.param("hybrid_redis", marks=needs_redis),
                                     pytest.param("dyn_redis", marks=needs_redis)])
def test_128_processes_over_32_nodes_give_simple_outputs(mapping, tmp_path, monkeypatch):
    cluster = connect("slurm")
    assert cluster.nodes >= NODES, f"the scale tier needs {NODES} nodes (bash .ci/scale); this cluster has " \
                                   f"{cluster.nodes}"
    graph, attr, iterations = CASES[mapping]
    spec = JobSpec(graph=str(EXAMPLES / graph), attr=attr, results_root=str(tmp_path / "results"),
                   scheduler="slurm", python=sys.executable, walltime="15", iterations=iterations, nodes=NODES,
                   tasks_per_node=TASKS, mapping=mapping, setup=["export LONG_COUNT_SECONDS=0.001"])
    _job_id, directory = submit(spec, render_script(spec))
    job = jobs.open_job(directory)
    final = jobs.wait(job, poll=1.0, timeout=900)
    assert final.state == "COMPLETED", f"{final}\n{job_logs(job)}"
    metrics = read_json(directory / "metrics.json")
    if mapping == "mpi":
        assert metrics["processes"] == NODES * TASKS, metrics["processes"]
    else:  # (a worker that started after the run had ended joins no more: not every one need have)
        assert 0 < metrics["workers"] <= NODES * TASKS, metrics.get("workers")
        print(f"{mapping}: {metrics['workers']} workers joined, on "
              f"{len({p['host'] for p in metrics['process_list'] if p['process']})} nodes")
    monkeypatch.setenv("LONG_COUNT_SECONDS", "0")
    assert run_simple(EXAMPLES / graph, iterations, tmp_path / "simple", attr)["state"] == "COMPLETED"
    got, want = outputs(directory), outputs(tmp_path / "simple")
    assert got == want, diff(got, want)
    wait_for(lambda: not processes_mentioning(str(directory)), 120)
