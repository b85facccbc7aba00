"""What a run writes in its results directory, under each static mapping: run.json and
metrics.json with their fields, output parts and logs, private modes; and never two runs' data."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import stat

import pytest

from helpers.runs import EXAMPLES, cli, explain, outputs, read_json

import d4p_hpc


ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@pytest.fixture(scope="module", params=["simple", "multi", "mpi"], ids=["simple-n1", "multi-n4", "mpi-n4"])
def layout_run(request, tmp_path_factory):
    mapping = request.param
    results = tmp_path_factory.mktemp(f"layout-{mapping}") / "results"
    n = 1 if mapping == "simple" else 4
    proc = cli("run", EXAMPLES / "numpy_pipeline.py", "-m", mapping, "-n", n, "-i", 12, "--results", results)
    assert proc.returncode == 0, explain(proc)
    return mapping, n, results, proc


def test_run_json_fields(layout_run):
    mapping, n, results, proc = layout_run
    record = read_json(results / "run.json")
    graph = EXAMPLES / "numpy_pipeline.py"
    assert record["graph"] == str(graph.resolve())
    assert record["graph_sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
    assert record["attr"] is None and record["mapping"] == mapping and record["processes"] == n
    assert record["inputs"] == 12
    assert ISO.match(record["started"]) and ISO.match(record["ended"])
    assert dt.datetime.fromisoformat(record["ended"]) >= dt.datetime.fromisoformat(record["started"])
    assert record["state"] == "COMPLETED" and record["exit_code"] == 0 and record["error"] is None
    assert record["d4p_hpc_version"] == d4p_hpc.__version__
    assert "COMPLETED" in proc.stdout and str(results.name) in proc.stdout  # the summary


def test_metrics_json_fields(layout_run):
    mapping, n, results, _ = layout_run
    metrics = read_json(results / "metrics.json")
    assert metrics["wall_seconds"] > 0
    pes = metrics["pes"]
    assert set(pes) == {"MakeSignal", "Spectrum", "Summarise"}
    assert metrics["items"] == sum(pe["items_in"] for pe in pes.values())
    assert metrics["items_per_second"] == pytest.approx(metrics["items"] / metrics["wall_seconds"], rel=0.05)
    for _name, pe in pes.items():
        insts = pe["instances"]
        assert sorted(i["instance"] for i in insts) == list(range(len(insts)))
        for i in insts:
            assert {"instance", "process", "items_in", "items_out", "busy_seconds"} <= set(i)
            assert 0 <= i["process"] < n and i["busy_seconds"] >= 0
        for k in ("items_in", "items_out"):
            assert pe[k] == sum(i[k] for i in insts)
        assert pe["busy_seconds"] == pytest.approx(sum(i["busy_seconds"] for i in insts), abs=1e-5)
    assert pes["MakeSignal"]["items_in"] == 12 and pes["MakeSignal"]["items_out"] == 12
    assert pes["Spectrum"]["items_in"] == 12 and pes["Summarise"]["items_out"] == 24
    if mapping != "simple":
        assert len(pes["Spectrum"]["instances"]) == 2


def test_outputs_logs_and_private_modes(layout_run):
    mapping, n, results, _ = layout_run
    parts = sorted(p.relative_to(results).as_posix() for p in (results / "outputs").rglob("*") if p.is_file())
    assert parts, "no output parts"
    for part in parts:
        assert re.fullmatch(r"outputs/Summarise\.(summary/part-\d{5}\.jsonl|head/part-\d{5}\.pickle)", part), part
    assert sorted(p.name for p in (results / "logs").iterdir()) == [f"{k:05d}.log" for k in range(n)]
    bad = []
    for path in [results, *results.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if mode != want:
            bad.append(f"{path.relative_to(results.parent)} {oct(mode)}")
    assert not bad, f"not private ({mapping}): {bad}"


def test_a_results_dir_is_never_mixed_with_an_earlier_run(tmp_path):
    """Reusing --results DIR: either refused (exit 2, earlier run intact) or a clean run; never both runs' data."""
    results = tmp_path / "results"
    first = cli("run", EXAMPLES / "split_merge.py", "-m", "multi", "-n", 4, "-i", 10, "--results", results)
    assert first.returncode == 0, explain(first)
    before = outputs(results)
    assert sum(before["Merge.output"].values()) == 10
    again = cli("run", EXAMPLES / "split_merge.py", "-m", "simple", "-i", 10, "--results", results)
    if again.returncode == 2:
        assert again.stderr.strip().splitlines()[-1].startswith("Error:")
        assert outputs(results) == before and read_json(results / "run.json")["mapping"] == "multi"
    else:
        assert again.returncode == 0, explain(again)
        assert outputs(results) == before, "the outputs of both runs were mixed"
        metrics = read_json(results / "metrics.json")
        procs = {i["process"] for pe in metrics["pes"].values() for i in pe["instances"]}
        assert procs == {0} and metrics["pes"]["Merge"]["items_in"] == 10, "stale metrics of the first run"
