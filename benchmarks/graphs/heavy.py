"""CPU-heavy benchmark graphs: like ``light.py`` with a PE that burns CPU per item.

Runs unchanged under the reference ``dispel4py`` and under d4p-hpc::

    dispel4py multi benchmarks/graphs/heavy.py -a graph -i 2000 -n 4
    d4p-hpc run benchmarks/graphs/heavy.py --attr graph -m multi -n 4 -i 2000

Graphs
------
graph, graph_stateless
    ``Numbers -> Burn -> Tally|Tag -> Report`` with about 1 ms of CPU per item in ``Burn``:
    the speed-up over ``simple`` shows how well a mapping spreads the work over cores.
backpressure, backpressure_stateless
    The same with about 25 us per item: slower than the producer but cheap enough for
    1,000,000 items, so a mapping without backpressure piles the backlog up in memory.
"""
import os

# Numbers, Tally, Tag, Report and pipeline() come from light.py.  Its source is run in
# this module's namespace rather than imported so that the classes belong to this module:
# each runtime loads a graph file by path (also in its worker processes) and would not
# find a sibling module by name.
# (so IterativePE, KEYS, pipeline, Tally and Tag below are defined without an import)
_doc = __doc__
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "light.py")) as _src:
    exec(compile(_src.read(), _src.name, "exec"))
__doc__ = _doc  # the source of light.py set its own

# a linear congruential step costs about 0.12 us in CPython on the benchmark machine
ROUNDS_PER_MS = 8000


class Burn(IterativePE):
    """Like ``Light``, after a deterministic busy loop of ``rounds`` steps."""

    def __init__(self, rounds):
        IterativePE.__init__(self)
        self.rounds = rounds
        # the one costly PE asks for parallel instances, as a dispel4py user would
        self.numprocesses = 4

    def _process(self, data):
        state = data
        for _ in range(self.rounds):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        # the value depends on the loop, so the result checks that every loop ran
        return data % KEYS, state


graph = pipeline(Burn(ROUNDS_PER_MS), Tally())
graph_stateless = pipeline(Burn(ROUNDS_PER_MS), Tag())
backpressure = pipeline(Burn(ROUNDS_PER_MS // 40), Tally())
backpressure_stateless = pipeline(Burn(ROUNDS_PER_MS // 40), Tag())
