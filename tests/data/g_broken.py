"""A graph file that raises while it is imported."""

from dispel4py.workflow_graph import WorkflowGraph

graph = WorkflowGraph()
raise RuntimeError("this graph file is broken on purpose")
