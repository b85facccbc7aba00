"""Load-balancing benchmark graph: a stateless producer whose calls sleep a skewed random time.

Based on the public dispel4py workflow built to show the dynamic mappings' load balancing,
``others/skew_workflow.py`` of https://github.com/StreamingFlow/d4py_workflows (the same
file as ``LaminarExamples/skew_workflow.py``; commit 90e1fe7), which its README runs with
``-i 100``: ``NumberProducer -> IsPrime -> PrintPrime``, where each call of the stateless
``NumberProducer`` sleeps ``numpy.random.beta(2, 5) / 2`` seconds (between 0 and 0.5 s,
skewed towards short sleeps: 0.143 s on average) and writes ``random.randint(1, 1000)``.

Kept from it: the producer and its sleep, drawn from the same distribution with the standard
library (``random.betavariate``, so that neither runtime needs numpy). Changed, so that the
benchmark can check every run's totals against ``simple``'s: the producer writes the constant
``VALUE``, not a random number, and the prime filter and printer are replaced by the stateless
PEs of ``light.py``. Runs unchanged under the reference ``dispel4py`` and under d4p-hpc::

    dispel4py dyn_multi benchmarks/graphs/skewed.py -a graph -i 100 -n 4
    d4p-hpc run benchmarks/graphs/skewed.py --attr graph -m dyn_redis -n 4 -i 100

Graphs
------
graph
    ``Skewed -> Light -> Tag -> Report``: stateless but for ``Report``'s totals, so every
    mapping runs it (there is no stateful variant). The run time is almost all the producer's
    sleeps, about 14 s for 100 calls when the calls run one after another, as they do
    wherever the producer is one process; a mapping that spreads the producer's calls over its
    workers can overlap them.

``SKEWED_INSTANCES=K`` makes the producer ask for K instances (``numprocesses``), over which
``multi`` and ``mpi`` spread its calls (d4p-hpc only: the reference gives a root one process)::

    SKEWED_INSTANCES=3 d4p-hpc run benchmarks/graphs/skewed.py --attr graph -m multi -n 5 -i 100
"""
import os
import random
import time

# ProducerPE, WorkflowGraph, Light, Tag and Report come from light.py, whose source is run in this
# module's namespace as in heavy.py: each runtime loads a graph file by path, also in its
# workers, and would not find a sibling module by name
_doc = __doc__
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "light.py")) as _src:
    exec(compile(_src.read(), _src.name, "exec"))
__doc__ = _doc  # the source of light.py set its own

#: what every call writes: a constant, so that the totals do not depend on the random draws
VALUE = 997


def skewed_seconds():
    """A sleep between 0 and 0.5 s, skewed towards short ones: Beta(2, 5) / 2, as in skew_workflow.py."""
    return random.betavariate(2, 5) / 2


class Skewed(ProducerPE):  # noqa: F821 (defined by light.py, above)
    """Sleep a skewed random time, then write ``VALUE``: the PE keeps no state between calls."""

    def _process(self, inputs):
        time.sleep(skewed_seconds())
        return VALUE


def skewed_pipeline():
    """``Skewed -> Light -> Tag -> Report``: light.py's stateless pipeline after the skewed producer."""
    producer, light, tag, report = Skewed(), Light(), Tag(), Report()  # noqa: F821
    producer.numprocesses = int(os.environ.get("SKEWED_INSTANCES") or 1)
    workflow = WorkflowGraph()  # noqa: F821
    workflow.connect(producer, "output", light, "input")
    workflow.connect(light, "output", tag, "input")
    workflow.connect(tag, "output", report, "input")
    return workflow


graph = skewed_pipeline()
# light.py's own graphs, built by its source above, are not this file's
del graph_stateless  # noqa: F821
