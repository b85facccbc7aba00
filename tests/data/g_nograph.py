"""A module with PEs and a composite PE, but no workflow graph: loading it must fail cleanly."""

from dispel4py.base import CompositePE, IterativePE


class Inc(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, data):
        return data + 1


def _make(composite):
    inc = Inc()
    composite.add(inc)
    composite._map_input("input", inc, "input")
    composite._map_output("output", inc, "output")


only_a_composite = CompositePE(_make)
