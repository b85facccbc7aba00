"""A fast graph of large items (1 kB strings), to fill a small file system quickly."""

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Blobs(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return f"{self.n:08d}" + "x" * 1016


class Pass(IterativePE):
    def _process(self, data):
        return data


graph = WorkflowGraph()
graph.connect(Blobs(), "output", Pass(), "input")
