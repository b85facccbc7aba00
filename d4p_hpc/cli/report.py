"""``d4p-hpc report JOB|RUNDIR [-o report.html] [--png]``: the offline HTML report of a run or job."""

from __future__ import annotations

from pathlib import Path

import click

from d4p_hpc.cli.common import find, root_options
from d4p_hpc.jobs import state
from d4p_hpc.report import page


@click.command()
@click.argument("job")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the page [default: report.html in the results directory].")
@click.option("--png", is_flag=True, help="Also write each plot as a PNG next to the page (needs Chromium).")
@root_options
def report(job, output, png, results_root, profile):
    """Write one self-contained HTML page of what JOB (a job id or results directory) did:
    summary, efficiency, the graph, throughput, busy time, backlog, pool size, memory, outputs."""
    found = find(job, results_root, profile)
    target = Path(output) if output else found.directory / "report.html"
    for path in page.write(found.directory, target, None if found.scheduler == state.RUN else found, png):
        click.echo(f"wrote {path}")
