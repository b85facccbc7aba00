"""``dispel4py.base`` names, served by :mod:`d4p_hpc.workflow`."""

from d4p_hpc.workflow import (
    NAME,
    BasePE,
    CompositePE,
    ConsumerPE,
    GenericPE,
    IterativePE,
    ProducerPE,
    SimpleFunctionPE,
    WorkflowGraph,
    create_iterative_chain,
)

__all__ = ["NAME", "BasePE", "CompositePE", "ConsumerPE", "GenericPE", "IterativePE", "ProducerPE",
           "SimpleFunctionPE", "WorkflowGraph", "create_iterative_chain"]
