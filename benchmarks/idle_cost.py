"""What idle Redis workers cost in CPU: the share of a core that workers with nothing to do use.

The scenarios are those of ``tests/runs/test_idle_cost.py``, which asserts on counts that do not
depend on the machine (wake-ups and Redis commands per idle second); this script measures what
those wake-ups cost here, which does (the speed of the machine, its load, the kernel's scheduling).
Per round and scenario, over a 4 s window: the mean CPU share of the idle workers (hybrid_redis,
dyn_redis -n 4 while the root sleeps), of the parked workers and of the driver (dyn_auto_redis
-n 4 on one 7 s task), with their wake-ups and preemptions per second. It prints one markdown
table, with the load average before and after, and asserts nothing.

    python benchmarks/idle_cost.py               # 3 rounds, about 1 minute
    python benchmarks/idle_cost.py --rounds 10
"""
import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.idle import Window, idle_run, parked_run  # noqa: E402


def measure() -> list[tuple[str, Window, slice]]:
    """One round: (what, window, which of its pids) per row of the table."""
    rows = []
    for mapping in ("hybrid_redis", "dyn_redis"):
        with tempfile.TemporaryDirectory(prefix="d4p-idle-") as tmp, idle_run(Path(tmp), mapping) as run:
            window = run.measure(list(run.workers().values()))
            run.finish()
        rows.append((f"{mapping}: idle worker", window, slice(None)))
    with tempfile.TemporaryDirectory(prefix="d4p-idle-") as tmp, parked_run(Path(tmp)) as (run, parked):
        window = run.measure([*parked, run.driver])
        run.finish()
    rows.append(("dyn_auto_redis: parked worker", window, slice(0, -1)))
    rows.append(("dyn_auto_redis: driver", window, slice(-1, None)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every scenario (default 3)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    found: dict[str, list[list[float]]] = {}
    for k in range(args.rounds):
        for what, window, which in measure():
            pids = range(len(window.pids))[which]
            means = [statistics.mean(values[p] for p in pids)
                     for values in (window.cpu, window.wakeups, window.preempted)]
            found.setdefault(what, []).append(means)
        print(f"round {k + 1} of {args.rounds} done", file=sys.stderr)
    print(f"{os.cpu_count()} cores, load average {load:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"medians of {args.rounds} rounds (min-max), per process")
    print()
    print("| process | CPU, % of a core | wake-ups / s | preemptions / s |")
    print("| --- | --- | --- | --- |")
    for what, rounds in found.items():
        cells = []
        for column, scale, digits in ((0, 100, 3), (1, 1, 1), (2, 1, 1)):
            values = [r[column] * scale for r in rounds]
            cells.append(f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})")
        print(f"| {what} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
