"""Groupings "all" and "global": results that do not depend on the instance count.

What it shows
-------------
* Two roots: ``Numbers`` emits 1, 2, 3, ... (one per iteration), and
  ``Params`` emits the parameters ``("scale", 3)`` and ``("offset", 1)`` on
  its first call only (nothing on later calls), so there are always exactly
  two parameter items, whatever ``-i`` is.
* ``Scale`` (a ``GenericPE``, ``numprocesses = 3``) has two inputs:

  - ``input`` with the default grouping: the numbers are shared out among
    the 3 instances, each number reaching exactly one instance;
  - ``params`` with grouping ``"all"``: every instance receives every
    parameter item.

  The order in which a PE's inputs arrive is not guaranteed (a number may
  reach an instance before the parameters do), so ``Scale`` buffers numbers
  until it holds all the parameters it needs, then flushes the buffer and
  processes the rest as they come. It writes ``(n, n * scale + offset)`` to
  ``output`` (connected to ``Total``) and the same pair to ``scaled``
  (unconnected: a workflow result, one item per number).
* ``Total`` declares its input with grouping ``"global"``: all its data goes
  to one instance. It sums what it receives and, in ``postprocess``, writes
  ``("total", count, sum)`` to its unconnected ``output``. If a mapping runs
  more than one ``Total`` instance (dispel4py's multi mapping may), the idle
  instances write nothing, so there is exactly one total.

Both results are the same for any number of instances and any mapping.

Run it
------
With d4p-hpc::

    d4p-hpc run examples/groupings.py -m simple -i 100
    d4p-hpc run examples/groupings.py -m multi -n 4 -i 100
    d4p-hpc run examples/groupings.py -m mpi -n 4 -i 100

With dispel4py (stream-d4py)::

    dispel4py simple examples/groupings.py -i 100

With ``-i 100``: ``Scale.scaled`` holds 100 items ``(n, 3n + 1)`` for
n = 1..100, e.g. ``(1, 4)`` and ``(100, 301)``; ``Total.output`` holds one
item, ``("total", 100, 15250)``.
"""

from dispel4py.base import ProducerPE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph

PARAMS = [("scale", 3), ("offset", 1)]
REQUIRED = {name for name, _ in PARAMS}


def expected_total(iterations):
    """``("total", count, sum)`` for ``iterations`` iterations (used by tests)."""
    values = [n * 3 + 1 for n in range(1, iterations + 1)]
    return ("total", len(values), sum(values))


class Numbers(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class Params(GenericPE):
    """Emits every parameter on its first call, nothing afterwards."""

    def __init__(self):
        GenericPE.__init__(self)
        self._add_output("output")
        self.sent = False

    def process(self, inputs):
        if not self.sent:
            self.sent = True
            for item in PARAMS:
                self.write("output", item)


class Scale(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_input("params", grouping="all")
        self._add_output("output")
        self._add_output("scaled")

    def preprocess(self):
        self.params = {}
        self.pending = []

    def _ready(self):
        return REQUIRED <= self.params.keys()

    def _emit(self, n):
        result = (n, n * self.params["scale"] + self.params["offset"])
        self.write("output", result)
        self.write("scaled", result)

    def process(self, inputs):
        if "params" in inputs:
            name, value = inputs["params"]
            self.params[name] = value
            if self._ready():
                pending, self.pending = self.pending, []
                for n in pending:
                    self._emit(n)
        if "input" in inputs:
            if self._ready():
                self._emit(inputs["input"])
            else:
                self.pending.append(inputs["input"])

    def postprocess(self):
        if self.pending:
            missing = sorted(REQUIRED - self.params.keys())
            raise RuntimeError(f"Scale: parameters {missing} never arrived; {len(self.pending)} items unprocessed")


class Total(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input", grouping="global")
        self._add_output("output")

    def preprocess(self):
        self.count = 0
        self.sum = 0

    def process(self, inputs):
        _, value = inputs["input"]
        self.count += 1
        self.sum += value

    def postprocess(self):
        if self.count:  # idle extra instances (if any) write nothing
            self.write("output", ("total", self.count, self.sum))


def build():
    numbers = Numbers()
    params = Params()
    scale = Scale()
    scale.numprocesses = 3
    total = Total()
    g = WorkflowGraph()
    g.connect(numbers, "output", scale, "input")
    g.connect(params, "output", scale, "params")
    g.connect(scale, "output", total, "input")
    return g


graph = build()
