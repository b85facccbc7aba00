"""A graph whose PE imports ``d4p_cwd_helper`` from the working directory it runs in.

The test writes that module into the directory it runs (or submits) from, as users do with
helper modules kept next to where they start their runs.
"""

import os
import socket
import time

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Numbers(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class Scale(IterativePE):
    def _process(self, n):
        import d4p_cwd_helper  # imported where the PE runs: a worker or rank on any node

        time.sleep(float(os.environ.get("D4P_TEST_SLEEP", "0")))  # spreads the items over workers
        return [n, d4p_cwd_helper.scale(n), socket.gethostname()]


graph = WorkflowGraph()
graph.connect(Numbers(), "output", Scale(), "input")
