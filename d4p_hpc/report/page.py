"""``d4p-hpc report``: one self-contained HTML page of what a run or job did.

It reads only the results directory (``run.json``, ``metrics.json``, ``timeseries/``,
``outputs/``, and for a job ``spec.json`` and ``state/``), plus the scheduler's accounting
for the efficiency figures (gathered by :mod:`d4p_hpc.report.run`). A run resumed in its
directory is shown whole: totals over every segment, its segments in a table, and the time
charts with each segment end to end and the boundaries drawn. Every chart has one sentence
under it on how to read it and what to do about what it shows. The page has no script and
loads nothing: its plots are inline SVG (:mod:`d4p_hpc.report.svg`), and a
Content-Security-Policy of ``default-src 'none'`` makes a browser refuse any network resource.
``--png`` also renders every plot to a PNG with headless Chromium (``chromium``,
``chromium-browser`` or ``google-chrome`` on PATH).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html import escape
from pathlib import Path
from typing import Any

from d4p_hpc import results, units
from d4p_hpc.errors import D4pHpcError, UsageError
from d4p_hpc.report import svg
from d4p_hpc.report.run import IN, OUT, Run

# bins of the throughput plot: enough to see a trend, few enough to keep the page small
MAX_BINS = 200
MIN_PNG_HEIGHT = 150
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
td.n{text-align:right}th{background:#f4f4f4}h2{margin-top:28px;border-bottom:1px solid #ddd}
.note{color:#666}.how{color:#444;max-width:760px;margin:4px 0 16px}
.state-COMPLETED{color:#2a7d2a}.state-FAILED,.state-TIMEOUT,.state-CANCELLED{color:#b00}
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


def _table(header: tuple, rows: list[tuple], numbers: tuple[int, ...] | None = None) -> str:
    """A table whose ``numbers`` columns (default: all but the first) are right-aligned."""
    right = set(range(1, len(header)) if numbers is None else numbers)
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{escape(c)}</td>' if i in right else f"<td>{escape(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary(r: Run) -> str:
    run, m, eff = r.run, r.metrics, r.efficiency
    state = run.get("state", "unknown")
    first = r.segments[0].record if r.segments else run
    wall = m.get("wall_seconds", run.get("wall_seconds")) or 0
    several = len(r.segments) > 1
    rows = [("state", f'<b class="state-{escape(state)}">{escape(state)}</b>')]
    if r.job is not None:
        rows.append(("job", escape(f"{r.job.job_id} ({r.job.scheduler}, {r.job.name})")))
    rows += [("mapping", escape(f"{run.get('mapping', '?')}, {units.plural(run.get('processes') or 0, 'process')}")),
             ("graph", escape(str(run.get("graph", "?")))),
             ("started", escape(str(first.get("started") or "-"))), ("ended", escape(str(run.get("ended") or "-"))),
             ("wall time", escape(f"{wall:.2f} s" + (f" over {len(r.segments)} segments (the time between them "
                                                     "not counted)" if several else ""))),
             ("items", escape(f"{m.get('items', 0):,}")),
             ("items/s", escape(f"{m.get('items_per_second') or 0:,.0f}")),
             ("efficiency", escape(eff.line()))]
    if eff.cores and eff.wall_seconds:
        rows.append(("CPU", escape(f"{eff.cpu_seconds or 0:,.1f} core-seconds used ({eff.cpu_source}) of "
                                   f"{eff.cores * eff.wall_seconds:,.1f} allocated = {units.plural(eff.cores, 'core')} "
                                   f"x {eff.wall_seconds:,.1f} s")))
    if eff.memory_mb is not None:
        rows.append(("memory", escape(f"peak {eff.memory_mb:,.1f} MB on one node ({eff.memory_source})"
                                      + (f" of {eff.memory_limit_mb:,.0f} MB (--mem)" if eff.memory_limit_mb else ""))))
    html = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    if several:
        html += _segments(r)
    if err := run.get("error"):
        html += f"<p>PE <b>{escape(str(err.get('pe')))}</b> failed (process {escape(str(err.get('process')))}):</p>" \
                f"<pre>{escape(err.get('traceback') or '')}</pre>"
    for notice in run.get("notices") or []:
        html += f'<p class="note">notice: {escape(notice)}</p>'
    for note in r.notes:
        html += f'<p class="note">left out: {escape(note)}</p>'
    return html


def _segments(r: Run) -> str:
    """The run's segments: each one's job, how it ended, and its own figures."""
    entries = {e.get("segment"): e for e in r.metrics.get("segments") or [] if isinstance(e, dict)}
    rows = []
    for seg in r.segments:
        e: Any = entries.get(seg.number) or {}
        wall, items = e.get("wall_seconds", seg.record.get("wall_seconds")), e.get("items", seg.record.get("items"))
        rate = e.get("items_per_second")
        # a segment killed before it could write its metrics is known by its last samples
        source = {"samples": "last samples", results.Layout.METRICS: results.Layout.METRICS}.get(e.get("source"),
                                                                                            results.Layout.RUN)
        rows.append((str(seg.number), str(seg.record.get("job_id") or "-"),
                     str(e.get("state") or seg.record.get("state") or "-"), str(seg.record.get("started") or "-"),
                     f"{wall:.2f} s" if wall is not None else "-", f"{items:,}" if items is not None else "-",
                     f"{rate:,.0f}" if rate else "-", source))
    return "<h3>Segments</h3>" + _table(("segment", "job", "state", "started", "wall time", "items", "items/s",
                                         "figures from"), rows, numbers=(0, 4, 5, 6))


def _graph(r: Run) -> str:
    pes = r.metrics.get("pes", {})
    hosts = {p.get("process"): p.get("host") for p in r.metrics.get("process_list", [])}
    nodes = []
    listed = r.graph.get("pes") or [{"name": n, "instances": len(v.get("instances", []))} for n, v in pes.items()]
    for pe in listed:
        ran = pes[pe["name"]]["instances"] if pe["name"] in pes else []
        procs = sorted({i.get("process") for i in ran})
        where = sorted({str(hosts.get(p)) for p in procs if hosts.get(p)})
        # dynamic mappings run a copy of a stateless PE in each worker that met it: count what ran
        count = max(pe.get("instances") or 0, len(ran))
        nodes.append({"name": pe["name"], "lines": [
            "x" + units.plural(count, "instance") + (" (root)" if pe.get("root") else ""),
            "process " + ",".join(str(p) for p in procs) if procs else "no instance ran",
            "on " + ",".join(where) if where else ""]})
    edges = [{"src": e["src"], "dst": e["dst"], "short": "" if e["grouping"] is None else f"group {e['grouping']}",
              "label": f"{e['src']}.{e['output']} -> {e['dst']}.{e['input']} ({e['grouping'] or 'any instance'})"}
             for e in r.graph.get("edges", [])]
    return svg.graph(nodes, edges) if nodes else '<p class="note">no PE ran</p>'


def _throughput(r: Run) -> str:
    """Items out of each PE per second (what a PE delivers shows the bottleneck; what it is sent does
    not); a PE that writes nothing (a sink, or one that writes at its end) by the items it takes in."""
    if r.span <= 0 or not r.series:
        return ""
    bins = max(1, min(MAX_BINS, int(r.span / r.interval())))
    lines = {}
    for pe in r.pe_names():
        out = r.rates(pe, OUT, bins)
        if any(rate for _, rate in out):
            lines[pe] = out
        else:
            lines[f"{pe} (in)"] = r.rates(pe, IN, bins)
    return svg.line_chart("Throughput per PE (items out per second)", lines, "items/s", marks=r.boundaries,
                          span=r.span)


def _busy(r: Run) -> str:
    wall = r.metrics.get("wall_seconds") or r.span
    pes = r.metrics.get("pes", {})
    rows = []
    for pe in r.pe_names():
        for inst in (pes.get(pe) or {}).get("instances", []):
            busy, blocked = inst["busy_seconds"], inst.get("blocked_seconds") or 0.0
            text = f"{100 * busy / wall:.0f}% ({busy:.2f} s)" if wall else f"{busy:.2f} s"
            detail = f"busy {busy:.2f} s, blocked {blocked:.2f} s of {wall:.2f} s"
            if blocked and wall:
                text = f"{100 * busy / wall:.0f}% busy, {100 * blocked / wall:.0f}% blocked"
            rows.append((f"{pe}[{inst['instance']}] p{inst['process']}", busy / wall if wall else 0.0,
                         blocked / wall if wall else 0.0, text, detail))
    top = max((row[1] for row in rows), default=0)
    # the bottleneck in red: every instance within a few percent of the busiest (blocked time is not work)
    return svg.bars("Busy and blocked share per instance (of the wall time)", rows,
                    highlight=0.95 * top if top > 0 else None)


def _pes(r: Run) -> str:
    wall = r.metrics.get("wall_seconds") or 0
    pes = r.metrics.get("pes", {})
    rows = [(pe, str(len(m.get("instances", []))), f"{m['items_in']:,}", f"{m['items_out']:,}",
             f"{m['busy_seconds']:.2f}", f"{m.get('blocked_seconds') or 0:.2f}",
             f"{m['items_in'] / wall:,.0f}" if wall else "-", f"{m['items_out'] / wall:,.0f}" if wall else "-")
            for pe in r.pe_names() if (m := pes.get(pe))]
    return _table(("PE", "instances", "items in", "items out", "busy s", "blocked s", "items in/s", "items out/s"),
                  rows)


def _backlog(r: Run) -> str:
    """The backlog as sampled; the limit the driver holds it to, and its peak, from metrics.json (the
    driver's own figures: a sample once a second can miss the peak between two)."""
    lines = {"backlog": r.gauge("backlog")}
    if not lines["backlog"]:
        return ""
    if peaks := r.gauge("backlog_peak"):
        lines["peak so far"] = peaks
    sampled = max(y for pts in lines.values() for _, y in pts)
    peak, limit = r.metrics.get("backlog_peak"), r.metrics.get("backlog_limit")
    levels: list[svg.Level] = [(limit, f"back-pressure limit {limit:,}", "limit")] if limit else []
    if peak and peak > sampled:
        levels.append((peak, f"peak {peak:,} (between two samples)", "peak"))
    title = f"Backlog (tasks queued, not finished): peak {peak or sampled:,.0f}" + \
        (f", limit {limit:,}" if limit else "")
    return svg.line_chart(title, lines, "tasks", marks=r.boundaries, levels=levels, span=r.span)


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
    pool, workers = r.pool(), r.gauge("workers")
    sizes = {k: v for k, v in (("pool", pool), ("live workers", workers)) if v}
    return {"graph": _graph(r),
            "throughput": _throughput(r),
            "busy": _busy(r),
            "backlog": _backlog(r),
            "pool": svg.line_chart("Worker pool size", sizes, "workers", step=True, marks=r.boundaries, span=r.span)
            if sizes else "",
            "rss": svg.line_chart("Resident memory per process", r.rss(), "MB", marks=r.boundaries, span=r.span),
            "timeline": svg.timeline("Processes over time", r.timeline(), r.span, marks=r.boundaries)}


WHY_EMPTY = {"backlog": "this mapping keeps no shared backlog (static mappings route straight to fixed instances)",
             "pool": "the pool is fixed for this mapping (dyn_auto_* resize it)",
             "throughput": "no samples (the run was shorter than one sample or sampling was off)",
             "rss": "no samples", "timeline": "no samples"}
TITLES = {"graph": "The graph", "throughput": "Throughput", "busy": "Busy and blocked time per instance",
          "backlog": "Backlog", "pool": "Worker pool", "rss": "Memory", "timeline": "Per-process timeline"}
#: under each chart: how to read it, and what to do about what it shows
HOW = {"graph": "Each box is a PE, in pipeline order from the roots on the left; hover over a box or an arrow for "
                "where its instances ran and how the connection routes items.",
       "throughput": "Items each PE writes per second (a PE that writes nothing: the items it takes in). The "
                     "bottleneck is the PE whose rate stays flat while the one before it could write faster: give "
                     "it more instances (numprocesses) or the run more processes (-n).",
       "busy": "Each bar is one instance: solid is the share of the wall time it spent in its PE code, hatched the "
               "time it waited for room downstream (back-pressure). The red bar is the busiest PE: give it more "
               "processes (-n) or instances (numprocesses); a long hatched bar means the PEs after it cannot keep up.",
       "backlog": "Tasks queued and not yet finished. At the dashed red limit the root waits for the workers "
                  "(back-pressure): a backlog that sits at the limit means the workers are the bottleneck, so add "
                  "processes (-n); one that stays near 0 means the root is.",
       "pool": "Workers the autoscaler kept over time: a pool that stays at its largest wanted more, so raise -n.",
       "rss": "Resident memory of each process: a line that keeps climbing is a PE keeping state (or leaking); for a "
              "job, compare the peak with --mem.",
       "timeline": "One row per process, darker where it used more CPU: pale stretches are waiting, for input or for "
                   "room downstream; many pale rows mean fewer processes (-n) would do."}


def page(r: Run, charts: dict[str, str]) -> str:
    """The HTML page."""
    name = Path(str(r.run.get("graph") or r.directory.name)).stem
    title = f"d4p-hpc report: {name} ({r.run.get('mapping', '?')})"
    parts = [f"<h1>{escape(title)}</h1>", f'<p class="note">{escape(str(r.directory))}</p>',
             "<h2>Summary</h2>", _summary(r)]
    for key, chart in charts.items():
        parts.append(f"<h2>{TITLES[key]}</h2>")
        parts.append(f'{chart}<p class="how">{escape(HOW[key])}</p>' if chart else
                     f'<p class="note">{WHY_EMPTY.get(key, "nothing to show")}</p>')
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
    try:
        output.write_text(page(r, charts))
    except OSError as exc:  # a missing folder, a read-only place, a full disk
        raise UsageError(f"cannot write the report to {output}: {exc.strerror or exc}; give -o a writable "
                         "path") from None
    return [output, *(write_pngs(charts, output.with_suffix("")) if png else [])]

