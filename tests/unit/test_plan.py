"""The plan of a run (d4p_hpc.mappings.runtime.plan.build_plan): how many instances each PE gets, on
which process each runs, and the graphs it refuses. Pure functions: no run is started here."""

from __future__ import annotations

import pytest

from helpers.runs import PE, chain, diamond, two_roots

from d4p_hpc.errors import GraphError
from d4p_hpc.mappings.runtime.plan import build_plan
from d4p_hpc.workflow import WorkflowGraph


SHAPES = {
    "chain6": lambda: chain((1, None), (1, None), (1, None), (1, None), (1, None))[0],
    "wordcount": lambda: chain((2, None), (3, [0]))[0],
    "diamond": diamond,
    "two_roots": two_roots,
    "greedy": lambda: chain((10, None), (1, None), (1, None))[0],
}


def counts(plan):
    return {p.key: p.count for p in plan.pes}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("n", range(1, 10))
def test_plan_placement_is_monotone_and_complete(shape, n):
    graph = SHAPES[shape]()
    graph.flatten()
    plan = build_plan(graph, n)
    assert all(p.count >= 1 for p in plan.pes)
    assert len(plan.placement) == plan.instances
    used = min(n, plan.instances)
    assert set(plan.placement) == set(range(used)), "every used process hosts an instance; none outside"
    for c in plan.connections:
        src = [plan.placement[g] for g in plan.pes[c.src].gids]
        dst = [plan.placement[g] for g in plan.pes[c.dst].gids]
        assert max(src) <= min(dst), f"edge {plan.pes[c.src].key}->{plan.pes[c.dst].key} goes backwards"
    for root in plan.roots():
        assert root.count == 1
    again = build_plan(SHAPES[shape](), n)
    assert counts(again) == counts(plan) and again.placement == plan.placement


def test_explicit_requests_kept_and_default_pes_share_the_spare_processes():
    graph, _ = chain((2, None), (1, None))
    plan = build_plan(graph, 6)
    assert counts(plan) == {"Root": 1, "P0": 2, "P1": 3}
    assert plan.notices == []
    assert plan.placement == [0, 1, 2, 3, 4, 5]


def test_requests_beyond_the_processes_are_scaled_down_with_a_notice():
    graph, _ = chain((2, None), (3, [0]))
    plan = build_plan(graph, 4)
    assert counts(plan) == {"Root": 1, "P0": 1, "P1": 2}
    assert plan.instances == 4
    text = "\n".join(plan.notices)
    assert "P0" in text and "P1" in text and "2" in text and "3" in text


def test_scaled_down_counts_follow_the_requests():
    """Requests that do not fit are scaled in proportion: the PE that asked for most keeps most,
    every PE keeps one, and only those bumps to one may put more instances than processes."""
    for n in range(4, 12):
        plan = build_plan(SHAPES["greedy"](), n)
        got = sorted((p.count for p in plan.pes if p.count), reverse=True)
        greedy = max(p.count for p in plan.pes)
        assert greedy >= (n - 1) * 10 // 12, f"-n {n}: {counts(plan)}"
        assert plan.instances <= n + len(plan.pes) - 1, f"-n {n}: {counts(plan)} {plan.notices}"
        assert any("asks for 10 instances" in notice for notice in plan.notices), plan.notices
        assert plan.placement == sorted(plan.placement) and max(plan.placement) < n, got


def test_fewer_processes_than_pes():
    graph = SHAPES["chain6"]()
    plan = build_plan(graph, 2)
    assert all(p.count == 1 for p in plan.pes) and plan.instances == 6
    assert sorted(set(plan.placement)) == [0, 1] and plan.placement == sorted(plan.placement)
    assert any("share 2 processes" in notice for notice in plan.notices)
    one = build_plan(SHAPES["diamond"](), 1)
    assert all(p.count == 1 for p in one.pes) and set(one.placement) == {0}


def test_global_grouping_and_roots_get_one_instance():
    plan = build_plan(diamond(), 20)
    got = counts(plan)
    assert got["D"] == 1 and got["Root"] == 1
    assert got["A"] >= 2 and got["B"] >= 3 and got["C"] >= 2
    plan = build_plan(two_roots(), 8)
    assert counts(plan)["R1"] == 1


def test_plan_rejects_zero_processes_and_cycles():
    graph, _ = chain((1, None))
    with pytest.raises(GraphError):
        build_plan(graph, 0)
    g = WorkflowGraph()
    a, b, c = PE("A", ["input"]), PE("B", ["input"]), PE("C", ["input"])
    g.connect(a, "output", b, "input")
    g.connect(b, "output", c, "input")
    g.connect(c, "output", a, "input")
    with pytest.raises(GraphError, match="cycle"):
        build_plan(g, 2)


def test_a_two_pe_cycle_is_not_turned_into_a_duplicate_edge():
    """connect(B -> A) after connect(A -> B): the graph's one undirected edge must not record it as A -> B."""
    g = WorkflowGraph()
    a, b = PE("A", ["input"]), PE("B", ["input"])
    g.connect(a, "output", b, "input")
    try:
        g.connect(b, "output", a, "input")
    except GraphError:
        return  # refusing the cycle at connect time is fine
    with pytest.raises(GraphError, match="cycle"):
        build_plan(g, 2)
