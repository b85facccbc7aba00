"""Stateful benchmark graph for checkpoints: numbers -> slow-ish stateless stage -> grouped counter.

Used by ``benchmarks/checkpoint_cost.py`` to see how the time and size of a checkpoint grow with
the state it saves and with the items in flight::

    STATEFUL_KEYS=10000 d4p-hpc run benchmarks/graphs/stateful.py -a graph -m multi -n 4 -i 200000 \\
        --checkpoint-every 2 --results /tmp/st

Graph ``graph``: ``Numbers -> Work -> Count``.

* ``Numbers`` (one instance) emits 1, 2, 3, ... one number per iteration (``-i N``).
* ``Work`` (stateless, 2 instances) sleeps ``STATEFUL_SLEEP`` seconds (default 0.0002) per item and
  turns number ``k`` into ``(key, k)``, the key being one of ``STATEFUL_KEYS`` (default 1000)
  strings ``k % STATEFUL_KEYS``. The first ``STATEFUL_KEYS`` items skip the sleep, so the state is
  full (every key seen) within a second or two, before the first checkpoint.
* ``Count`` (``grouping=[0]``, 2 instances) keeps ``key -> [count, sum]`` for the keys it gets: its
  state, saved by every checkpoint, grows with the number of distinct keys. In ``postprocess`` it
  prints ``STATEFUL-RESULT {"keys": K, "count": C, "sum": S}``; over all instances, a correct run
  has K = min(STATEFUL_KEYS, N), C = N and S = N (N + 1) / 2.
"""
import json
import os
import time

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph

KEYS = int(os.environ.get("STATEFUL_KEYS", "1000"))
SLEEP = float(os.environ.get("STATEFUL_SLEEP", "0.0002"))


class Numbers(ProducerPE):
    """Emit 1, 2, 3, ... one number per iteration."""

    def __init__(self):
        ProducerPE.__init__(self)
        self.numprocesses = 1
        self.counter = 0

    def _process(self, inputs):
        self.counter += 1
        return self.counter


class Work(IterativePE):
    """Stateless and slow-ish: a short sleep per item (after the first ``KEYS``), then ``(key, k)``."""

    def __init__(self):
        IterativePE.__init__(self)
        self.numprocesses = 2

    def _process(self, data):
        if data > KEYS and SLEEP > 0:
            time.sleep(SLEEP)
        return f"key-{data % KEYS:08d}", data


class Count(GenericPE):
    """Grouped by key: count and sum per key; print the totals at the end."""

    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input", grouping=[0])
        self.numprocesses = 2
        self.counts = {}

    def process(self, inputs):
        key, value = inputs["input"]
        entry = self.counts.get(key)
        if entry is None:
            self.counts[key] = [1, value]
        else:
            entry[0] += 1
            entry[1] += value

    def postprocess(self):
        result = {"keys": len(self.counts), "count": sum(c for c, _ in self.counts.values()),
                  "sum": sum(s for _, s in self.counts.values())}
        print("STATEFUL-RESULT " + json.dumps(result), flush=True)


def _build():
    workflow = WorkflowGraph()
    numbers, work, count = Numbers(), Work(), Count()
    workflow.connect(numbers, "output", work, "input")
    workflow.connect(work, "output", count, "input")
    return workflow


graph = _build()
