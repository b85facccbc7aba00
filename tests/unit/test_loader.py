"""Graph loading and inputs (d4p_hpc.workflow.loader): which graph a file or module gives, how ``-i``/``-d``
are parsed, and how inputs are fed to the plan's roots. In process: no run is started here."""

from __future__ import annotations

import pytest

from helpers.runs import DATA, two_roots

from d4p_hpc.errors import GraphError, InputsError
from d4p_hpc.mappings.runtime.plan import build_plan
from d4p_hpc.workflow import WorkflowGraph


def test_loader_picks_the_attr_and_explains_none_or_several():
    from d4p_hpc.workflow.loader import load_graph

    graph = load_graph(str(DATA / "g_api.py"), "functions_graph")
    assert isinstance(graph, WorkflowGraph) or hasattr(graph, "objToNode")
    with pytest.raises(GraphError, match="several graphs") as several:
        load_graph(str(DATA / "g_api.py"))
    assert "functions_graph" in str(several.value) and "--attr" in str(several.value)
    with pytest.raises(GraphError, match="no WorkflowGraph"):
        load_graph(str(DATA / "g_nograph.py"))  # a composite PE at module level is not a graph
    with pytest.raises(GraphError, match="nope"):
        load_graph(str(DATA / "g_api.py"), "nope")
    with pytest.raises(GraphError, match="not a WorkflowGraph"):
        load_graph(str(DATA / "g_api.py"), "square")
    with pytest.raises(GraphError, match="does not exist"):
        load_graph(str(DATA / "missing.py"))
    with pytest.raises(GraphError, match="no graph file or module"):
        load_graph("no_such_module_d4p")


def test_loader_inputs():
    from d4p_hpc.workflow.loader import parse_inputs, resolve_feeds

    assert parse_inputs(None, None, None) == 1 and parse_inputs(7, None, None) == 7
    assert parse_inputs(None, '{"A": [{"input": 1}], "B": 3}', None) == {"A": [{"input": 1}], "B": 3}
    for bad in ("[1, 2]", '{"A": "x"}', '{"A": -1}', '{"A": true}', "{nope"):
        with pytest.raises(InputsError):
            parse_inputs(None, bad, None)
    with pytest.raises(InputsError):
        parse_inputs(3, "{}", None)
    plan = build_plan(two_roots(), 4)
    feeds = resolve_feeds(plan, {"R1": [{"a": 1}], "R2": 2})
    assert feeds == {plan.by_key("R1").index: [{"a": 1}], plan.by_key("R2").index: 2}
    assert resolve_feeds(plan, 5) == {plan.by_key("R1").index: 5, plan.by_key("R2").index: 5}
    with pytest.raises(InputsError, match="not in the graph"):
        resolve_feeds(plan, {"Nope": 1})
    with pytest.raises(InputsError, match="root"):
        resolve_feeds(plan, {"M": 1})
