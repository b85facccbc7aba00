"""``d4p-hpc report``: one self-contained HTML page of what a run or job did.

It reads only the results directory (``run.json``, ``metrics.json``, ``timeseries/``,
``outputs/``, and for a job ``spec.json`` and ``state/``), plus the scheduler's accounting
for the efficiency figures. The page has no script and loads nothing: its plots are
inline SVG (:mod:`d4p_hpc.report.svg`), and a Content-Security-Policy of ``default-src 'none'``
makes a browser refuse any network resource. ``--png`` also renders every plot to a PNG
with headless Chromium (``chromium``, ``chromium-browser`` or ``google-chrome`` on PATH).
"""

from __future__ import annotations

import bisect
import shutil
import subprocess
import tempfile
from html import escape
from pathlib import Path

from d4p_hpc import results, units
from d4p_hpc.errors import D4pHpcError, UsageError
from d4p_hpc.jobs.efficiency import Efficiency, measure
from d4p_hpc.report import svg

# bins of the throughput plot, and points of a line: enough to see a trend, few enough to keep
# the page small however long the run and however many processes
MAX_BINS = 200
MAX_POINTS = 400
TIMELINE_CELLS = 100
MIN_PNG_HEIGHT = 150
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
td.n{text-align:right}th{background:#f4f4f4}h2{margin-top:28px;border-bottom:1px solid #ddd}
.note{color:#666}.state-COMPLETED{color:#2a7d2a}.state-FAILED,.state-TIMEOUT,.state-CANCELLED{color:#b00}
pre{background:#f8f8f8;padding:8px;overflow:auto}"""


def browser() -> str:
    """A headless-capable Chromium on PATH."""
    exe = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if exe is None:
        raise UsageError("--png needs Chromium for headless rendering: install it (Debian: apt-get install "
                         "chromium) or leave out --png; the HTML report needs nothing")
    return exe


def browser_argv(profile: str) -> list[str]:
    """Headless Chromium that stays offline, with a fresh profile directory."""
    return [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}"]


def _at(times: list[float], values: list[float], t: float) -> float:
    """The cumulative counter at ``t``: the last sample at or before it (0 before the first)."""
    i = bisect.bisect_right(times, t)
    return values[i - 1] if i else 0.0


def _thin(samples: list, most: int = MAX_POINTS) -> list:
    """At most about ``most`` samples, the last kept (counters are cumulative: rates stay right)."""
    step = -(-len(samples) // most)
    return samples if step <= 1 else samples[:-1:step] + samples[-1:]


class Run:
    """What the report shows, gathered from a results directory."""

    def __init__(self, directory: Path, job=None) -> None:
        self.directory = Path(directory)
        self.job = job
        self.run: results.RunRecord = results.read_run(self.directory) or {}
        self.metrics: results.Metrics = results.read_metrics(self.directory) or {}
        self.graph = results.read_graph(self.directory)
        self.series = {p: (head, _thin(samples)) for p, (head, samples) in results.read_series(self.directory).items()}
        firsts = [s[0]["t"] for _, s in self.series.values() if s]
        self.t0 = units.epoch(self.run.get("started")) or (min(firsts) if firsts else 0.0)
        lasts = [s[-1]["t"] for _, s in self.series.values() if s]
        self.span = max([t - self.t0 for t in lasts] + [self.metrics.get("wall_seconds") or 0.0])
        self.efficiency: Efficiency = measure(self.directory, job.scheduler if job else None,
                                              job.job_id if job else None)

    def counter(self, pe: str, column: int) -> dict[int, tuple[list[float], list[float]]]:
        """Per process: sample times and the cumulative ``column`` (2 in, 3 out, 4 busy) of ``pe``."""
        found = {}
        for proc, (_head, samples) in self.series.items():
            times, values = [], []
            for s in samples:
                times.append(s["t"])
                values.append(sum(row[column] for row in s.get("i", []) if row[0] == pe))
            found[proc] = (times, values)
        return found

    def throughput(self) -> dict[str, list[tuple[float, float]]]:
        """Items in per second per PE, on a common time grid over every process."""
        if self.span <= 0 or not self.series:
            return {}
        bins = max(1, min(MAX_BINS, int(self.span / self._interval())))
        width = self.span / bins
        grid = [self.t0 + width * i for i in range(bins + 1)]
        lines = {}
        for pe in self.pe_names():
            per_proc = self.counter(pe, 2).values()
            total = [sum(_at(times, values, t) for times, values in per_proc) for t in grid]
            lines[pe] = [(round(grid[i + 1] - self.t0, 2), max(0.0, (total[i + 1] - total[i]) / width))
                         for i in range(bins)]
        return lines

    def _interval(self) -> float:
        return max([head.get("interval", 1.0) for head, _ in self.series.values()] + [0.05])

    def pe_names(self) -> list[str]:
        names = [pe["name"] for pe in self.graph.get("pes", [])]
        return names or list(self.metrics.get("pes", {}))

    def gauge(self, name: str) -> list[tuple[float, float]]:
        """A gauge (``backlog``, ``pool``, ``workers``) over time, from the processes that report it."""
        return [(round(s["t"] - self.t0, 2), s[name]) for _, samples in self.series.values()
                for s in samples if name in s]

    def rss(self) -> dict[str, list[tuple[float, float]]]:
        return {self.label(proc, head): [(round(s["t"] - self.t0, 2), s["rss"]) for s in samples]
                for proc, (head, samples) in self.series.items() if samples}

    @staticmethod
    def label(proc: int, head: dict) -> str:
        return f"process {proc} ({head.get('host', '?')})"

    def timeline(self) -> list[tuple[str, list[tuple[float, float, float]]]]:
        rows = []
        for proc, (head, samples) in self.series.items():
            cells: list[tuple[float, float, float]] = []
            # from when the process began sampling, at CPU 0 s
            samples = _thin(samples, TIMELINE_CELLS)
            starts = [{"t": head.get("t", samples[0]["t"] if samples else 0), "cpu": 0.0}, *samples]
            for a, b in zip(starts, samples, strict=False):  # consecutive pairs
                dt = b["t"] - a["t"]
                if dt <= 0:
                    continue
                use = round(max(0.0, (b["cpu"] - a["cpu"]) / dt), 1)  # in tenths, so that steady spans merge
                if cells and cells[-1][2] == use:
                    cells[-1] = (cells[-1][0], b["t"] - self.t0, use)
                else:
                    cells.append((a["t"] - self.t0, b["t"] - self.t0, use))
            rows.append((self.label(proc, head), cells))
        return rows


def _table(header: tuple, rows: list[tuple]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{escape(c)}</td>' if i else f"<td>{escape(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary(r: Run) -> str:
    run, m, eff = r.run, r.metrics, r.efficiency
    state = run.get("state", "unknown")
    rows = [("state", f'<b class="state-{escape(state)}">{escape(state)}</b>')]
    if r.job is not None:
        rows.append(("job", escape(f"{r.job.job_id} ({r.job.scheduler}, {r.job.name})")))
    rows += [("mapping", escape(f"{run.get('mapping', '?')}, {run.get('processes', '?')} processes")),
             ("graph", escape(str(run.get("graph", "?")))),
             ("started", escape(str(run.get("started") or "-"))), ("ended", escape(str(run.get("ended") or "-"))),
             ("wall time", escape(f"{m.get('wall_seconds', run.get('wall_seconds')) or 0:.2f} s")),
             ("items", escape(f"{m.get('items', 0):,}")),
             ("items/s", escape(f"{m.get('items_per_second') or 0:,.0f}"))]
    for segment in run.get("segments") or []:
        rows.append(("segment", escape(", ".join(f"{k} {v}" for k, v in segment.items())) if isinstance(segment, dict)
                     else escape(str(segment))))
    rows.append(("efficiency", escape(eff.line())))
    if eff.cores and eff.wall_seconds:
        rows.append(("CPU", escape(f"{eff.cpu_seconds or 0:,.1f} core-seconds used ({eff.cpu_source}) of "
                                   f"{eff.cores * eff.wall_seconds:,.1f} allocated = {eff.cores} cores x "
                                   f"{eff.wall_seconds:,.1f} s")))
    if eff.memory_mb is not None:
        rows.append(("memory", escape(f"peak {eff.memory_mb:,.1f} MB on one node ({eff.memory_source})"
                                      + (f" of {eff.memory_limit_mb:,.0f} MB (--mem)" if eff.memory_limit_mb else ""))))
    html = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    if err := run.get("error"):
        html += f"<p>PE <b>{escape(str(err.get('pe')))}</b> failed (process {escape(str(err.get('process')))}):</p>" \
                f"<pre>{escape(err.get('traceback') or '')}</pre>"
    for notice in run.get("notices") or []:
        html += f'<p class="note">notice: {escape(notice)}</p>'
    return html


def _graph(r: Run) -> str:
    pes = r.metrics.get("pes", {})
    hosts = {p.get("process"): p.get("host") for p in r.metrics.get("process_list", [])}
    nodes = []
    for pe in r.graph.get("pes") or [{"name": n, "instances": len(v.get("instances", []))} for n, v in pes.items()]:
        ran = pes[pe["name"]]["instances"] if pe["name"] in pes else []
        procs = sorted({i.get("process") for i in ran})
        where = sorted({str(hosts.get(p)) for p in procs if hosts.get(p)})
        # dynamic mappings run a copy of a stateless PE in each worker that met it: count what ran
        count = max(pe["instances"], len(ran))
        nodes.append({"name": pe["name"], "lines": [
            f"x{count} instance{'s' * (count != 1)}" + (" (root)" if pe.get("root") else ""),
            "process " + ",".join(str(p) for p in procs) if procs else "no instance ran",
            "on " + ",".join(where) if where else ""]})
    edges = [{"src": e["src"], "dst": e["dst"], "short": "" if e["grouping"] is None else f"group {e['grouping']}",
              "label": f"{e['src']}.{e['output']} -> {e['dst']}.{e['input']} ({e['grouping'] or 'any instance'})"}
             for e in r.graph.get("edges", [])]
    return svg.graph(nodes, edges) if nodes else '<p class="note">no PE ran</p>'


def _busy(r: Run) -> str:
    wall = r.metrics.get("wall_seconds") or r.span
    rows = []
    for pe, m in r.metrics.get("pes", {}).items():
        for inst in m.get("instances", []):
            fraction = inst["busy_seconds"] / wall if wall else 0.0
            rows.append((f"{pe}[{inst['instance']}] p{inst['process']}", fraction,
                         f"{100 * fraction:.0f}% ({inst['busy_seconds']:.2f} s)"))
    top = max((f for _, f, _ in rows), default=0)
    # the bottleneck in red: every instance within a few percent of the busiest
    return svg.bars("Busy fraction per instance (of the wall time)", rows, highlight=0.95 * top if top > 0 else None)


def _pes(r: Run) -> str:
    wall = r.metrics.get("wall_seconds") or 0
    rows = [(pe, str(len(m.get("instances", []))), f"{m['items_in']:,}", f"{m['items_out']:,}",
             f"{m['busy_seconds']:.2f}", f"{m['items_in'] / wall:,.0f}" if wall else "-")
            for pe, m in r.metrics.get("pes", {}).items()]
    return _table(("PE", "instances", "items in", "items out", "busy s", "items in/s"), rows)


def _outputs(r: Run) -> str:
    rows = []
    for pe, output in results.list_outputs(r.directory):
        files = [p for p in results.output_dir(r.directory, pe, output).iterdir() if p.is_file()]
        rows.append((f"{pe}.{output}", f"{results.count_items(r.directory, pe, output):,}", str(len(files)),
                     f"{sum(p.stat().st_size for p in files) / 1024:,.1f} KB"))
    if not rows:
        return '<p class="note">no output was written</p>'
    return _table(("output", "items", "part files", "size"), rows) + \
        f'<p class="note">print one: d4p-hpc results {escape(str(r.directory))} --show PE.OUTPUT</p>'


def plots(r: Run) -> dict[str, str]:
    """The report's SVG plots by file-name stem (empty strings where there is nothing to show)."""
    pool = [(float(t), float(n)) for t, n in r.metrics.get("pool_size") or []] or r.gauge("pool")
    workers, backlog = r.gauge("workers"), r.gauge("backlog")
    sizes = {k: v for k, v in (("pool", pool), ("live workers", workers)) if v}
    return {"graph": _graph(r),
            "throughput": svg.line_chart("Throughput per PE (items in per second)", r.throughput(), "items/s"),
            "busy": _busy(r),
            "backlog": svg.line_chart("Backlog (tasks queued, not finished)", {"backlog": backlog}, "tasks")
            if backlog else "",
            "pool": svg.line_chart("Worker pool size", sizes, "workers", step=True) if sizes else "",
            "rss": svg.line_chart("Resident memory per process", r.rss(), "MB"),
            "timeline": svg.timeline("Processes over time", r.timeline(), r.span)}


WHY_EMPTY = {"backlog": "this mapping keeps no shared backlog (static mappings route straight to fixed instances)",
             "pool": "the pool is fixed for this mapping (dyn_auto_* resize it)",
             "throughput": "no samples (the run was shorter than one sample or sampling was off)",
             "rss": "no samples", "timeline": "no samples"}
TITLES = {"graph": "The graph", "throughput": "Throughput", "busy": "Busy fraction per instance",
          "backlog": "Backlog", "pool": "Worker pool", "rss": "Memory", "timeline": "Per-process timeline"}


def page(r: Run, charts: dict[str, str]) -> str:
    """The HTML page."""
    name = Path(str(r.run.get("graph") or r.directory.name)).stem
    title = f"d4p-hpc report: {name} ({r.run.get('mapping', '?')})"
    parts = [f"<h1>{escape(title)}</h1>", f'<p class="note">{escape(str(r.directory))}</p>',
             "<h2>Summary</h2>", _summary(r)]
    for key, chart in charts.items():
        parts.append(f"<h2>{TITLES[key]}</h2>")
        parts.append(chart or f'<p class="note">{WHY_EMPTY.get(key, "nothing to show")}</p>')
        if key == "busy":
            parts += ["<h2>PEs</h2>", _pes(r)]
    parts += ["<h2>Outputs</h2>", _outputs(r)]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def write_pngs(charts: dict[str, str], stem: Path) -> list[Path]:
    """Render each non-empty chart to ``<stem>-<name>.png`` with headless Chromium."""
    written = []
    with tempfile.TemporaryDirectory(prefix="d4p-report-", ignore_cleanup_errors=True) as tmp:
        for key, chart in charts.items():
            if not chart:
                continue
            width, height = (int(chart.split(f'{a}="', 1)[1].split('"', 1)[0]) for a in ("width", "height"))
            source = Path(tmp) / f"{key}.svg"
            source.write_text(chart)
            out = stem.with_name(f"{stem.name}-{key}.png")
            # headless Chromium draws nothing in a window less than about 100 px tall
            size = f"--window-size={width},{max(height, MIN_PNG_HEIGHT)}"
            argv = browser_argv(str(Path(tmp) / "profile")) + [f"--screenshot={out}", size, source.as_uri()]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            if done.returncode or not out.is_file():
                raise D4pHpcError(f"Chromium could not render {key}: {done.stderr.strip()[-300:]}")
            written.append(out)
    return written


def write(directory: Path, output: Path, job=None, png: bool = False) -> list[Path]:
    """Write the report of the run in ``directory`` to ``output`` (and the PNGs); return the files."""
    if png:
        browser()  # before anything is written
    if not results.Layout(directory).run.is_file():
        raise D4pHpcError(f"{directory} has no run.json yet: the run has not started, so there is nothing to "
                          "report; try again once `d4p-hpc status` says RUNNING")
    r = Run(directory, job)
    charts = plots(r)
    output.write_text(page(r, charts))
    return [output, *(write_pngs(charts, output.with_suffix("")) if png else [])]

