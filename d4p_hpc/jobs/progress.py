"""Live progress of a run, read from the samples its processes write (``timeseries/``).

One line: results written so far (items through the sinks), the recent rate, the slowest
PE (the highest busy fraction per instance: the bottleneck), and an ETA when the root
inputs are known (``-i N``, a ``-d`` list). The same reader serves ``d4p-hpc run`` (this
machine) and ``submit --wait`` (a job's directory on a shared file system).

On a terminal the line is redrawn in place each second, cut to the terminal's width so
that it never wraps (a wrapped line cannot be redrawn with a carriage return). Elsewhere
(a batch log, a pipe) a plain line is printed every :data:`PLAIN_SECONDS` seconds
(``$D4P_HPC_PROGRESS_SECONDS``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator
from typing import TextIO

from d4p_hpc.results import last_samples, read_graph
from d4p_hpc.units import clock

PLAIN_SECONDS = 30.0
LIVE_SECONDS = 1.0
RATE_WINDOW = 10.0


def plain_seconds() -> float:
    """Seconds between two plain progress lines."""
    return float(os.environ.get("D4P_HPC_PROGRESS_SECONDS") or PLAIN_SECONDS)


class Progress:
    """Reads the newest samples of the run in ``directory`` and describes them in one line."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.graph: dict = {}
        self._history: deque = deque()  # (epoch, results, root items, busy by PE), for recent rates

    def describe(self) -> str:
        """``1,234 results  567/s  slowest PE Split (busy 93%)  ETA 00:00:12`` (what is known yet)."""
        samples = last_samples(self.directory)
        if not samples:
            return "starting"
        if not self.graph:
            self.graph = read_graph(self.directory)
        now = max(s["t"] for s in samples.values())
        results = sum(s.get("sink", 0) for s in samples.values())
        roots = {pe["name"]: pe.get("inputs") for pe in self.graph.get("pes", []) if pe.get("root")}
        busy: dict[str, float] = {}
        count: dict[str, int] = {}
        fed = 0
        for sample in samples.values():
            for pe, _inst, items_in, _out, seconds in sample.get("i", []):
                busy[pe] = busy.get(pe, 0.0) + seconds
                count[pe] = count.get(pe, 0) + 1
                fed += items_in if pe in roots else 0
        self._history.append((now, results, fed, busy))
        while len(self._history) > 2 and now - self._history[1][0] >= RATE_WINDOW:
            self._history.popleft()
        then, results_then, fed_then, busy_then = self._history[0]
        span = now - then
        parts = [f"{results:,} results"]
        if span > 0:
            parts.append(f"{(results - results_then) / span:,.0f}/s")
            # busy fraction per instance over the window: the PE that holds the others back
            load = {pe: (seconds - busy_then.get(pe, 0.0)) / (count[pe] * span) for pe, seconds in busy.items()}
            slow = max(load, key=lambda pe: load[pe], default=None)
            if slow is not None:
                parts.append(f"slowest {slow} (busy {min(100.0, 100 * load[slow]):.0f}%)")
        total = sum(roots.values()) if roots and None not in roots.values() else None
        if total:
            if fed >= total:
                parts.append("inputs all read")
            elif span > 0 and fed > fed_then:
                parts.append(f"ETA {clock((total - fed) * span / (fed - fed_then))}")
        return "  ".join(parts)


class Display:
    """Writes progress lines to ``stream``: redrawn in place on a terminal, else one line each
    :func:`plain_seconds`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.every = LIVE_SECONDS if self.live else plain_seconds()
        self.drawn = False
        self._last = 0.0

    def show(self, line: str, force: bool = False) -> None:
        """Draw ``line`` (a live one at once; a plain one when it is due, or with ``force``)."""
        if self.live:
            width = os.get_terminal_size(self.stream.fileno()).columns or 80  # a pty nobody sized says 0
            self.stream.write("\r" + line[:max(1, width - 1)] + "\033[K")
            self.drawn = True
        elif force or time.monotonic() - self._last >= self.every:
            self.stream.write(line + "\n")
            self._last = time.monotonic()
        self.stream.flush()

    def clear(self) -> None:
        """Remove the live line, so that what follows starts on a clean line."""
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False


def _other_rank() -> bool:
    """Whether this is an MPI rank other than 0 (rank 0 alone reports a run launched by srun)."""
    mpi = sys.modules.get("mpi4py.MPI")  # imported by then in a rank; never imported here
    return mpi is not None and mpi.COMM_WORLD.Get_rank() != 0


@contextmanager
def live(directory: str | Path, fd: int = 2) -> Iterator[None]:
    """Show the progress of the run writing ``directory`` while the body runs (``d4p-hpc run``)."""
    if os.environ.get("D4P_HPC_QUIET") or _other_rank():
        yield
        return
    # a stream of our own on a copy of the descriptor: a mapping that runs PEs in this process points
    # fd 1 and 2 at its log, and a child it forks must not inherit sys.stderr's lock held by our thread
    stream = open(os.dup(fd), "w")
    display, progress, stop = Display(stream), Progress(Path(directory)), threading.Event()
    started = time.monotonic()

    def loop() -> None:
        while not stop.wait(display.every):
            try:
                display.show(f"{clock(int(time.monotonic() - started))}  {progress.describe()}", force=True)
            except (OSError, ValueError):  # files being replaced, a terminal gone: try again later
                continue

    thread = threading.Thread(target=loop, name="d4p-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5.0)
        display.clear()
        stream.close()
