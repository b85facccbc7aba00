"""Light benchmark graph: numbers -> light PE -> stateful group_by tally -> report.

Written against the dispel4py 2.9 API so that it runs unchanged under the reference
``dispel4py`` (PyPI ``stream-d4py``) and under d4p-hpc::

    dispel4py simple benchmarks/graphs/light.py -a graph -i 100000
    d4p-hpc run benchmarks/graphs/light.py --attr graph -m multi -n 4 -i 100000

Every PE does almost no work, so the run measures the runtime's own overhead per item.

Graphs
------
graph
    ``Numbers -> Light -> Tally -> Report``; ``Tally`` is grouped by key and sums per key,
    so it only gives exact totals if every key reaches exactly one instance.
graph_stateless
    ``Numbers -> Light -> Tag -> Report``; ``Tag`` is stateless, for the dynamic mappings
    that refuse stateful PEs.
graph_fanout
    ``Numbers -> Fan -> Light -> Tag -> Report``: each number becomes ``$LIGHT_FAN`` (100).
graph_fanout_grouped
    ``Numbers -> Fan -> Light -> Tally -> Report``: the same fan-out into the grouped ``Tally``.

``Report`` prints one line ``BENCH-RESULT {"records": R, "count": C, "sum": S}`` per
instance in ``postprocess``; the benchmark adds these lines up and compares them with the
``simple`` mapping's.
"""
import json
import os
import time

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph

KEYS = 100


class Numbers(ProducerPE):
    """Emit 1, 2, 3, ... one number per iteration (``-i N``)."""

    def __init__(self):
        ProducerPE.__init__(self)
        # one instance, so that the numbers, and so the expected sums, do not depend on
        # how a mapping splits the iterations
        self.numprocesses = 1
        self.counter = 0

    def _process(self, inputs):
        self.counter += 1
        return self.counter


class Light(IterativePE):
    """Turn a number into a ``(key, value)`` pair: next to no work, or ``$LIGHT_WORK_MS``
    milliseconds of sleep (a PE of known cost, for the broker's cost at that cost per item)."""

    def __init__(self):
        IterativePE.__init__(self)
        self.work = float(os.environ.get("LIGHT_WORK_MS") or 0) / 1000

    def _process(self, data):
        if self.work:
            time.sleep(self.work)
        return data % KEYS, data


class Fan(IterativePE):
    """Write ``$LIGHT_FAN`` (default 100) numbers for each one: a fan-out, whose items the workers
    queue for each other, as a run of many quick tasks does, rather than the driver."""

    def __init__(self):
        IterativePE.__init__(self)
        self.fan = int(os.environ.get("LIGHT_FAN") or 100)

    def _process(self, data):
        for k in range(self.fan):
            self.write("output", data * self.fan + k)


class Tally(GenericPE):
    """Count and sum the values per key; emit ``(key, count, sum)`` at the end."""

    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input", grouping=[0])
        self._add_output("output")
        self.totals = {}

    def process(self, inputs):
        key, value = inputs["input"]
        count, total = self.totals.get(key, (0, 0))
        self.totals[key] = (count + 1, total + value)

    def postprocess(self):
        for key, (count, total) in sorted(self.totals.items()):
            self.write("output", (key, count, total))


class Tag(IterativePE):
    """Stateless stand-in for ``Tally``: every pair becomes a record of count 1."""

    def _process(self, data):
        key, value = data
        return key, 1, value


class Report(GenericPE):
    """Add up the ``(key, count, sum)`` records and print the totals at the end."""

    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self.records = self.count = self.sum = 0

    def process(self, inputs):
        _, count, total = inputs["input"]
        self.records += 1
        self.count += count
        self.sum += total

    def postprocess(self):
        result = {"records": self.records, "count": self.count, "sum": self.sum}
        print("BENCH-RESULT " + json.dumps(result), flush=True)


def pipeline(*middle):
    """Connect ``Numbers -> middle... -> Report`` into a new graph."""
    pes = [Numbers(), *middle, Report()]
    workflow = WorkflowGraph()
    for upstream, downstream in zip(pes, pes[1:], strict=False):
        workflow.connect(upstream, "output", downstream, "input")
    return workflow


graph = pipeline(Light(), Tally())
graph_stateless = pipeline(Light(), Tag())
#: ``Numbers -> Fan -> Light -> Tag -> Report``: ``-i N`` gives N x $LIGHT_FAN items to Light
graph_fanout = pipeline(Fan(), Light(), Tag())
#: ``Numbers -> Fan -> Light -> Tally -> Report``: the same, into the grouped ``Tally`` (hybrid_redis)
graph_fanout_grouped = pipeline(Fan(), Light(), Tally())
