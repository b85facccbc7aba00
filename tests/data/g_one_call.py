"""A root that writes every item in ONE ``process`` call (the "read a big file, write each line"
producer): ``$D4P_ONE_CALL_ITEMS`` items (default 1000; 0: an endless stream).

``Lines.ended`` gets the time the call returned and ``Work.seen`` the time some items were
processed, so a test can tell whether workers ran while the root's call was still going.
"""

import itertools
import os
import time

from dispel4py.base import GenericPE, IterativePE
from dispel4py.workflow_graph import WorkflowGraph

SEEN_EVERY = 1000


class Lines(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_output("output")
        self._add_output("ended")

    def process(self, inputs):
        n = int(os.environ.get("D4P_ONE_CALL_ITEMS", "1000"))
        for i in range(n) if n else itertools.count():
            self.write("output", i)
        self.write("ended", time.time())


class Work(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)
        self._add_output("seen")

    def _process(self, i):
        if i % SEEN_EVERY == 0:
            self.write("seen", time.time())
        return 2 * i


def build():
    g = WorkflowGraph()
    g.connect(Lines(), "output", Work(), "input")
    return g


graph = build()
