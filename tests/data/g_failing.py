"""``Boom`` passes numbers on to its unconnected output ``kept`` and raises on number FAIL_AT.

With ``G_FAIL_PHASE=preprocess`` or ``postprocess`` in the environment it raises there instead,
after sleeping ``G_FAIL_DELAY`` seconds (so upstream processes can finish their part first).
"""

import os
import time

from dispel4py.base import ProducerPE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph

FAIL_AT = 5
PHASE = os.environ.get("G_FAIL_PHASE", "process")
DELAY = float(os.environ.get("G_FAIL_DELAY", "0"))


class Source(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class Boom(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_output("kept")

    def preprocess(self):
        if PHASE == "preprocess":
            time.sleep(DELAY)
            raise ValueError("boom in preprocess")

    def postprocess(self):
        if PHASE == "postprocess":
            time.sleep(DELAY)
            raise ValueError("boom in postprocess")

    def process(self, inputs):
        n = inputs["input"]
        if PHASE == "process" and n == FAIL_AT:
            raise ValueError(f"boom at {n}")
        self.write("kept", n)


def build():
    g = WorkflowGraph()
    g.connect(Source(), "output", Boom(), "input")
    return g


graph = build()
