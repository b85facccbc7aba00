"""A checkpoint of simple, multi or mpi resumed under another of them: every item in flight once.

The states of simple, multi and mpi move between them (same instance counts). A multi or mpi
checkpoint also holds the items *in flight* on its process-to-process channels, which the resumed
run must process before anything their senders send again; under ``simple`` (one process, no
channel) they were never processed: the run said COMPLETED with counts short by exactly the
checkpoint's ``in_flight``, or, with the root's end-of-stream in flight, never ended.

Each case runs ``examples/long_count.py`` through the real command line in its own session,
SIGKILLs its whole process group once a checkpoint is complete (multi and mpi: one with items in
flight, as its manifest says), resumes it under the other mapping and compares the outputs of all
segments together with those of one uninterrupted ``simple`` run, as multisets: none lost, none
twice. Placements: under -n 2 the slow stage and the counter are on different processes (items in
flight to the counter, the root still feeding); under -n 3 the root too has its own (it has written
every line and its end-of-stream, most of them in flight to the slow stage, words in flight to the
counter too: those must be counted before the slow stage, finishing, ends the counter's stream).

Where sender and receiver share the resumed run's process, the sender delivers at once, not
behind the items in flight: so the root must not call again before they are processed (its last
calls would end the stream first: a root slowed for its last lines is killed with fewer than a
slice of them to go), and a checkpoint taken meanwhile keeps what is left of them and the root's
call still to replay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from d4p_hpc.mappings.checkpoint.store import Restored, load
from d4p_hpc.mappings.runtime.replay import pending
from helpers.runs import (EXAMPLES, cli, d4p_hpc_cmd, diff, explain, kill_group, outputs, processes_mentioning,
                          read_json, run_simple, wait_for)

pytestmark = pytest.mark.xdist_group("checkpoints")
GRAPH = EXAMPLES / "long_count.py"
ITEMS = 300
#: the slow stage's delay: 300 lines take ~3 s, checkpoints come every second
ENV = {"LONG_COUNT_SECONDS": "0.01"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The outputs of one uninterrupted simple run (without the delay, which does not change them)."""
    results = tmp_path_factory.mktemp("reference") / "r"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LONG_COUNT_SECONDS", "0")
        assert run_simple(GRAPH, ITEMS, results, attr="graph")["state"] == "COMPLETED"
    return outputs(results)


def manifests(results: Path) -> list[dict]:
    found = []
    for path in sorted((results / "checkpoints").glob("*/complete.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # removed (only the newest two are kept) as we read
            continue
    return found


def killed_after_a_checkpoint(mapping: str, processes: int, results: Path, graph: Path = GRAPH,
                              env: dict | None = None) -> dict:
    """Run under ``mapping``, SIGKILL the process group once a checkpoint (multi, mpi: one with items
    in flight) is complete; return the manifest of the checkpoint a resume starts from."""
    argv = [*d4p_hpc_cmd(), "run", str(graph), "-a", "graph", "-i", str(ITEMS), "-m", mapping, "-n", str(processes),
            "--checkpoint-every", "1", "--results", str(results)]
    proc = subprocess.Popen(argv, env={**os.environ, **ENV, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wanted = (lambda m: m["in_flight"] > 0) if mapping != "simple" else (lambda m: True)
    try:
        wait_for(lambda: any(wanted(m) for m in manifests(results)) or proc.poll() is not None, 60)
    finally:
        kill_group(proc.pid)  # (SIGKILL to its process group)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before a checkpoint as wanted:\n{out}\n{err}"
    wait_for(lambda: not processes_mentioning(str(results)), 15)
    # killed: it could not say so (mpi: its ranks, whose launcher died, end CANCELLED)
    assert read_json(results / "run.json")["state"] in ("RUNNING", "CANCELLED")
    return manifests(results)[-1]


def resumed(mapping: str, processes: int, results: Path, graph: Path = GRAPH,
            env: dict | None = None) -> subprocess.CompletedProcess:
    done = cli("run", graph, "-a", "graph", "-i", ITEMS, "-m", mapping, "-n", processes, "--results", results,
               "--resume", env={**ENV, **(env or {})}, timeout=90)
    assert done.returncode == 0, explain(done)
    assert "COMPLETED" in done.stdout, explain(done)
    return done


CASES = [
    pytest.param("multi", 2, "simple", 1, id="multi-n2-to-simple"),
    pytest.param("multi", 3, "simple", 1, id="multi-n3-to-simple"),
    pytest.param("mpi", 3, "simple", 1, id="mpi-n3-to-simple"),
    pytest.param("multi", 3, "multi", 2, id="multi-n3-to-multi-n2"),
    pytest.param("simple", 1, "multi", 2, id="simple-to-multi-n2"),
    pytest.param("multi", 2, "mpi", 3, id="multi-n2-to-mpi-n3"),
]


@pytest.mark.parametrize(("first", "first_n", "then", "then_n"), CASES)
def test_a_killed_run_resumed_under_another_mapping_processes_every_item_in_flight_once(
        first, first_n, then, then_n, tmp_path, reference):
    results = tmp_path / "r"
    manifest = killed_after_a_checkpoint(first, first_n, results)
    assert manifest["identity"]["mapping"] == first
    if first == "simple":
        assert manifest["in_flight"] == 0, manifest  # one process: no channel, nothing in flight
    else:
        assert manifest["in_flight"] > 0, manifest
    resumed(then, then_n, results)
    final = read_json(results / "run.json")
    assert final["state"] == "COMPLETED" and final["exit_code"] == 0, final
    assert final["mapping"] == then and final["resumed_from"] == manifest["seq"], final
    assert [s["state"] for s in final["segments"]] in (["FAILED"], ["CANCELLED"]), final["segments"]
    got = outputs(results)
    assert got == reference, diff(got, reference)
    assert not processes_mentioning(str(results))


@pytest.fixture
def tail_graph(tmp_path) -> Path:
    """long_count whose root sleeps 0.05 s in each call after line TAIL_FROM, before it writes."""
    source = GRAPH.read_text()
    slowed = source.replace("        self.k += 1\n", "        self.k += 1\n"
                            "        if self.k > int(os.environ['TAIL_FROM']):\n"
                            "            time.sleep(0.05)\n", 1)
    assert slowed != source, "examples/long_count.py no longer has the line this test slows its root after"
    graph = tmp_path / "long_count_tail.py"
    graph.write_text(slowed)
    return graph


#: the root's last 60 lines take 3 s: the first checkpoint (after 1 s) comes in the middle of them
TAIL = {"TAIL_FROM": str(ITEMS - 60)}


def killed_in_the_roots_tail(graph: Path, results: Path) -> tuple[dict, Restored]:
    """multi -n 3 (the root alone on its process) killed after its first checkpoint: the root has
    written all but fewer than 64 lines, most in flight to the slow stage, and the checkpoint was
    taken inside one of its calls (at its write, after the sleep), which a resume replays."""
    manifest = killed_after_a_checkpoint("multi", 3, results, graph, TAIL)
    restored = load(results)
    assert restored.seq == manifest["seq"] and manifest["in_flight"] > 0, manifest
    root = restored.instance(0)
    assert root is not None and not root["done"] and ITEMS - 64 < restored.fed(0) < ITEMS, (root, restored.fed(0))
    assert pending(restored, 0) is not None, "the checkpoint was not taken inside a call of the root"
    return manifest, restored


def test_a_root_that_has_not_finished_feeds_again_only_after_the_items_in_flight_under_simple(
        tail_graph, tmp_path, reference):
    """Under simple the root would write its last lines, and its end-of-stream, straight to the slow
    stage (a slice of up to 64 root calls comes before a look at the inbox), which would finish
    before the lines in flight reached it, and the counter before the words in flight did."""
    results = tmp_path / "r"
    manifest, _ = killed_in_the_roots_tail(tail_graph, results)
    resumed("simple", 1, results, tail_graph, TAIL)
    final = read_json(results / "run.json")
    assert final["state"] == "COMPLETED" and final["resumed_from"] == manifest["seq"], final
    got = outputs(results)
    assert got == reference, diff(got, reference)
    assert not processes_mentioning(str(results))


def test_a_checkpoint_taken_while_a_resumed_simple_run_works_through_the_items_in_flight_keeps_the_rest(
        tail_graph, tmp_path, reference):
    """Resumed under simple with checkpoints every second, its first comes while it works through the
    lines in flight (~1 s of work and more): it holds those not processed yet as in flight, and the
    root's call still to replay (the root has not called again yet); killed after it, a second
    simple resume completes with every line once."""
    results = tmp_path / "r"
    first, restored = killed_in_the_roots_tail(tail_graph, results)
    argv = [*d4p_hpc_cmd(), "run", str(tail_graph), "-a", "graph", "-i", str(ITEMS), "-m", "simple",
            "--checkpoint-every", "1", "--results", str(results), "--resume"]
    proc = subprocess.Popen(argv, env={**os.environ, **ENV, **TAIL}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        wait_for(lambda: manifests(results)[-1]["seq"] > first["seq"] or proc.poll() is not None, 60)
    finally:
        kill_group(proc.pid)  # (SIGKILL to its process group)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the resumed run ended before its checkpoint:\n{out}\n{err}"
    wait_for(lambda: not processes_mentioning(str(results)), 15)
    second = load(results)
    assert second.manifest["identity"]["mapping"] == "simple", second.manifest
    assert 0 < second.manifest["in_flight"] < first["in_flight"], (first, second.manifest)
    assert second.fed(0) == restored.fed(0) and pending(second, 0) == pending(restored, 0)
    resumed("simple", 1, results, tail_graph, TAIL)
    final = read_json(results / "run.json")
    assert final["state"] == "COMPLETED" and final["resumed_from"] == second.seq, final
    assert len(final["segments"]) == 2, final["segments"]
    got = outputs(results)
    assert got == reference, diff(got, reference)
    assert not processes_mentioning(str(results))
