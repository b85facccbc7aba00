"""Hand-written SVG charts for the report: line charts, bars, a timeline and the workflow graph.

Inline SVG needs no library and no script and opens offline in any browser; a chart is a
few kilobytes. Hovering a point, bar or box shows its figures (SVG ``<title>``). The time
charts of a run in several segments put them end to end and draw each boundary as a dashed
vertical line (class ``segment-boundary``); a limit (the back-pressure limit of the backlog)
is a dashed horizontal line (class ``limit-line``), a peak between samples a dotted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape

WIDTH = 760
HEIGHT = 240
LEFT, RIGHT, TOP, BOTTOM = 64, 180, 28, 36
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks if span > 0 else 1
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def fmt(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def frame(title: str, body: list[str], height: int = HEIGHT) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11" role="img">'
            f'<title>{escape(title)}</title><rect width="100%" height="100%" fill="#fff"/>'
            f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>'
            + "".join(body) + "</svg>")


#: one mark on a time axis, or one level on a value axis: (where, what it is)
Mark = tuple[float, str]


def _boundaries(marks: list[Mark], sx: Callable[[float], float], top: float, bottom: float) -> list[str]:
    """Dashed vertical lines at ``marks`` (segment boundaries), labelled at the top with their first
    words (``segment 2``; all of it when hovered)."""
    return [f'<g class="segment-boundary"><title>{escape(label)}</title>'
            f'<line x1="{sx(x):.1f}" y1="{top}" x2="{sx(x):.1f}" y2="{bottom}" stroke="#888" stroke-dasharray="4 3"/>'
            f'<text x="{sx(x) + 3:.1f}" y="{top + 10}" font-size="9" fill="#666">'
            f'{escape(" ".join(label.split()[:2]))}</text></g>' for x, label in marks]


#: a level drawn across a line chart: value, label, and kind: "limit" (dashed red, class ``limit-line``)
#: or "peak" (dotted grey, class ``peak-line``)
Level = tuple[float, str, str]
LEVEL_STYLE = {"limit": ("#d62728", "6 4"), "peak": ("#555", "2 3")}


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], y_label: str, step: bool = False,
               marks: list[Mark] | None = None, levels: list[Level] | None = None, span: float | None = None) -> str:
    """Lines of ``(seconds since start, value)`` per name; ``step`` holds each value until the next.
    ``marks``: segment boundaries (seconds); ``levels``: values drawn across; ``span``: the seconds
    the axis shows (default: up to the last point)."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return ""
    levels = levels or []
    x_max = max([span or 0.0] + [x for x, _ in points]) or 1
    y_max = max([y for _, y in points] + [level for level, _, _ in levels]) or 1
    y_step = nice_step(y_max)
    y_top = math.ceil(y_max / y_step) * y_step
    x_step = nice_step(x_max, 6)
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + w * x / x_max

    def sy(y: float) -> float:
        return TOP + h * (1 - y / y_top)

    body = [f'<line x1="{LEFT}" y1="{TOP + h}" x2="{LEFT + w}" y2="{TOP + h}" stroke="#444"/>',
            f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + h}" stroke="#444"/>',
            f'<text x="12" y="{TOP + h / 2}" transform="rotate(-90 12 {TOP + h / 2})" '
            f'text-anchor="middle">{escape(y_label)}</text>',
            f'<text x="{LEFT + w / 2}" y="{HEIGHT - 4}" text-anchor="middle">'
            f'{"seconds of the run (its segments end to end)" if marks else "seconds since start"}</text>']
    for i in range(int(round(y_top / y_step)) + 1):
        y = i * y_step
        body.append(f'<line x1="{LEFT}" y1="{sy(y):.1f}" x2="{LEFT + w}" y2="{sy(y):.1f}" stroke="#eee"/>'
                    f'<text x="{LEFT - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{fmt(y)}</text>')
    x = 0.0
    while x <= x_max * 1.0001:
        body.append(f'<text x="{sx(x):.1f}" y="{TOP + h + 14}" text-anchor="middle">{fmt(x)}</text>')
        x += x_step
    body += _boundaries(marks or [], sx, TOP, TOP + h)
    for level, label, kind in levels:
        colour, dashes = LEVEL_STYLE[kind]
        # a peak's label under its line: at the top of the chart, the title is above it
        text_y = sy(level) + (11 if kind == "peak" else -4)
        body.append(f'<g class="{kind}-line"><title>{escape(label)}</title>'
                    f'<line x1="{LEFT}" y1="{sy(level):.1f}" x2="{LEFT + w}" y2="{sy(level):.1f}" stroke="{colour}" '
                    f'stroke-dasharray="{dashes}"/><text x="{LEFT + w - 4}" y="{text_y:.1f}" '
                    f'text-anchor="end" font-size="10" fill="{colour}">{escape(label)}</text></g>')
    for n, (name, pts) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        coords = []
        for i, (px, py) in enumerate(pts):
            if step and i:
                coords.append(f"{sx(px):.1f},{sy(pts[i - 1][1]):.1f}")
            coords.append(f"{sx(px):.1f},{sy(py):.1f}")
        peak = max(y for _, y in pts) if pts else 0
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{" ".join(coords)}">'
                    f'<title>{escape(name)}: peak {fmt(round(peak, 2))}</title></polyline>')
        ly = TOP + 6 + 15 * n
        body.append(f'<rect x="{LEFT + w + 12}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>'
                    f'<text x="{LEFT + w + 26}" y="{ly + 1}">{escape(name[:24])}</text>')
    return frame(title, body)


#: a bar of the busy chart: label, busy share, blocked share (of the wall time), the figures as shown
#: beside it, and in full when hovered
Bar = tuple[str, float, float, str, str]
BUSY_FILL, BOTTLENECK_FILL, BLOCKED_STROKE = "#1f77b4", "#d62728", "#9a9a9a"


def bars(title: str, rows: list[Bar], highlight: float | None = None) -> str:
    """Horizontal bars, each a busy share (solid; red at ``highlight`` or above: the bottleneck) and,
    after it, a blocked share (hatched grey: waiting for room downstream, never red)."""
    if not rows:
        return ""
    left, w = 220, WIDTH - 220 - 150
    height = TOP + 18 * len(rows) + 30
    body = ['<defs><pattern id="blocked-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
            f'patternTransform="rotate(45)"><rect width="6" height="6" fill="#e4e4e4"/>'
            f'<line x1="0" y1="0" x2="0" y2="6" stroke="{BLOCKED_STROKE}" stroke-width="3"/></pattern></defs>']
    for i, (label, busy, blocked, text, detail) in enumerate(rows):
        y = TOP + 18 * i
        busy_w = w * min(1.0, busy)
        blocked_w = max(0.0, min(w - busy_w, w * blocked))
        colour = BOTTLENECK_FILL if highlight is not None and busy >= highlight else BUSY_FILL
        body.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{escape(label)}</text>'
                    f'<rect x="{left}" y="{y + 2}" width="{w}" height="13" fill="#f6f6f6"/>'
                    f'<rect class="busy" x="{left}" y="{y + 2}" width="{busy_w:.1f}" height="13" fill="{colour}">'
                    f'<title>{escape(label)}: {escape(detail)}</title></rect>'
                    f'<rect class="blocked" x="{left + busy_w:.1f}" y="{y + 2}" width="{blocked_w:.1f}" height="13" '
                    f'fill="url(#blocked-hatch)" stroke="{BLOCKED_STROKE}" stroke-width="0.5">'
                    f'<title>{escape(label)}: {escape(detail)}</title></rect>'
                    f'<text x="{left + w + 6}" y="{y + 12}">{escape(text)}</text>')
    y = TOP + 18 * len(rows) + 14
    body.append(f'<rect x="{left}" y="{y - 9}" width="10" height="10" fill="{BUSY_FILL}"/>'
                f'<text x="{left + 14}" y="{y}">busy (in its PE code)</text>'
                f'<rect x="{left + 150}" y="{y - 9}" width="10" height="10" fill="{BOTTLENECK_FILL}"/>'
                f'<text x="{left + 164}" y="{y}">busiest</text>'
                f'<rect x="{left + 230}" y="{y - 9}" width="10" height="10" fill="url(#blocked-hatch)" '
                f'stroke="{BLOCKED_STROKE}"/>'
                f'<text x="{left + 244}" y="{y}">blocked (waiting for room downstream)</text>')
    return frame(title, body, height)


def timeline(title: str, rows: list[tuple[str, list[tuple[float, float, float]]]], span: float,
             marks: list[Mark] | None = None) -> str:
    """One row per process of ``(start s, end s, CPU use 0..1)`` cells: darker is busier;
    ``marks``: segment boundaries."""
    if not rows or span <= 0:
        return ""
    left, w = 160, WIDTH - 160 - 20
    height = TOP + 20 * len(rows) + 30
    body = []
    for i, (label, cells) in enumerate(rows):
        y = TOP + 20 * i
        body.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{escape(label)}</text>')
        for start, end, use in cells:
            x0, x1 = left + w * start / span, left + w * end / span
            body.append(f'<rect x="{x0:.1f}" y="{y + 2}" width="{max(0.5, x1 - x0):.1f}" height="15" '
                        f'fill="#2ca02c" fill-opacity="{0.12 + 0.88 * min(1.0, use):.2f}">'
                        f'<title>{escape(label)} {start:.0f}-{end:.0f} s: CPU {100 * use:.0f}%</title></rect>')
    y = TOP + 20 * len(rows) + 14
    body += _boundaries(marks or [], lambda x: left + w * x / span, TOP - 10, TOP + 20 * len(rows))
    body.append(f'<text x="{left}" y="{y}">0 s</text><text x="{left + w}" y="{y}" text-anchor="end">'
                f'{span:.1f} s (shade: CPU use of the process)</text>')
    return frame(title, body, height)


def graph(nodes: list[dict], edges: list[dict]) -> str:
    """The workflow: ``nodes`` ``{name, lines: [text]}`` in layers by depth, ``edges`` ``{src, dst, label}``."""
    depth = {n["name"]: 0 for n in nodes}
    for _ in nodes:  # longest path from a root; the graph is acyclic
        for e in edges:
            depth[e["dst"]] = max(depth[e["dst"]], depth[e["src"]] + 1)
    layers: dict[int, list[str]] = {}
    for n in nodes:
        layers.setdefault(depth[n["name"]], []).append(n["name"])
    box_w, box_h, gap_x, gap_y = 170, 20 + 14 * max(len(n["lines"]) for n in nodes), 60, 24
    width = max(WIDTH, 20 + len(layers) * (box_w + gap_x))
    height = TOP + 10 + max(len(v) for v in layers.values()) * (box_h + gap_y)
    where = {name: (20 + d * (box_w + gap_x), TOP + 10 + i * (box_h + gap_y))
             for d, names in layers.items() for i, name in enumerate(names)}
    body = ['<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    for e in edges:
        (x0, y0), (x1, y1) = where[e["src"]], where[e["dst"]]
        ax, ay, bx, by = x0 + box_w, y0 + box_h / 2, x1, y1 + box_h / 2
        body.append(f'<path d="M{ax},{ay} C{ax + gap_x / 2},{ay} {bx - gap_x / 2},{by} {bx},{by}" fill="none" '
                    f'stroke="#555" marker-end="url(#arrow)"><title>{escape(e["label"])}</title></path>')
        if e.get("short"):
            body.append(f'<text x="{(ax + bx) / 2:.0f}" y="{(ay + by) / 2 - 4:.0f}" text-anchor="middle" '
                        f'font-size="9" fill="#555">{escape(e["short"])}</text>')
    for n in nodes:
        x, y = where[n["name"]]
        body.append(f'<g><title>{escape(" | ".join([n["name"], *n["lines"]]))}</title>'
                    f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="#eef4fb" stroke="#1f77b4"/>'
                    f'<text x="{x + 8}" y="{y + 15}" font-weight="bold">{escape(n["name"][:26])}</text>'
                    + "".join(f'<text x="{x + 8}" y="{y + 29 + 14 * i}">{escape(t[:30])}</text>'
                              for i, t in enumerate(n["lines"])) + "</g>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} '
            f'{height}" font-family="sans-serif" font-size="11" role="img"><title>workflow graph</title>'
            '<rect width="100%" height="100%" fill="#fff"/>'
            f'<text x="20" y="16" font-size="13" font-weight="bold">Workflow graph</text>{"".join(body)}</svg>')
