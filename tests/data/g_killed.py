"""``Victim`` kills its own process with SIGKILL on item KILL_AT (as the OOM killer would)."""

import os
import signal

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph

KILL_AT = 50


class Source(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class Victim(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, data):
        if data == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return data


def build():
    g = WorkflowGraph()
    g.connect(Source(), "output", Victim(), "input")
    return g


graph = build()
