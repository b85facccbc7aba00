"""A PE holding a lock (which cannot be copied) and asking for 10 instances, before two plain PEs.

With more instances than processes, several instances of ``Locked`` may have to
share a process. The run must then work, or fail with a clear error; it must never hang.
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
        return self.n


class Locked(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)
        self.lock = threading.Lock()
        self.numprocesses = 10

    def _process(self, data):
        with self.lock:
            return data


class Pass(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, data):
        return data


def build():
    locked, first, last = Locked(), Pass(), Pass()
    g = WorkflowGraph()
    g.connect(Source(), "output", locked, "input")
    g.connect(locked, "output", first, "input")
    g.connect(first, "output", last, "input")
    return g


graph = build()
