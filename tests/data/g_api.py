"""Small graphs exercising the dispel4py workflow API; several graphs, so pick one with --attr.

Written as a dispel4py graph file (imports ``dispel4py.*``).
"""

from dispel4py.base import CompositePE, ConsumerPE, IterativePE, ProducerPE, SimpleFunctionPE, create_iterative_chain
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph


class Numbers(ProducerPE):
    """1, 2, 3, ... one per call."""

    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0

    def _process(self, inputs):
        self.n += 1
        return self.n


class WriteAndReturn(GenericPE):
    """Returns ``{"returned": x}`` and writes ``10 x`` and ``-x`` to ``written``."""

    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_output("returned")
        self._add_output("written")

    def process(self, inputs):
        x = inputs["input"]
        self.write("written", 10 * x)
        self.write("written", -x)
        return {"returned": x}


class OddOnly(IterativePE):
    """Returns odd numbers, None (nothing) for even ones."""

    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, data):
        return data if data % 2 else None


class Printer(ConsumerPE):
    """Prints and logs what it consumes (a ConsumerPE has no output)."""

    def __init__(self):
        ConsumerPE.__init__(self)

    def _process(self, data):
        print(f"consumed {data}")
        self.log(f"logged {data}")


class Tag(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, data):
        return ("tagged", data)


class Identity(GenericPE):
    """Records its name, numprocesses and whether it has an id, on its only output."""

    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_output("output")

    def process(self, inputs):
        return {"output": (inputs["input"], self.name, isinstance(self.id, str) and bool(self.id))}


def square(x):
    return x * x


def double(x):
    return 2 * x


def add(x, n):
    return x + n


def negate(x):
    return -x


def write_return():
    numbers = Numbers()
    both = WriteAndReturn()
    odd = OddOnly()
    ident = Identity()
    g = WorkflowGraph()
    g.connect(numbers, "output", both, "input")
    g.connect(numbers, "output", odd, "input")
    g.connect(numbers, "output", ident, "input")
    return g


def consumer():
    g = WorkflowGraph()
    g.connect(Numbers(), "output", Printer(), "input")
    return g


def functions():
    """Numbers -> SimpleFunctionPE(square) -> chain(double, add n=1) -> Tag: 2 x^2 + 1."""
    numbers = Numbers()
    sq = SimpleFunctionPE(square)
    chain = create_iterative_chain([double, (add, {"n": 1})])
    tag = Tag()
    g = WorkflowGraph()
    g.connect(numbers, "output", sq, "input")
    g.connect(sq, "output", chain, "input")
    g.connect(chain, "output", tag, "input")
    return g


def _add_then_double(composite, offset):
    first = SimpleFunctionPE(add, {"n": offset})
    second = SimpleFunctionPE(double)
    composite.connect(first, "output", second, "input")
    composite._map_input("input", first, "input")
    composite._map_output("output", second, "output")


def _negate_then_chain(composite):
    """A composite whose first node is itself a composite (a chain): nested flattening."""
    inner = create_iterative_chain([negate])
    last = SimpleFunctionPE(add, {"n": 5})
    composite.connect(inner, "output", last, "input")
    composite._map_input("input", inner, "input")
    composite._map_output("output", last, "output")


def composites():
    """Numbers -> A (add 1, double) -> B (add 10, double) -> C (chain(negate), add 5) -> Tag.

    A feeds B directly (composite to composite); C contains a composite.
    Result for x: -(((x + 1) * 2 + 10) * 2) + 5.
    """
    numbers = Numbers()
    a = CompositePE(_add_then_double, {"offset": 1})
    b = CompositePE(_add_then_double, {"offset": 10})
    c = CompositePE(_negate_then_chain)
    tag = Tag()
    g = WorkflowGraph()
    g.connect(numbers, "output", a, "input")
    g.connect(a, "output", b, "input")
    g.connect(b, "output", c, "input")
    g.connect(c, "output", tag, "input")
    return g


write_return_graph = write_return()
consumer_graph = consumer()
functions_graph = functions()
composites_graph = composites()
