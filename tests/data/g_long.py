"""A long-running graph (about 1 ms per item) for stopping runs with signals."""

import time

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Ticks(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        time.sleep(0.001)
        self.n += 1
        return self.n


class Pass(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, data):
        return data


def build():
    g = WorkflowGraph()
    g.connect(Ticks(), "output", Pass(), "input")
    return g


graph = build()
