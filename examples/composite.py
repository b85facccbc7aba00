"""Composite PEs: a ``CompositePE`` subgraph and a ``create_iterative_chain`` chain.

What it shows
-------------
* ``Numbers`` (a ``ProducerPE``) emits 1, 2, 3, ... (one number per iteration).
* ``AffineStage`` is a ``CompositePE``: its ``create_graph`` function connects
  ``AddOffset`` (adds ``offset``) to ``MultiplyBy`` (multiplies by ``factor``)
  inside the composite, and exposes them with ``_map_input`` /
  ``_map_output``. ``offset`` and ``factor`` are passed through ``params``.
  The inner ``MultiplyBy`` runs with 2 instances.
* ``Shift`` (a plain ``IterativePE``) subtracts 7. It sits between the two
  composites on purpose: stream-d4py 2.9.1's ``flatten()`` loses a direct
  composite-to-composite connection (the second composite's first PE then
  looks like a root and fails), so a plain PE must separate them.
* ``create_iterative_chain`` (from ``dispel4py.base``) wraps three plain
  functions into a chain of ``SimpleFunctionPE``: ``double``, then ``add``
  with ``{"n": 3}`` as keyword parameters, then ``mod_97``.
* ``Tag`` (an ``IterativePE``) pairs the number with its result and writes
  ``(x, y)`` to its unconnected output: the workflow result, where
  ``y = (((x + 1) * 10 - 7) * 2 + 3) % 97``.

When the graph is loaded, composites are flattened into plain PEs (dispel4py's
``graph.flatten()``; d4p-hpc does the same), so mappings only see plain PEs.
The composites are built inside ``build()`` so that the module holds exactly
one top-level ``WorkflowGraph``: ``graph``.

Run it
------
With d4p-hpc::

    d4p-hpc run examples/composite.py -m simple -i 100
    d4p-hpc run examples/composite.py -m multi -n 4 -i 100
    d4p-hpc run examples/composite.py -m mpi -n 4 -i 100

With dispel4py (stream-d4py)::

    dispel4py simple examples/composite.py -i 100

With ``-i 100`` the result holds 100 items, one per x = 1..100, e.g.
``(1, 29)``, ``(2, 49)`` and ``(100, 69)``.
"""

from dispel4py.base import CompositePE, IterativePE, ProducerPE, create_iterative_chain
from dispel4py.workflow_graph import WorkflowGraph


def expected(x):
    """The result for input ``x`` (used by tests)."""
    return (((x + 1) * 10 - 7) * 2 + 3) % 97


class Numbers(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class AddOffset(IterativePE):
    """Carries ``(x, value)``: adds ``offset`` to the value."""

    def __init__(self, offset):
        IterativePE.__init__(self)
        self.offset = offset

    def _process(self, x):
        return (x, x + self.offset)


class MultiplyBy(IterativePE):
    def __init__(self, factor):
        IterativePE.__init__(self)
        self.factor = factor

    def _process(self, data):
        x, value = data
        return (x, value * self.factor)


def create_affine(graph, offset, factor):
    """Populates an ``AffineStage`` composite."""
    add = AddOffset(offset)
    mul = MultiplyBy(factor)
    mul.numprocesses = 2
    graph.connect(add, "output", mul, "input")
    graph._map_input("input", add, "input")
    graph._map_output("output", mul, "output")


class AffineStage(CompositePE):
    def __init__(self, offset, factor):
        CompositePE.__init__(self, create_affine, {"offset": offset, "factor": factor})


# Functions for create_iterative_chain: each takes the data (and keyword
# parameters) and returns the new data. The data is the pair (x, value).
def double(data):
    x, value = data
    return (x, value * 2)


def add(data, n):
    x, value = data
    return (x, value + n)


def mod_97(data):
    x, value = data
    return (x, value % 97)


class Shift(IterativePE):
    """A plain PE between the two composites: subtracts 7 from the value."""

    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, data):
        x, value = data
        return (x, value - 7)


class Tag(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, data):
        x, y = data
        return (x, y)


def build():
    numbers = Numbers()
    affine = AffineStage(offset=1, factor=10)
    shift = Shift()
    chain = create_iterative_chain([double, (add, {"n": 3}), mod_97])
    tag = Tag()
    g = WorkflowGraph()
    g.connect(numbers, "output", affine, "input")
    # A plain PE between the two composites: stream-d4py 2.9.1's flatten()
    # drops a direct composite -> composite connection (the second
    # composite's first PE then becomes a root), so never connect them directly.
    g.connect(affine, "output", shift, "input")
    g.connect(shift, "output", chain, "input")
    g.connect(chain, "output", tag, "input")
    return g


graph = build()
