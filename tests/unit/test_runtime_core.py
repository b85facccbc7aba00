"""The core's runtime in this process: time blocked on backpressure is not busy time, a chain deeper
than Python's stack delivers every item in order, and a root's call replayed on resume drops the
writes its checkpoint holds, or fails in one line when they differ."""

from __future__ import annotations

import copy
import time

import pytest

from helpers.runs import PE

from d4p_hpc.mappings.runtime import replay
from d4p_hpc.mappings.runtime.core import MAX_DEPTH, Runtime
from d4p_hpc.mappings.runtime.plan import build_plan
from d4p_hpc.mappings.runtime.process import PEFailed
from d4p_hpc.mappings.runtime.sink import Sink
from d4p_hpc.workflow import WorkflowGraph


class Producer(PE):
    """Writes ``n`` items in one call."""

    def __init__(self, n):
        PE.__init__(self, "Producer")
        self.n = n

    def process(self, inputs):
        for i in range(self.n):
            self.write("output", i)


class Keep(PE):
    """Keeps what it gets, in order."""

    def __init__(self, name="Keep"):
        PE.__init__(self, name, inputs=("input",), outputs=())
        self.seen = []

    def process(self, inputs):
        self.seen.append(inputs["input"])


class Inc(PE):
    def __init__(self, name):
        PE.__init__(self, name, inputs=("input",))

    def process(self, inputs):
        return {"output": inputs["input"] + 1}


class SlowTransport:
    """Every send waits ``seconds``, as a full inbox downstream makes it."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.sent = 0

    def send(self, proc, payload, block=True):
        time.sleep(self.seconds)
        self.sent += 1
        return True

    def recv(self, block, timeout=None):
        return None


def runtime(graph, processes, tmp_path, proc=0, transport=None):
    plan = build_plan(graph, processes)
    return Runtime(plan, proc, Sink(tmp_path, proc), transport, {0: 1}, copy.deepcopy)


def test_time_waiting_for_room_downstream_is_blocked_not_busy(tmp_path):
    g = WorkflowGraph()
    g.connect(Producer(3 * 256), "output", Keep(), "input")
    transport = SlowTransport(0.1)
    rt = runtime(g, 2, tmp_path, transport=transport)
    rt.run()
    root = rt.local[0]
    assert transport.sent == 4  # three full batches of 256 in its call, then its end-of-stream marker
    assert root.blocked_seconds >= 0.3
    assert root.busy < root.blocked_seconds / 3, (root.busy, root.blocked_seconds)
    assert root.stats(0)["blocked_seconds"] == round(root.blocked_seconds, 6)


def test_a_chain_deeper_than_the_stack_delivers_every_item_in_order(tmp_path):
    g = WorkflowGraph()
    prev = Producer(50)
    for k in range(10 * MAX_DEPTH):
        nxt = Inc(f"Inc{k}")
        g.connect(prev, "output", nxt, "input")
        prev = nxt
    keep = Keep()
    g.connect(prev, "output", keep, "input")
    rt = runtime(g, 1, tmp_path)
    rt.run()
    last = next(inst for inst in rt.local.values() if inst.node.key == "Keep")
    assert last.pe.seen == [i + 10 * MAX_DEPTH for i in range(50)]
    assert last.done and all(inst.done for inst in rt.local.values())


def test_a_replayed_call_drops_the_writes_its_checkpoint_holds(tmp_path):
    g = WorkflowGraph()
    g.connect(Producer(100), "output", Keep(), "input")
    first = runtime(g, 1, tmp_path)
    root = first.local[0]
    call = root.call = replay.Call.begin("Producer", root.pe, None)
    for i in range(40):
        first.emit(root, "output", i)
    held = call.record()
    assert held["writes"] == 40
    # a run resumed inside the call (with the same PE objects: Keep has the first 40 already): its
    # first 40 writes are dropped, the rest delivered, each item once
    again = runtime(g, 1, tmp_path)
    again.local[0].replay = held
    again.run()
    assert again.local[1].pe.seen == list(range(100))


@pytest.mark.parametrize("n", [100, 30])
def test_a_replayed_call_that_writes_other_items_fails_in_one_line(n, tmp_path):
    g = WorkflowGraph()
    g.connect(Producer(n), "output", Keep(), "input")
    rt = runtime(g, 1, tmp_path)
    rt.local[0].replay = {"writes": 40, "digest": "0" * 32}
    with pytest.raises(PEFailed) as failed:
        rt.run()
    assert failed.value.pe == "Producer"
    message = failed.value.traceback
    assert "\n" not in message and message.startswith("PE Producer is not deterministic: on resume")
    assert ("the first 40 items" if n == 100 else "wrote 30 items, the checkpoint holds 40") in message
    assert "deterministic = False" in message
    assert rt.local[1].pe.seen == []
