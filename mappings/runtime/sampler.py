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
the progress line uses for its ETA. The readers of both are in :mod:`d4p_hpc.results`,
so that the inspection side imports no runtime module.

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
from d4p_hpc.results import Layout, make_private_dir, write_bytes, write_json

INTERVAL_ENV = "D4P_HPC_SAMPLE_SECONDS"
DEFAULT_INTERVAL = 1.0
MAX_LINES = 1800


def interval() -> float:
    """The configured sampling interval in seconds (0: off)."""
    value = os.environ.get(INTERVAL_ENV)
    return float(value) if value else DEFAULT_INTERVAL


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
        record = {"t": round(time.time(), 2), "cpu": round(times.user + times.system, 2), "rss": liveness.rss_mb(),
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
        write_bytes(self.path, ("\n".join([head, *kept]) + "\n").encode())
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


@contextmanager
def sampling(ctx: Any, proc: int, sink: Any, runtime: Any) -> Iterator[None]:
    """Sample ``runtime`` of process ``proc`` while the body runs (nothing if sampling is off)."""
    every = interval()
    if every <= 0:
        yield
        return
    layout = Layout(ctx.results)
    directory = make_private_dir(layout.timeseries)
    if proc == 0:
        write_json(layout.graph, graph_record(ctx))
    sampler = Sampler(directory / f"{proc:05d}.jsonl", proc, runtime, sink, every)
    sampler.start()
    try:
        yield
    finally:
        sampler.stop()
