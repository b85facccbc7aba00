"""Reports which workflow API its PE objects come from (real dispel4py or d4p-hpc's stand-in).

Written for dispel4py, like any user graph: it imports ``dispel4py.*`` only.
Its single result item says where the classes of the running PE object and
of the graph object were defined.
"""

import dispel4py
from dispel4py.base import IterativePE, ProducerPE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph


class Report(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)

    def _process(self, inputs):
        mro = [c.__module__ for c in type(self).__mro__ if c.__module__ not in ("builtins", __name__)]
        return {
            "pe_mro_modules": mro,
            "is_generic_pe": isinstance(self, GenericPE),
            "GenericPE": GenericPE.__module__,
            "ProducerPE": ProducerPE.__module__,
            "WorkflowGraph": WorkflowGraph.__module__,
            "graph_object": type(graph).__module__,
            "dispel4py_file": getattr(dispel4py, "__file__", None) or list(dispel4py.__path__)[0],
        }


class Echo(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, data):
        return data


def build():
    g = WorkflowGraph()
    g.connect(Report(), "output", Echo(), "input")
    return g


graph = build()
