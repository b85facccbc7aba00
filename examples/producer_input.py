"""Producer input: a root PE driven by input data given on the command line.

What it shows
-------------
* ``ReadNumbers`` is a root PE in the style of dispel4py's "read" PEs: it
  declares an input named ``input`` that is not connected to anything, and
  the run's input data feeds it. With
  ``-d '{"ReadNumbers": [{"input": 5}, {"input": 7}]}'`` the mapping calls
  ``process`` once per dict in the list, with that dict as ``inputs``
  (``{"input": 5}``, then ``{"input": 7}``). The key ``ReadNumbers`` is the
  PE's name (its class name); the PE id (``ReadNumbers0``) works as well.
  For each call it emits ``(count, i)`` for ``i = 1..count``.
  With ``-i N`` instead, ``process`` is called N times with ``{}``, and it
  uses ``DEFAULT_COUNT`` (3).
* ``Square`` (an ``IterativePE``, 2 instances) returns ``(count, i, i * i)``
  to its unconnected output: the workflow result.

Run it
------
With d4p-hpc::

    d4p-hpc run examples/producer_input.py -m simple -d '{"ReadNumbers": [{"input": 5}, {"input": 7}]}'
    d4p-hpc run examples/producer_input.py -m multi -n 4 -d '{"ReadNumbers": [{"input": 5}, {"input": 7}]}'
    d4p-hpc run examples/producer_input.py -m mpi -n 4 -d '{"ReadNumbers": [{"input": 5}, {"input": 7}]}'
    d4p-hpc run examples/producer_input.py -m multi -n 4 -i 100    # 100 calls with {}: 300 items

With dispel4py (stream-d4py)::

    dispel4py simple examples/producer_input.py -d '{"ReadNumbers": [{"input": 5}, {"input": 7}]}'
    dispel4py simple examples/producer_input.py -i 100

With the ``-d`` above the result holds 12 items: ``(5, 1, 1)`` ... ``(5, 5, 25)``
and ``(7, 1, 1)`` ... ``(7, 7, 49)``.
"""

from dispel4py.base import IterativePE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph

DEFAULT_COUNT = 3


class ReadNumbers(GenericPE):
    """Emits ``(count, i)`` for i = 1..count, count taken from ``inputs["input"]``."""

    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_output("output")

    def process(self, inputs):
        count = int(inputs.get("input", DEFAULT_COUNT))
        for i in range(1, count + 1):
            self.write("output", (count, i))


class Square(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, data):
        count, i = data
        return (count, i, i * i)


def build():
    read = ReadNumbers()
    square = Square()
    square.numprocesses = 2
    g = WorkflowGraph()
    g.connect(read, "output", square, "input")
    return g


graph = build()
