"""Time series of a running process, for ``d4p-hpc report`` and the live progress line.

Every process of a run (each ``run_process``) starts one daemon thread that,
about once a second, reads the counters the runtime keeps anyway for
``metrics.json`` (per PE instance: items in and out, busy seconds, seconds
blocked on back-pressure, whether it has finished; items written to the
sinks), this process's CPU seconds and resident memory, and what the driver
of a dynamic mapping knows besides (backlog, its peak, pool size, live
workers), and appends them as one JSON line to ``timeseries/<process>.jsonl``.
Counters are cumulative within a segment, so a reader gets rates from
differences and dropping a line loses resolution, never items.

A run resumed in the same directory (a later *segment*: ``--resume``,
``--requeue``, ``d4p-hpc resume``) appends to the same files: each line
carries its segment number, and its counters and CPU seconds start again from
0, so a reader sums the last sample of every segment.

Size stays bounded for runs of any length: when a segment holds more than
:data:`MAX_LINES` samples, every other one of that segment is dropped (2:1)
and the interval doubles. At one line a second that is the first 30 minutes at
full resolution, then 2 s for the next hour, 4 s for two more, and so on; a
segment never exceeds ``MAX_LINES`` samples (about 0.2 MB for a process with a
few PE instances).

Line format: a header ``{"process", "host", "pid", "interval", "t", "segment",
"cpu0"}`` (``t``: when sampling began, epoch seconds; ``cpu0``: the CPU seconds
the process had used by then, start-up and imports) each time a process starts
sampling; then ``{"t": epoch seconds, "seg": segment, "cpu": CPU seconds since
the header, "rss": MB, "sink": items written to outputs, "i": [[PE, instance,
items in, items out, busy seconds, blocked seconds, done], ...]}`` (``done``:
true once the instance has finished, null where the runtime does not say; files
of 0.2 have neither ``seg`` nor the last two numbers), plus ``"backlog"``,
``"backlog_peak"``, ``"pool"`` and ``"workers"`` where the process knows them.
Process 0 also writes ``timeseries/graph.json`` (PEs in pipeline order,
instance counts, connections, root inputs), which the report draws and the
progress line uses for its ETA. The readers of both are in
:mod:`d4p_hpc.results`, so that the inspection side imports no runtime module.

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

from d4p_hpc import liveness, settings
from d4p_hpc.errors import ResultsError
from d4p_hpc.results import Layout, make_private_dir, read_json, write_bytes, write_json

MAX_LINES = 1800


def interval() -> float:
    """The configured sampling interval in seconds (0: off)."""
    return settings.sample_seconds()


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
    to ``path`` from a daemon thread, as segment ``segment`` of the run."""

    def __init__(self, path: Path, proc: int, runtime: Any, sink: Any, every: float, segment: int = 1) -> None:
        self.path = path
        self.runtime = runtime
        self.sink = sink
        self.every = every
        self.segment = segment
        self.lines = 0
        self._stop = threading.Event()
        # CPU from here on: the wall time it is set against starts with the run, not with the interpreter
        self._cpu0 = time.process_time()
        # appended to: a run resumed in the same directory (a later segment) adds to its samples,
        # and thinning keeps what the earlier segments wrote (everything before this offset)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._own = os.fstat(fd).st_size
        self._fh = os.fdopen(fd, "a")
        if self._own and os.pread(fd, 1, self._own - 1) != b"\n":
            self._fh.write("\n")  # a segment killed in the middle of a line: ours start on a line of their own
            self._own += 1
        self._write({"process": proc, "host": liveness.host(), "pid": os.getpid(), "interval": every,
                     "t": round(time.time(), 2), "segment": segment, "cpu0": round(self._cpu0, 3)})
        self._thread = threading.Thread(target=self._loop, name="d4p-sampler", daemon=True)

    def _write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def sample(self) -> None:
        record = {"t": round(time.time(), 2), "seg": self.segment,
                  "cpu": round(time.process_time() - self._cpu0, 3), "rss": liveness.rss_mb(),
                  "sink": self.sink.written,
                  "i": [[s["pe"], s["instance"], s["items_in"], s["items_out"], round(s["busy_seconds"], 3),
                         round(s.get("blocked_seconds", 0.0), 3), s.get("done")]
                        for s in self.runtime.stats()]}
        gauges = getattr(self.runtime, "gauges", None)
        if gauges is not None:
            record.update(gauges())
        self._write(record)
        self.lines += 1
        if self.lines > MAX_LINES:
            self._halve()

    def _halve(self) -> None:
        """Keep this segment's header, every other sample and the last one (and every line of the
        segments before); sample half as often from now on."""
        self._fh.close()
        data = self.path.read_bytes()
        head, *samples = data[self._own:].decode(errors="replace").splitlines()
        kept = samples[::2] if len(samples) % 2 else samples[::2] + samples[-1:]
        write_bytes(self.path, data[:self._own] + ("\n".join([head, *kept]) + "\n").encode())
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


def segment(results: Path) -> int:
    """The number of the run's segment now running: one more than the earlier ones ``run.json`` lists
    (written before any process of the run samples). Read as plain JSON: a field this version does
    not know must not make a resumed run's samples count as its first segment's."""
    try:
        earlier = (read_json(Layout(results).run, dict) or {}).get("segments")
    except ResultsError:  # the run's own record, cut short: the samples still count, as segment 1
        return 1
    return len(earlier) + 1 if isinstance(earlier, list) else 1


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
    sampler = Sampler(directory / f"{proc:05d}.jsonl", proc, runtime, sink, every, segment(ctx.results))
    sampler.start()
    try:
        yield
    finally:
        sampler.stop()
