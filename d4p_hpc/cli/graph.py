"""``d4p-hpc graph``: draw a workflow graph, and where a mapping would run it."""

from __future__ import annotations

import os
from pathlib import Path

import click

from d4p_hpc import mappings
from d4p_hpc.errors import UsageError
from d4p_hpc.mappings.runtime.prepare import prepare
from d4p_hpc.workflow import drawing


@click.command()
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
    if output is not None:
        drawing.output_format(output)  # a bad suffix fails before the graph is loaded
    if processes is not None and mapping is None:
        raise UsageError("-n/--processes needs -m/--mapping: the placement depends on both")
    if mapping is None:
        ctx = prepare(graph_source, attr, "simple", 1, 0, Path(os.getcwd()))
        title = Path(graph_source).name
    else:
        # the same process count and plan as `d4p-hpc run` would use
        n = mappings.get(mapping).processes(processes)
        ctx = prepare(graph_source, attr, mapping, n, 0, Path(os.getcwd()))
        title = f"{Path(graph_source).name}: {mapping} -n {n}"
    dot = drawing.dot_source(ctx.plan, mapping, title)
    if output is None:
        click.echo(dot, nl=False)
        return
    drawing.write(dot, output)
    click.echo(f"wrote {output}")
