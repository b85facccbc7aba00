"""What the time-series sampler (``d4p_hpc/mappings/sampler.py``) costs, measured side by side.

First the sampler's own cost: the time one sample takes. Then each benchmark graph under each
mapping with sampling off (``D4P_HPC_SAMPLE_SECONDS=0``) and on (the default, one sample a
second), off and on back to back, N pairs: the median ``wall_seconds`` and CPU seconds (all
processes) of each, and the median over pairs of the on/off difference. See
``benchmarks/README.md`` for the figures.

    python benchmarks/sampling_cost.py                       # light 1,000,000 items, heavy 8,000, 5 pairs
    python benchmarks/sampling_cost.py --pairs 3 --only simple,multi --graphs light
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

GRAPHS = Path(__file__).resolve().parent / "graphs"
MAPPINGS = ["simple", "multi", "mpi", "dyn_multi", "dyn_redis", "hybrid_redis"]
STATELESS = {"dyn_multi", "dyn_redis"}
# long enough for several samples: a run shorter than the interval takes none but the last
CASES = [("light", 1_000_000), ("heavy", 8_000)]


def measure(graph, items, mapping, sampling):
    """One run's own wall time (metrics.json) and the CPU seconds of all its processes, with the
    sampler on or off."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="d4p-sampling-") as tmp:
        attr = "graph_stateless" if mapping in STATELESS else "graph"
        env = dict(os.environ, D4P_HPC_SAMPLE_SECONDS="1" if sampling else "0")
        command = [sys.executable, "-m", "d4p_hpc", "run", str(GRAPHS / f"{graph}.py"), "--attr", attr,
                   "-m", mapping, "-n", "2", "-i", str(items), "--results", f"{tmp}/r"]
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
        wall = json.loads(Path(f"{tmp}/r/metrics.json").read_text())["wall_seconds"]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def direct_cost(processes=16, samples=2000):
    """Seconds one sample takes in a process hosting every instance of the light graph planned
    for ``processes`` (the most a process can hold), measured on the sampler itself."""
    import copy
    import time

    from d4p_hpc.workflow.loader import load_graph
    from d4p_hpc.mappings.runtime.core import Runtime
    from d4p_hpc.mappings.runtime.sink import Sink
    from d4p_hpc.mappings.runtime.plan import build_plan
    from d4p_hpc.mappings.runtime.sampler import Sampler

    plan = build_plan(load_graph(str(GRAPHS / "light.py"), "graph"), processes)
    with tempfile.TemporaryDirectory(prefix="d4p-sampling-") as tmp:
        sink = Sink(Path(tmp), 0)
        runtime = Runtime(plan, 0, sink, None, {}, copy.deepcopy, gids=range(plan.instances))
        sampler = Sampler(Path(tmp) / "00000.jsonl", 0, runtime, sink, 1.0)
        t = time.perf_counter()
        for _ in range(samples):
            sampler.sample()
        return (time.perf_counter() - t) / samples, plan.instances


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5, help="off/on pairs per case (default 5)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=MAPPINGS, metavar="MAPPING,...")
    parser.add_argument("--graphs", type=lambda s: s.split(","), default=[g for g, _ in CASES], metavar="GRAPH,...")
    args = parser.parse_args()
    seconds, instances = direct_cost()
    print(f"one sample of {instances} PE instances: {seconds * 1e6:.0f} us, i.e. {100 * seconds:.3f}% of one core "
          "at one sample a second\n")
    print("| graph | mapping | wall off / on (s, median) | wall cost | CPU off / on (s, median) | CPU cost |\n"
          "| --- | --- | --- | --- | --- | --- |")
    # cost: the median over pairs of (on / off - 1); a pair runs back to back, so a change of the
    # machine's load between pairs cancels out
    for graph, items in (c for c in CASES if c[0] in args.graphs):
        for mapping in args.only:
            off, on = [], []
            try:
                for _ in range(args.pairs):
                    off.append(measure(graph, items, mapping, False))
                    on.append(measure(graph, items, mapping, True))
            except subprocess.CalledProcessError as err:
                print(f"| {graph} | {mapping} | error: {err.stderr.decode(errors='replace').strip()[-200:]} | | | |")
                continue
            cells = []
            for column in (0, 1):
                a, b = statistics.median(x[column] for x in off), statistics.median(x[column] for x in on)
                cost = statistics.median(y[column] / x[column] - 1 for x, y in zip(off, on, strict=True))
                cells += [f"{a:.2f} / {b:.2f}", f"{100 * cost:+.1f}%"]
            print(f"| {graph} | {mapping} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
