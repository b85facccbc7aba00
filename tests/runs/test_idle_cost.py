"""Idle workers cost nothing: the CPU that Redis workers with nothing to do use, measured from /proc.

A worker with nothing to do blocks on Redis rather than polling (mappings/rbroker.py): its main
loop on its streams until an entry comes or its next look for a dead worker's entries (every
half claim idle time, 5 s), its heartbeat on the run's ``ended`` stream between two beats (four
per claim idle time). With its sampler (once a second), that is under two wake-ups a second, at
about 0.3 ms of CPU each on the 2-core test VM: under 0.1% of a core (0.06-0.14% measured).
:data:`IDLE_BOUND` (0.25% per worker, the mean over the idle ones) leaves room for a loaded
machine and fails for loops that wake a few times a second, as they did before (a 0.25 s
heartbeat and a 0.25 s blocking read: 0.25-0.45% measured).

A parked worker (dyn_auto_redis, outside the pool) beats twice a second, to resume within
0.5 s of the driver growing the pool: 0.12-0.21% measured. :data:`PARKED_BOUND` (0.4%) catches
hot polling (over a dozen wake-ups a second), not the old loops (0.29-0.35%). The driver, which
wakes a few times a second for autoscaling and failure detection, must stay under
:data:`DRIVER_BOUND` (2%; 0.6-1% measured).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from d4p_hpc.mappings.redis.keys import ANNOUNCE, Keys
from helpers.dynamic import GRAPH_HEADER, SLOW_GRAPH, needs_redis, wait_file, write_graph
from helpers.runs import d4p_hpc_cmd, read_json

redis = pytest.importorskip("redis")
pytestmark = [*needs_redis, pytest.mark.slow]

IDLE_BOUND = 0.0025
PARKED_BOUND = 0.004
DRIVER_BOUND = 0.02
WINDOW = 4.0
WORKERS = 4

#: Numbers sleeps $ROOT_DELAY s before each item -> Double -> Sum, grouped by key (stateful).
SLOW_ROOT_GRAPH = GRAPH_HEADER + '''
class SlowNumbers(Numbers):
    def _process(self, inputs):
        time.sleep(float(os.environ["ROOT_DELAY"]))
        return Numbers._process(self, inputs)

class Double(IterativePE):
    def _process(self, n):
        return (n % 2, 2 * n)

class Sum(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input", grouping=[0])
        self._add_output("output")
        self.total = 0
    def process(self, inputs):
        self.total += inputs["input"][1]
    def postprocess(self):
        self.write("output", self.total)

graph = WorkflowGraph()
double = Double()
graph.connect(SlowNumbers(), "output", double, "input")
graph.connect(double, "output", Sum(), "input")
'''


def cpu_seconds(pid: int) -> float:
    """CPU time so far of every thread of ``pid``, in ns precision (schedstat: utime and stime
    in /proc/<pid>/stat count whole clock ticks, too coarse for a few ms in a few seconds)."""
    tasks = list(Path(f"/proc/{pid}/task").glob("*/schedstat"))
    if not tasks:
        pytest.skip("no /proc/<pid>/task/*/schedstat on this kernel")
    return sum(int(t.read_text().split()[0]) for t in tasks) / 1e9


class Run:
    """A ``d4p-hpc run`` under way on its own Redis; its processes, found through that Redis."""

    def __init__(self, graph: Path, mapping: str, items: int, env: dict) -> None:
        self.results = graph.parent / "results"
        self.proc = subprocess.Popen(d4p_hpc_cmd() + ["run", str(graph), "-m", mapping, "-n", str(WORKERS),
                                                      "-i", str(items), "--results", str(self.results)],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        conn = wait_file(self.results / "redis.json", self.proc)
        self.client = redis.Redis(host=conn["host"], port=conn["port"], password=conn["password"])
        deadline = time.monotonic() + 30
        while len(self.workers()) < WORKERS:
            assert time.monotonic() < deadline and self.proc.poll() is None, "the workers did not join"
            time.sleep(0.05)
        self.keys = Keys(json.loads(self.client.get(ANNOUNCE))["id"])

    def workers(self) -> dict[int, int]:
        """Worker number -> pid, of the workers registered so far."""
        run = self.client.get(ANNOUNCE)
        found = self.client.hgetall(Keys(json.loads(run)["id"]).workers) if run else {}
        return {int(w): json.loads(info)["pid"] for w, info in found.items()}

    def active(self) -> str | None:
        raw = self.client.get(self.keys.active)
        return raw.decode() if raw is not None else None

    def cpu_use(self, pids: list[int]) -> list[float]:
        """Share of a core each of ``pids`` uses over the next :data:`WINDOW` seconds."""
        before, started = [cpu_seconds(p) for p in pids], time.monotonic()
        time.sleep(WINDOW)
        after, seconds = [cpu_seconds(p) for p in pids], time.monotonic() - started
        assert self.proc.poll() is None, "the run ended within the window: it measured no idle time"
        return [(b - a) / seconds for a, b in zip(before, after, strict=True)]

    def finish(self) -> None:
        """Wait for the run to end; it must complete."""
        out, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, out

    def close(self) -> None:
        """Stop what is left of the run (after a failed assertion): the driver's SIGTERM stops it all."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.communicate(timeout=60)
        self.client.close()


@pytest.fixture
def start(tmp_path):
    """``start(source, mapping, items, env)``: a Run of graph ``source``, closed after the test."""
    runs = []

    def make(source: str, mapping: str, items: int, env: dict) -> Run:
        runs.append(Run(write_graph(tmp_path, source), mapping, items, {**_env(), **env}))
        return runs[-1]
    yield make
    for run in runs:
        run.close()


def _percent(shares: list[float]) -> str:
    return ", ".join(f"{100 * s:.3f}%" for s in shares)


@pytest.mark.parametrize("mapping", ["hybrid_redis", "dyn_redis"])
def test_idle_workers_cost_nothing(mapping, start):
    """The root sleeps 2.5 s per item: for seconds no worker has anything to do."""
    source = SLOW_ROOT_GRAPH if mapping == "hybrid_redis" else SLOW_ROOT_GRAPH.replace("grouping=[0]", "")
    run = start(source, mapping, 3, {"ROOT_DELAY": "2.5"})  # (dyn_redis refuses stateful PEs)
    time.sleep(1.0)  # start-up: workers preprocess and (hybrid_redis) claim their instances
    shares = run.cpu_use(list(run.workers().values()))
    run.finish()
    assert sum(shares) / len(shares) < IDLE_BOUND, f"idle workers used {_percent(shares)} of a core"
    assert read_json(run.results / "metrics.json")["pes"]["Double"]["items_in"] == 3


def test_parked_workers_and_the_driver_cost_nothing(start):
    """One 7 s task under dyn_auto_redis: the pool stays at one worker, three are parked."""
    run = start(SLOW_GRAPH, "dyn_auto_redis", 1, {"SLOW_DELAY": "7"})
    time.sleep(1.5)  # the driver's first pool; workers outside it park within 0.5 s
    pool = run.active()
    assert pool is not None and len(pool.split(",")) == 1, pool
    parked = [pid for w, pid in run.workers().items() if str(w) not in pool.split(",")]
    *worker_shares, driver_share = run.cpu_use(parked + [run.proc.pid])
    assert run.active() == pool, "the pool changed during the window"
    run.finish()
    assert sum(worker_shares) / len(worker_shares) < PARKED_BOUND, \
        f"parked workers used {_percent(worker_shares)} of a core"
    assert driver_share < DRIVER_BOUND, f"the driver used {_percent([driver_share])} of a core"


def _env() -> dict:
    """This environment without D4P_HPC_* settings (a claim idle time would change the beat)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("D4P_HPC_")}
