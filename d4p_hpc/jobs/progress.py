"""Live progress of a run, read from the samples its processes write (``timeseries/``).

One line, of what is known yet: results written so far (items through the sinks; before the
first, the items the PEs have processed, so that a graph writing its results at its end does not
read "0 results" for the whole run), the recent rate, the slowest PE (the highest busy fraction
per instance: the bottleneck) with how far it has got, and an ETA. The ETA is the slowest PE's:
its items still to come (its items so far, scaled by the share of the root inputs read; ``-i N``
or a ``-d`` list gives their number) at its recent rate. A root that reads everything in one
call (a file) says it is still writing until it has finished: the total is not known before.
The same reader serves ``d4p-hpc run`` (this machine) and ``submit --wait`` (a job's directory
on a shared file system).

On a terminal the line is redrawn in place each second, fitted to the terminal's width so
that it never wraps (a wrapped line cannot be redrawn with a carriage return): the least
useful parts go first, the slowest PE's name is shortened last. Elsewhere (a batch log, a
pipe) a plain line is printed every 30 seconds (``$D4P_HPC_PROGRESS_SECONDS``:
:func:`d4p_hpc.settings.progress_seconds`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import TextIO

from d4p_hpc import settings
from d4p_hpc.errors import D4pHpcError, ResultsError
from d4p_hpc.results import last_samples, read_graph
from d4p_hpc.supervisor import hold_stops
from d4p_hpc.units import clock

LIVE_SECONDS = 1.0
RATE_WINDOW = 10.0


def plain_seconds() -> float:
    """Seconds between two plain progress lines."""
    return settings.progress_seconds()


@dataclass
class Counts:
    """One moment of the run, summed over its processes (the newest segment's samples)."""

    t: float
    results: int
    #: per PE: items in and out, busy seconds, instances, instances known to have finished (None: not said)
    items_in: dict[str, int] = field(default_factory=dict)
    items_out: dict[str, int] = field(default_factory=dict)
    busy: dict[str, float] = field(default_factory=dict)
    instances: dict[str, int] = field(default_factory=dict)
    finished: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def of(cls, samples: list[dict]) -> Counts:
        counts = cls(max(s["t"] for s in samples), sum(s.get("sink", 0) for s in samples))
        for sample in samples:
            for row in sample.get("i", []):
                pe = row[0]
                counts.items_in[pe] = counts.items_in.get(pe, 0) + row[2]
                counts.items_out[pe] = counts.items_out.get(pe, 0) + row[3]
                counts.busy[pe] = counts.busy.get(pe, 0.0) + row[4]
                counts.instances[pe] = counts.instances.get(pe, 0) + 1
                done = row[6] if len(row) > 6 else None
                known = counts.finished.get(pe, 0)
                counts.finished[pe] = None if done is None or known is None else known + bool(done)
        return counts

    def done(self, pe: str) -> bool | None:
        """Whether every instance of ``pe`` has finished (None: the runtime does not say)."""
        finished = self.finished.get(pe)
        return None if finished is None else finished == self.instances.get(pe)


class Progress:
    """Reads the newest samples of the run in ``directory`` and describes them in one line."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.graph: dict = {}
        self._history: deque[Counts] = deque()  # for recent rates
        self._estimates: dict[str, int] = {}  # per PE, the items expected, as last estimated while the roots read
        self._segment = 1

    def describe(self, width: int | None = None) -> str:
        """``1,234 results  567/s  slowest Split (busy 93%) 1,200 of ~9,000  ETA 00:00:12``, fitted to
        ``width`` characters (None: all of it)."""
        samples = last_samples(self.directory)
        if not samples:
            return "starting"
        newest = max(s.get("seg", 1) for s in samples.values())  # a resumed run: its segment now running
        if newest != self._segment:  # its counters start from 0: rates and estimates start again
            self._segment, self._history, self._estimates = newest, deque(), {}
        now = Counts.of([s for s in samples.values() if s.get("seg", 1) == newest])
        if not self.graph:
            try:
                self.graph = read_graph(self.directory)
            except ResultsError:  # changed by hand: the line does without the roots' inputs
                self.graph = {}
        roots = {pe["name"]: pe.get("inputs") for pe in self.graph.get("pes", []) if pe.get("root")}
        self._history.append(now)
        while len(self._history) > 2 and now.t - self._history[1].t >= RATE_WINDOW:
            self._history.popleft()
        then = self._history[0]
        span = now.t - then.t
        processed = sum(n for pe, n in now.items_in.items() if pe not in roots)
        parts: list[tuple[int, str]] = []
        if now.results or not processed:
            parts.append((KEEP_RESULTS, f"{now.results:,} results"))
            rate = (now.results - then.results) / span if span > 0 else None
        else:  # results written at the end (in postprocess), or none yet: the work done so far
            parts.append((KEEP_RESULTS, f"0 results yet, {processed:,} items processed"))
            done_then = sum(n for pe, n in then.items_in.items() if pe not in roots)
            rate = (processed - done_then) / span if span > 0 else None
        if rate is not None:
            parts.append((KEEP_RATE, f"{rate:,.0f}/s"))
        slow = _slowest(now, then, span)
        if slow is not None:
            pe, load = slow
            parts.append((KEEP_SLOWEST, f"slowest {pe} (busy {min(100.0, 100 * load):.0f}%)"))
        parts += self._ahead(now, then, span, roots, slow[0] if slow else None)
        return fit(parts, width, slow[0] if slow else None)

    def _ahead(self, now: Counts, then: Counts, span: float, roots: dict[str, int | None],
               slow: str | None) -> list[tuple[int, str]]:
        """How far the slowest PE has got and when it will be done, and what the roots are doing."""
        fed = sum(now.items_in.get(pe, 0) for pe in roots)
        total = sum(n or 0 for n in roots.values()) if roots and None not in roots.values() else None
        before = self._history[-2] if len(self._history) > 1 else None
        # a root whose runtime does not say when it has finished: finished once its output stops growing
        finished = {pe: now.done(pe) if now.done(pe) is not None else
                    before is not None and now.items_out.get(pe) == before.items_out.get(pe) for pe in roots}
        writing = [pe for pe, done in finished.items() if not done]
        parts = []
        if writing and total is not None and fed >= total:
            # every input read, the last call still writing (a file read in one call): no total yet
            parts.append((KEEP_STAGE, f"{writing[0]} writing ({now.items_out.get(writing[0], 0):,} out)"))
        elif total is not None and fed >= total:
            parts.append((KEEP_ROOTS, "inputs all read"))
        # the share of the root inputs whose items are on their way (calls still running are not)
        share = 1.0 if roots and not writing else (max(0, fed - len(writing)) / total if total else None)
        if slow is None or not share or span <= 0:
            return parts
        if slow in roots:
            done, expected, exact = fed, total or 0, True
            rate = (fed - sum(then.items_in.get(pe, 0) for pe in roots)) / span
        else:
            done = now.items_in.get(slow, 0)
            rate = (done - then.items_in.get(slow, 0)) / span
            expected, exact = self._expected_of(slow, done, share, now, roots)
        if expected:
            parts.append((KEEP_STAGE, f"{done:,} of {'' if exact else '~'}{expected:,}"))
            if rate > 0:
                parts.append((KEEP_ETA, f"ETA {clock(max(0.0, expected - done) / rate)}"))
        return parts

    def _expected_of(self, pe: str, done: int, share: float, now: Counts, roots: dict) -> tuple[int, bool]:
        """The items ``pe`` (not a root) will have taken in at the end, and whether that is exact: while
        the roots read, its items so far scaled by their ``share``; once they are done, what the roots
        feeding only it wrote, else the last estimate."""
        if share < 1:
            self._estimates[pe] = round(done / share)
            return self._estimates[pe], False
        edges = self.graph.get("edges", [])
        sources = {e["src"] for e in edges if e["dst"] == pe}
        if sources and sources <= set(roots) and all(e["dst"] == pe for e in edges if e["src"] in sources):
            return max(done, sum(now.items_out.get(src, 0) for src in sources)), True
        return max(done, self._estimates.get(pe, 0)), False


#: what a line keeps longest when the terminal is narrow (the slowest PE's name is shortened, down to
#: MIN_NAME characters, only after everything below KEEP_ETA is gone)
KEEP_ROOTS, KEEP_RATE, KEEP_STAGE, KEEP_RESULTS, KEEP_ETA, KEEP_SLOWEST = range(6)
MIN_NAME = 12


def _slowest(now: Counts, then: Counts, span: float) -> tuple[str, float] | None:
    """The PE whose instances were busiest over the window, and their busy fraction."""
    if span <= 0:
        return None
    load = {pe: (seconds - then.busy.get(pe, 0.0)) / (now.instances[pe] * span) for pe, seconds in now.busy.items()}
    pe = max(load, key=lambda p: load[p], default=None)
    return None if pe is None else (pe, load[pe])


def fit(parts: list[tuple[int, str]], width: int | None, name: str | None = None) -> str:
    """``parts`` (what to keep longest, text) joined in their order, within ``width`` characters:
    the parts kept least are left out first; then ``name`` (the slowest PE's) is shortened with "…"."""
    kept = list(parts)

    def line() -> str:
        return "  ".join(text for _, text in kept)

    if width is None:
        return line()
    while len(line()) > width and min(keep for keep, _ in kept) < KEEP_ETA:
        kept.remove(min(kept, key=lambda p: p[0]))
    for floor in (MIN_NAME, 4):
        excess = len(line()) - width
        if excess > 0 and name and len(name) > floor:
            short = name[:max(floor - 1, len(name) - excess - 1)] + "…"
            kept = [(keep, text.replace(name, short, 1) if keep == KEEP_SLOWEST else text) for keep, text in kept]
            name = short
        if len(line()) > width and floor == MIN_NAME:
            kept = [p for p in kept if p[0] != KEEP_ETA] or kept
    return line()[:width]


class Display:
    """Writes progress lines to ``stream``: redrawn in place on a terminal, else one line each
    :func:`plain_seconds`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.every = LIVE_SECONDS if self.live else plain_seconds()
        self.drawn = False
        self._last = 0.0

    def width(self) -> int:
        """The characters a live line may take: one less than the terminal's columns."""
        return max(1, (os.get_terminal_size(self.stream.fileno()).columns or 80) - 1)  # a pty nobody sized: 0

    def room(self, used: int) -> int | None:
        """What is left of a live line after ``used`` characters (None: a plain line, any length)."""
        return max(1, self.width() - used) if self.live else None

    def show(self, line: str, force: bool = False) -> None:
        """Draw ``line`` (a live one at once; a plain one when it is due, or with ``force``)."""
        if self.live:
            self.stream.write("\r" + line[:self.width()] + "\033[K")
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
    if settings.quiet() or _other_rank():
        yield
        return
    # a stream of our own on a copy of the descriptor: a mapping that runs PEs in this process points
    # fd 1 and 2 at its log, and a child it forks must not inherit sys.stderr's lock held by our thread
    stream = open(os.dup(fd), "w")
    display, progress, stop = Display(stream), Progress(Path(directory)), threading.Event()
    started = time.monotonic()

    def loop() -> None:
        hold_stops()  # for good: a stop signal is the main thread's to handle, which holds them while it starts a run
        while not stop.wait(display.every):
            try:
                prefix = f"{clock(int(time.monotonic() - started))}  "
                display.show(prefix + progress.describe(display.room(len(prefix))), force=True)
            except (OSError, ValueError, D4pHpcError):  # files being replaced, a terminal gone: try again later
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
