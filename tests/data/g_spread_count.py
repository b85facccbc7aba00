"""A stateless root whose calls ``multi`` and ``mpi`` spread over its 2 instances, and a grouped counter.

``Emit`` gets a number per call (``-d``/``-f``: ``{"Emit": [{"n": 0}, ...]}``), sleeps
``$LONG_COUNT_SECONDS`` (default 0.05) and writes ``[n, word]`` for each word of a line of a
built-in corpus to ``tagged`` (a result: each exactly once) and ``[word, 1]`` to ``Count``
(grouped by word), which writes its totals in ``postprocess``: state that checkpoints carry.
"""

import os
import time

from dispel4py.base import GenericPE
from dispel4py.workflow_graph import WorkflowGraph

CORPUS = ["the quick brown fox", "jumps over the lazy dog", "the dog sleeps", "a fox is quick"]


class Emit(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("n")
        self._add_output("tagged")
        self._add_output("words")
        self.seconds = float(os.environ.get("LONG_COUNT_SECONDS", "0.05"))

    def process(self, inputs):
        n = inputs["n"]
        time.sleep(self.seconds)
        for word in CORPUS[n % len(CORPUS)].split():
            self.write("tagged", [n, word])
            self.write("words", [word, 1])


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
        for word, n in sorted(self.counts.items()):
            self.write("output", [word, n])


emit = Emit()
emit.numprocesses = 2
graph = WorkflowGraph()
graph.connect(emit, "words", Count(), "input")
