"""What periodic checkpoints (``d4p-hpc run --checkpoint-every``) cost, and what one checkpoint costs.

Prints two markdown tables (see ``benchmarks/README.md``, "Checkpoint cost"):

1. **Throughput cost.** The light and heavy benchmark graphs under each mapping, without and with
   ``--checkpoint-every 10``, back to back, ``--repeat`` rounds (the order of the pair alternates
   from round to round): median items/s of each, the cost in percent, the checkpoints each run
   took and the median time one took. The item counts are sized so that a run lasts about
   ``--seconds`` (25 s: two checkpoints at 10 s and 20 s), per mapping, from items/s measured on
   the benchmark machine (``RATES``); ``--items`` fixes them instead.
2. **Time and size of one checkpoint** against the state it saves: ``graphs/stateful.py`` (a
   producer, a slow-ish stateless stage, a counter grouped by key whose state grows with the
   number of distinct keys) under simple, multi -n 2 and -n 4, mpi -n 4 and hybrid_redis -n 3,
   ``--checkpoint-every 2``, for 1,000, 10,000 and 100,000 keys: the medians over every checkpoint
   of the run of its ``seconds``, ``bytes`` and ``in_flight`` (from its ``complete.json``).

Only the two newest checkpoints stay on disk, so the script reads each ``complete.json`` while the
run goes (it looks every 0.2 s). Every run gets a fresh results directory in a temporary
directory, removed afterwards.

Examples
--------
::

    python benchmarks/checkpoint_cost.py --quick                 # smoke test, about 4 minutes
    python benchmarks/checkpoint_cost.py --tables cost --graphs light      # about 15 minutes
    python benchmarks/checkpoint_cost.py                         # both tables, about 35 minutes
    python benchmarks/checkpoint_cost.py --tables state --keys 1000,100000 --only multi
"""
import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from monitor import become_subreaper
from throughput import execute, run_environment

HERE = Path(__file__).resolve().parent
GRAPHS = HERE / "graphs"
CORES = len(os.sched_getaffinity(0))

MAPPINGS = ["simple", "multi", "mpi", "dyn_multi", "dyn_redis", "hybrid_redis"]
# d4p-hpc refuses stateful PEs under these: they run the graphs' stateless variant (as in throughput.py)
STATELESS_MAPPINGS = {"dyn_multi", "dyn_redis"}
# items fed per second on the run's own clock (metrics.json wall_seconds), -n 2 (simple: 1), without
# checkpoints, on the shared 2-core benchmark VM with little else running (2026-12-01): what sizes the
# runs (a loaded machine makes them longer, which is no harm)
RATES = {
    "light": {"simple": 190_000, "multi": 170_000, "mpi": 250_000, "dyn_multi": 110_000,
              "dyn_redis": 110_000, "hybrid_redis": 100_000},
    "heavy": {"simple": 1_050, "multi": 1_600, "mpi": 1_700, "dyn_multi": 1_800,
              "dyn_redis": 1_700, "hybrid_redis": 1_350},
}
# table 2: (mapping, processes): the three asked for (simple, multi -n 4, hybrid_redis -n 3), and
# multi -n 2 and mpi -n 4, whose Chandy-Lamport checkpoints record items in flight; and the items/s
# of graphs/stateful.py after its warm-up (measured as above)
STATE_RUNS = [("simple", 1), ("multi", 2), ("multi", 4), ("mpi", 4), ("hybrid_redis", 3)]
STATE_RATES = {"simple": 3_500, "multi": 6_500, "mpi": 6_500, "hybrid_redis": 9_000}
RESULT_LINE = {"BENCH": re.compile(r"BENCH-RESULT (\{.*\})"), "STATEFUL": re.compile(r"STATEFUL-RESULT (\{.*\})")}
POLL_SECONDS = 0.2


@dataclass
class Run:
    """One ``d4p-hpc run``: how it went, its own clock, and every checkpoint seen while it ran.

    ``status``: ``ok``, ``wrong count``, ``no result``, ``error``, ``timeout`` or ``hung`` (see
    ``throughput.execute``). ``taken``: the newest checkpoint's number (checkpoints are numbered
    from 1), ``checkpoints``: the manifests read (``complete.json``), oldest first.
    """

    status: str
    items: int
    seconds: float
    wall_seconds: float = None
    result: dict = None
    taken: int = 0
    checkpoints: list = field(default_factory=list)
    tail: str = ""
    load: float = None  # the machine's 1-minute load average when the run ended

    @property
    def items_per_second(self):
        return self.items / self.wall_seconds if self.status == "ok" and self.wall_seconds else None


class Watcher(threading.Thread):
    """Read the ``complete.json`` of each checkpoint of a results directory as it appears."""

    def __init__(self, results):
        super().__init__(daemon=True)
        self.root = Path(results) / "checkpoints"
        self.seen = {}
        self._stopped = threading.Event()

    def run(self):
        while not self._stopped.wait(POLL_SECONDS):
            self.look()

    def stop(self):
        self._stopped.set()
        self.join()
        self.look()

    def look(self):
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in names:
            if name.isdigit() and int(name) not in self.seen:
                try:
                    self.seen[int(name)] = json.loads((self.root / name / "complete.json").read_text())
                except (OSError, ValueError):
                    pass  # not complete yet, or removed as the third newest


def totals(texts, tag):
    """Add up the ``<tag>-RESULT`` lines (one per instance of the graph's last PE), or None."""
    total = None
    for text in texts:
        for match in RESULT_LINE[tag].finditer(text):
            part = json.loads(match.group(1))
            total = {key: (total or {}).get(key, 0) + value for key, value in part.items()}
    return total


def run_d4p(path, attr, mapping, processes, items, every, timeout, tag, env=None, keep=False):
    """Run a graph with ``d4p-hpc run`` in a fresh results directory, watching its checkpoints."""
    tmp = Path(tempfile.mkdtemp(prefix="d4p-checkpoint-cost-"))
    results = tmp / "results"
    command = [sys.executable, "-m", "d4p_hpc", "run", str(path), "--attr", attr, "-m", mapping,
               "-n", str(processes), "-i", str(items), "--results", str(results)]
    if every:
        command += ["--checkpoint-every", f"{every:g}"]
    watcher = Watcher(results)
    watcher.start()
    try:
        outcome, text = execute(command, {**run_environment(), **(env or {})}, timeout, items)
    finally:
        watcher.stop()
    logs = [p.read_text(errors="replace") for p in sorted(results.glob("logs/*.log"))]
    run = Run(status=outcome.status, items=items, seconds=outcome.seconds, tail=outcome.tail,
              load=os.getloadavg()[0],
              result=totals(logs, tag) or totals([text], tag),
              checkpoints=[watcher.seen[seq] for seq in sorted(watcher.seen)])
    try:
        run.wall_seconds = json.loads((results / "metrics.json").read_text())["wall_seconds"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        newest = json.loads((results / "run.json").read_text()).get("checkpoint") or {}
    except (OSError, ValueError):
        newest = {}
    run.taken = max([newest.get("seq", 0)] + [c["seq"] for c in run.checkpoints])
    if run.status != "ok":
        print(f"    {mapping} -n {processes} {'with' if every else 'without'} checkpoints: {run.status} "
              f"after {run.seconds:.0f} s" + (f", results kept in {results}" if keep else "")
              + "\n      " + run.tail.replace("\n", "\n      "), file=sys.stderr, flush=True)
    if keep and run.status != "ok":
        return run
    shutil.rmtree(tmp, ignore_errors=True)
    return run


def judge(run, expected):
    """Turn a provisional ``ok`` into ``no result`` or ``wrong count``."""
    if run.status == "ok":
        if run.result is None:
            run.status = "no result"
        elif expected is not None and run.result != expected:
            run.status = "wrong count"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, pattern="{:.1f}"):
    return "-" if value is None else pattern.format(value)


def load_line(before, runs):
    """The load averages before the runs and at the end of each: on a shared machine, what the
    numbers must be read against."""
    loads = [r.load for r in runs if r.load is not None]
    during = f", {min(loads):.2f} to {max(loads):.2f} at the end of the runs" if loads else ""
    return f"load average {before[0]:.2f} before{during}"


# --- table 1: throughput with and without -----------------------------------------------------
@dataclass
class Case:
    graph: str
    mapping: str
    processes: int
    items: int
    without: list = field(default_factory=list)
    with_: list = field(default_factory=list)

    @property
    def attr(self):
        return "graph_stateless" if self.mapping in STATELESS_MAPPINGS else "graph"

    @property
    def label(self):
        return self.graph + (" (stateless)" if self.mapping in STATELESS_MAPPINGS else "")

    def expected(self):
        """The Report totals of a correct run (light: known in closed form; heavy: those of the
        first good run without checkpoints, whose sum depends on Burn's loop)."""
        n = self.items
        records = n if self.mapping in STATELESS_MAPPINGS else 100
        if self.graph == "light":
            return {"records": records, "count": n, "sum": n * (n + 1) // 2}
        good = next((r.result for r in self.without if r.status == "ok" and r.result), None)
        return good and {"records": records, "count": n, "sum": good["sum"]}


def plan_cost(args):
    chosen = [m for m in MAPPINGS if m in args.only]
    cases = []
    for graph in args.graphs:
        for mapping in chosen:
            items = args.items.get(graph) or max(1_000, int(round(RATES[graph][mapping] * args.seconds, -3)))
            cases.append(Case(graph, mapping, 1 if mapping == "simple" else args.processes, items))
    return cases


def run_cost(cases, args):
    for round_ in range(args.repeat):
        for case in cases:
            path = GRAPHS / f"{case.graph}.py"
            order = [(None, case.without), (args.every, case.with_)]
            for every, kept in order if round_ % 2 == 0 else order[::-1]:
                run = run_d4p(path, case.attr, case.mapping, case.processes, case.items, every,
                              args.timeout or 4 * args.seconds + 60, "BENCH", keep=args.keep_failed)
                kept.append(run)
            last = [case.without[-1], case.with_[-1]]
            for run in last:
                judge(run, case.expected())
            print(f"  round {round_ + 1}: {case.label} {case.mapping} -n {case.processes} -i {case.items}: "
                  + ", ".join(f"{name} {fmt(r.items_per_second, '{:,.0f}') if r.status == 'ok' else r.status}"
                              for name, r in zip(("without", "with"), last, strict=True))
                  + f" items/s; {last[1].taken} checkpoints", file=sys.stderr, flush=True)


def rate_cell(runs):
    """Median items/s of the runs, or what went wrong (a failure is no noise to smooth over)."""
    failed = [r for r in runs if r.status != "ok"]
    if failed:
        return ", ".join(sorted({r.status for r in failed})) + f" ({len(failed)} of {len(runs)})"
    return fmt(median(r.items_per_second for r in runs), "{:,.0f}")


def cost_table(cases, args):
    header = ["graph", "mapping", "-n", "items", "s per run (median, without)", "items/s without",
              "items/s with", "cost", "target < 5%", "cost, median of pairs", "spread without",
              "checkpoints per run", "checkpoint s median (max)", "time in checkpoints", "in_flight median",
              "correct"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in cases:
        off = median(r.items_per_second for r in case.without if r.status == "ok")
        on = median(r.items_per_second for r in case.with_ if r.status == "ok")
        complete = off and on and all(r.status == "ok" for r in case.without + case.with_)
        cost = 100 * (1 - on / off) if complete else None
        pairs = median(1 - b.items_per_second / a.items_per_second
                       for a, b in zip(case.without, case.with_, strict=True)) if complete else None
        # the share of a run's own time during which a checkpoint was under way (median over runs)
        share = median(sum(c["seconds"] for c in r.checkpoints) / r.wall_seconds
                       for r in case.with_ if r.status == "ok" and r.checkpoints)
        rates = [r.items_per_second for r in case.without if r.status == "ok"]
        spread = 100 * (max(rates) - min(rates)) / off if len(rates) > 1 else None
        seconds = [c["seconds"] for r in case.with_ for c in r.checkpoints]
        flights = [c.get("in_flight") for r in case.with_ for c in r.checkpoints]
        counts = sorted({r.taken for r in case.with_})
        seen = sum(len(r.checkpoints) for r in case.with_)
        taken = sum(r.taken for r in case.with_)
        statuses = sorted({r.status for r in case.without + case.with_})
        cells = [
            case.label, case.mapping, str(case.processes), f"{case.items:,}",
            fmt(median(r.wall_seconds for r in case.without)), rate_cell(case.without), rate_cell(case.with_),
            fmt(cost, "{:+.1f}%"), "-" if cost is None else "PASS" if cost < 5 else "FAIL",
            fmt(pairs and 100 * pairs, "{:+.1f}%"), fmt(spread, "{:.1f}%"),
            (f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}")
            + ("" if seen == taken else f" ({taken - seen} not seen)"),
            f"{fmt(median(seconds), '{:.3f}')} ({fmt(max(seconds) if seconds else None, '{:.3f}')})",
            fmt(share and 100 * share, "{:.2f}%"), fmt(median(flights), "{:.0f}"),
            "yes" if statuses == ["ok"] else ", ".join(statuses),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- table 2: one checkpoint's time and size against the state -------------------------------
@dataclass
class StateCase:
    mapping: str
    processes: int
    keys: int
    items: int
    run: Run = None

    def expected(self):
        n = self.items
        return {"keys": min(self.keys, n), "count": n, "sum": n * (n + 1) // 2}


def plan_state(args):
    return [StateCase(mapping, processes, keys, keys + int(round(STATE_RATES[mapping] * args.state_seconds, -3)))
            for keys in args.keys for mapping, processes in STATE_RUNS if mapping in args.only]


def run_state(cases, args):
    for case in cases:
        env = {"STATEFUL_KEYS": str(case.keys)}
        case.run = run_d4p(GRAPHS / "stateful.py", "graph", case.mapping, case.processes, case.items,
                           args.state_every, args.timeout or 6 * args.state_seconds + 60, "STATEFUL", env=env,
                           keep=args.keep_failed)
        judge(case.run, case.expected())
        seen = case.run.checkpoints
        print(f"  {case.mapping} -n {case.processes} keys {case.keys:,} -i {case.items:,}: {case.run.status}, "
              f"{case.run.taken} checkpoints: "
              + ", ".join(f"{c['seconds']:.3f} s {c['bytes']:,} B {c['in_flight']} in flight" for c in seen),
              file=sys.stderr, flush=True)


def state_table(cases):
    header = ["mapping", "-n", "keys", "items", "run", "run s", "checkpoints (seen)", "seconds median (max)",
              "bytes median", "bytes per key", "in_flight median (max)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in cases:
        run, seen = case.run, case.run.checkpoints
        seconds = [c["seconds"] for c in seen]
        size = median(c["bytes"] for c in seen)
        flights = [c.get("in_flight", 0) for c in seen]
        cells = [
            case.mapping, str(case.processes), f"{case.keys:,}", f"{case.items:,}",
            "ok" if run.status == "ok" else run.status, fmt(run.wall_seconds or run.seconds),
            f"{run.taken} ({len(seen)})",
            f"{fmt(median(seconds), '{:.3f}')} ({fmt(max(seconds) if seconds else None, '{:.3f}')})",
            fmt(size, "{:,.0f}"), fmt(size and size / case.keys, "{:.1f}"),
            f"{fmt(median(flights), '{:.0f}')} ({fmt(max(flights) if flights else None, '{:.0f}')})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test (about 3 to 4 minutes): 4 s runs, --checkpoint-every 2, one round; "
                             "table 2 with 1,000 and 100,000 keys")
    parser.add_argument("--tables", type=lambda s: s.split(","), default=["cost", "state"], metavar="cost,state",
                        help="which tables (default both)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=MAPPINGS, metavar="MAPPING,...",
                        help=f"only these mappings (default {','.join(MAPPINGS)})")
    parser.add_argument("--graphs", type=lambda s: s.split(","), default=["light", "heavy"], metavar="GRAPH,...",
                        help="graphs of table 1 (default light,heavy)")
    parser.add_argument("--items", type=lambda s: {k: int(v) for k, v in (p.split("=") for p in s.split(","))},
                        default={}, metavar="light=N,heavy=M",
                        help="items per graph for every mapping (default: sized for --seconds per mapping)")
    parser.add_argument("--seconds", type=float, help="table 1: run length the items are sized for (default 25)")
    parser.add_argument("--every", type=float, help="table 1: --checkpoint-every SECONDS (default 10)")
    parser.add_argument("--processes", type=int, default=CORES, metavar="P",
                        help=f"table 1: -n for all but simple (default {CORES}, the cores)")
    parser.add_argument("--repeat", type=int, metavar="R", help="table 1: rounds (default 3, quick 1)")
    parser.add_argument("--keys", type=lambda s: [int(float(k)) for k in s.split(",")], metavar="K,...",
                        help="table 2: distinct keys (default 1000,10000,100000)")
    parser.add_argument("--state-seconds", type=float, help="table 2: run length after the warm-up (default 12)")
    parser.add_argument("--state-every", type=float, default=2, help="table 2: --checkpoint-every (default 2)")
    parser.add_argument("--timeout", type=float, help="seconds a run may take (default 4 x its length + 60 s)")
    parser.add_argument("--keep-failed", action="store_true", help="keep the results directory of a failed run")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every run and checkpoint here")
    args = parser.parse_args()
    quick = args.quick
    args.seconds = args.seconds or (4 if quick else 25)
    args.every = args.every or (2 if quick else 10)
    args.repeat = args.repeat or (1 if quick else 3)
    args.keys = args.keys or ([1_000, 100_000] if quick else [1_000, 10_000, 100_000])
    args.state_seconds = args.state_seconds or (4 if quick else 12)
    for name, values, known in (("mapping", args.only, MAPPINGS), ("graph", args.graphs, RATES),
                                ("graph", args.items, RATES), ("table", args.tables, ("cost", "state"))):
        unknown = set(values) - set(known)
        if unknown:
            parser.error(f"unknown {name}(s): {', '.join(sorted(unknown))}")
    become_subreaper()
    started = time.monotonic()
    command = "python benchmarks/checkpoint_cost.py " + " ".join(sys.argv[1:])
    print(f"{command.strip()}: {time.strftime('%Y-%m-%d %H:%M %Z')}, {CORES} cores\n")
    report = {"command": command, "cores": CORES}

    if "cost" in args.tables:
        cases = plan_cost(args)
        before = os.getloadavg()
        run_cost(cases, args)
        sizing = ("items " + ", ".join(f"{g} {n:,}" for g, n in args.items.items()) if args.items
                  else f"items sized for about {args.seconds:g} s per run")
        print(f"Throughput without and with `--checkpoint-every {args.every:g}`: -n {args.processes} "
              f"(simple -n 1), {sizing}, median of {args.repeat} interleaved round(s); "
              f"{load_line(before, [r for c in cases for r in c.without + c.with_])}\n")
        print("items/s: items fed / metrics.json wall_seconds; cost: 1 - median with / median without; "
              "cost, median of pairs: the median over rounds of 1 - with / without (a pair runs back to "
              "back); spread: (max - min) / median of the runs without; checkpoints per run: the newest "
              "checkpoint's number in each run with them; checkpoint s: complete.json `seconds` of every "
              "checkpoint of those runs; time in checkpoints: their sum / the run's wall_seconds (median "
              "over runs).\n")
        print(cost_table(cases, args) + "\n", flush=True)
        report["cost"] = [asdict(case) for case in cases]

    if "state" in args.tables:
        cases = plan_state(args)
        before = os.getloadavg()
        run_state(cases, args)
        print(f"One checkpoint against the state: benchmarks/graphs/stateful.py (STATEFUL_KEYS distinct keys, "
              f"{args.state_seconds:g} s of slow items after a fast warm-up over the keys), "
              f"`--checkpoint-every {args.state_every:g}`, one run per row; "
              f"{load_line(before, [c.run for c in cases])}\n")
        print("seconds, bytes, in_flight: complete.json of every checkpoint the run completed (medians over "
              "them); checkpoints: the newest one's number (seen: how many were read while the run went).\n")
        print(state_table(cases) + "\n", flush=True)
        report["state"] = [asdict(case) for case in cases]

    print(f"total {(time.monotonic() - started) / 60:.1f} minutes", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
