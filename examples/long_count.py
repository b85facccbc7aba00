"""A long stream to checkpoint and resume: a producer, a slow stateless stage, a grouped counter.

What it shows
-------------
* ``Lines`` (a ``ProducerPE``) emits line k of a built-in corpus per iteration, numbered.
* ``Slow`` (stateless, 2 instances) sleeps ``LONG_COUNT_SECONDS`` (default 0.05) per line, writes
  every ``(k, word)`` to its unconnected output ``tagged`` (a streaming result: each exactly once)
  and ``(word, 1)`` on to the counter.
* ``Count`` (``grouping=[0]``, 3 instances) counts per word in ``process`` and writes the totals in
  ``postprocess``: its state is what a checkpoint must carry across segments.
* ``stateless`` is the same without the counter (for the dyn_* mappings).

Run it (about 3 minutes of work at -i 1800 with the default delay, on one process)::

    d4p-hpc run examples/long_count.py -a graph -i 1800 --checkpoint-every 10 --results /tmp/lc
    # stop it (Ctrl-C, kill -9, the walltime), then
    d4p-hpc run examples/long_count.py -a graph -i 1800 --results /tmp/lc --resume
"""

import os
import time

from dispel4py.base import ProducerPE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph

CORPUS = ["the quick brown fox", "jumps over the lazy dog", "the dog sleeps", "a fox is quick"]


class Lines(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.k = 0

    def _process(self, inputs):
        line = CORPUS[self.k % len(CORPUS)]
        self.k += 1
        return [self.k, line]


class Slow(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_output("tagged")
        self._add_output("words")
        self.numprocesses = 2
        self.seconds = float(os.environ.get("LONG_COUNT_SECONDS", "0.05"))

    def _process(self, inputs):
        k, line = inputs["input"]
        time.sleep(self.seconds)
        for word in line.split():
            self.write("tagged", [k, word])
            self.write("words", [word, 1])


class Count(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input", grouping=[0])
        self._add_output("output")
        self.numprocesses = 3
        self.counts = {}

    def _process(self, inputs):
        word, n = inputs["input"]
        self.counts[word] = self.counts.get(word, 0) + n

    def _postprocess(self):
        for word, n in sorted(self.counts.items()):
            self.write("output", [word, n])


def _build(counted):
    g = WorkflowGraph()
    lines, slow = Lines(), Slow()
    g.connect(lines, "output", slow, "input")
    if counted:
        g.connect(slow, "words", Count(), "input")
    return g


graph = _build(True)
stateless = _build(False)
