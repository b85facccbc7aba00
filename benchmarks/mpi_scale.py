"""``mpi`` at many ranks on this machine: start-up time, memory per rank, and what a waiting rank
costs. The tests count what does not depend on the machine (``tests/runs/test_idle_ranks.py``:
wake-ups of waiting ranks); the seconds and megabytes are this machine's and live here.

Per rank count, one ``d4p-hpc run -m mpi -n N`` of a graph whose root's one call sleeps
``--busy`` seconds, the other ranks waiting for its item meanwhile:

- start-up: from the command's start until the run's ``run.json`` exists (every rank has
  imported the graph and met the others; rank 0 has locked and begun the run);
- whole command: its wall time, minus ``--busy``: start-up, the end (gather, record) and
  ``mpiexec``'s own ending;
- peak RSS per rank (the run's ``metrics.json``, ``max_rss_mb``), mean and largest;
- a waiting rank's share of a core and wake-ups per second, over a window inside the busy call
  (the mean over the waiting ranks; the busy rank sleeps).

It prints one markdown table with the load average before and after, and asserts nothing.
More ranks than cores are the point (``--oversubscribe``): 128 ranks on 2 cores are 32 emulated
nodes of 4 tasks.

    python benchmarks/mpi_scale.py                    # 4, 16, 64 and 128 ranks
    python benchmarks/mpi_scale.py --ranks 4,16 --busy 8
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.idle import cpu_seconds, mpi_ranks, switches  # noqa: E402

GRAPH = '''
import os, time
from dispel4py.base import ProducerPE, IterativePE, ConsumerPE
from dispel4py.workflow_graph import WorkflowGraph

class Source(ProducerPE):
    def _process(self, inputs):
        time.sleep(float(os.environ["BUSY"]))
        return 1

class Double(IterativePE):
    def _process(self, n):
        return 2 * n

class Sink(ConsumerPE):
    def _process(self, n):
        pass

graph = WorkflowGraph()
double = Double()
double.numprocesses = 1000
graph.connect(Source(), "output", double, "input")
graph.connect(double, "output", Sink(), "input")
'''


def measure(ranks: int, busy: float, window: float, tmp: Path) -> dict:
    graph, results, tag = tmp / f"graph-{ranks}.py", tmp / f"results-{ranks}", uuid.uuid4().hex
    graph.write_text(GRAPH)
    d4p = str(Path(sys.executable).parent / "d4p-hpc")
    env = {**os.environ, "D4P_TEST_TAG": tag, "BUSY": str(busy)}
    started = time.monotonic()
    run = subprocess.Popen([d4p, "run", str(graph), "-m", "mpi", "-n", str(ranks), "-i", "1", "--results",
                            str(results)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (results / "run.json").exists():
        if run.poll() is not None:
            raise SystemExit(f"{ranks} ranks: the run ended before it began: {run.stderr.read()[-2000:]}")
        time.sleep(0.02)
    startup = time.monotonic() - started
    time.sleep(min(1.5, busy / 4))
    pids = mpi_ranks(tag)
    before = {p: (cpu_seconds(p), switches(p)[0]) for p in pids}
    t0 = time.monotonic()
    time.sleep(window)
    after = {p: (cpu_seconds(p), switches(p)[0]) for p in pids}
    seconds = time.monotonic() - t0
    _, err = run.communicate()
    whole = time.monotonic() - started
    if run.returncode != 0:
        raise SystemExit(f"{ranks} ranks: exit {run.returncode}: {err[-2000:]}")
    metrics = json.loads((results / "metrics.json").read_text())
    rss = [p["max_rss_mb"] for p in metrics["process_list"]]
    busy_ranks = {i["process"] for i in metrics["pes"]["Source"]["instances"]}
    rank_of = {p["pid"]: p["process"] for p in metrics["process_list"]}
    waiting = [p for p in pids if p in after and rank_of.get(p) not in busy_ranks]
    return {"ranks": ranks, "startup": startup, "rest": whole - busy - startup,
            "rss_mean": statistics.mean(rss), "rss_max": max(rss),
            "cpu": statistics.mean((after[p][0] - before[p][0]) / seconds for p in waiting),
            "wakeups": statistics.mean((after[p][1] - before[p][1]) / seconds for p in waiting)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=lambda s: [int(n) for n in s.split(",")], default=[4, 16, 64, 128])
    parser.add_argument("--busy", type=float, default=10.0, help="seconds of the root's one call")
    parser.add_argument("--window", type=float, default=3.0, help="seconds of the idle measurement")
    args = parser.parse_args()
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    os.environ.setdefault("D4P_HPC_MAX_PROCESSES", str(max(args.ranks)))  # (d4p-hpc run's guard against typos)
    print(f"mpi on {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f} before")
    print("| ranks | start-up s | end and mpiexec s | RSS per rank MB (mean / max) | waiting rank: % of a core "
          "| waiting rank: wake-ups/s |")
    print("|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="d4p-mpi-scale-") as tmp:
        for ranks in args.ranks:
            r = measure(ranks, max(args.busy, args.window + 3), args.window, Path(tmp))
            print(f"| {r['ranks']} | {r['startup']:.2f} | {r['rest']:.2f} | {r['rss_mean']:.1f} / {r['rss_max']:.1f} "
                  f"| {100 * r['cpu']:.2f} | {r['wakeups']:.0f} |", flush=True)
    print(f"load {os.getloadavg()[0]:.1f} after")

if __name__ == "__main__":
    main()
