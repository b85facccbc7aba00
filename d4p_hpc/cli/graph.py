"""``d4p-hpc graph``: draw a workflow graph, and where a mapping would run it."""

from __future__ import annotations

import click

from d4p_hpc.api.local import draw
from d4p_hpc.errors import Command


@click.command(cls=Command)
@click.argument("graph_source", metavar="GRAPH")
@click.option("-m", "--mapping", help="Also show the instances of this mapping and where each runs.")
@click.option("-n", "--processes", type=click.IntRange(min=1),
              help="Processes, MPI ranks or workers, as for run [default: as for run].")
@click.option("-a", "--attr", help="Name of the graph variable in GRAPH (default: its only WorkflowGraph).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="File to write: .dot (DOT text), .svg or .png (drawn by Graphviz's dot) "
                   "[default: the DOT text on stdout].")
def graph(graph_source: str, mapping: str | None, processes: int | None, attr: str | None,
          output: str | None) -> None:
    """Draw GRAPH: its PEs, connections and groupings, with -m the plan's instances and processes."""
    dot = draw(graph_source, mapping, processes, attr, output)
    if output is None:
        click.echo(dot, nl=False)
        return
    click.echo(f"wrote {output}")
