"""``Source`` sends items that cannot be pickled (a lock) to ``Drop``, which keeps only the number.

Fine in one process; between processes the items cannot travel, and the run
must fail with a clear error (never hang).
"""

import threading

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Source(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return (self.n, threading.Lock())


class Drop(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, data):
        return data[0]


def build():
    g = WorkflowGraph()
    g.connect(Source(), "output", Drop(), "input")
    return g


graph = build()
