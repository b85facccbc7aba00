"""Ranks with nothing to do sleep rather than spin: what ``mpi`` ranks that wait do, counted (#21).

Open MPI's blocking calls (a receive, ``MPI_Gather``, ``MPI_Barrier``) spin a core; with more
ranks than cores (128 on 32 emulated nodes of 2 cores) the spinning ranks starved the working ones
and the nodes' daemons until Slurm declared a node failed. The ranks now poll with a back-off
(``mappings/static/mpi.py``: ``Backoff``), and meet through a polled ``Ibarrier`` before each
collective. Counted here, in figures that do not depend on the machine's speed or load, for the
ranks that wait while one rank works, over a window of a few seconds:

- a rank waiting for a message (its upstream's one call takes seconds): wake-ups (voluntary
  context switches, ``/proc``) per second. Polling every 2 ms, as before, made about 480; a rank
  polling no more often than every 50 ms after a while makes about 20, plus its sampler's.
- a rank that has ended, waiting for the others (the last PE's ``postprocess`` takes seconds): a
  rank spinning in ``MPI_Gather`` sleeps never: 0 wake-ups a second, measured. It now makes about
  20, which is also the upper bound's test.

What a wake-up costs depends on the machine: ``benchmarks/mpi_scale.py`` measures it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest

from helpers.dynamic import tagged_env
from helpers.idle import mpi_ranks, switches
from helpers.runs import d4p_hpc_cmd, explain, read_json, wait_for

pytest.importorskip("mpi4py")
pytestmark = pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec")

RANKS = 4
#: seconds the busy rank works; the window is inside it
BUSY = 7.0
WINDOW = 2.5
#: wake-ups per second of a waiting rank: at least (a spinning rank makes none) and at most (a 2 ms
#: poll makes some 480); about 20 expected, 20-35 measured
LEAST, MOST = 3.0, 80.0

HEADER = '''
import os, time
from dispel4py.base import ProducerPE, IterativePE, ConsumerPE
from dispel4py.workflow_graph import WorkflowGraph
BUSY = float(os.environ["BUSY"])

class Double(IterativePE):
    def _process(self, n):
        return 2 * n
'''

#: the root's one call takes BUSY seconds: the others wait for its item
SLOW_ROOT = HEADER + '''
class Source(ProducerPE):
    def _process(self, inputs):
        time.sleep(BUSY)
        return 1

class Sink(ConsumerPE):
    def _process(self, n):
        pass

graph = WorkflowGraph()
double = Double()
graph.connect(Source(), "output", double, "input")
graph.connect(double, "output", Sink(), "input")
'''

#: the last PE's postprocess takes BUSY seconds: the others have ended and wait for it
SLOW_END = HEADER + '''
class Source(ProducerPE):
    def _process(self, inputs):
        return 1

class Sink(ConsumerPE):
    def _process(self, n):
        pass
    def postprocess(self):
        time.sleep(BUSY)

graph = WorkflowGraph()
double = Double()
graph.connect(Source(), "output", double, "input")
graph.connect(double, "output", Sink(), "input")
'''


@pytest.mark.parametrize(("source", "busy_pe"), [(SLOW_ROOT, "Source"), (SLOW_END, "Sink")],
                         ids=["waiting-for-a-message", "ended-waiting-for-the-others"])
def test_waiting_ranks_sleep_between_polls(tmp_path, source, busy_pe):
    graph, results, tag = tmp_path / "graph.py", tmp_path / "results", uuid.uuid4().hex
    graph.write_text(source)
    run = subprocess.Popen([*d4p_hpc_cmd(), "run", str(graph), "-m", "mpi", "-n", str(RANKS), "-i", "3",
                            "--results", str(results)], env={**tagged_env(tag), "BUSY": str(BUSY)},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(mpi_ranks(tag)) == RANKS and (results / "run.json").exists(), 60)
        time.sleep(1.5)  # each rank has come to its wait, and waited long enough to poll rarely
        pids = mpi_ranks(tag)
        before = {pid: switches(pid)[0] for pid in pids}
        started = time.monotonic()
        time.sleep(WINDOW)
        after = {pid: switches(pid)[0] for pid in pids}
        seconds = time.monotonic() - started
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, explain(subprocess.CompletedProcess(run.args, run.returncode, out, err))
    metrics = read_json(results / "metrics.json")
    rank_of = {p["pid"]: p["process"] for p in metrics["process_list"]}
    busy = {i["process"] for i in metrics["pes"][busy_pe]["instances"]}
    waiting = {rank_of[pid]: (after[pid] - before[pid]) / seconds for pid in pids if rank_of[pid] not in busy}
    assert len(waiting) == RANKS - 1, (rank_of, busy)
    assert all(LEAST <= rate <= MOST for rate in waiting.values()), \
        f"wake-ups per second of each waiting rank (by rank) over {seconds:.1f} s: {waiting}"
