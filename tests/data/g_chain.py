"""A chain of ``$D4P_CHAIN_LENGTH`` (default 500) PEs that each add one, ending in ``Order``, which
keeps the order its items came in and writes it at the end (a stateful PE must see them in the
order they were written)."""

import os

from dispel4py.base import GenericPE, IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph

LENGTH = int(os.environ.get("D4P_CHAIN_LENGTH", "500"))


class Source(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class Inc(IterativePE):
    def _process(self, data):
        return data + 1


class Order(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_output("output")
        self.seen = []

    def process(self, inputs):
        self.seen.append(inputs["input"])

    def postprocess(self):
        self.write("output", self.seen)


def build():
    g = WorkflowGraph()
    prev = Source()
    for _ in range(LENGTH):
        nxt = Inc()
        g.connect(prev, "output", nxt, "input")
        prev = nxt
    g.connect(prev, "output", Order(), "input")
    return g


graph = build()
