"""Checkpoints and ``run --resume``, through the real command line, on this host.

Every mapping: stopped at the walltime signal (SIGUSR1, after a checkpoint of its own) and
SIGKILLed with its whole process group (where only the periodic checkpoints help), then resumed,
the outputs of all segments together equal those of one uninterrupted ``simple`` run: none lost,
none twice. What must be refused is refused in one line, before anything runs.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from helpers.runs import (EXAMPLES, cli, d4p_hpc_cmd, diff, every_mapping, explain, kill_after_its_next_checkpoint,
                          kill_group, outputs, processes_mentioning, read_json, run_simple, wait_for)

pytestmark = pytest.mark.xdist_group("checkpoints")  # one worker: the reference runs take 30 s
GRAPH = EXAMPLES / "long_count.py"
ITEMS = 300
#: the slow stage's delay: 300 lines take ~3 s on one process, and on a pool of three workers
ENV = {"LONG_COUNT_SECONDS": "0.01"}
POOL_ENV = {"LONG_COUNT_SECONDS": "0.1"}
STATELESS = ("dyn_multi", "dyn_auto_multi", "dyn_redis", "dyn_auto_redis")
PROCESSES = {"simple": 1, "mpi": 4, "multi": 4}


def env_of(mapping: str) -> dict:
    return ENV if mapping in PROCESSES else POOL_ENV


def attr_of(mapping: str) -> str:
    """The dyn_* mappings refuse the grouped counter: they run the graph without it."""
    return "stateless" if mapping in STATELESS else "graph"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Outputs of one uninterrupted simple run of each variant (the delay does not change them)."""
    found = {}
    for attr in ("graph", "stateless"):
        results = tmp_path_factory.mktemp(f"ref-{attr}") / "r"
        assert run_simple(GRAPH, ITEMS, results, attr=attr)["state"] == "COMPLETED"
        found[attr] = outputs(results)
    return found


def start(mapping: str, results: Path, *extra, env: dict | None = None) -> subprocess.Popen:
    """``d4p-hpc run`` of the long graph in its own session (its process group is the run)."""
    argv = [*d4p_hpc_cmd(), "run", str(GRAPH), "-a", attr_of(mapping), "-i", str(ITEMS), "-m", mapping,
            "-n", str(PROCESSES.get(mapping, 3)), "--results", str(results), *extra]
    return subprocess.Popen(argv, env={**os.environ, **env_of(mapping), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def resume(mapping: str, results: Path, *extra, expect: int = 0) -> subprocess.CompletedProcess:
    done = cli("run", GRAPH, "-a", attr_of(mapping), "-i", ITEMS, "-m", mapping, "-n", PROCESSES.get(mapping, 3),
               "--results", results, "--resume", *extra, env=env_of(mapping))
    assert done.returncode == expect, explain(done)
    return done


def manifests(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "checkpoints").glob("*/complete.json"))]


def stop_after_checkpoint(proc: subprocess.Popen, results: Path, signum: int, group: bool) -> int:
    """Once a checkpoint is complete and the run goes on, send ``signum``; return the exit code."""
    wait_for(lambda: manifests(results) or proc.poll() is not None, 60)
    assert proc.poll() is None, f"the run ended before its first checkpoint:\n{proc.communicate()}"
    time.sleep(0.3)
    if group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        raise AssertionError(f"the run did not stop within 60 s of signal {signum}") from None
    return proc.returncode


@pytest.mark.parametrize("mapping", every_mapping())
def test_walltime_stop_then_sigkill_then_resume_gives_the_outputs_once(mapping, tmp_path, reference):
    results = tmp_path / "r"
    # segment 1 ends at the walltime signal, after a checkpoint of its own
    first = start(mapping, results, "--checkpoint-every", "1")
    assert stop_after_checkpoint(first, results, signal.SIGUSR1, group=False) == 138
    record = read_json(results / "run.json")
    assert record["state"] == "TIMEOUT", record
    assert manifests(results)[-1]["final"] is True
    assert not processes_mentioning(str(results))
    # segment 2 is killed outright, the whole process group: its periodic checkpoint is what is left
    second = start(mapping, results, "--checkpoint-every", "1", "--resume")
    if kill_after_its_next_checkpoint(second, results):
        # killed: it could not say so (mpi: its ranks, whose launcher died, end CANCELLED); or, on a
        # loaded machine, it had completed in those 0.3 s: nothing is left to resume then
        killed = read_json(results / "run.json")["state"]
        assert killed in ("RUNNING", "CANCELLED", "COMPLETED")
        if killed != "COMPLETED":  # segment 3 completes
            done = resume(mapping, results)
            assert "COMPLETED" in done.stdout, explain(done)
    final = read_json(results / "run.json")
    assert final["state"] == "COMPLETED", final
    assert [s["state"] for s in final["segments"]][:1] == ["TIMEOUT"], final["segments"]
    assert len(final["segments"]) in (1, 2), final["segments"]
    got = outputs(results)
    assert got == reference[attr_of(mapping)], diff(got, reference[attr_of(mapping)])
    assert not processes_mentioning(str(results))
    shown = cli("status", results)
    assert "segment 1: TIMEOUT" in shown.stdout and f"segment {len(final['segments']) + 1}: COMPLETED" \
        in shown.stdout, explain(shown)


def test_checkpoint_files_are_private_atomic_and_only_the_newest_two_are_kept(tmp_path):
    results = tmp_path / "r"
    proc = start("multi", results, "--checkpoint-every", "1")
    assert proc.wait(timeout=120) == 0, proc.communicate()
    root = results / "checkpoints"
    kept = sorted(p.name for p in root.iterdir())
    assert len(kept) <= 2 and kept, kept
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for path in root.rglob("*"):
        assert not path.name.startswith("."), f"a temporary file was left: {path}"
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    manifest = manifests(results)[-1]
    assert manifest["format"] == 2 and manifest["bytes"] > 0 and manifest["seconds"] >= 0
    assert manifest["identity"]["mapping"] == "multi"
    parts = sorted((root / kept[-1]).glob("part-*.pkl"))
    assert len(parts) == 4  # one per process
    assert all(pickle.loads(p.read_bytes())["format"] == 2 for p in parts)
    assert read_json(results / "run.json")["checkpoint"]["seq"] == manifest["seq"]


def checkpointed(tmp_path: Path, graph: Path = GRAPH, mapping: str = "simple", *extra) -> Path:
    """A run stopped at the walltime signal with a checkpoint to resume from."""
    results = tmp_path / "r"
    argv = ["--checkpoint-every", "1", *extra]
    proc = subprocess.Popen([*d4p_hpc_cmd(), "run", str(graph), "-a", attr_of(mapping), "-i", str(ITEMS), "-m",
                             mapping, "-n", str(PROCESSES.get(mapping, 3)), "--results", str(results), *argv],
                            env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert stop_after_checkpoint(proc, results, signal.SIGUSR1, group=False) == 138
    return results


def refused(*args, needle: str) -> str:
    done = cli(*args, env=ENV)
    assert done.returncode == 2, explain(done)
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and needle in lines[0], explain(done)
    return lines[0]


def test_resume_refuses_a_changed_graph_file(tmp_path):
    graph = tmp_path / "long_count.py"
    graph.write_text(GRAPH.read_text())
    results = checkpointed(tmp_path, graph)
    before = outputs(results)
    graph.write_text(GRAPH.read_text() + "\n# changed\n")
    refused("run", graph, "-a", "graph", "-i", ITEMS, "--results", results, "--resume",
            needle=f"the graph file {graph} has changed since checkpoint")
    assert outputs(results) == before  # nothing ran, nothing was cut back


def test_resume_refuses_changed_inputs_another_mapping_and_another_plan(tmp_path):
    results = checkpointed(tmp_path)
    refused("run", GRAPH, "-a", "graph", "-i", ITEMS + 1, "--results", results, "--resume",
            needle="the inputs differ from those of checkpoint")
    refused("run", GRAPH, "-a", "graph", "-i", ITEMS, "-m", "hybrid_redis", "-n", 2, "--results", results,
            "--resume", needle="whose PE states cannot move to -m hybrid_redis; resume with -m simple")
    refused("run", GRAPH, "-a", "graph", "-i", ITEMS, "-m", "multi", "-n", 4, "--results", results, "--resume",
            needle="PE instances and -m multi -n 4 makes")
    # simple -> mpi with as many instances: the state moves
    done = resume("mpi", results, "-n", 3)
    assert read_json(results / "run.json")["state"] == "COMPLETED", explain(done)


def test_resume_refuses_a_completed_run_a_run_without_checkpoints_and_another_format(tmp_path):
    results = tmp_path / "plain"
    done = cli("run", GRAPH, "-a", "graph", "-i", 20, "--results", results, env=ENV)
    assert done.returncode == 0, explain(done)
    refused("run", GRAPH, "-a", "graph", "-i", 20, "--results", results, "--resume", needle="has COMPLETED")
    record = read_json(results / "run.json")
    (results / "run.json").write_text(json.dumps({**record, "state": "CANCELLED"}))
    refused("run", GRAPH, "-a", "graph", "-i", 20, "--results", results, "--resume",
            needle="has no complete checkpoint to resume from")
    refused("run", GRAPH, "-a", "graph", "-i", 20, "--resume", needle="--resume needs --results DIR")
    stopped = checkpointed(tmp_path / "x")
    newest = sorted((stopped / "checkpoints").glob("*/complete.json"))[-1]
    newest.write_text(json.dumps({**json.loads(newest.read_text()), "format": 99}))
    refused("run", GRAPH, "-a", "graph", "-i", ITEMS, "--results", stopped, "--resume",
            needle="has format 99; this d4p-hpc reads format 2")


HOOKS = '''
import os
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph


class ReadLines(GenericPE):
    """Reads a file a line per call; its open file cannot be pickled, so it saves its offset."""

    def __init__(self):
        GenericPE.__init__(self)
        self._add_output("output")
        self.path = os.environ["HOOKS_FILE"]
        self.offset = 0
        self.fh = None

    def preprocess(self):
        self.fh = open(self.path)

    def checkpoint(self):
        return {"offset": self.offset}

    def restore(self, state):
        self.offset = state["offset"]
        self.fh.seek(self.offset)

    def _process(self, inputs):
        line = self.fh.readline()
        self.offset = self.fh.tell()
        if line:
            import time
            time.sleep(0.01)
            self.write("output", line.strip())


class Upper(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_output("output")
        self.log_file = None
        self.pickleIgnore = self.pickleIgnore + ["log_file"]

    def preprocess(self):
        self.log_file = open(os.devnull, "w")

    def _process(self, inputs):
        return {"output": inputs["input"].upper()}


graph = WorkflowGraph()
graph.connect(ReadLines(), "output", Upper(), "input")
'''


def test_pe_hooks_and_pickle_ignore_carry_a_file_reader_across_a_kill(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("".join(f"line {k}\n" for k in range(300)))
    graph = tmp_path / "hooks.py"
    graph.write_text(HOOKS)
    env = {"HOOKS_FILE": str(lines)}
    results = tmp_path / "r"
    proc = subprocess.Popen([*d4p_hpc_cmd(), "run", str(graph), "-i", "300", "-m", "multi", "-n", "2",
                             "--checkpoint-every", "1", "--results", str(results)],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert stop_after_checkpoint(proc, results, signal.SIGKILL, group=True) == -9
    wait_for(lambda: not processes_mentioning(str(results)), 15)
    done = cli("run", graph, "-i", 300, "-m", "multi", "-n", 2, "--results", results, "--resume", env=env)
    assert done.returncode == 0, explain(done)
    got = outputs(results)["Upper.output"]
    assert got == {f"LINE {k}": 1 for k in range(300)}, sorted(got.items())[:5]


UNPICKLABLE = '''
import threading
from dispel4py.base import ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Locked(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.lock = threading.Lock()

    def _process(self, inputs):
        import time
        time.sleep(0.01)
        return 1


graph = WorkflowGraph()
graph.add(Locked())
'''


def test_state_that_cannot_be_saved_fails_the_run_naming_the_pe_and_attribute(tmp_path):
    graph = tmp_path / "locked.py"
    graph.write_text(UNPICKLABLE)
    results = tmp_path / "r"
    done = cli("run", graph, "-i", 500, "--checkpoint-every", 1, "--results", results)
    assert done.returncode == 1, explain(done)
    error = read_json(results / "run.json")["error"]["traceback"]
    assert error.startswith("PE Locked: attribute 'lock' cannot be saved (TypeError"), error
    assert "list it in the PE's pickleIgnore, or give the PE checkpoint() and restore(state) methods" in error
    assert not processes_mentioning(str(results))


@pytest.mark.parametrize("mapping", ["multi", "mpi"])
def test_a_checkpoint_takes_no_longer_behind_minutes_of_queued_items(mapping, tmp_path):
    """A fast producer fills the slow stage's channel and its read-ahead (minutes of work at 0.05 s
    a line): the checkpoints still take well under a second, and the walltime stop too."""
    results = tmp_path / "r"
    argv = [*d4p_hpc_cmd(), "run", str(GRAPH), "-a", "graph", "-i", "20000", "-m", mapping, "-n", "4",
            "--checkpoint-every", "2", "--results", str(results)]
    proc = subprocess.Popen(argv, env={**os.environ, "LONG_COUNT_SECONDS": "0.05"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: len(manifests(results)) >= 2 and manifests(results)[-1]["in_flight"] > 2000, 60)
        asked = time.monotonic()
        proc.send_signal(signal.SIGUSR1)
        proc.communicate(timeout=30)
        stopped = time.monotonic() - asked
    finally:
        kill_group(proc.pid)
    assert proc.returncode == 138, proc.returncode
    taken = manifests(results)
    assert taken[-1]["final"] and all(m["seconds"] < 1.0 for m in taken), taken
    assert stopped < 10, stopped


def test_two_processes_never_wait_on_each_others_full_inbox_to_put_a_marker(tmp_path):
    """multi -n 4 of a producer, two Work instances kept full by it, and a counter: each Work
    process has a marker for the other, whose inbox is full. A marker that waited for room would
    hang the run for ever (it did); a marker waits aside, and data to that process goes after it."""
    graph = EXAMPLES.parent / "benchmarks" / "graphs" / "stateful.py"
    results = tmp_path / "r"
    done = cli("run", graph, "-a", "graph", "-m", "multi", "-n", 4, "-i", 60000, "--checkpoint-every", 1,
               "--results", results, timeout=90)
    assert done.returncode == 0, explain(done)
    assert manifests(results) and all(m["seconds"] < 1.0 for m in manifests(results)), manifests(results)
