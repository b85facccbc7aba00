"""``Die`` ends its own process with ``os._exit(3)`` on item 5, without a word (as a crash in native
code would): the run must still end FAILED, naming it."""

import os

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Source(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class Die(IterativePE):
    def _process(self, data):
        if data == 5:
            os._exit(3)
        return data


def build():
    g = WorkflowGraph()
    g.connect(Source(), "output", Die(), "input")
    return g


graph = build()
