"""``dispel4py.workflow_graph`` names, served by :mod:`d4p_hpc.workflow`."""

from d4p_hpc.workflow import GenericPE, WorkflowGraph, WorkflowNode

__all__ = ["GenericPE", "WorkflowGraph", "WorkflowNode"]
