"""Time series of a running process, for ``d4p-hpc report`` and the live progress line.

Every process of a run (each ``run_process``) starts one daemon thread that,
about once a second, reads the counters the runtime keeps anyway for
``metrics.json`` (items in and out and busy seconds per PE instance, items
written to the sinks), this process's CPU seconds and resident memory, and
what the driver of a dynamic mapping knows besides (backlog, pool size, live
workers), and appends them as one JSON line to
``timeseries/<process>.jsonl``. Counters are cumulative, so a reader gets
rates from differences and dropping a line loses resolution, never items.

Size stays bounded for runs of any length: when a file holds more than
:data:`MAX_LINES` samples, every other one is dropped (2:1) and the interval
doubles. At one line a second that is the first 30 minutes at full
resolution, then 2 s for the next hour, 4 s for two more, and so on; a file
never exceeds ``MAX_LINES`` samples (about 0.2 MB for a process with a few
PE instances).

Line format: a header ``{"process", "host", "pid", "interval", "t"}`` (``t``:
when sampling began, epoch seconds) each time a process starts sampling; then ``{"t": epoch seconds,
"cpu": CPU seconds, "rss": MB,
"sink": items written to outputs, "i": [[PE, instance, items in, items out,
busy seconds], ...]}``, plus ``"backlog"``, ``"pool"`` and ``"workers"``
where the process knows them. Process 0 also writes ``timeseries/graph.json``
(PEs, instance counts, connections, root inputs), which the report draws and
the progress line uses for its ETA.

``$D4P_HPC_SAMPLE_SECONDS`` sets the interval; ``0`` turns sampling off.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Iterator

from d4p_hpc import liveness
from d4p_hpc import results as rd

TIMESERIES = "timeseries"
GRAPH_FILE = "graph.json"
INTERVAL_ENV = "D4P_HPC_SAMPLE_SECONDS"
DEFAULT_INTERVAL = 1.0
MAX_LINES = 1800
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2 ** 20 if hasattr(os, "sysconf") else 0


def interval() -> float:
    """The configured sampling interval in seconds (0: off)."""
    value = os.environ.get(INTERVAL_ENV)
    return float(value) if value else DEFAULT_INTERVAL


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return round(int(fh.read().split()[1]) * _PAGE_MB, 1)
    except (OSError, IndexError, ValueError):
        import resource
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def graph_record(ctx: Any) -> dict:
    """What the report and the progress line need to know of the plan: PEs, edges, root inputs."""
    plan = ctx.plan
    roots = {node.index for node in plan.roots()}

    def given(index: int) -> int | None:
        feed = ctx.feeds.get(index, 0)
        return feed if isinstance(feed, int) else len(feed)

    return {"mapping": ctx.mapping, "processes": ctx.processes,
            "pes": [{"name": n.key, "instances": n.count, "root": n.index in roots,
                     "inputs": given(n.index) if n.index in roots else None} for n in plan.pes],
            "edges": [{"src": plan.pes[c.src].key, "output": c.output, "dst": plan.pes[c.dst].key,
                       "input": c.input, "grouping": c.grouping} for c in plan.connections]}


class Sampler:
    """Appends samples of ``runtime`` (anything with ``stats()``, optionally ``gauges()``) and ``sink``
    to ``path`` from a daemon thread."""

    def __init__(self, path: Path, proc: int, runtime: Any, sink: Any, every: float) -> None:
        self.path = path
        self.runtime = runtime
        self.sink = sink
        self.every = every
        self.lines = 0
        self._stop = threading.Event()
        # appended to: a run resumed in the same directory (a later segment) adds to its samples
        self._fh = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a")
        self._write({"process": proc, "host": liveness.host(), "pid": os.getpid(), "interval": every,
                     "t": round(time.time(), 2)})
        self._thread = threading.Thread(target=self._loop, name="d4p-sampler", daemon=True)

    def _write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def sample(self) -> None:
        times = os.times()
        record = {"t": round(time.time(), 2), "cpu": round(times.user + times.system, 2), "rss": _rss_mb(),
                  "sink": self.sink.written,
                  "i": [[s["pe"], s["instance"], s["items_in"], s["items_out"], round(s["busy_seconds"], 3)]
                        for s in self.runtime.stats()]}
        gauges = getattr(self.runtime, "gauges", None)
        if gauges is not None:
            record.update(gauges())
        self._write(record)
        self.lines += 1
        if self.lines > MAX_LINES:
            self._halve()

    def _halve(self) -> None:
        """Keep the header, every other sample and the last one; sample half as often from now on."""
        self._fh.close()
        head, *samples = self.path.read_text().splitlines()
        kept = samples[::2] if len(samples) % 2 else samples[::2] + samples[-1:]
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join([head, *kept]) + "\n")
        os.replace(tmp, self.path)
        self._fh = open(self.path, "a")
        self.lines = len(kept)
        self.every *= 2

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.sample()
            except Exception:  # a sample is worth less than the run: a Redis gone at the end, a race
                continue

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write a last sample, with the final counts."""
        self._stop.set()
        self._thread.join(5.0)
        try:
            self.sample()
        except Exception:
            pass
        self._fh.close()


def last_sample(path: Path) -> dict | None:
    """The newest complete sample of one file (reads only its end)."""
    with open(path, "rb") as fh:
        fh.seek(max(0, fh.seek(0, 2) - 65536))
        lines = fh.read().splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:  # cut by the seek, or still being written
            continue
        if "i" in record:
            return record
    return None


def last_samples(results: Path) -> dict[int, dict]:
    """The newest sample of every process of the run in ``results``, by process."""
    found = {}
    for path in sorted((Path(results) / TIMESERIES).glob("*.jsonl")):
        record = last_sample(path)
        if record is not None:
            found[int(path.stem)] = record
    return found


def read_series(results: Path) -> dict[int, tuple[dict, list[dict]]]:
    """Every process's header and samples, by process."""
    found = {}
    for path in sorted((Path(results) / TIMESERIES).glob("*.jsonl")):
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        if records:
            found[int(path.stem)] = (records[0], [r for r in records if "i" in r])
    return found


def read_graph(results: Path) -> dict:
    """``timeseries/graph.json`` ({} before process 0 has written it)."""
    return rd.read_json(Path(results) / TIMESERIES / GRAPH_FILE) or {}


@contextmanager
def sampling(ctx: Any, proc: int, sink: Any, runtime: Any) -> Iterator[None]:
    """Sample ``runtime`` of process ``proc`` while the body runs (nothing if sampling is off)."""
    every = interval()
    if every <= 0:
        yield
        return
    directory = rd.make_private_dir(ctx.results / TIMESERIES)
    if proc == 0:
        rd.write_json(directory / GRAPH_FILE, graph_record(ctx))
    sampler = Sampler(directory / f"{proc:05d}.jsonl", proc, runtime, sink, every)
    sampler.start()
    try:
        yield
    finally:
        sampler.stop()
