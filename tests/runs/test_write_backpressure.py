"""Back-pressure inside ``write()`` (issue 8, item 2): a root PE that writes every item in ONE
``process`` call (tests/data/g_one_call.py) under every mapping.

The items flow while the call still writes (workers are not idle until it returns), the driver's
memory does not grow with the number of items, the results equal simple's, and a stop signal
during the call ends the run CANCELLED or TIMEOUT with what was processed kept and nothing left
running.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid

import pytest

from helpers.dynamic import needs_redis, tagged_env, tagged_pids
from helpers.runs import DATA, cli, d4p_hpc_cmd, explain, raw_items, read_json

GRAPH = DATA / "g_one_call.py"
ITEMS = 200_000
# what the driver may hold above the other processes of its run, which pass every item too; before
# back-pressure reached write(), 200,000 queued items added about 28 MB
MARGIN_MB = 12
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
REDIS = ["dyn_redis", "dyn_auto_redis", "hybrid_redis"]
MAPPINGS = ["simple", "multi", "mpi", "dyn_multi", "dyn_auto_multi",
            *(pytest.param(m, marks=needs_redis) for m in REDIS)]


def env_for(items: int, tag: str) -> dict:
    return {**tagged_env(tag), **MPI_ENV, "D4P_ONE_CALL_ITEMS": str(items)}


def peaks(results) -> dict[int, float]:
    """Peak RSS (MB) of each process of a finished run, by process number."""
    return {p["process"]: p["max_rss_mb"] for p in read_json(results / "metrics.json")["process_list"]}


def assert_nothing_left(tag: str) -> None:
    deadline = time.monotonic() + 10
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not tagged_pids(tag), f"processes of the run still alive: {tagged_pids(tag)}"


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_one_call_flows_with_bounded_memory_and_equals_simple(tmp_path, mapping):
    results = tmp_path / "r"
    tag = uuid.uuid4().hex
    proc = cli("run", GRAPH, "-m", mapping, "-n", 2, "-i", 1, "--results", results, env=env_for(ITEMS, tag),
               timeout=90)
    assert proc.returncode == 0, explain(proc)
    assert sorted(raw_items(results, "Work", "output")) == [2 * i for i in range(ITEMS)]  # simple's result

    # workers ran while the call was still writing: most items were seen before it returned
    (ended,) = raw_items(results, "Lines", "ended")
    seen = raw_items(results, "Work", "seen")
    assert sum(t < ended for t in seen) > len(seen) // 2, f"{len(seen)} seen, call ended {ended}: {sorted(seen)[:3]}"

    found = peaks(results)
    if len(found) > 1:
        reference = max(mb for p, mb in found.items() if p != 0)
    else:  # simple: the same graph with almost nothing to hold
        small = cli("run", GRAPH, "-m", "simple", "-i", 1, "--results", tmp_path / "small", env=env_for(1000, tag))
        assert small.returncode == 0, explain(small)
        reference = peaks(tmp_path / "small")[0]
    assert found[0] < reference + MARGIN_MB, f"driver peak {found[0]} MB, the others {found}, reference {reference}"
    assert_nothing_left(tag)


@pytest.mark.parametrize("mapping, signum, state", [
    ("multi", signal.SIGTERM, "CANCELLED"),
    ("mpi", signal.SIGTERM, "CANCELLED"),
    ("dyn_multi", signal.SIGTERM, "CANCELLED"),
    ("dyn_auto_multi", signal.SIGUSR1, "TIMEOUT"),
    pytest.param("dyn_redis", signal.SIGTERM, "CANCELLED", marks=needs_redis),
    pytest.param("hybrid_redis", signal.SIGUSR1, "TIMEOUT", marks=needs_redis),
])
def test_a_signal_during_an_endless_call_keeps_what_was_processed(tmp_path, mapping, signum, state):
    results = tmp_path / "r"
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(d4p_hpc_cmd() + ["run", str(GRAPH), "-m", mapping, "-n", "2", "-i", "1",
                                             "--results", str(results)],
                            env=env_for(0, tag), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size for p in results.glob("outputs/Work.output/part-*")):
            assert proc.poll() is None and time.monotonic() < deadline, "no output while the root's call ran"
            time.sleep(0.1)
        time.sleep(1)  # the endless call goes on: the driver must not grow meanwhile
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, f"{proc.returncode}\n{out}\n{err}"
    assert read_json(results / "run.json")["state"] == state
    kept = raw_items(results, "Work", "output")
    assert kept and len(set(kept)) == len(kept), f"{len(kept)} kept, {len(set(kept))} distinct"
    found = peaks(results)
    assert found[0] < max(mb for p, mb in found.items() if p != 0) + MARGIN_MB, found
    assert_nothing_left(tag)
    assert json.loads((results / "metrics.json").read_text())["items"] > 0
