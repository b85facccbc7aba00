"""The dispel4py 2.9 workflow API: PEs, composite PEs and the workflow graph.

Graph files written for dispel4py import ``dispel4py.core``, ``dispel4py.base``
and ``dispel4py.workflow_graph``; when the real package is absent, the loader
resolves those names to this module (see :mod:`d4p_hpc.compat`). The data
model is dispel4py's on purpose: ``inputconnections``/``outputconnections``
dicts, a ``WorkflowGraph.graph`` whose edges carry ``DIRECTION`` and
``ALL_CONNECTIONS``, so the mappings read our graphs and real dispel4py graphs
the same way. networkx is not needed: :class:`~d4p_hpc.workflow.netgraph.NetGraph` implements the
small part of its undirected ``Graph`` that dispel4py code uses.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from d4p_hpc.errors import GraphError
from d4p_hpc.workflow.netgraph import NetGraph

NAME = "name"
TYPE = "type"
DESCRIPTION = "descr"
META = "meta"
GROUPING = "grouping"
WRITER = "writer"


class GenericPE:
    """Base class of processing elements (PEs).

    Subclasses declare inputs and outputs in ``__init__`` with
    :meth:`_add_input` / :meth:`_add_output` and override :meth:`process`
    (or ``_process``), which returns a dict ``{output: data}`` or calls
    :meth:`write`. ``numprocesses`` asks for that many parallel instances.
    """

    def __init__(self, numprocesses: int = 1) -> None:
        self.inputconnections: dict[str, dict] = {}
        self.outputconnections: dict[str, dict] = {}
        self.wrapper = "simple"
        self.pickleIgnore: list[str] = []
        self.pickleIgnore = list(vars(self).keys())
        self.numprocesses = numprocesses
        self.name = self.__class__.__name__
        self.id = self.name + str(uuid.uuid4())

    def _add_input(self, name: str, grouping: Any = None, tuple_type: list[str] | None = None) -> None:
        """Declare input ``name``; ``grouping`` is a list of indices, ``"all"`` or ``"global"``."""
        self.inputconnections[name] = {NAME: name}
        if grouping:
            self.inputconnections[name][GROUPING] = grouping
        if tuple_type:
            self.inputconnections[name][TYPE] = tuple_type

    def _add_output(self, name: str, tuple_type: list[str] | None = None) -> None:
        """Declare output ``name``."""
        self.outputconnections[name] = {NAME: name}
        if tuple_type:
            self.outputconnections[name][TYPE] = tuple_type

    def set_input_types(self, types: dict[str, list[str]]) -> None:
        """Receive the types of the connected inputs (override to check or derive types)."""

    def get_output_types(self) -> dict[str, list[str]]:
        """Return the declared type of every output."""
        try:
            return {name: out[TYPE] for name, out in self.outputconnections.items()}
        except KeyError as missing:
            raise KeyError(f"{self.id}: no output type defined for {missing}") from None

    def _preprocess(self) -> None:
        """Override for initialisation before the first item."""

    def preprocess(self) -> None:
        """Called once per instance before processing starts."""
        self._preprocess()

    def _process(self, data: Any) -> Any:
        """Override with the processing of one set of inputs."""

    def process(self, inputs: dict[str, Any]) -> Any:
        """Process one set of inputs; return ``{output: data}`` or None."""
        return self._process(inputs)

    def _postprocess(self) -> None:
        """Override for work after the last item (e.g. emit state)."""

    def postprocess(self) -> None:
        """Called once per instance after every upstream instance has finished."""
        self._postprocess()

    def write(self, name: str, data: Any, **kwargs: Any) -> None:
        """Write ``data`` to output ``name``."""
        self._write(name, data)

    def _write(self, name: str, data: Any, **kwargs: Any) -> None:
        try:
            writer = self.outputconnections[name][WRITER]
        except KeyError:
            raise KeyError(f"Can't write data: unknown output connection {name} for PE {type(self).__name__}") from None
        writer.write(data)

    def log(self, msg: str) -> None:
        """Print ``msg`` tagged with the PE id (mappings redirect it to the process log)."""
        print(f"{self.id}: {msg}", flush=False)


class BasePE(GenericPE):
    """A PE with named inputs and outputs given to the constructor."""

    INPUT_NAME = "input"
    OUTPUT_NAME = "output"

    def __init__(self, inputs: list[str] | None = None, outputs: list[str] | None = None,
                 num_inputs: int = 0, num_outputs: int = 0) -> None:
        GenericPE.__init__(self)
        names_in = [f"{BasePE.INPUT_NAME}{i}" for i in range(num_inputs)] + list(inputs or [])
        names_out = [f"{BasePE.OUTPUT_NAME}{i}" for i in range(num_outputs)] + list(outputs or [])
        for name in names_in:
            self.inputconnections[name] = {NAME: name}
        for name in names_out:
            self.outputconnections[name] = {NAME: name}


class IterativePE(GenericPE):
    """One input, one output: ``_process(data)`` returns one output item or None."""

    INPUT_NAME = "input"
    OUTPUT_NAME = "output"

    def __init__(self) -> None:
        GenericPE.__init__(self)
        self._add_input(IterativePE.INPUT_NAME)
        self._add_output(IterativePE.OUTPUT_NAME)

    def process(self, inputs: dict[str, Any]) -> Any:
        result = self._process(inputs[IterativePE.INPUT_NAME])
        if result is not None:
            return {self.OUTPUT_NAME: result}
        return None


class ProducerPE(GenericPE):
    """No input, one output: ``_process(inputs)`` returns one output item or None."""

    OUTPUT_NAME = "output"

    def __init__(self) -> None:
        GenericPE.__init__(self)
        self._add_output(ProducerPE.OUTPUT_NAME)

    def process(self, inputs: dict[str, Any]) -> Any:
        result = self._process(inputs)
        if result is not None:
            return {self.OUTPUT_NAME: result}
        return None


class ConsumerPE(GenericPE):
    """One input, no output: ``_process(data)`` consumes one item."""

    INPUT_NAME = "input"

    def __init__(self) -> None:
        GenericPE.__init__(self)
        self._add_input(ConsumerPE.INPUT_NAME)

    def process(self, inputs: dict[str, Any]) -> None:
        self._process(inputs[ConsumerPE.INPUT_NAME])


class SimpleFunctionPE(IterativePE):
    """An IterativePE that applies ``compute_fn(data, **params)``."""

    def __init__(self, compute_fn: Callable[..., Any] | None = None, params: dict | None = None) -> None:
        IterativePE.__init__(self)
        if compute_fn:
            self.name = f"PE_{compute_fn.__name__}"
        self.compute_fn = compute_fn
        self.params = params or {}

    def _process(self, data: Any) -> Any:
        if self.compute_fn:
            return self.compute_fn(data, **self.params)
        return None


class WorkflowNode:
    """A node of the graph: wraps a PE or a composite (sub-graph)."""

    WORKFLOW_NODE_PE = 0
    WORKFLOW_NODE_FN = 1
    WORKFLOW_NODE_CP = 2
    node_counter = 0

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        if isinstance(obj, GenericPE):
            # dispel4py numbers PEs globally in creation order; every MPI rank
            # loads the same file, so ids agree across ranks.
            obj.id = obj.name + str(WorkflowNode.node_counter)
            WorkflowNode.node_counter += 1
            self.nodeType = self.WORKFLOW_NODE_PE
            self.inputs: list[dict] = [{} for _ in obj.inputconnections]
            self.outputs: list[dict] = [{} for _ in obj.outputconnections]
        elif isinstance(obj, WorkflowGraph):
            self.nodeType = self.WORKFLOW_NODE_CP
            self.inputs = [{} for _ in getattr(obj, "inputmappings", {})]
            self.outputs = [{} for _ in getattr(obj, "outputmappings", {})]
        else:
            raise TypeError(f"Unknown type of object passed as a workflow node: {type(obj)}")

    def get_contained_object(self) -> Any:
        """Return the wrapped PE or composite."""
        return self.obj


class WorkflowGraph:
    """A dataflow graph of PEs connected output → input."""

    # only a graph used as a composite PE has them (CompositePE, create_iterative_chain):
    # declared, not set, so that ``hasattr`` still tells a composite from a whole graph
    inputmappings: dict[str, tuple]
    outputmappings: dict[str, tuple]

    def __init__(self) -> None:
        self.graph = NetGraph()
        self.objToNode: dict[Any, WorkflowNode] = {}

    def add(self, n: Any) -> WorkflowNode:
        """Add PE or composite ``n`` and return its node."""
        nd = WorkflowNode(n)
        self.graph.add_node(nd)
        self.objToNode[n] = nd
        return nd

    def connect(self, from_node: Any, from_connection: str, to_node: Any, to_connection: str) -> None:
        """Connect output ``from_connection`` of ``from_node`` to input ``to_connection`` of ``to_node``."""
        if from_node not in self.objToNode:
            self.add(from_node)
        if to_node not in self.objToNode:
            self.add(to_node)
        u, v = self.objToNode[from_node], self.objToNode[to_node]
        if self.graph.has_edge(u, v):
            if self.graph[u][v]["DIRECTION"][0] is not from_node:
                # the undirected edge would record B->A as a second A->B connection
                raise GraphError(f"connecting {getattr(from_node, 'name', from_node)} back to "
                                 f"{getattr(to_node, 'name', to_node)} makes a cycle; d4p-hpc runs acyclic graphs")
            self.graph[u][v]["ALL_CONNECTIONS"].append((from_connection, to_connection))
        else:
            self.graph.add_edge(u, v, FROM_CONNECTION=from_connection, TO_CONNECTION=to_connection,
                                DIRECTION=(from_node, to_node),
                                ALL_CONNECTIONS=[(from_connection, to_connection)])

    def get_contained_objects(self) -> list:
        """Return the PEs of the graph sorted by id."""
        return sorted((n.get_contained_object() for n in self.graph.nodes()), key=lambda pe: pe.id)

    def propagate_types(self) -> None:
        """Give every PE the output types of the PEs feeding it."""
        visited: set = set()
        for node in self.graph.nodes():
            if node not in visited:
                self._assign_types(node, visited)

    def _assign_types(self, node: WorkflowNode, visited: set) -> None:
        pe = node.get_contained_object()
        input_types = {}
        for edge in self.graph[node].values():
            if pe == edge["DIRECTION"][1]:
                source = edge["DIRECTION"][0]
                if self.objToNode[source] not in visited:
                    self._assign_types(self.objToNode[source], visited)
                input_types[edge["TO_CONNECTION"]] = source.get_output_types()[edge["FROM_CONNECTION"]]
        pe.set_input_types(input_types)
        visited.add(node)

    def flatten(self) -> None:
        """Replace every composite PE by its sub-graph, rewiring its mapped inputs and outputs."""
        while True:
            composites = [n for n in self.graph.nodes() if n.nodeType == WorkflowNode.WORKFLOW_NODE_CP]
            if not composites:
                return
            for node in composites:
                self._inline(node)
            self.graph.remove_nodes_from(composites)

    def _inline(self, node: WorkflowNode) -> None:
        sub = node.get_contained_object()
        self.graph.add_nodes_from(sub.graph.nodes())
        self.graph.add_edges_from(sub.graph.edges(data=True))
        self.objToNode.update(sub.objToNode)
        edges = list(self.graph[node].values())
        for edge in edges:
            for from_conn, to_conn in edge["ALL_CONNECTIONS"]:
                src, dst = edge["DIRECTION"]
                if dst is sub:
                    inner_pe, inner_input = sub.inputmappings[to_conn]
                    self.connect(src, from_conn, inner_pe, inner_input)
                elif src is sub:
                    inner_pe, inner_output = sub.outputmappings[from_conn]
                    self.connect(inner_pe, inner_output, dst, to_conn)


def create_iterative_chain(functions: list, function_pe_class: type = SimpleFunctionPE,
                           name_prefix: str = "PE_", name_suffix: str = "") -> WorkflowGraph:
    """Return a composite PE chaining ``functions`` (each ``fn`` or ``(fn, params)``) as IterativePEs."""
    prev = first = None
    graph = WorkflowGraph()
    for fn_desc in functions:
        fn, params = (fn_desc[0], fn_desc[1]) if isinstance(fn_desc, (tuple, list)) else (fn_desc, {})
        pe = function_pe_class()
        pe.compute_fn = fn
        pe.params = params
        pe.name = name_prefix + fn.__name__ + name_suffix
        if prev is not None:
            graph.connect(prev, IterativePE.OUTPUT_NAME, pe, IterativePE.INPUT_NAME)
        else:
            first = pe
            graph.add(pe)
        prev = pe
    graph.inputmappings = {"input": (first, IterativePE.INPUT_NAME)}
    graph.outputmappings = {"output": (prev, IterativePE.OUTPUT_NAME)}
    return graph


class CompositePE(WorkflowGraph):
    """A sub-graph used as one PE; ``create_graph(self, **params)`` populates it."""

    def __init__(self, create_graph: Callable[..., None] | None = None, params: dict | None = None) -> None:
        WorkflowGraph.__init__(self)
        self.inputmappings = {}
        self.outputmappings = {}
        if create_graph:
            create_graph(self, **(params or {}))

    def _map_input(self, input_name: str, internal_pe: Any, internal_input: str) -> None:
        """Expose input ``internal_input`` of ``internal_pe`` as this composite's ``input_name``."""
        self.inputmappings[input_name] = (internal_pe, internal_input)

    def _map_output(self, output_name: str, internal_pe: Any, internal_output: str) -> None:
        """Expose output ``internal_output`` of ``internal_pe`` as this composite's ``output_name``."""
        self.outputmappings[output_name] = (internal_pe, internal_output)
