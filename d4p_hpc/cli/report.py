"""``d4p-hpc report JOB|RUNDIR [-o report.html] [--png]``: the offline HTML report of a run or job."""

from __future__ import annotations

from pathlib import Path

import click

from d4p_hpc.api.job import attach
from d4p_hpc.cli.common import root_options
from d4p_hpc.errors import Command


@click.command(cls=Command)
@click.argument("job")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the page [default: report.html in the results directory].")
@click.option("--png", is_flag=True, help="Also write each plot as a PNG next to the page (needs Chromium).")
@root_options
def report(job, output, png, results_root, profile):
    """Write one self-contained HTML page of what JOB (a job id or results directory) or SWEEP did:
    summary, efficiency, the graph, throughput, busy time, backlog, pool size, memory, outputs."""
    from d4p_hpc.cli import sweep as sweeping

    if found := sweeping.found(job, results_root, profile):
        written = found.report(Path(output) if output else None, png)
    else:
        written = attach(job, results_root, profile).report(Path(output) if output else None, png)
    for path in written.files:
        click.echo(f"wrote {path}")
