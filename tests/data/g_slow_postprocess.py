"""A stateful counter whose postprocess takes a while: for stopping a run while it postprocesses.

``Count.postprocess`` prints "postprocess started" to its process's log, then sleeps
``$D4P_TEST_POST_SLEEP`` seconds (default 0) before it writes the counts.
"""

import os
import time

from dispel4py.base import GenericPE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Words(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return [f"w{self.n % 5}", 1]


class Count(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input", grouping=[0])
        self._add_output("output")
        self.counts = {}

    def process(self, inputs):
        word, n = inputs["input"]
        self.counts[word] = self.counts.get(word, 0) + n

    def postprocess(self):
        print("postprocess started", flush=True)
        time.sleep(float(os.environ.get("D4P_TEST_POST_SLEEP", "0")))
        for word, n in self.counts.items():
            self.write("output", [word, n])


graph = WorkflowGraph()
graph.connect(Words(), "output", Count(), "input")
