"""Runs of the Redis mappings whose processes sit idle for seconds, and what those processes do
meanwhile: counted by tests/runs/test_idle_cost.py (wake-ups, Redis commands), timed by
benchmarks/idle_cost.py (CPU share). Linux only: the counts come from /proc."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from d4p_hpc.mappings.redis.keys import ANNOUNCE, Keys
from helpers.dynamic import GRAPH_HEADER, SLOW_GRAPH, tagged_pids, wait_file, write_graph
from helpers.runs import d4p_hpc_cmd

WORKERS = 4
#: how long a measurement lasts
WINDOW = 4.0

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


def switches(pid: int) -> tuple[int, int]:
    """Context switches so far of every thread of ``pid``: voluntary ones (a thread blocks: once per
    wake-up, and per wait for a reply) and involuntary ones (a running thread is preempted: these
    depend on the machine's load)."""
    voluntary = involuntary = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        except OSError:  # a thread that ended since the listing
            continue
        voluntary += int(fields["voluntary_ctxt_switches"])
        involuntary += int(fields["nonvoluntary_ctxt_switches"])
    return voluntary, involuntary


def mpi_ranks(tag: str) -> list[int]:
    """The MPI rank processes of a run started with ``D4P_TEST_TAG=tag`` (those mpiexec started)."""
    found = []
    for pid in tagged_pids(tag):
        try:
            if b"OMPI_COMM_WORLD_RANK=" in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time so far of every thread of ``pid``, in ns precision (schedstat: utime and stime in
    /proc/<pid>/stat count whole clock ticks, too coarse for a few ms in a few seconds)."""
    total = 0
    for schedstat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(schedstat.read_text().split()[0])
        except OSError:
            continue
    return total / 1e9


@dataclass
class Window:
    """What each of ``pids`` did per second of one measurement, and what the run asked its Redis."""

    pids: list[int]
    seconds: float
    #: voluntary context switches per second, per pid
    wakeups: list[float]
    #: involuntary context switches per second, per pid
    preempted: list[float]
    #: share of a core, per pid
    cpu: list[float]
    #: calls per second by command (lower case), of every process of the run
    commands: dict[str, float]

    def report(self) -> str:
        """The figures, on one line."""
        def listed(values: list[float], digits: int = 1) -> str:
            return ", ".join(f"{v:.{digits}f}" for v in values)
        commands = ", ".join(f"{name} {n:.2f}" for name, n in sorted(self.commands.items()))
        return (f"per second over {self.seconds:.1f} s: wake-ups {listed(self.wakeups)}; preemptions "
                f"{listed(self.preempted)}; CPU % {listed([100 * c for c in self.cpu], 3)}; Redis commands "
                f"{commands}")


class IdleRun:
    """A ``d4p-hpc run`` under way on its own Redis, with :data:`WORKERS` workers; its processes,
    found through that Redis."""

    def __init__(self, directory: Path, source: str, mapping: str, items: int, env: dict) -> None:
        import redis

        graph = write_graph(directory, source)
        self.results = directory / "results"
        # without D4P_HPC_* settings: a claim idle time would change the beat
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("D4P_HPC_")}, **env}
        self.proc = subprocess.Popen(d4p_hpc_cmd() + ["run", str(graph), "-m", mapping, "-n", str(WORKERS),
                                                      "-i", str(items), "--results", str(self.results)],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.client = None
        try:
            conn = wait_file(self.results / "redis.json", self.proc)
            self.client = redis.Redis(host=conn["host"], port=conn["port"], password=conn["password"])
            deadline = time.monotonic() + 30
            while len(self.workers()) < WORKERS:
                assert time.monotonic() < deadline and self.proc.poll() is None, "the workers did not join"
                time.sleep(0.05)
            self.keys = Keys(json.loads(self.client.get(ANNOUNCE))["id"])
        except BaseException:
            self.close()
            raise

    @property
    def driver(self) -> int:
        """Pid of the driver (process 0)."""
        return self.proc.pid

    def workers(self) -> dict[int, int]:
        """Worker number -> pid, of the workers registered so far."""
        run = self.client.get(ANNOUNCE)
        found = self.client.hgetall(Keys(json.loads(run)["id"]).workers) if run else {}
        return {int(w): json.loads(info)["pid"] for w, info in found.items()}

    def parked(self) -> list[int]:
        """Pids of the workers outside the pool the driver chose (dyn_auto_redis), in worker order."""
        raw = self.client.get(self.keys.active)
        pool = raw.decode().split(",") if raw is not None else []
        return [pid for w, pid in sorted(self.workers().items()) if str(w) not in pool]

    def commands(self) -> dict[str, int]:
        """Calls so far by command, from ``INFO commandstats`` (which counts itself too)."""
        return {name.removeprefix("cmdstat_").lower(): stats["calls"]
                for name, stats in self.client.info("commandstats").items()}

    def measure(self, pids: list[int], seconds: float = WINDOW) -> Window:
        """What ``pids`` and the run's Redis do over the next ``seconds``; the run must still be going."""
        started = time.monotonic()
        before = [(*switches(p), cpu_seconds(p)) for p in pids], self.commands()
        time.sleep(seconds)
        after = [(*switches(p), cpu_seconds(p)) for p in pids], self.commands()
        elapsed = time.monotonic() - started
        assert self.proc.poll() is None, "the run ended within the window: it measured no idle time"
        # our own INFO calls are not the run's
        calls = {name: (n - before[1].get(name, 0) - (1 if name == "info" else 0)) / elapsed
                 for name, n in after[1].items()}
        # per pid: voluntary switches, involuntary ones and CPU seconds, per second
        rates = [[(b - a) / elapsed for a, b in zip(then, now, strict=True)]
                 for then, now in zip(before[0], after[0], strict=True)]
        wakeups, preempted, cpu = ([row[k] for row in rates] for k in range(3))
        return Window(pids, elapsed, wakeups, preempted, cpu, {k: v for k, v in calls.items() if v})

    def finish(self) -> str:
        """Wait for the run to end, which must complete; return its output."""
        out, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, out
        return out

    def close(self) -> None:
        """Stop what is left of the run (after a failed assertion): the driver's SIGTERM stops it all."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.communicate(timeout=60)
        if self.client is not None:
            self.client.close()


@contextlib.contextmanager
def idle_run(directory: Path, mapping: str) -> Iterator[IdleRun]:
    """hybrid_redis or dyn_redis, -n 4: the root sleeps 2.5 s before each of 3 items, so for seconds
    no worker has anything to do. Given a second of start-up (workers preprocess and, under
    hybrid_redis, claim their instances); stopped if still going at the end."""
    source = SLOW_ROOT_GRAPH if mapping == "hybrid_redis" else SLOW_ROOT_GRAPH.replace("grouping=[0]", "")
    run = IdleRun(directory, source, mapping, 3, {"ROOT_DELAY": "2.5"})  # (dyn_redis refuses stateful PEs)
    try:
        time.sleep(1.0)
        yield run
    finally:
        run.close()


@contextlib.contextmanager
def parked_run(directory: Path) -> Iterator[tuple[IdleRun, list[int]]]:
    """dyn_auto_redis -n 4 on one 7 s task: the pool stays at one worker, three are parked. Yields
    the run and the parked workers' pids (:meth:`IdleRun.parked`), after the driver's first pool
    (those outside it park within 0.5 s); stopped if still going at the end."""
    run = IdleRun(directory, SLOW_GRAPH, "dyn_auto_redis", 1, {"SLOW_DELAY": "7"})
    try:
        time.sleep(1.5)
        parked = run.parked()
        assert len(parked) == WORKERS - 1, f"{WORKERS - len(parked)} workers in the pool, not one"
        yield run, parked
    finally:
        run.close()
