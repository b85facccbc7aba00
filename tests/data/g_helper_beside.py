"""A graph whose PE calls a helper module that sits beside it (tests/cluster/test_helper_modules.py).

Real workflows import their own modules this way (``whiten``, ``xcorr``); the helper's name
is unique so that nothing else on sys.path can provide it.
"""

import os
import socket
import time

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph

import g_helper_beside_lib


class Numbers(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class Scale(IterativePE):
    def _process(self, n):
        time.sleep(float(os.environ.get("D4P_TEST_SLEEP", "0")))  # spreads the items over workers
        return [n, g_helper_beside_lib.scale(n), socket.gethostname()]


graph = WorkflowGraph()
graph.connect(Numbers(), "output", Scale(), "input")
