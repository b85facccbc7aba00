"""Draw a workflow graph: its PEs, connections and groupings, and where a mapping runs each instance.

The picture is built from the execution plan (:mod:`d4p_hpc.mappings.runtime.plan`),
the one the runtime uses, so instance counts and processes are the run's.
The DOT text needs nothing else; SVG, PNG and other image formats come from
Graphviz's ``dot`` program. Node ids are ``pe<index>``, and every label is a
quoted, escaped DOT string, so any character in a PE's name is safe.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from d4p_hpc.errors import D4pHpcError, UsageError
from d4p_hpc.units import plural

#: the output file types ``write`` knows, by suffix; ``dot``/``gv`` are the DOT text itself
FORMATS = {".dot": "dot", ".gv": "dot", ".svg": "svg", ".png": "png"}
#: what an instance is called under the mappings with a fixed placement
_FIXED = {"simple": "process", "multi": "process", "mpi": "rank"}
_COMPOSITE = 2  # WorkflowNode.WORKFLOW_NODE_CP, in dispel4py and in d4p_hpc.workflow
#: ranges of processes a label lists before it says how many more there are: Graphviz refuses a
#: label over 16,384 characters (mpi -n 4096 would list 4,095 ranks)
_RANGES = 20


class DrawingError(D4pHpcError):
    """Graphviz is missing or failed to draw the graph."""


def _escape(text: str) -> str:
    return (str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\r", "")
            .replace("\n", "\\n"))


def _label(lines: list[str]) -> str:
    """One quoted DOT label, its lines separated by DOT's ``\\n``."""
    return '"' + "\\n".join(_escape(line) for line in lines) + '"'


def _grouping(grouping: Any) -> str:
    if grouping is None:
        return ""
    if grouping == "all":
        return "all (every instance)"
    if grouping == "global":
        return "global (one instance)"
    return f"group_by {list(grouping)}"


def _where(plan: Any, mapping: str, node: Any) -> str:
    """Where the instances of ``node`` run under ``mapping``."""
    count = node.count
    if mapping in _FIXED:
        places = sorted({plan.placement[gid] for gid in node.gids})
        return f"{plural(count, 'instance')}: {plural(len(places), _FIXED[mapping], number=False)} {_ranges(places)}"
    if node.index in {root.index for root in plan.roots()}:
        return "run by the driver"
    if mapping == "hybrid_redis" and plan.stateful(node):
        return f"{plural(count, 'instance')}, each on one worker"
    return "any worker"


def _ranges(numbers: list[int]) -> str:
    """``0-3, 5, 7-9`` of sorted ``numbers``; past :data:`_RANGES` ranges, how many more."""
    ranges: list[list[int]] = []
    for n in numbers:
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges[:_RANGES])
    return text + (f", ... (+{len(ranges) - _RANGES} more)" if len(ranges) > _RANGES else "")


def dot_source(plan: Any, mapping: str | None = None, title: str | None = None) -> str:
    """The DOT text of ``plan``; with ``mapping``, each PE also says where its instances run."""
    notices = plan.notices if mapping else []  # as run shows them; a few, for Graphviz's label limit
    notices = notices[:_RANGES] + ([f"(+{len(notices) - _RANGES} more notices)"] if len(notices) > _RANGES else [])
    lines = ["digraph workflow {",
             "  graph [rankdir=LR, fontname=Helvetica, labelloc=t"
             + (f", label={_label([title, *notices])}" if title else "") + "];",
             '  node [shape=box, style="rounded,filled", fillcolor="#f2f2f2", fontname=Helvetica];',
             "  edge [fontname=Helvetica, fontsize=10];"]
    connected = {(c.src, c.output) for c in plan.connections}
    for node in plan.pes:
        text = [node.key]
        pe_id = getattr(node.pe, "id", None)
        if pe_id and pe_id != node.key:
            text.append(f"id {pe_id}")
        text += [f"result: {out}" for out in node.outputs if (node.index, out) not in connected]
        if mapping:
            text.append(_where(plan, mapping, node))
        lines.append(f"  pe{node.index} [label={_label(text)}];")
    # in a fixed order: a flattened graph and a flat view of the same graph list edges differently
    for c in sorted(plan.connections, key=lambda c: (c.src, c.dst, c.output, c.input)):
        text = [f"{c.output} -> {c.input}"] + ([_grouping(c.grouping)] if c.grouping is not None else [])
        lines.append(f"  pe{c.src} -> pe{c.dst} [label={_label(text)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def flat_view(graph: Any) -> Any:
    """A flattened copy of ``graph``'s structure, leaving ``graph`` (and its PEs' ids) untouched.

    Composite PEs are replaced by their inner PEs, as ``flatten`` would do,
    so a graph file can be drawn before it is flattened for a run.
    """
    from d4p_hpc.workflow import WorkflowGraph

    nodes: dict[int, Any] = {}
    edges: list[tuple[Any, str, Any, str]] = []

    def walk(g: Any) -> None:
        for node in g.graph.nodes():
            if node.nodeType == _COMPOSITE:
                walk(node.get_contained_object())
            else:
                nodes[id(node.get_contained_object())] = node
        for _u, _v, data in g.graph.edges(data=True):
            src, dst = data["DIRECTION"]
            for out, inp in data["ALL_CONNECTIONS"]:
                while hasattr(src, "outputmappings"):
                    src, out = src.outputmappings[out]
                while hasattr(dst, "inputmappings"):
                    dst, inp = dst.inputmappings[inp]
                edges.append((src, out, dst, inp))

    walk(graph)
    view = WorkflowGraph()
    for node in nodes.values():
        view.graph.add_node(node)
    for src, out, dst, inp in edges:
        u, v = nodes[id(src)], nodes[id(dst)]
        if view.graph.has_edge(u, v):
            view.graph[u][v]["ALL_CONNECTIONS"].append((out, inp))
        else:
            view.graph.add_edge(u, v, DIRECTION=(src, dst), ALL_CONNECTIONS=[(out, inp)])
    return view


def graph_dot(graph: Any) -> str:
    """The DOT text of a workflow graph, flattened or not, without a mapping."""
    from d4p_hpc.mappings.runtime.plan import build_plan

    return dot_source(build_plan(flat_view(graph), 1))


def render(dot: str, fmt: str) -> bytes:
    """``dot`` laid out by Graphviz as format ``fmt`` (svg, png, ...)."""
    exe = shutil.which("dot")
    if exe is None:
        raise DrawingError(f"drawing {fmt.upper()} needs Graphviz's dot program, which is not on PATH; "
                           "install graphviz (Debian/Ubuntu: apt-get install graphviz) or write a .dot file")
    try:
        done = subprocess.run([exe, f"-T{fmt}"], input=dot.encode("utf-8"), capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise DrawingError(f"Graphviz dot -T{fmt} took more than 120 s; write a .dot file instead") from None
    if done.returncode != 0 or not done.stdout:
        reason = (done.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {done.returncode}"])[0]
        raise DrawingError(f"Graphviz dot -T{fmt} failed: {reason}")
    return done.stdout


def output_format(path: str | Path) -> str:
    """The format of an output file, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"cannot tell the format of {path}: end its name with {', '.join(FORMATS)}")
    return FORMATS[suffix]


def write(dot: str, path: str | Path) -> None:
    """Write ``dot`` to ``path`` as the DOT text or as the image its suffix names."""
    fmt = output_format(path)
    data = dot.encode("utf-8") if fmt == "dot" else render(dot, fmt)
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise DrawingError(f"cannot write {path}: {exc.strerror}") from None
