"""A graph written for dispel4py that uses ``write_image`` and ``ProcessTimingPE`` (issue 7).

``graph`` is stateless, so it is valid under every mapping, the dynamic ones
included: Numbers -> Inc (an iterative chain, i.e. a composite PE) ->
ProcessTimingPE(Square) -> ProcessTimingPE(Describe), whose ``even`` and
``odd`` outputs are the results. ``stateful_graph`` (``--attr``; for the
mappings with fixed instances: simple, multi, mpi, hybrid_redis) sends those
to ProcessTimingPE(CountParity), grouped by parity, which emits one total per
parity in ``_postprocess``. With ``D4P_TEST_IMAGES=DIR`` every process that
loads the file draws ``graph`` to ``DIR/graph-<pid>.png`` with ``write_image``.
"""

import os

from dispel4py.base import IterativePE, ProducerPE, create_iterative_chain
from dispel4py.core import GenericPE
from dispel4py.new.monitoring import ProcessTimingPE
from dispel4py.workflow_graph import WorkflowGraph, write_image


class Numbers(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


def inc(n):
    return n + 1


class Square(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)
        self.numprocesses = 2

    def _process(self, n):
        return (n, n * n)


class Describe(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_output("even")
        self._add_output("odd")

    def process(self, inputs):
        n, square = inputs["input"]
        parity = "even" if n % 2 == 0 else "odd"
        self.write(parity, (n, square, parity))


class CountParity(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input", grouping=[2])
        self._add_output("output")
        self.numprocesses = 2
        self.totals = {}

    def process(self, inputs):
        n, square, parity = inputs["input"]
        count, total = self.totals.get(parity, (0, 0))
        self.totals[parity] = (count + 1, total + square)

    def _postprocess(self):
        for parity, (count, total) in self.totals.items():
            self.write("output", (parity, count, total))


def build(stateful):
    g = WorkflowGraph()
    numbers, square, describe = Numbers(), ProcessTimingPE(Square()), ProcessTimingPE(Describe())
    chain = create_iterative_chain([inc])
    g.connect(numbers, "output", chain, "input")
    g.connect(chain, "output", square, "input")
    g.connect(square, "output", describe, "input")
    if stateful:
        count = ProcessTimingPE(CountParity())
        g.connect(describe, "even", count, "input")
        g.connect(describe, "odd", count, "input")
    return g


graph = build(stateful=False)
stateful_graph = build(stateful=True)

if os.environ.get("D4P_TEST_IMAGES"):
    write_image(graph, os.path.join(os.environ["D4P_TEST_IMAGES"], f"graph-{os.getpid()}.png"))
