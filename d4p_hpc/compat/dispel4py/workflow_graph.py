"""``dispel4py.workflow_graph`` names: the graph from :mod:`d4p_hpc.workflow`, drawing from
:mod:`d4p_hpc.workflow.drawing`."""

from __future__ import annotations

from typing import Any

from d4p_hpc.workflow import drawing
from d4p_hpc.workflow import GenericPE, WorkflowGraph, WorkflowNode

# the attribute names dispel4py's graph edges use
FROM_CONNECTION = "from_connection"
TO_CONNECTION = "to_connection"
DIRECTION = "direction"


def draw(graph: Any) -> str:
    """The graph in the DOT language (the picture ``d4p-hpc graph`` draws, without a plan)."""
    return drawing.graph_dot(graph)


def drawDot(graph: Any, img_type: str = "png") -> bytes:  # noqa: N802 - dispel4py's name
    """The graph drawn by Graphviz ``dot`` in format ``img_type`` (png, svg, pdf, ...)."""
    return drawing.render(draw(graph), img_type)


def write_image(graph: Any, filename: str, img_type: str = "png") -> None:
    """Draw the graph with Graphviz ``dot`` and write the ``img_type`` image to ``filename``."""
    image = drawDot(graph, img_type)
    with open(filename, "wb") as fh:
        fh.write(image)


__all__ = ["DIRECTION", "FROM_CONNECTION", "TO_CONNECTION", "GenericPE", "WorkflowGraph", "WorkflowNode",
           "draw", "drawDot", "write_image"]
