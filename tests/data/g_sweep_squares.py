"""Test graph of the sweep tests: ``Numbers`` 1..N (``-i N``) -> ``Square``, whose unconnected output
``Square.output`` holds ``[n, n * n, $SWEEP_TAG]`` for each n.

Environment variables (a sweep line's ``env``, or the job's ``--setup``) steer it:

* ``SWEEP_TAG``: written beside each square (so a task's env shows in its outputs);
* ``SWEEP_FAIL_UNLESS``: a path; while no file is there, ``Square`` raises at n = 2 (a task that fails
  on its first attempt and passes once the test has made the file);
* ``SWEEP_MIN_SECONDS``: ``Square`` sleeps that long before its first item (a lower bound on a
  task's duration, so that tasks run at once would overlap);
* ``SWEEP_GATE``: a path; ``Square`` holds each item until a file is there (a task that runs until
  the test lets it end, or cancels it), at most 300 s.
"""

import os
import time

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Numbers(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class Square(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def preprocess(self):
        time.sleep(float(os.environ.get("SWEEP_MIN_SECONDS", "0")))

    def _process(self, n):
        marker = os.environ.get("SWEEP_FAIL_UNLESS")
        if marker and n == 2 and not os.path.exists(marker):
            raise RuntimeError(f"failing on purpose: {marker} is absent")
        gate = os.environ.get("SWEEP_GATE")
        if gate:
            deadline = time.monotonic() + 300
            while not os.path.exists(gate):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{gate} was never opened")
                time.sleep(0.05)
        return [n, n * n, os.environ.get("SWEEP_TAG", "")]


graph = WorkflowGraph()
graph.connect(Numbers(), "output", Square(), "input")
