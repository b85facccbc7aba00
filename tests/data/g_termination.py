"""A slow PE upstream of a stateful one: the stateful PE must wait for it, however long it takes.

``Source`` emits 1..N. ``Slow`` (2 instances requested) sleeps 0.5 s on each of
the items 1..3 (longer than any plausible idle timeout) and passes
``(n % 3, n)`` on. ``Stateful`` (group-by on ``n % 3``, 2 instances requested)
sums what it gets and writes its totals in ``postprocess``.

Every instance of ``Slow`` and ``Stateful`` counts its ``preprocess``,
``process`` and ``postprocess`` calls and writes them, with the time its
``postprocess`` started or ended, to the unconnected output ``calls`` at the
end of each ``postprocess`` call.
"""

import os
import time

from dispel4py.base import ProducerPE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph

SLOW_ITEMS = 3
SLEEP = 0.5


class Source(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class Counted(GenericPE):
    def __init__(self, grouping=None):
        GenericPE.__init__(self)
        self._add_input("input", grouping=grouping)
        self._add_output("output")
        self._add_output("calls")
        self.numprocesses = 2
        self.pre = self.proc = self.post = 0

    def preprocess(self):
        self.pre += 1

    def report(self, started):
        self.post += 1
        self.write("calls", {"pe": self.name, "tag": f"{os.getpid()}:{id(self)}", "pre": self.pre,
                             "process": self.proc, "post": self.post, "post_started": started,
                             "post_ended": time.time()})


class Slow(Counted):
    def process(self, inputs):
        self.proc += 1
        n = inputs["input"]
        if n <= SLOW_ITEMS:
            time.sleep(SLEEP)
        return {"output": (n % 3, n)}

    def postprocess(self):
        self.report(time.time())


class Stateful(Counted):
    def __init__(self):
        Counted.__init__(self, grouping=[0])
        self.totals = {}

    def process(self, inputs):
        self.proc += 1
        key, n = inputs["input"]
        self.totals[key] = self.totals.get(key, 0) + n

    def postprocess(self):
        started = time.time()
        for key in sorted(self.totals):
            self.write("output", (key, self.totals[key]))
        self.report(started)


def build():
    source, slow, stateful = Source(), Slow(), Stateful()
    g = WorkflowGraph()
    g.connect(source, "output", slow, "input")
    g.connect(slow, "output", stateful, "input")
    return g


graph = build()
