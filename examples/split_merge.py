"""Split and merge: one PE routes items to two branches, a PE with two inputs merges them.

What it shows
-------------
* ``Numbers`` (a ``ProducerPE``) emits 1, 2, 3, ... (one number per iteration).
* ``SplitEvenOdd`` (a ``GenericPE``) has two outputs, ``even`` and ``odd``, and
  writes each number to exactly one of them.
* Two branches, each an ``IterativePE`` with 2 instances, apply one step of
  the Collatz map: ``HalveEven`` returns ``(n, n // 2)``, ``TripleOdd``
  returns ``(n, 3 * n + 1)``.
* ``Merge`` (a ``GenericPE``) has two inputs, ``even`` and ``odd``; each call
  of ``process`` gets a dict holding one of them, and it writes
  ``(n, next, branch)`` to its unconnected ``output``: the workflow result.

Run it
------
With d4p-hpc::

    d4p-hpc run examples/split_merge.py -m simple -i 100
    d4p-hpc run examples/split_merge.py -m multi -n 4 -i 100
    d4p-hpc run examples/split_merge.py -m mpi -n 4 -i 100

With dispel4py (stream-d4py)::

    dispel4py simple examples/split_merge.py -i 100

With ``-i 100`` the result holds 100 items, one per n = 1..100, e.g.
``(1, 4, "odd")``, ``(2, 1, "even")`` and ``(100, 50, "even")``.
"""

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph


class Numbers(ProducerPE):
    """Emits 1, 2, 3, ... one per call."""

    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class SplitEvenOdd(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_output("even")
        self._add_output("odd")

    def process(self, inputs):
        n = inputs["input"]
        if n % 2 == 0:
            return {"even": n}
        return {"odd": n}


class HalveEven(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, n):
        return (n, n // 2)


class TripleOdd(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, n):
        return (n, 3 * n + 1)


class Merge(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("even")
        self._add_input("odd")
        self._add_output("output")

    def process(self, inputs):
        for branch in ("even", "odd"):
            if branch in inputs:
                n, nxt = inputs[branch]
                self.write("output", (n, nxt, branch))


def build():
    numbers = Numbers()
    split = SplitEvenOdd()
    even = HalveEven()
    even.numprocesses = 2
    odd = TripleOdd()
    odd.numprocesses = 2
    merge = Merge()
    g = WorkflowGraph()
    g.connect(numbers, "output", split, "input")
    g.connect(split, "even", even, "input")
    g.connect(split, "odd", odd, "input")
    g.connect(even, "output", merge, "even")
    g.connect(odd, "output", merge, "odd")
    return g


graph = build()
