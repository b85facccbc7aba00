"""``d4p-hpc report SWEEP``: one self-contained HTML page of a sweep.

The page has the sweep's summary (id, name, scheduler, state, tasks per state), a row a task (its
index, name, each value it sets, state, attempts, and from its run's ``metrics.json`` the wall
seconds, items and items/s, with a link to the task's own report), and for each numeric value that
varies across the tasks (``processes``, ``iterations``) a plot of the duration and one of the items/s
against it, one line per combination of the other varied values: a scaling study (``mapping`` x
``processes``) plots items/s against processes, a line per mapping.

Each task whose run has started gets its own report (:func:`d4p_hpc.report.page.write`) as
``tasks/<index>/report.html``, linked relatively, so the sweep's folder can be moved or copied whole.
It works on a sweep still running (a task not ended shows ``-`` for its figures) and on a task
whose files cannot be read (its row says which and why; the rest of the page is drawn). Like the
job's report, the page has no script and loads nothing (inline SVG, the same Content-Security-Policy);
``png`` renders each plot to ``<page>-<plot>.png`` with headless Chromium.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from d4p_hpc import results, units
from d4p_hpc.errors import D4pHpcError, UsageError
from d4p_hpc.report import page as job_page
from d4p_hpc.report import svg
from d4p_hpc.sweeps import sweep as sweeps
from d4p_hpc.sweeps.tasks import Task

STYLE = job_page.STYLE + """
.state-PENDING,.state-RUNNING,.state-REQUEUED{color:#a65e00}.state-unknown{color:#b00}
td.why{color:#555;max-width:380px;font-size:90%}"""
#: what a task's own report is called, in its folder
TASK_REPORT = "report.html"
#: the longest value or reason shown whole in a cell (the rest when hovered)
CELL_CHARS = 60
REASON_CHARS = 300
#: series named in a plot's legend (more are drawn, in the same colours over again, and counted)
LEGEND_ROWS = 10
#: what a task's file problem can raise when read: shown in its row, never as a traceback
_UNREADABLE = (D4pHpcError, OSError, ValueError, LookupError, TypeError, AttributeError)


@dataclass
class Row:
    """What the page shows of one task."""

    task: Task
    #: its results directory
    directory: Path
    #: its state, else None when its files could not tell (``why`` says what failed)
    status: sweeps.TaskStatus | None
    why: str = ""
    wall: float | None = None
    items: int | None = None
    rate: float | None = None
    #: its own report, once written
    report: Path | None = None
    #: what could not be read or written for it
    problems: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        return self.status.state if self.status is not None else "unknown"

    @property
    def completed(self) -> bool:
        return self.state == "COMPLETED"


def _number(value: Any) -> float | None:
    """``value`` if it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _text(value: Any) -> str:
    """A task's value as a table or a legend shows it: strings as they are, the rest as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most - 3] + "..."


def _why(exc: BaseException) -> str:
    """One line about a failure: our errors' own message, others with their type."""
    text = str(exc) if isinstance(exc, D4pHpcError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


# --- what the sweep's files say -------------------------------------------------------------------

def _statuses(sweep: sweeps.Sweep, tasks: list[Task]) -> dict[int, sweeps.TaskStatus | str]:
    """Each task's status (the scheduler asked once); where a task's files make that fail, each task on
    its own, and for one that still fails, why."""
    try:
        return {s.task.index: s for s in sweeps.status(sweep)}
    except _UNREADABLE:
        pass
    found: dict[int, sweeps.TaskStatus | str] = {}
    for t in tasks:
        try:
            found[t.index] = sweeps.status(sweep, [t.index])[0]
        except _UNREADABLE as exc:
            found[t.index] = f"its state cannot be read: {_why(exc)}"
    return found


def _figures(row: Row, directory: Path) -> None:
    """The task's wall seconds, items and items/s from its run's metrics.json (None where absent)."""
    try:
        metrics = results.read_metrics(directory)
    except _UNREADABLE as exc:
        row.problems.append(_why(exc))
        return
    if metrics is None:
        return
    row.wall = _number(metrics.get("wall_seconds"))
    items = metrics.get("items")
    row.items = items if isinstance(items, int) and not isinstance(items, bool) else None
    row.rate = _number(metrics.get("items_per_second"))
    if row.rate is None and row.wall and row.items is not None:
        row.rate = row.items / row.wall


def _task_report(row: Row, directory: Path) -> Path | None:
    """Write the task's own report if its run has started; None (and a note why) if it could not be."""
    if not results.Layout(directory).run.is_file():
        return None
    job = row.status.status.job if row.status is not None and row.status.status is not None else None
    target = directory / TASK_REPORT
    try:
        job_page.write(directory, target, job)
    except _UNREADABLE as exc:
        why = _why(exc)
        row.problems.append("so no report" if why in row.problems else f"no report: {why}")
        return None
    return target


def _rows(sweep: sweeps.Sweep, tasks: list[Task]) -> list[Row]:
    statuses = _statuses(sweep, tasks)
    rows = []
    for t in tasks:
        found = statuses.get(t.index, "its state cannot be read")
        current = found if isinstance(found, sweeps.TaskStatus) else None
        row = Row(t, sweep.layout.task(t.index), current, found if isinstance(found, str) else "")
        if current is not None and current.state != "COMPLETED":
            row.why = current.reason
        _figures(row, row.directory)
        row.report = _task_report(row, row.directory)
        rows.append(row)
    return rows


# --- the page -------------------------------------------------------------------------------------

def _summary(sweep: sweeps.Sweep, rows: list[Row]) -> str:
    readable = [r.status for r in rows if r.status is not None]
    state = sweeps.overall(readable) if readable else "unknown"
    if len(readable) < len(rows) and state not in ("RUNNING", "PENDING"):
        state = "unknown"  # a task whose state cannot be read may not have ended
    counts = Counter(r.state for r in rows)
    spec = sweep.record.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    per_task = (f"{units.plural(_int(spec.get('nodes')), 'node')} x {_int(spec.get('tasks_per_node'))} tasks "
                f"per node, walltime {spec.get('walltime') or '-'}; mapping {spec.get('mapping') or '-'} unless the "
                "task sets its own")
    items = [("sweep", escape(sweep.id)), ("name", escape(sweep.name)), ("scheduler", escape(sweep.scheduler)),
             ("graph", escape(str(sweep.record.get("graph") or "-"))),
             ("submitted", escape(str(sweep.record.get("time") or "-"))),
             ("state", f'<b class="state-{escape(state)}">{escape(state)}</b>'),
             ("tasks", escape(", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                              + f" ({units.plural(len(rows), 'task')})")),
             ("each task", escape(per_task))]
    if isinstance(arrays := sweep.record.get("arrays"), list):
        items.append(("arrays", escape(f"{len(arrays)} submitted")))
    html = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items) + "</table>"
    if any(not (r.status is not None and r.status.terminal) for r in rows):
        html += ('<p class="note">Some tasks have not ended: their figures are "-" until they do. Write the report '
                 "again for the latest.</p>")
    return html


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _keys(tasks: list[Task]) -> list[str]:
    """Every key any task sets besides its name, in the order they first appear."""
    keys: dict[str, None] = {}
    for t in tasks:
        keys.update(dict.fromkeys(t.varied()))
    return list(keys)


def _link(report: Path, output: Path) -> str:
    """The relative URL of ``report`` from the page at ``output``."""
    try:
        relative = os.path.relpath(report.resolve(), output.resolve().parent)
    except ValueError:  # another drive: no relative path
        return report.resolve().as_uri()
    return "/".join(quote(part) for part in Path(relative).parts)


def _cell(text: str, most: int, cls: str = "") -> str:
    shown = _cut(text, most)
    title = f' title="{escape(text)}"' if shown != text else ""
    css = f' class="{cls}"' if cls else ""
    return f"<td{css}{title}>{escape(shown)}</td>"


def _table(rows: list[Row], keys: list[str], output: Path) -> str:
    head = ["task", "name", *keys, "state", "attempts", "duration", "items", "items/s", "report", "note"]
    body = []
    for r in rows:
        values = r.task.varied()
        cells = [f'<td class="n">{r.task.index}</td>', _cell(r.task.name, CELL_CHARS)]
        cells += [_cell(_text(values[k]), CELL_CHARS) if k in values else "<td>-</td>" for k in keys]
        cells.append(f'<td class="state-{escape(r.state)}">{escape(r.state)}</td>')
        cells.append(f'<td class="n">{r.status.attempts if r.status is not None else "-"}</td>')
        cells.append(f'<td class="n">{f"{r.wall:.2f} s" if r.wall is not None else "-"}</td>')
        cells.append(f'<td class="n">{f"{r.items:,}" if r.items is not None else "-"}</td>')
        cells.append(f'<td class="n">{f"{r.rate:,.0f}" if r.rate is not None else "-"}</td>')
        cells.append(f'<td><a href="{escape(_link(r.report, output))}">report</a></td>' if r.report is not None
                     else "<td>-</td>")
        # the task's files by their names in its folder: the row says whose they are
        note = "; ".join(p for p in (r.why, *r.problems) if p).replace(f"{r.directory}{os.sep}", "")
        cells.append(_cell(note, REASON_CHARS, "why") if note else "<td></td>")
        body.append(f'<tr id="task-{r.task.index}">{"".join(cells)}</tr>')
    return ("<table class=\"tasks\"><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"
            + "".join(body) + "</table>")


# --- the plots ------------------------------------------------------------------------------------

#: a point of a plot: x, y, and what hovering it says
Point = tuple[float, float, str]


def _varying(tasks: list[Task], keys: list[str]) -> list[str]:
    """The keys whose value is not the same for every task (a task that does not set it counts as one more value)."""
    return [k for k in keys if len({_text(t.varied().get(k)) if k in t.varied() else "\0unset"
                                    for t in tasks}) > 1]


def _numeric(tasks: list[Task], key: str) -> bool:
    """Whether every task that sets ``key`` sets a number."""
    return all(_number(t.varied()[key]) is not None for t in tasks if key in t.varied())


def _series_name(task: Task, others: list[str]) -> str:
    values = task.varied()
    return ", ".join(f"{k}={_text(values[k]) if k in values else 'unset'}" for k in others) or "all tasks"


def _xy_chart(title: str, x_label: str, y_label: str, series: dict[str, list[Point]]) -> str:
    """Points per series, each series' line through the mean of its points at each x; the x axis ticks
    each value where the values are a few whole numbers (1, 2, 4 processes)."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return ""
    xs = sorted({x for x, _, _ in points})
    lo, hi = xs[0], xs[-1]
    pad = (hi - lo) * 0.06 if hi > lo else max(abs(hi) * 0.5, 1.0)
    x_lo, x_hi = lo - pad, hi + pad
    if lo >= 0 > x_lo:  # no negative axis for counts
        x_lo = 0.0
    y_max = max(y for _, y, _ in points) or 1.0
    y_step = svg.nice_step(y_max)
    y_top = math.ceil(y_max / y_step) * y_step or 1.0
    w, h = svg.WIDTH - svg.LEFT - svg.RIGHT, svg.HEIGHT - svg.TOP - svg.BOTTOM

    def sx(x: float) -> float:
        return svg.LEFT + w * (x - x_lo) / (x_hi - x_lo)

    def sy(y: float) -> float:
        return svg.TOP + h * (1 - y / y_top)

    bottom = svg.TOP + h
    body = [f'<line x1="{svg.LEFT}" y1="{bottom}" x2="{svg.LEFT + w}" y2="{bottom}" stroke="#444"/>',
            f'<line x1="{svg.LEFT}" y1="{svg.TOP}" x2="{svg.LEFT}" y2="{bottom}" stroke="#444"/>',
            f'<text x="12" y="{svg.TOP + h / 2}" transform="rotate(-90 12 {svg.TOP + h / 2})" '
            f'text-anchor="middle">{escape(y_label)}</text>',
            f'<text class="x-label" x="{svg.LEFT + w / 2}" y="{svg.HEIGHT - 4}" text-anchor="middle">'
            f"{escape(x_label)}</text>"]
    for i in range(int(round(y_top / y_step)) + 1):
        y = i * y_step
        body.append(f'<line x1="{svg.LEFT}" y1="{sy(y):.1f}" x2="{svg.LEFT + w}" y2="{sy(y):.1f}" stroke="#eee"/>'
                    f'<text x="{svg.LEFT - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{svg.fmt(y)}</text>')
    if len(xs) <= 16 and all(x == int(x) for x in xs):
        ticks = xs
    else:
        step = svg.nice_step(hi - lo, 6)
        ticks = [k * step for k in range(math.ceil(x_lo / step), math.floor(x_hi / step) + 1)]
    for x in ticks:
        body.append(f'<line x1="{sx(x):.1f}" y1="{bottom}" x2="{sx(x):.1f}" y2="{bottom + 4}" stroke="#444"/>'
                    f'<text x="{sx(x):.1f}" y="{bottom + 15}" text-anchor="middle">{svg.fmt(x)}</text>')
    for n, (name, pts) in enumerate(series.items()):
        colour = svg.COLOURS[n % len(svg.COLOURS)]
        at: dict[float, list[float]] = {}
        for x, y, _ in pts:
            at.setdefault(x, []).append(y)
        line = " ".join(f"{sx(x):.1f},{sy(sum(ys) / len(ys)):.1f}" for x, ys in sorted(at.items()))
        group = [f'<g class="series"><title>{escape(name)}</title>']
        if len(at) > 1:
            group.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{line}"/>')
        group += [f'<circle class="point" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{colour}">'
                  f"<title>{escape(tip)}</title></circle>" for x, y, tip in pts]
        body.append("".join(group) + "</g>")
        if n < LEGEND_ROWS:
            ly = svg.TOP + 6 + 15 * n
            body.append(f'<g class="legend"><title>{escape(name)}</title>'
                        f'<rect x="{svg.LEFT + w + 12}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>'
                        f'<text x="{svg.LEFT + w + 26}" y="{ly + 1}">{escape(_cut(name, 26))}</text></g>')
    if len(series) > LEGEND_ROWS:
        ly = svg.TOP + 6 + 15 * LEGEND_ROWS
        body.append(f'<text x="{svg.LEFT + w + 12}" y="{ly + 1}" fill="#666">and {len(series) - LEGEND_ROWS} '
                    "more (hover a point)</text>")
    return svg.frame(title, body)


#: what each plot draws: its file-name stem, title words, y label, and a row's figure
_MEASURES: tuple[tuple[str, str, str, Callable[[Row], float | None]], ...] = (
    ("duration", "Duration", "wall seconds", lambda r: r.wall),
    ("rate", "Items/s", "items/s", lambda r: r.rate),
)


def _how(key: str, others: list[str]) -> str:
    lines = (f"a line per value of {', '.join(others)} (through the mean where several tasks share one)"
             if others else "a line through them (the mean where several tasks share one)")
    text = (f"Each point is a task that completed, at the {key} its line of the sweep file sets (hover it for its "
            f"figures); {lines}. ")
    if key == "processes":
        text += ("With perfect scaling, twice the processes give half the duration and twice the items/s; a line "
                 "that flattens means more processes no longer pay (see the task's report for its bottleneck). "
                 "The simple mapping runs one process whatever the line says.")
    elif key == "iterations":
        text += ("The duration should grow in proportion to the iterations and the items/s stay level; items/s "
                 "that fall as the iterations grow point to a PE whose state grows with the stream.")
    return text


@dataclass
class Section:
    """The plots against one numeric value that varies: each by file-name stem, and how to read them."""

    key: str
    charts: dict[str, str]
    how: str


def plots(rows: list[Row]) -> list[Section]:
    """A section per numeric value that varies between the tasks (``processes``, ``iterations``): the
    duration and the items/s of the completed tasks against it, a series per combination of the other
    values that vary."""
    tasks = [r.task for r in rows]
    varying = _varying(tasks, _keys(tasks))
    sections = []
    for key in (k for k in varying if _numeric(tasks, k)):
        others = [k for k in varying if k != key]
        placed = sorted((r for r in rows if key in r.task.varied()), key=lambda r: _series_name(r.task, others))
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        charts: dict[str, str] = {}
        drawn = 0
        for stem, words, y_label, figure in _MEASURES:
            series: dict[str, list[Point]] = {}
            for r in placed:
                y = figure(r)
                if not r.completed or y is None:
                    continue
                name = _series_name(r.task, others)
                shown = f"{y:,.2f} s" if stem == "duration" else f"{y:,.0f} items/s"
                values = f"{name}, " if others else ""
                tip = f"task {r.task.index} ({r.task.name}): {values}{key}={_text(r.task.varied()[key])}: {shown}"
                series.setdefault(name, []).append((_number(r.task.varied()[key]) or 0.0, y, tip))
            drawn = max(drawn, sum(len(p) for p in series.values()))
            charts[f"{stem}-{safe}"] = _xy_chart(f"{words} against {key}", key, y_label, series)
        how = _how(key, others)
        if left_out := len(rows) - drawn:
            how += (f" {units.plural(left_out, 'task')} not drawn: not completed, or without figures"
                    + (f" or a {key}" if len(placed) < len(rows) else "") + ".")
        sections.append(Section(key, charts, how))
    return sections


def page(sweep: sweeps.Sweep, rows: list[Row], sections: list[Section], output: Path) -> str:
    """The HTML page."""
    title = f"d4p-hpc sweep report: {sweep.name} ({sweep.id})"
    tasks = [r.task for r in rows]
    parts = [f"<h1>{escape(title)}</h1>", f'<p class="note">{escape(str(sweep.directory))}</p>',
             "<h2>Summary</h2>", _summary(sweep, rows),
             "<h2>Tasks</h2>", _table(rows, _keys(tasks), output),
             '<p class="how">A row a task: the values its line of the sweep file sets, its state and attempts '
             "(a rerun is one more), its run's wall time, items (process calls, all PEs) and items/s from its "
             "metrics.json, and a link to its own report (once its run has started).</p>"]
    if not sections:
        parts.append('<h2>Plots</h2><p class="note">nothing to plot: no numeric value (processes, iterations) '
                     "differs between the tasks</p>")
    for section in sections:
        parts.append(f"<h2>Against {escape(section.key)}</h2>")
        drawn = [chart for chart in section.charts.values() if chart]
        parts += drawn or ['<p class="note">no task has completed with figures yet</p>']
        parts.append(f'<p class="how">{escape(section.how)}</p>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{job_page.CSP}">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def write(sweep: sweeps.Sweep, output: Path, png: bool = False) -> list[Path]:
    """Write the page of ``sweep`` to ``output`` and the report of each task whose run has started
    (and with ``png`` each plot as ``<output stem>-<plot>.png``); return the page and the PNGs (the
    tasks' reports are in their own directories, linked from the page)."""
    if png:
        job_page.browser()  # before anything is written
    output = Path(output)
    tasks = sweep.tasks  # (open_sweep has checked the record's shape)
    rows = _rows(sweep, tasks)
    sections = plots(rows)
    try:
        output.write_text(page(sweep, rows, sections, output))
    except OSError as exc:  # a missing folder, a read-only place, a full disk
        raise UsageError(f"cannot write the report to {output}: {exc.strerror or exc}; give -o a writable "
                         "path") from None
    charts = {stem: chart for section in sections for stem, chart in section.charts.items()}
    pngs = job_page.write_pngs(charts, output.with_suffix("")) if png else []
    return [output, *pngs]
