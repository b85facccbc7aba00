"""``simple``: every PE instance in this one process, sequentially."""

from __future__ import annotations

from d4p_hpc.supervisor import restore_signals
from d4p_hpc.mappings.runtime.runner import RunContext, begin, end, run_process


def run(ctx: RunContext) -> dict:
    """Run the graph here and return the final run record."""
    t0 = begin(ctx)
    try:
        outcome = run_process(ctx, 0, None)
    finally:
        restore_signals()
    return end(ctx, t0, outcome)
