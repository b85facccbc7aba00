"""Throughput and memory of d4p-hpc's mappings next to the reference dispel4py 2.9.1.

Runs the graphs of ``benchmarks/graphs`` with ``d4p-hpc run`` and with the reference
``dispel4py`` command (PyPI ``stream-d4py==2.9.1``, installed by this script into
``benchmarks/.venv-ref`` on first use) and prints one markdown table.  See
``benchmarks/README.md`` for what each column means.

Examples
--------
::

    python benchmarks/throughput.py --quick            # smoke test, small counts
    python benchmarks/throughput.py                    # light 100,000 items, heavy 4,000
    python benchmarks/throughput.py --memory           # 1,000,000 items: RSS, Redis memory
    python benchmarks/throughput.py --only multi,mpi --no-reference --json out.json
    python benchmarks/throughput.py --graphs skewed --processes 4 --repeat 2   # load balancing
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from monitor import Monitor, become_subreaper, read_status, redis_info_memory

HERE = Path(__file__).resolve().parent
GRAPHS = HERE / "graphs"
REFERENCE_VENV = HERE / ".venv-ref"
REFERENCE_PACKAGES = ["stream-d4py==2.9.1", "mpi4py", "redis"]
CORES = len(os.sched_getaffinity(0))

MAPPINGS = [
    "simple", "multi", "mpi", "dyn_multi", "dyn_auto_multi",
    "dyn_redis", "dyn_auto_redis", "hybrid_redis",
]
REDIS_MAPPINGS = {"dyn_redis", "dyn_auto_redis", "hybrid_redis"}
# d4p-hpc refuses stateful PEs under these, so they run the graphs' stateless variant
# (the reference runs the same variant, for a like-for-like comparison)
STATELESS_MAPPINGS = {"dyn_multi", "dyn_auto_multi", "dyn_redis", "dyn_auto_redis"}
# graph name -> (file in benchmarks/graphs, graph variable)
GRAPH_FILES = {
    "light": ("light.py", "graph"),
    "heavy": ("heavy.py", "graph"),
    "backpressure": ("heavy.py", "backpressure"),
    "skewed": ("skewed.py", "graph"),
}
# graphs with no stateful variant: every mapping runs the one graph
STATELESS_GRAPHS = {"skewed"}
# graphs whose table rows give the speed-up over the runtime's own simple run
SPEEDUP_GRAPHS = {"heavy", "skewed"}
RESULT_LINE = re.compile(r"BENCH-RESULT (\{.*\})")
ELAPSED_LINE = re.compile(r"^ELAPSED TIME: ([0-9.]+)", re.MULTILINE)
MB = 1024 * 1024

# the issues' targets: (graph, mapping, processes or None for the largest run, what, bound)
TARGETS = [
    ("light", "multi", 4, "ratio", 2.0),
    ("light", "mpi", 4, "ratio", 2.0),
    ("light", "dyn_redis", None, "ratio", 5.0),
    ("light", "hybrid_redis", None, "ratio", 5.0),
    ("heavy", "multi", 4, "ideal", 0.9),
    ("heavy", "mpi", 4, "ideal", 0.9),
    ("heavy", "dyn_redis", CORES, "ideal", 0.9),
    ("heavy", "hybrid_redis", CORES, "ideal", 0.9),
    # oversubscribed (-n 4 on 2 cores): idle and waiting processes must not take the cores' time
    ("heavy", "hybrid_redis", 4, "reference simple", 1.8),
    # load balancing (#21): a stateless root's slow calls spread over the workers
    ("skewed", "dyn_multi", 4, "simple time", 0.6),
    ("skewed", "dyn_redis", 4, "simple time", 0.6),
]
RSS_LIMIT_MB, REDIS_LIMIT_MB = 150, 100
# a run that has used no CPU for this long is hung: the reference's idle waits are shorter
STALL_SECONDS = 30


@dataclass
class Case:
    """One row of the table: a graph run under one mapping with some processes."""

    graph: str
    mapping: str
    processes: int
    items: int

    @property
    def stateless_variant(self):
        """Whether this run uses the graph's stateless variant in place of the graph."""
        return self.mapping in STATELESS_MAPPINGS and self.graph not in STATELESS_GRAPHS

    @property
    def attr(self):
        variable = GRAPH_FILES[self.graph][1]
        return variable + "_stateless" if self.stateless_variant else variable

    @property
    def label(self):
        return self.graph + (" (stateless)" if self.stateless_variant else "")

    @property
    def path(self):
        return str(GRAPHS / GRAPH_FILES[self.graph][0])


@dataclass
class Outcome:
    """How one run went.

    ``status`` is ``ok``, ``wrong count`` (the totals differ from simple's), ``no result``
    (exit 0 but no ``BENCH-RESULT`` line), ``error`` (non-zero exit), ``timeout`` or
    ``hung`` (stopped using CPU before it ended).
    ``own_seconds`` is the run time the runtime reports itself: ``metrics.json``
    ``wall_seconds`` for d4p-hpc, the ``ELAPSED TIME`` line for the reference.  ``tail``
    is the end of a failed run's output, ``kept`` its results directory (d4p-hpc).
    ``roots_spread`` (d4p-hpc's dynamic mappings): the roots whose calls ran on the workers,
    from ``metrics.json``.
    """

    status: str
    seconds: float
    items: int
    own_seconds: float = None
    result: dict = None
    peak_rss_mb: float = None
    process_peaks_mb: list = field(default_factory=list)
    redis_mb: float = None
    leaked: int = 0
    tail: str = ""
    kept: str = ""
    roots_spread: list = None

    @property
    def completed(self):
        return self.status in ("ok", "no result")

    @property
    def items_per_second(self):
        return self.items / self.seconds if self.completed else None


def free_port():
    """Return a TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ReferenceRedis:
    """A throwaway redis-server on 127.0.0.1 for one reference run, fresh so that its
    ``used_memory_peak`` is that run's."""

    def __enter__(self):
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis_info_memory("127.0.0.1", self.port)
                return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.process.kill()
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait()


def ensure_reference():
    """Return the reference ``dispel4py`` command, creating its venv on first use."""
    command = REFERENCE_VENV / "bin" / "dispel4py"
    if not command.exists():
        print(f"creating {REFERENCE_VENV} with {' '.join(REFERENCE_PACKAGES)}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(REFERENCE_VENV)], check=True)
        subprocess.run(
            [str(REFERENCE_VENV / "bin" / "pip"), "install", "-q", *REFERENCE_PACKAGES],
            check=True,
        )
    return str(command)


def run_environment():
    """Return the environment for a run: ours, plus what Open MPI needs here."""
    env = dict(os.environ)
    # both runtimes start Open MPI as root in this container, and -n 4 on 2 cores
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
    )
    return env


def execute(command, env, timeout, items, redis=None, ignore=()):
    """Run ``command``, sampling its memory; return ``(Outcome, output text)``.

    The outcome's status is only ``timeout``, ``hung`` (no CPU used for ``STALL_SECONDS``),
    ``error`` or provisionally ``ok`` here: the caller reads the result and decides.
    """
    monitor = Monitor(ignore=ignore, redis=redis)
    with tempfile.TemporaryFile() as output:
        start = time.perf_counter()
        try:
            process = subprocess.Popen(
                command, env=env, stdout=output, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        except FileNotFoundError as error:  # e.g. no mpiexec on this machine
            return Outcome(status="error", seconds=0.0, items=items, tail=str(error)), ""
        monitor.start()
        status = None
        while status is None:
            try:
                process.wait(0.5)
                status = "ok" if process.returncode == 0 else "error"
            except subprocess.TimeoutExpired:
                if time.perf_counter() - start > timeout:
                    status = "timeout"
                elif monitor.idle_seconds() > STALL_SECONDS:
                    status = "hung"
        seconds = time.perf_counter() - start
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        monitor.stop()
        leaked = [pid for pid in monitor.run_pids() if read_status(pid)]
        stop_leftovers(leaked, monitor.peaks)
        output.seek(0)
        text = output.read().decode(errors="replace")
    runtime = {pid: kb for pid, (name, kb) in monitor.peaks.items() if name != "redis-server"}
    outcome = Outcome(
        status=status, seconds=seconds, items=items, leaked=len(leaked),
        peak_rss_mb=max(runtime.values()) / 1024 if runtime else None,
        process_peaks_mb=sorted(
            (name, round(kb / 1024, 1)) for name, kb in monitor.peaks.values()
        ),
        redis_mb=monitor.redis_peak / MB if monitor.redis_peak else None,
        tail="\n".join(text.splitlines()[-15:]) if status != "ok" else "",
    )
    return outcome, text


def stop_leftovers(leaked, seen):
    """Kill the run's processes that outlived it, and reap those re-parented to us."""
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    pending = set(seen)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue  # our child, still dying
            except ChildProcessError:
                if pid in leaked and os.path.exists(f"/proc/{pid}"):
                    continue  # not ours to reap, still dying
            pending.discard(pid)
        if pending:
            time.sleep(0.05)


def add_results(texts):
    """Add up the ``BENCH-RESULT`` lines of all Report instances, or None if there are none."""
    total = None
    for text in texts:
        for match in RESULT_LINE.finditer(text):
            part = json.loads(match.group(1))
            total = {key: (total or {}).get(key, 0) + value for key, value in part.items()}
    return total


def run_d4p(case, timeout):
    """Run ``case`` with ``d4p-hpc run``.

    Its results directory is removed, unless the run failed (error, timeout, hung).
    """
    results = Path(tempfile.mkdtemp(prefix="d4p-bench-"))
    connection = results / "redis.json"

    def redis_address():
        try:
            data = json.loads(connection.read_text())
            return data["host"], data["port"], data.get("password")
        except (OSError, ValueError, KeyError):
            return None  # not written yet

    command = [
        sys.executable, "-m", "d4p_hpc", "run", case.path, "--attr", case.attr,
        "-m", case.mapping, "-n", str(case.processes), "-i", str(case.items),
        "--results", str(results),
    ]
    outcome, text = execute(
        command, run_environment(), timeout, case.items,
        redis=redis_address if case.mapping in REDIS_MAPPINGS else None,
    )
    # PEs print into logs/; stdout only counts when there are no logs, never twice
    logs = [p.read_text(errors="replace") for p in sorted(results.glob("logs/*.log"))]
    outcome.result = add_results(logs) or add_results([text])
    try:
        metrics = json.loads((results / "metrics.json").read_text())
        outcome.own_seconds = metrics["wall_seconds"]
        outcome.roots_spread = metrics.get("roots_spread")
    except (OSError, ValueError, KeyError):
        pass
    if outcome.status == "ok":
        shutil.rmtree(results, ignore_errors=True)
    else:
        outcome.kept = str(results)
    return outcome


def run_reference(case, timeout, dispel4py):
    """Run ``case`` with the reference ``dispel4py`` command (under mpiexec for mpi, with a
    throwaway Redis for the Redis mappings)."""
    command = [dispel4py, case.mapping, case.path, "-a", case.attr, "-i", str(case.items)]
    if case.mapping != "simple":
        command += ["-n", str(case.processes)]
    if case.mapping == "mpi":
        launcher = ["mpiexec", "--oversubscribe", "-n", str(case.processes)]
        if os.geteuid() == 0:
            launcher.insert(1, "--allow-run-as-root")
        command = launcher + command
    env = run_environment()
    if case.mapping not in REDIS_MAPPINGS:
        outcome, text = execute(command, env, timeout, case.items)
    else:
        with ReferenceRedis() as redis:
            # dyn_redis and dyn_auto_redis read the address from the environment,
            # hybrid_redis from its options
            env.update(REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis.port))
            if case.mapping == "hybrid_redis":
                command += ["-ri", "127.0.0.1", "-rp", str(redis.port)]
            outcome, text = execute(
                command, env, timeout, case.items,
                redis=lambda: ("127.0.0.1", redis.port, None), ignore={redis.process.pid},
            )
    outcome.result = add_results([text])
    elapsed = [float(seconds) for seconds in ELAPSED_LINE.findall(text)]
    outcome.own_seconds = max(elapsed) if elapsed else None
    return outcome


def expected_result(case, baseline):
    """What a correct run of ``case`` reports, given the stateful simple run's result.

    The stateless variant has no per-key aggregation: every item becomes one record.
    """
    if case.stateless_variant:
        return {"records": baseline["count"], "count": baseline["count"], "sum": baseline["sum"]}
    return baseline


def judge(outcome, case, baseline):
    """Turn a provisional ``ok`` into ``no result`` or ``wrong count`` where it is one."""
    if outcome.status != "ok":
        return
    if outcome.result is None:
        outcome.status = "no result"
    elif baseline is None or outcome.result != expected_result(case, baseline):
        outcome.status = "wrong count"


def plan(args):
    """List the cases to run; each graph's simple run comes first: it is the baseline."""
    chosen = [m for m in MAPPINGS if m != "simple" and m in (args.only or MAPPINGS)]

    def cases(graph, items, mappings, counts):
        return [Case(graph, "simple", 1, items)] + [
            Case(graph, mapping, processes, items) for mapping in mappings for processes in counts
        ]

    if args.memory:
        items = args.items or (20_000 if args.quick else 1_000_000)
        static = [m for m in chosen if m in ("multi", "mpi")]
        redis = [m for m in chosen if m in REDIS_MAPPINGS]
        largest = [max(args.processes)]
        return cases("light", items, static, largest) + cases(
            "backpressure", items, static + redis, largest
        )
    items = {"light": args.items or (2_000 if args.quick else 100_000), "heavy": 200 if args.quick else 4_000,
             "skewed": 20 if args.quick else 100}
    return [case for graph in args.graphs for case in cases(graph, items[graph], chosen, args.processes)]


def run_all(cases, args):
    """Run every case under both runtimes, ``args.repeat`` rounds of all cases (interleaved, so a
    noisy minute does not fall on one case); return ``(case, d4p outcome, reference outcome)``
    rows, an outcome being None for a runtime that was skipped, else its median run."""
    dispel4py = None if args.no_reference else ensure_reference()
    runs = [([], []) for _ in cases]
    for _ in range(args.repeat):
        baselines = {}
        for case, (d4ps, refs) in zip(cases, runs, strict=True):
            d4p = None if args.no_d4p else run_d4p(case, args.timeout)
            wanted = args.reference_only is None or case.mapping in args.reference_only
            ref = dispel4py and wanted and run_reference(case, args.timeout, dispel4py) or None
            if case.mapping == "simple":
                # the reference's simple mapping is the ground truth where it gives a result
                good = [o for o in (ref, d4p) if o and o.status == "ok" and o.result]
                baselines[case.graph] = good[0].result if good else None
            for outcome, kept in ((d4p, d4ps), (ref, refs)):
                if outcome:
                    judge(outcome, case, baselines[case.graph])
                    kept.append(outcome)
            print(f"  {case.label} {case.mapping} -n {case.processes}: d4p-hpc {describe(d4p, own_rate)}, "
                  f"reference {describe(ref, own_rate)}", file=sys.stderr, flush=True)
    return [(case, median_run(d4ps), median_run(refs)) for case, (d4ps, refs) in zip(cases, runs, strict=True)]


def median_run(outcomes):
    """The run of median time, or the first that went wrong (a failure is no noise to smooth over)."""
    if not outcomes:
        return None
    failed = [o for o in outcomes if o.status != "ok"]
    if failed:
        return failed[0]
    return sorted(outcomes, key=lambda o: o.own_seconds or o.seconds)[len(outcomes) // 2]


def describe(outcome, rate):
    """Items/s by ``rate`` (whole command where the run has no clock of its own), or why there is
    no number (with an upper bound for a timeout)."""
    if outcome is None:
        return "-"
    if outcome.status == "timeout":
        return f"timeout (< {outcome.items / outcome.seconds:,.0f})"
    value = rate(outcome) or outcome.items_per_second
    if value is None:
        return outcome.status
    text = f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    return text if outcome.status == "ok" else f"{text} ({outcome.status})"


def correct(outcome):
    """The status, and processes a run that ended by itself left running (a bug)."""
    if outcome is None:
        return "-"
    text = "yes" if outcome.status == "ok" else outcome.status
    if outcome.leaked and outcome.status not in ("timeout", "hung"):
        text += f", {outcome.leaked} left running"
    return text


def own_rate(outcome):
    """Items/s on the runtime's own clock (the run itself, without interpreter or mpiexec start-up)."""
    if outcome and outcome.completed and outcome.own_seconds:
        return outcome.items / outcome.own_seconds
    return None


def ratio(d4p, ref, clock=own_rate):
    """d4p-hpc's items/s over the reference's; on the runtimes' own clocks by default, as both
    report one, so the fixed start-up cost of each command does not stand in for throughput."""
    rates = [clock(o) for o in (d4p, ref)]
    return rates[0] / rates[1] if all(rates) else None


def own_seconds(outcome):
    """Seconds of a run that finished, on its own clock where it has one."""
    return run_seconds(outcome) if outcome and outcome.completed else None


def whole_rate(outcome):
    """Items/s over the whole command, start-up included."""
    return getattr(outcome, "items_per_second", None)


def machine_capacity(seconds=1.5):
    """How many times as fast ``CORES`` CPU-bound Python processes run as one, here and now.

    The ideal speed-up ``min(P, cores)`` assumes every core is a whole core; on a shared VM
    it may not be, and this says by how much."""
    import multiprocessing

    def spin(n):
        s = 1
        for _ in range(n):
            s = (s * 1103515245 + 12345) & 0x7FFFFFFF

    rounds = int(seconds * 8_000_000)
    t = time.perf_counter()
    spin(rounds)
    one = time.perf_counter() - t
    procs = [multiprocessing.get_context("fork").Process(target=spin, args=(rounds // CORES,))
             for _ in range(CORES)]
    t = time.perf_counter()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    return one / (time.perf_counter() - t)


def ideal(processes):
    """Ideal speed-up over simple: one item at a time per core, at most."""
    return min(processes, CORES)


def run_seconds(outcome):
    """The run's time on its own clock where it has one, else the whole command's."""
    return outcome.own_seconds or outcome.seconds


def speedups(rows, case, side):
    """Speed-up of a run over the same runtime's simple run, and its fraction of the ideal one
    (heavy graph only); ``side`` is 1 for d4p-hpc, 2 for the reference.

    Both runs are timed on the runtime's own clock when it has one, so that interpreter
    and mpiexec start-up, the same for every item count, do not hide the scaling.  The skewed
    graph also counts a run that finished with ``no result`` (the reference's dynamic mappings
    never print their totals), the heavy graph only a run whose totals were right.
    """
    row = next(r for r in rows if r[0] is case)
    simple = next((r for r in rows if r[0].graph == case.graph and r[0].mapping == "simple"), None)
    runs = [row[side], simple and simple[side]]
    usable = (lambda o: o.completed) if case.graph == "skewed" else (lambda o: o.status == "ok")
    if case.graph not in SPEEDUP_GRAPHS or not all(o and usable(o) for o in runs):
        return None, None
    up = run_seconds(runs[1]) / run_seconds(runs[0])
    return up, (up / ideal(case.processes) if case.graph == "heavy" else None)


def fmt(value, pattern="{:.1f}"):
    return "-" if value is None else pattern.format(value)


def both(values, pattern="{:.1f}"):
    return " / ".join(fmt(v, pattern) for v in values)


def table(rows):
    header = ["graph", "mapping", "P", "d4p-hpc items/s", "reference items/s", "ratio", "run s d4p/ref",
              "whole command items/s d4p/ref", "d4p-hpc peak RSS MB", "reference peak RSS MB",
              "Redis used_memory MB d4p/ref", "correct d4p/ref", "speed-up d4p/ref",
              "% of ideal d4p/ref"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case, d4p, ref in rows:
        ups = [speedups(rows, case, side) for side in (1, 2)]
        heavy, scaled = case.graph == "heavy", case.graph in SPEEDUP_GRAPHS
        cells = [
            case.label, case.mapping, str(case.processes), describe(d4p, own_rate), describe(ref, own_rate),
            fmt(ratio(d4p, ref), "{:.2f}x"), both([own_seconds(d4p), own_seconds(ref)], "{:.2f}"),
            both([whole_rate(d4p), whole_rate(ref)], "{:,.0f}"),
            fmt(getattr(d4p, "peak_rss_mb", None)), fmt(getattr(ref, "peak_rss_mb", None)),
            both([getattr(o, "redis_mb", None) for o in (d4p, ref)])
            if case.mapping in REDIS_MAPPINGS else "-",
            f"{correct(d4p)} / {correct(ref)}",
            both([up for up, _ in ups], "{:.2f}") if scaled else "-",
            both([f and 100 * f for _, f in ups], "{:.0f}") if heavy else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(value, passes):
    return "no data" if value is None else "PASS" if passes(value) else "FAIL"


def target_lines(rows, memory):
    """Check d4p-hpc against the issues' targets, for the rows that ran."""
    lines = []
    if memory:
        for case, d4p, _ in rows:
            checks = [("peak RSS", getattr(d4p, "peak_rss_mb", None), RSS_LIMIT_MB)]
            if case.mapping in REDIS_MAPPINGS:
                checks.append(("Redis used_memory", getattr(d4p, "redis_mb", None), REDIS_LIMIT_MB))
            lines += [f"- {case.label} {case.mapping} -n {case.processes}: {what} {fmt(value)} MB "
                      f"(target < {limit} MB): {verdict(value, lambda v, limit=limit: v < limit)}"
                      for what, value, limit in checks]
        return lines
    for graph, mapping, processes, what, bound in TARGETS:
        matching = [r for r in rows if r[0].graph == graph and r[0].mapping == mapping
                    and processes in (None, r[0].processes)]
        if not matching:
            continue
        case, d4p, ref = max(matching, key=lambda r: r[0].processes)
        if what == "ratio":
            value = ratio(d4p, ref)
            shown = f"{fmt(value, '{:.2f}x')} the reference's items/s (target >= {bound:g}x)"
        elif what == "simple time":
            value, shown = simple_time_target(rows, case, d4p, ref, bound)
        elif what == "reference simple":
            simple = next((r[2] for r in rows if r[0].graph == graph and r[0].mapping == "simple"), None)
            value = ratio(d4p, simple)
            shown = f"{fmt(value, '{:.2f}x')} the reference's simple items/s (target >= {bound:g}x)"
        else:
            value = speedups(rows, case, 1)[1]
            shown = (f"{fmt(value and 100 * value, '{:.0f}%')} of ideal speed-up "
                     f"(target >= {bound:.0%})")
        below = what == "simple time"
        lines.append(f"- {graph} {mapping} -n {case.processes}: {shown}: "
                     f"{verdict(value, lambda v, bound=bound, below=below: v <= bound if below else v >= bound)}")
    return lines


def simple_time_target(rows, case, d4p, ref, bound):
    """d4p-hpc's run time as a fraction of its own simple run's (``value``, the target), and the
    line that shows it with the reference's same fraction next to it."""
    simple = next((r for r in rows if r[0].graph == case.graph and r[0].mapping == "simple"), (None,) * 3)

    def fraction(run, baseline):
        if run and baseline and run.completed and baseline.completed:
            return run_seconds(run) / run_seconds(baseline)
        return None

    def seconds(run):
        return fmt(run and run.completed and run_seconds(run) or None, "{:.1f} s")

    value, reference = fraction(d4p, simple[1]), fraction(ref, simple[2])
    shown = (f"{seconds(d4p)}, {fmt(value and 100 * value, '{:.0f}%')} of simple's {seconds(simple[1])} "
             f"(target <= {bound:.0%}); reference {seconds(ref)}, "
             f"{fmt(reference and 100 * reference, '{:.0f}%')} of its simple's {seconds(simple[2])}"
             + (f" ({ref.status})" if ref and ref.status != "ok" else ""))
    return value, shown


def memory_details(rows):
    """Peak RSS of every process of each run, for the memory mode."""
    return [
        f"- {case.label} {case.mapping} -n {case.processes} {name}: "
        + ", ".join(f"{proc} {mb}" for proc, mb in outcome.process_peaks_mb)
        for case, *outcomes in rows
        for name, outcome in zip(("d4p-hpc", "reference"), outcomes, strict=True)
        if outcome
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small item counts, a smoke test")
    parser.add_argument("--memory", action="store_true",
                        help="1,000,000 items: peak RSS per process and Redis used_memory")
    parser.add_argument("--only", type=lambda s: s.split(","), metavar="MAPPING,...",
                        help="run only these mappings (simple always runs: it is the baseline)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference runs")
    parser.add_argument("--no-d4p", action="store_true", help="skip the d4p-hpc runs")
    parser.add_argument("--reference-only", type=lambda s: s.split(","), metavar="MAPPING,...",
                        help="run the reference only under these mappings (e.g. simple, for its baseline)")
    parser.add_argument("--graphs", type=lambda s: s.split(","), default=["light", "heavy"], metavar="GRAPH,...",
                        help="graphs of the throughput table: light, heavy, skewed (default light,heavy)")
    parser.add_argument("--items", type=int, help="items for the light graph (memory mode: all)")
    parser.add_argument("--processes", type=lambda s: [int(p) for p in s.split(",")],
                        default=[2, 4], metavar="P,...", help="process counts (default 2,4)")
    parser.add_argument("--timeout", type=float, help="seconds per run (default 300, quick 60)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run every case N times, in rounds, and show the median run (default 1)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write all results here")
    args = parser.parse_args()
    unknown = (set(args.only or ()) | set(args.reference_only or ())) - set(MAPPINGS)
    if unknown:
        parser.error(f"unknown mapping(s): {', '.join(sorted(unknown))}")
    if set(args.graphs) - {"light", "heavy", "skewed"}:
        parser.error("--graphs takes light, heavy and skewed")
    args.timeout = args.timeout or (60 if args.quick else 300)
    become_subreaper()

    load_before = os.getloadavg()
    capacity = machine_capacity()
    rows = run_all(plan(args), args)
    load_after = os.getloadavg()

    print(f"\n{CORES} cores; {CORES} CPU-bound Python processes ran {capacity:.2f} times as fast as one; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"timeout {args.timeout:g} s per run" + (f"; median of {args.repeat} runs" if args.repeat > 1 else "")
          + "\n")
    print("items/s: items fed over the run's own clock (d4p-hpc: metrics.json wall_seconds; "
          "reference: its ELAPSED TIME), where the run has one; ratio: of those.\n")
    print(table(rows))
    print("\nTargets:")
    print("\n".join(target_lines(rows, args.memory)))
    spread = [f"{case.label} {case.mapping} -n {case.processes}: {', '.join(d4p.roots_spread) or 'none'}"
              for case, d4p, _ in rows if d4p and d4p.roots_spread is not None]
    if spread:
        print("\nd4p-hpc roots whose calls ran on the workers (metrics.json roots_spread):")
        print("\n".join("- " + line for line in spread))
    if args.memory:
        print("\nPeak RSS MB of every process:")
        print("\n".join(memory_details(rows)))
    if args.json:
        report = {
            "cores": CORES, "machine_capacity": capacity, "load_before": load_before, "load_after": load_after,
            "repeat": args.repeat,
            "runs": [{"case": asdict(case), "attr": case.attr,
                      "d4p_hpc": d4p and asdict(d4p), "reference": ref and asdict(ref)}
                     for case, d4p, ref in rows],
        }
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
