"""A Redis worker paused past its claim idle time, resumed as the run ends, writes nothing twice.

SIGSTOP one of three dyn_redis workers (claim idle time 2 s): the others take its entries over and
the run completes; SIGCONT it 10 s later, while the driver waits for its workers to leave. It goes on
with the unit it had begun and writes that unit's results again, after the others had done it.
Found by an outside attack: the run read COMPLETED with 10-28 results of 300 twice (the driver kept a
worker's unacknowledged results when that worker had ended FAILED or COMPLETED). Now whatever a worker
wrote beyond its acknowledged commits in a COMPLETED run is cut: outputs equal ``simple``'s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

from helpers.dynamic import needs_redis, tagged_env, tagged_pids, write_graph
from helpers.runs import d4p_hpc_cmd, diff, kill_group, outputs, processes_mentioning, read_json, run_simple, wait_for

pytestmark = needs_redis

GRAPH = '''
import os, time
from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph

class Numbers(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0
    def _process(self, inputs):
        self.n += 1
        return self.n

class Work(IterativePE):
    def _process(self, x):
        time.sleep(float(os.environ.get("WORK_SLEEP", "0")))
        return (x % 7, x)

graph = WorkflowGraph()
graph.connect(Numbers(), "output", Work(), "input")
'''
ITEMS = 600


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rpartition(")")[2].split()[1])


def test_a_worker_paused_past_the_runs_end_writes_nothing_twice(tmp_path, monkeypatch):
    graph = write_graph(tmp_path, GRAPH)
    results = tmp_path / "r"
    tag = uuid.uuid4().hex
    env = {**tagged_env(tag), "D4P_HPC_CLAIM_IDLE": "2", "WORK_SLEEP": "0.02"}
    proc = subprocess.Popen([*d4p_hpc_cmd(), "run", str(graph), "-m", "dyn_redis", "-n", "3", "-i", str(ITEMS),
                             "--results", str(results)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        wait_for(lambda: any((results / "outputs").glob("*/*")) or proc.poll() is not None, 60)
        # the workers are forked by the driver, in its session (the Redis janitor has its own)
        workers = sorted(p for p in tagged_pids(tag) if p != proc.pid and os.getsid(p) == proc.pid
                         and _parent(p) == proc.pid)
        assert len(workers) == 3, workers
        os.kill(workers[1], signal.SIGSTOP)
        time.sleep(10)
        os.kill(workers[1], signal.SIGCONT)
        out, _ = proc.communicate(timeout=120)
    finally:
        kill_group(proc.pid)
    record = read_json(results / "run.json")
    assert proc.returncode == 0 and record["state"] == "COMPLETED", out
    monkeypatch.delenv("WORK_SLEEP", raising=False)
    assert run_simple(graph, ITEMS, tmp_path / "simple")["state"] == "COMPLETED"
    got, want = outputs(results), outputs(tmp_path / "simple")
    assert got == want, diff(got, want)
    assert sum(want["Work.output"].values()) == ITEMS
    wait_for(lambda: not processes_mentioning(str(results)) and not tagged_pids(tag), 30)
