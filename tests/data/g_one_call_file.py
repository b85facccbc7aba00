"""The usual dispel4py producer: a root whose ONE ``process`` call reads a whole file and writes
each line (``$D4P_ONE_CALL_FILE``), before a slow stage and a grouped counter (whose state a
checkpoint must keep).

``$D4P_ONE_CALL_NOISE=1``: the root also writes a random number with each line, so a replay of
its call writes other items; ``$D4P_ONE_CALL_DECLARED=1``: it says so (``deterministic = False``).
``$D4P_ONE_CALL_SECONDS``: the slow stage's delay per line (default 0.0001, slept every 100 lines).
"""

import os
import random
import time

from dispel4py.base import GenericPE
from dispel4py.workflow_graph import WorkflowGraph

NOISE = os.environ.get("D4P_ONE_CALL_NOISE") == "1"


class ReadFile(GenericPE):
    if os.environ.get("D4P_ONE_CALL_DECLARED") == "1":
        deterministic = False

    def __init__(self):
        GenericPE.__init__(self)
        self._add_output("output")

    def process(self, inputs):
        with open(os.environ["D4P_ONE_CALL_FILE"]) as fh:
            for line in fh:
                self.write("output", [line.rstrip("\n"), random.random()] if NOISE else line.rstrip("\n"))


class Slow(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_output("output")
        self._add_output("tagged")
        self.delay = float(os.environ.get("D4P_ONE_CALL_SECONDS", "0.0001"))
        self.seen = 0

    def process(self, inputs):
        line = inputs["input"]
        self.seen += 1
        if self.seen % 100 == 0:
            time.sleep(100 * self.delay)
        if NOISE:
            line = line[0]
        self.write("tagged", line.upper())
        self.write("output", [int(line.split("-")[1]) % 7, 1])


class Count(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input", grouping=[0])
        self._add_output("output")
        self.counts = {}

    def process(self, inputs):
        key, n = inputs["input"]
        self.counts[key] = self.counts.get(key, 0) + n

    def postprocess(self):
        for key, n in sorted(self.counts.items()):
            self.write("output", [key, n])


def build():
    g = WorkflowGraph()
    slow = Slow()
    g.connect(ReadFile(), "output", slow, "input")
    g.connect(slow, "output", Count(), "input")
    return g


graph = build()
