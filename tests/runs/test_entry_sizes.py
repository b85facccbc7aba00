"""Queue entries of the dynamic mappings, sized by a measured cost, never keep a stream that turns
slow on one worker.

Entries of tasks measured quick hold up to 4,096 of them. A stream whose tasks turn slow after many
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
