"""One producer feeding four PEs, one per grouping; each instance reports what it received.

``Keys`` emits ``(n % 7, n)`` for n = 1..N. Its output is connected to:

* ``ByKey``   input grouping ``[0]``     (group-by on the key), 2 instances requested;
* ``ToAll``   input grouping ``"all"``   (every instance gets every item), 2 instances;
* ``ToGlobal`` input grouping ``"global"`` (one instance gets everything), 3 requested;
* ``ToAny``   default grouping (any one instance per item), 2 instances.

In ``postprocess`` every instance writes ``(tag, ...)`` where ``tag`` identifies
the instance (process id and object id), so tests can see what reached where.
"""

import os

from dispel4py.base import ProducerPE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph


def tag(pe):
    return f"{os.getpid()}:{id(pe)}"


class Keys(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return (self.n % 7, self.n)


class Recorder(GenericPE):
    def __init__(self, grouping, numprocesses):
        GenericPE.__init__(self)
        self._add_input("input", grouping=grouping)
        self._add_output("output")
        self.numprocesses = numprocesses

    def preprocess(self):
        self.items = []

    def process(self, inputs):
        self.items.append(inputs["input"])


class ByKey(Recorder):
    def __init__(self):
        Recorder.__init__(self, [0], 2)

    def postprocess(self):
        for key in sorted({k for k, _ in self.items}):
            self.write("output", (tag(self), key, sum(1 for k, _ in self.items if k == key)))


class Summary(Recorder):
    def postprocess(self):
        self.write("output", (tag(self), len(self.items), sum(n for _, n in self.items)))


class ToAll(Summary):
    def __init__(self):
        Summary.__init__(self, "all", 2)


class ToGlobal(Summary):
    def __init__(self):
        Summary.__init__(self, "global", 3)


class ToAny(Summary):
    def __init__(self):
        Summary.__init__(self, None, 2)


def build():
    keys = Keys()
    g = WorkflowGraph()
    for pe in (ByKey(), ToAll(), ToGlobal(), ToAny()):
        g.connect(keys, "output", pe, "input")
    return g


graph = build()
