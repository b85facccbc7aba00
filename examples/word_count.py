"""Word count: a producer, a splitter and a stateful, grouped counter.

What it shows
-------------
* ``ProduceLines`` (a ``ProducerPE``) emits one line of a fixed built-in
  corpus per iteration: iteration k (0-based) yields ``CORPUS[k % len(CORPUS)]``.
  No randomness, so every run with the same ``-i`` gives the same result.
* ``SplitWords`` (a ``GenericPE``, 2 instances) writes one ``(word, 1)`` tuple
  per word with ``self.write`` (many outputs per input).
* ``CountWords`` (a ``GenericPE``, ``numprocesses = 3``) declares its input with
  ``grouping=[0]`` (group-by on the word), so every occurrence of a word
  reaches the same instance. It counts in ``process`` and writes the
  ``(word, count)`` totals in ``postprocess``. Its output is not connected, so
  the totals are the workflow result: each word appears exactly once, with its
  exact count, whatever the number of instances or the mapping.

Run it
------
With d4p-hpc::

    d4p-hpc run examples/word_count.py -m simple -i 100
    d4p-hpc run examples/word_count.py -m multi -n 4 -i 100
    d4p-hpc run examples/word_count.py -m mpi -n 4 -i 100

With dispel4py (stream-d4py)::

    dispel4py simple examples/word_count.py -i 100

With ``-i 100`` the result holds 32 ``(word, count)`` items, e.g.
``("the", 101)`` and ``("fox", 26)``.
"""

from dispel4py.base import ProducerPE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph

CORPUS = [
    "The quick brown fox jumps over the lazy dog",
    "The dog sleeps in the sun",
    "A fox is quick and a dog is lazy",
    "Streams of words flow through the graph",
    "Every word is counted exactly once",
    "The graph runs on many processes",
    "Quick processes count words",
    "The end of the corpus",
]


def expected_counts(iterations):
    """The exact result for ``iterations`` iterations (used by tests)."""
    counts = {}
    for k in range(iterations):
        for word in _words(CORPUS[k % len(CORPUS)]):
            counts[word] = counts.get(word, 0) + 1
    return counts


def _words(line):
    return [w.strip(".,;:!?").lower() for w in line.split() if w.strip(".,;:!?")]


class ProduceLines(ProducerPE):
    """Emits line ``k mod len(CORPUS)`` of the corpus on its k-th call."""

    def __init__(self):
        ProducerPE.__init__(self)
        self.k = 0

    def _process(self, inputs):
        line = CORPUS[self.k % len(CORPUS)]
        self.k += 1
        return line


class SplitWords(GenericPE):
    """Splits a line into lower-case words and writes ``(word, 1)`` for each."""

    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_output("output")

    def process(self, inputs):
        for word in _words(inputs["input"]):
            self.write("output", (word, 1))


class CountWords(GenericPE):
    """Counts words grouped by the word; emits ``(word, count)`` at the end."""

    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input", grouping=[0])
        self._add_output("output")

    def preprocess(self):
        self.counts = {}

    def process(self, inputs):
        word, n = inputs["input"]
        self.counts[word] = self.counts.get(word, 0) + n

    def postprocess(self):
        for word in sorted(self.counts):
            self.write("output", (word, self.counts[word]))


def build():
    lines = ProduceLines()
    split = SplitWords()
    split.numprocesses = 2
    count = CountWords()
    count.numprocesses = 3
    g = WorkflowGraph()
    g.connect(lines, "output", split, "input")
    g.connect(split, "output", count, "input")
    return g


graph = build()
