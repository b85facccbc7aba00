"""Queue entries of the dynamic mappings, sized by a measured cost, never keep a stream that turns
slow on one worker.

Entries of tasks measured quick hold up to 16,384 of them. A stream whose tasks turn slow after many
quick ones is queued by the quick cost until a slow unit is measured, so one entry may take a slow
tail whole: an outside attack saw a 400-task tail of 20 ms tasks run on one worker of four under
``dyn_redis`` and ``hybrid_redis`` (the pool's cost was then the run's mean, which stayed quick). A
unit that takes twice its work hands its tasks not yet run back to the queue, in entries of an unknown
cost's size. Proven by counting which worker ran each slow task (its pid in the output), not by time.
"""

from __future__ import annotations

from collections import Counter

import pytest

from helpers.dynamic import GRAPH_HEADER, needs_redis, write_graph
from helpers.runs import cli, explain, raw_items

QUICK = 100_000
SLOW = 200

#: Numbers -> Turn: instant up to item QUICK, then 20 ms each, writing (n, the pid of the worker that ran it)
TURN_GRAPH = GRAPH_HEADER + f'''
class Turn(IterativePE):
    def _process(self, n):
        if n <= {QUICK}:
            return (n, 0)
        time.sleep(0.02)
        return (n, os.getpid())

graph = WorkflowGraph()
graph.connect(Numbers(), "output", Turn(), "input")
'''


@pytest.mark.parametrize("mapping", ["dyn_multi", pytest.param("dyn_redis", marks=needs_redis),
                                     pytest.param("hybrid_redis", marks=needs_redis)])
def test_a_stream_that_turns_slow_after_many_quick_tasks_is_shared_by_the_pool(mapping, tmp_path):
    graph = write_graph(tmp_path, TURN_GRAPH)
    results = tmp_path / "results"
    done = cli("run", graph, "-m", mapping, "-n", "4", "-i", QUICK + SLOW, "--results", results, timeout=300)
    assert done.returncode == 0, explain(done)
    items = raw_items(results, "Turn", "output")
    assert sorted(n for n, _pid in items) == list(range(1, QUICK + SLOW + 1))  # each once
    by_worker = Counter(pid for n, pid in items if n > QUICK)
    assert len(by_worker) >= 3 and max(by_worker.values()) <= SLOW * 3 // 4, by_worker


FAN = 2000
#: Numbers -> Fan (each number becomes FAN) -> Quick: a fan-out into a PE of a few microseconds
FAN_GRAPH = GRAPH_HEADER + f'''
class Fan(IterativePE):
    def _process(self, n):
        for k in range({FAN}):
            self.write("output", n * {FAN} + k)

class Quick(IterativePE):
    def _process(self, n):
        return n + 1

graph = WorkflowGraph()
graph.connect(Numbers(), "output", Fan(), "input")
graph.connect(Fan(), "output", Quick(), "input")
'''


def test_a_fan_outs_tasks_are_queued_by_what_their_pe_costs_before_any_unit_of_them_ran(tmp_path):
    """A worker's first unit of a fan-out writes thousands of tasks for a PE no unit has run yet. The
    first of them runs at once in the same worker (chained), timed: the rest are cut by that cost (a few
    µs: thousands an entry), not by the fan-out's own (milliseconds: 128 an entry, a commit per 128)."""
    from d4p_hpc.mappings.dynamic.tasks import SHARED_QUEUE, TaskRuntime, shared_entries
    from d4p_hpc.mappings.runtime.plan import build_plan
    from d4p_hpc.mappings.runtime.sink import Sink
    from d4p_hpc.workflow.loader import load_graph

    plan = build_plan(load_graph(str(write_graph(tmp_path, FAN_GRAPH))), 4)
    fan = next(node for node in plan.pes if node.key.startswith("Fan"))
    quick = next(node for node in plan.pes if node.key.startswith("Quick"))
    runtime = TaskRuntime(plan, 1, Sink(tmp_path / "results", 1))
    runtime.run_tasks([(fan.first_gid, "input", n) for n in range(3)], lambda: None)
    assert quick.index in runtime.sampled and quick.index not in runtime.costs
    outbox = runtime.take_outbox()
    assert len(outbox[SHARED_QUEUE]) == 3 * (FAN - 1)
    node_of = {gid: node.index for node in plan.pes for gid in node.gids}
    fallback = runtime.costs[fan.index] / FAN  # what the unit that wrote them cost per task written
    entries = shared_entries(outbox, 4, node_of.__getitem__, runtime.known_costs({}), fallback)
    unknown = shared_entries(outbox, 4, node_of.__getitem__, {}, fallback)
    assert len(unknown) == -(-3 * (FAN - 1) // 128)  # 47 entries of at most 128
    # by the timed calls (a few µs each, the quickest of three), entries of more than 128; robust to a
    # loaded machine, where a call may take a hundred times longer than idle
    assert len(entries) < len(unknown) and max(map(len, entries)) > 128, (runtime.sampled, [len(e) for e in entries])
