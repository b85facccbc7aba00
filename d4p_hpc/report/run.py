"""What the report shows of a run, gathered from its results directory: its records, its
segments on one time axis, and its samples as the charts need them.

A run resumed in its directory ran in *segments* (see :mod:`d4p_hpc.mappings.runtime.totals`):
the charts put them end to end, each for as long as it ran (the time between two, queued or
stopped, is left out), so that every sample of every segment is drawn and the boundaries can be
marked. Each segment's counters (items, busy seconds, CPU seconds) start from 0; a counter of
the whole run adds the last value of each earlier segment.

Sample files that cannot be read whole are drawn from the lines that can, and the page says
what was left out (:attr:`Run.notes`).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d4p_hpc import results, units
from d4p_hpc.errors import ResultsError
from d4p_hpc.jobs.efficiency import Efficiency, measure

# points of a line: enough to see a trend, few enough to keep the page small however long the run
MAX_POINTS = 400
TIMELINE_CELLS = 100
#: the columns of a sample's ``i`` rows
IN, OUT, BUSY, BLOCKED = 2, 3, 4, 5


@dataclass
class Segment:
    """One segment of the run, placed on the run's time axis."""

    number: int
    #: epoch seconds when it started
    start: float
    #: where it begins on the axis, and for how long it ran (seconds)
    offset: float
    span: float
    record: Mapping[str, Any]

    @property
    def label(self) -> str:
        job = self.record.get("job_id")
        return f"segment {self.number}" + (f" (job {job})" if job else "")


def _at(times: list[float], values: list[float], t: float) -> float:
    """The cumulative counter at ``t``: the last sample at or before it (0 before the first)."""
    i = bisect.bisect_right(times, t)
    return values[i - 1] if i else 0.0


def _thin(samples: list, most: int = MAX_POINTS) -> list:
    """At most about ``most`` samples, the last kept (counters are cumulative: rates stay right)."""
    step = -(-len(samples) // most)
    return samples if step <= 1 else samples[:-1:step] + samples[-1:]


def _number(row: list, column: int) -> float:
    """A number of a sample's row; 0 where an older version wrote none (blocked seconds)."""
    value = row[column] if len(row) > column else 0
    return float(value) if isinstance(value, int | float) else 0.0


class Run:
    """What the report shows, gathered from a results directory."""

    def __init__(self, directory: Path, job: Any = None) -> None:
        self.directory = Path(directory)
        self.job = job
        #: what could not be read, one line each (the page lists them)
        self.notes: list[str] = []
        self.run: results.RunRecord = results.read_run(self.directory) or {}
        self.metrics: Mapping[str, Any] = results.read_metrics(self.directory) or {}
        try:
            self.graph: Mapping[str, Any] = results.read_graph(self.directory)
        except ResultsError as err:
            self.notes.append(f"{err}: the graph is drawn from metrics.json")
            self.graph = {}
        series = results.read_series(self.directory, self.notes)
        self.segments = self._place(series)
        self.span = sum(s.span for s in self.segments)
        # per process: its header and its samples, each with "x", its time on the run's axis
        self.series: dict[int, tuple[dict, list[dict]]] = {}
        for proc, (head, samples) in series.items():
            placed = [self._placed(s) for s in samples]
            kept = [s for s in placed if s is not None]
            per_segment = max(20, MAX_POINTS // max(1, len(self.segments)))
            self.series[proc] = (head, [s for seg in self.segments
                                        for s in _thin([k for k in kept if k["seg"] == seg.number], per_segment)])
        self.efficiency: Efficiency = measure(self.directory, job.scheduler if job else None,
                                              job.job_id if job else None)

    # --- the time axis ---------------------------------------------------------------------------
    def _place(self, series: dict[int, tuple[dict, list[dict]]]) -> list[Segment]:
        """The segments end to end: each from its start for its wall time (metrics.json's, else
        run.json's, else up to its last sample)."""
        records: list[Mapping[str, Any]] = [*(self.run.get("segments") or []), self.run]
        walls = {e.get("segment"): e.get("wall_seconds") for e in self.metrics.get("segments") or []
                 if isinstance(e, dict)}
        last: dict[int, float] = {}
        first: dict[int, float] = {}
        for _head, samples in series.values():
            for s in samples:
                seg = s.get("seg", 1)
                last[seg] = max(last.get(seg, s["t"]), s["t"])
                first[seg] = min(first.get(seg, s["t"]), s["t"])
        placed: list[Segment] = []
        offset = 0.0
        for number, record in enumerate(records, 1):
            start = units.epoch(record.get("started")) or first.get(number) or 0.0
            ended = units.epoch(record.get("ended"))
            wall = walls.get(number) or record.get("wall_seconds") or (ended - start if ended and start else 0.0)
            if number == len(records) and not walls.get(number):
                wall = wall or self.metrics.get("wall_seconds") or 0.0  # 0.2's metrics.json: one segment
            span = max(float(wall), last.get(number, start) - start, 0.0)
            placed.append(Segment(number, start, offset, span, record))
            offset += span
        return placed

    def _placed(self, sample: dict) -> dict | None:
        """``sample`` with ``x``, its time on the run's axis, and ``seg`` (None: of no segment known)."""
        number = sample.get("seg", 1)
        if not isinstance(number, int) or not 1 <= number <= len(self.segments):
            return None
        seg = self.segments[number - 1]
        return {**sample, "seg": number, "x": round(seg.offset + sample["t"] - seg.start, 3)}

    @property
    def boundaries(self) -> list[tuple[float, str]]:
        """Where each segment after the first begins on the axis, and which it is."""
        return [(s.offset, s.label) for s in self.segments[1:]]

    # --- what the charts draw --------------------------------------------------------------------
    def pe_names(self) -> list[str]:
        """The PEs in pipeline order (graph.json lists them as the plan does: topologically)."""
        names = [pe["name"] for pe in self.graph.get("pes") or []]
        return names + [pe for pe in self.metrics.get("pes") or {} if pe not in names]

    def counter(self, pe: str, column: int) -> dict[int, tuple[list[float], list[float]]]:
        """Per process: sample times and the run's cumulative ``column`` (:data:`IN`, :data:`OUT`,
        :data:`BUSY`, :data:`BLOCKED`) of ``pe``, over every segment."""
        found = {}
        for proc, (_head, samples) in self.series.items():
            times, values = [], []
            base = last = 0.0
            seg = None
            for s in samples:
                if s["seg"] != seg:  # a new segment counts from 0: carry the earlier ones' totals
                    base, seg = base + last, s["seg"]
                last = sum(_number(row, column) for row in s.get("i", []) if row[0] == pe)
                times.append(s["x"])
                values.append(base + last)
            found[proc] = (times, values)
        return found

    def rates(self, pe: str, column: int, bins: int) -> list[tuple[float, float]]:
        """``column`` of ``pe`` per second, over ``bins`` equal spans of the run's axis."""
        width = self.span / bins
        grid = [width * i for i in range(bins + 1)]
        per_proc = self.counter(pe, column).values()
        total = [sum(_at(times, values, t) for times, values in per_proc) for t in grid]
        return [(round(grid[i + 1], 2), max(0.0, (total[i + 1] - total[i]) / width)) for i in range(bins)]

    def interval(self) -> float:
        """The longest sampling interval of any process: the finest grid rates make sense on."""
        return max([float(head.get("interval") or 1.0) for head, _ in self.series.values()] + [0.05])

    def gauge(self, name: str) -> list[tuple[float, float]]:
        """A gauge (``backlog``, ``backlog_peak``, ``pool``, ``workers``) over the run, from the processes
        that report it."""
        return sorted((s["x"], float(s[name])) for _, samples in self.series.values()
                      for s in samples if isinstance(s.get(name), int | float))

    def pool(self) -> list[tuple[float, float]]:
        """The pool size over the run: each segment's ``pool_size`` (dyn_auto_*), else the samples'."""
        entries = {e.get("segment"): e for e in self.metrics.get("segments") or [] if isinstance(e, dict)}
        points = [(round(seg.offset + float(t), 2), float(n)) for seg in self.segments
                  for t, n in (entries.get(seg.number) or {}).get("pool_size") or []]
        if not points and not entries:  # 0.2's metrics.json: one segment, at the top level
            points = [(float(t), float(n)) for t, n in self.metrics.get("pool_size") or []]
        return points or self.gauge("pool")

    def rss(self) -> dict[str, list[tuple[float, float]]]:
        return {self.label(proc, head): [(s["x"], float(s.get("rss") or 0.0)) for s in samples]
                for proc, (head, samples) in self.series.items() if samples}

    @staticmethod
    def label(proc: int, head: Mapping[str, Any]) -> str:
        return f"process {proc} ({head.get('host', '?')})"

    def timeline(self) -> list[tuple[str, list[tuple[float, float, float]]]]:
        """Per process, cells of (start, end, CPU use) on the run's axis; each segment's CPU seconds
        count from 0 when it starts."""
        rows = []
        for proc, (head, samples) in self.series.items():
            cells: list[tuple[float, float, float]] = []
            for seg in self.segments:
                own = _thin([s for s in samples if s["seg"] == seg.number], TIMELINE_CELLS // len(self.segments) + 1)
                if not own:
                    continue
                for a, b in zip([{"x": seg.offset, "cpu": 0.0}, *own], own, strict=False):  # consecutive pairs
                    dt = b["x"] - a["x"]
                    if dt <= 0:
                        continue
                    use = round(max(0.0, (b["cpu"] - a["cpu"]) / dt), 1)  # in tenths, so that steady spans merge
                    if cells and cells[-1][2] == use and cells[-1][1] == a["x"]:
                        cells[-1] = (cells[-1][0], b["x"], use)
                    else:
                        cells.append((a["x"], b["x"], use))
            rows.append((self.label(proc, head), cells))
        return rows
