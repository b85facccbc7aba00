"""Helpers shared by the tests of the dynamic mappings, the per-job Redis and the Redis mappings
(always a real redis-server, never a fake one)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import pytest

from helpers.runs import CASES, EXAMPLES, alive, outputs, run_simple

#: The mark of a test that starts a redis-server (``-m "not redis"`` leaves them out). Without
#: one it is skipped, except under CI (``CI`` set), where it must exist: see :func:`skip_without_redis`.
needs_redis = pytest.mark.redis


def skip_without_redis(items) -> None:
    """Skip the collected ``items`` marked :data:`needs_redis` when no redis-server is installed
    (not under CI: there they run, and fail)."""
    if shutil.which("redis-server") is None and not os.environ.get("CI"):
        skip = pytest.mark.skip(reason="redis-server not installed (apt-get install redis-server)")
        for item in items:
            if item.get_closest_marker("redis"):
                item.add_marker(skip)


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait until ``pid`` is gone; return whether it went."""
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def wait_file(path: Path, proc=None, timeout: float = 30.0) -> dict:
    """Wait for a connection file to appear and return its JSON (fails early if ``proc`` exited)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before writing {path}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)
    return json.loads(path.read_text())


def limited(nofile: int):
    """preexec_fn: the child's open-files limit, soft and hard, as a node's ``ulimit -Hn``."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


def tagged_env(tag: str) -> dict:
    """Environment for a child run whose descendants (workers, redis-server) can be found later by ``tag``."""
    return {**os.environ, "D4P_TEST_TAG": tag}


def tagged_pids(tag: str) -> set[int]:
    """Live processes that inherited ``D4P_TEST_TAG=tag`` (e.g. a leftover redis-server)."""
    needle = f"D4P_TEST_TAG={tag}".encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if needle in environ.split(b"\0") and alive(int(entry.name)):
                pids.add(int(entry.name))
    return pids


def server_pid(conn: dict) -> int:
    """Process id of the redis-server behind a connection file's content."""
    import redis
    client = redis.Redis(host=conn["host"], port=conn["port"], password=conn["password"])
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def python_module(module: str, *args: str) -> list[str]:
    """Command line running ``python -m module args``."""
    return [sys.executable, "-m", module, *args]


# --- small graphs for the dynamic mappings' tests (written to a temporary file per test) ---------

GRAPH_HEADER = '''
import os, time
from dispel4py.base import ProducerPE, IterativePE, GenericPE
from dispel4py.workflow_graph import WorkflowGraph

class Numbers(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.n = 0
    def _process(self, inputs):
        self.n += 1
        return self.n
'''

#: Numbers -> Slow (sleeps $SLOW_DELAY s per item) -> Tag; result Tag.output = (n, n*n, "done").
SLOW_GRAPH = GRAPH_HEADER + '''
class Slow(IterativePE):
    def _process(self, n):
        time.sleep(float(os.environ.get("SLOW_DELAY", "0.05")))
        return (n, n * n)

class Tag(IterativePE):
    def _process(self, pair):
        return (pair[0], pair[1], "done")

graph = WorkflowGraph()
numbers, slow, tag = Numbers(), Slow(), Tag()
graph.connect(numbers, "output", slow, "input")
graph.connect(slow, "output", tag, "input")
'''

#: Numbers -> Big, which writes (n, 20 kB) to its unconnected output, then sleeps $SLOW_DELAY s:
#: a killed worker leaves results of its unacknowledged unit in its part file.
BIG_GRAPH = GRAPH_HEADER + '''
class Big(IterativePE):
    def _process(self, n):
        self.write("output", (n, "x" * 20000))
        time.sleep(float(os.environ.get("SLOW_DELAY", "0.05")))

graph = WorkflowGraph()
graph.connect(Numbers(), "output", Big(), "input")
'''

#: Numbers -> Flush -> Keep; Flush passes items on and writes -1 in its postprocess, which must
#: still reach Keep (once per copy of Flush) before the run ends.
FLUSH_GRAPH = GRAPH_HEADER + '''
class Flush(IterativePE):
    def _process(self, n):
        return n
    def postprocess(self):
        self.write("output", -1)

class Keep(IterativePE):
    def _process(self, n):
        return n

graph = WorkflowGraph()
flush = Flush()
graph.connect(Numbers(), "output", flush, "input")
graph.connect(flush, "output", Keep(), "input")
'''

#: Numbers -> Sum (no grouping) marked ``stateful = True``: refused by dyn_*, accepted by hybrid_redis.
MARKED_STATEFUL_GRAPH = GRAPH_HEADER + '''
class Sum(GenericPE):
    stateful = True
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_output("output")
        self.total = 0
    def process(self, inputs):
        self.total += inputs["input"]
    def postprocess(self):
        self.write("output", self.total)

graph = WorkflowGraph()
graph.connect(Numbers(), "output", Sum(), "input")
'''


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``reference(case)``: outputs of the simple mapping for an example case, run once per module."""
    cache = {}

    def get(case):
        if case not in cache:
            file, inputs = CASES[case]
            results = tmp_path_factory.mktemp(f"simple-{case}") / "results"
            assert run_simple(EXAMPLES / file, inputs, results)["state"] == "COMPLETED"
            cache[case] = outputs(results)
        return cache[case]
    return get


def write_graph(directory: Path, source: str, name: str = "graph.py") -> Path:
    """Write a graph file into ``directory`` and return its path."""
    path = Path(directory) / name
    path.write_text(source)
    return path
