"""Memory when a root PE writes every item in ONE ``process`` call, under every mapping (issue 8).

The graph is ``tests/data/g_one_call.py`` (``Lines`` writes ``$D4P_ONE_CALL_ITEMS`` items from one
call, ``Work`` doubles each), run with ``d4p-hpc run -i 1``. For each mapping it prints the peak
RSS of the driver (process 0, the one that runs the root: ``max_rss_mb`` in ``metrics.json``,
``VmHWM``), of the largest process of the run (sampled from ``/proc``, mpiexec included), the
Redis ``used_memory_peak`` (``redis_used_memory_peak_mb``), and the driver against multi's. A
measurement, not a test.

::

    python benchmarks/one_call_memory.py                       # 1,000,000 items, -n 2
    python benchmarks/one_call_memory.py --items 200000 --only multi,dyn_multi
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from monitor import become_subreaper
from throughput import MAPPINGS, execute, run_environment

from d4p_hpc import results as rd

# the tests' graph, so that the benchmark measures exactly what tests/runs/test_write_backpressure.py bounds
GRAPH = Path(__file__).resolve().parents[1] / "tests" / "data" / "g_one_call.py"


def measure(mapping, items, processes, timeout):
    """Run the graph once; return a row of the table as a dict."""
    results = Path(tempfile.mkdtemp(prefix="d4p-one-call-"))
    command = [sys.executable, "-m", "d4p_hpc", "run", str(GRAPH), "-m", mapping, "-n", str(processes),
               "-i", "1", "--results", str(results)]
    env = {**run_environment(), "D4P_ONE_CALL_ITEMS": str(items)}
    outcome, _ = execute(command, env, timeout, items)
    row = {"mapping": mapping, "processes": processes, "status": outcome.status, "seconds": round(outcome.seconds, 1),
           "largest_mb": round(outcome.peak_rss_mb, 1) if outcome.peak_rss_mb else None}
    try:
        metrics = json.loads((results / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    peaks = {p["process"]: p["max_rss_mb"] for p in metrics.get("process_list", [])}
    row["driver_mb"] = peaks.get(0)
    row["redis_mb"] = metrics.get("redis_used_memory_peak_mb")
    row["backlog_peak"] = metrics.get("backlog_peak")
    done = list(rd.output_items(results, "Work", "output")) if (results / "outputs").exists() else []
    row["correct"] = len(done) == items and sum(done) == items * (items - 1)
    if outcome.status == "ok":
        shutil.rmtree(results, ignore_errors=True)
    else:
        row["kept"] = str(results)
        row["tail"] = outcome.tail
    return row


def fmt(value):
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def table(rows):
    multi = next((r["driver_mb"] for r in rows if r["mapping"] == "multi" and r["driver_mb"]), None)
    lines = ["| mapping | -n | driver peak RSS MB | x multi's driver | largest process MB | Redis used_memory peak MB "
             "| backlog peak | seconds | correct |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["driver_mb"] / multi if multi and r["driver_mb"] else None
        lines.append(f"| {r['mapping']} | {r['processes']} | {fmt(r['driver_mb'])} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} | {fmt(r['largest_mb'])} | {fmt(r['redis_mb'])} | "
                     f"{fmt(r['backlog_peak'])} | {r['seconds']} | "
                     f"{'yes' if r['correct'] else r['status'] if r['status'] != 'ok' else 'no'} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="items the one call writes")
    parser.add_argument("--processes", type=int, default=2, help="-n of every parallel mapping")
    parser.add_argument("--only", help="comma-separated mappings (default: all)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    mappings = args.only.split(",") if args.only else MAPPINGS
    become_subreaper()
    load = os.getloadavg()[0]
    rows = []
    for mapping in mappings:
        rows.append(measure(mapping, args.items, 1 if mapping == "simple" else args.processes, args.timeout))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"{args.items:,} items written by one root call; load average {load:.2f} -> {os.getloadavg()[0]:.2f}\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
