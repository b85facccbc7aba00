"""``simple``: every PE instance in one process, sequentially.

That process is a forked child of the run's own, which supervises it as ``multi`` does its
children (:func:`d4p_hpc.mappings.static.multi.run` with one process): a PE that ends the process
without a word (``os._exit``, a crash in native code, the OOM killer) still leaves a FAILED run,
which names the PE that called ``os._exit``. What runs, and in which order, is what one process
runs; the fork costs a few milliseconds.
"""

from __future__ import annotations

from d4p_hpc.mappings.runtime.runner import RunContext
from d4p_hpc.mappings.static import multi


def run(ctx: RunContext) -> dict:
    """Run the graph in one supervised process and return the final run record."""
    return multi.run(ctx)
