"""End of stream: every PE instance is preprocessed and postprocessed once, and only after every
instance upstream of it has ended."""

from __future__ import annotations

import pytest

from helpers.runs import DATA, cli, explain, raw_items, read_json


@pytest.mark.parametrize("mapping,n", [("simple", 1), ("multi", 3), ("multi", 5)])
def test_postprocess_once_per_instance_after_all_upstream(mapping, n, tmp_path):
    items = 12
    results = tmp_path / "results"
    proc = cli("run", DATA / "g_termination.py", "-m", mapping, "-n", n, "-i", items, "--results", results)
    assert proc.returncode == 0, explain(proc)
    totals = [tuple(x) for x in raw_items(results, "Stateful", "output")]
    assert dict(totals) == {k: sum(x for x in range(1, items + 1) if x % 3 == k) for k in range(3)}
    assert len(totals) == 3, "a key was emitted by several instances"
    calls = raw_items(results, "Slow", "calls") + raw_items(results, "Stateful", "calls")
    metrics = read_json(results / "metrics.json")["pes"]
    for pe in ("Slow", "Stateful"):
        mine = [c for c in calls if c["pe"] == pe]
        assert len(mine) == len(metrics[pe]["instances"]), f"{pe}: {len(mine)} postprocess reports"
        assert len({c["tag"] for c in mine}) == len(mine)
        assert all(c["pre"] == 1 and c["post"] == 1 for c in mine), mine
        assert sum(c["process"] for c in mine) == items
    slow_done = max(c["post_ended"] for c in calls if c["pe"] == "Slow")
    for c in calls:
        if c["pe"] == "Stateful":
            assert c["post_started"] >= slow_done, "Stateful.postprocess ran before every Slow instance ended"
    if n == 5:
        assert len(metrics["Slow"]["instances"]) == 2 and len(metrics["Stateful"]["instances"]) == 2
