"""Idle workers block rather than poll: what Redis workers with nothing to do do, counted.

A worker with nothing to do blocks on Redis (mappings/redis/broker.py): its main loop on its
streams until an entry comes or its next look for a dead worker's entries (every half claim idle
time, 5 s), its heartbeat on the run's ``ended`` stream between two beats (four per claim idle
time, 2.5 s apart). Its sampler writes a sample once a second. These tests count what idle
processes do, in figures that do not depend on the machine's speed or load:

- wake-ups: the voluntary context switches of all the threads of a process
  (``/proc/<pid>/task/*/status``), per idle second: one each time a thread blocks again, and
  one per wait for a Redis reply. About 2.5 for an idle worker (sampler 1, heartbeat 2 per beat,
  main loop 1 or 2 per look); 5 for a parked one, which beats twice a second. A loop that polled
  every 10 ms would make 100 or more; the loops before the workers blocked (a 0.25 s heartbeat
  and a 0.25 s blocking read, and the sampler) about 13. The involuntary switches (preemptions)
  are left out: they count how busy the machine is.
- Redis commands per idle second, from the per-job Redis's ``INFO commandstats``: XREADGROUP is
  the workers' main loops alone (a blocking read per look and per unit that comes: 0.3-0.5 per
  worker), SET the heartbeats alone (0.4 per worker, parked 2). The loops before made 4 of each.

The bounds leave twice the expected figures. What the wake-ups cost in CPU depends on the
machine: ``benchmarks/idle_cost.py`` measures it.
"""

from __future__ import annotations

import time

import pytest

from helpers.dynamic import needs_redis
from helpers.idle import SLOW_ROOT_GRAPH, WORKERS, IdleRun, idle_run, parked_run
from helpers.runs import read_json

pytest.importorskip("redis")
pytestmark = needs_redis

#: wake-ups per idle second of an idle worker (the mean over the pool)
IDLE_WAKEUPS = 5.0
#: ... of a parked worker (dyn_auto_redis), which beats twice a second to resume within 0.5 s of
#: joining the pool
PARKED_WAKEUPS = 10.0
#: ... of the driver, which ticks four times a second (autoscaling, failure detection) and waits
#: for a few Redis replies on each tick: about 28
DRIVER_WAKEUPS = 60.0
#: blocking reads of the main loops, per idle second per worker
READS = 1.0
#: heartbeats, per idle second per worker
BEATS = 1.0
PARKED_BEATS = 4.0


@pytest.mark.parametrize("mapping", ["hybrid_redis", "dyn_redis"])
def test_idle_workers_block_rather_than_poll(mapping, tmp_path):
    """The root sleeps 2.5 s per item: for seconds no worker has anything to do."""
    with idle_run(tmp_path, mapping) as run:
        window = run.measure(list(run.workers().values()))
        run.finish()
    print(f"{mapping}: idle workers, {window.report()}")
    assert sum(window.wakeups) / WORKERS < IDLE_WAKEUPS, window.report()
    assert window.commands.get("xreadgroup", 0) / WORKERS < READS, window.report()
    assert window.commands.get("set", 0) / WORKERS < BEATS, window.report()
    assert read_json(run.results / "metrics.json")["pes"]["Double"]["items_in"] == 3


def test_idle_workers_keep_their_connections_through_long_blocking_reads(tmp_path):
    """Idle for 12 s, each worker blocks on Redis for 5 s at a time (half the claim idle time):
    no client may reconnect (AUTH, HELLO) meanwhile. redis-py 8's default socket timeout (5 s) cut
    those reads: every idle worker reconnected every 5 s, and left the run after a few."""
    run = IdleRun(tmp_path, SLOW_ROOT_GRAPH.replace("grouping=[0]", ""), "dyn_redis", 1, {"ROOT_DELAY": "12"})
    try:
        time.sleep(1.0)
        window = run.measure(list(run.workers().values()), seconds=10.0)
        run.finish()
    finally:
        run.close()
    print(f"dyn_redis: idle workers, {window.report()}")
    assert window.commands.get("auth", 0) == 0 and window.commands.get("hello", 0) == 0, window.report()


def test_parked_workers_and_the_driver_block_rather_than_poll(tmp_path):
    """One 7 s task under dyn_auto_redis: the pool stays at one worker, three are parked."""
    with parked_run(tmp_path) as (run, parked):
        window = run.measure([*parked, run.driver])
        assert run.parked() == parked, "the pool changed during the measurement"
        run.finish()
    print(f"dyn_auto_redis: parked workers and the driver, {window.report()}")
    *workers, driver = window.wakeups
    assert sum(workers) / len(workers) < PARKED_WAKEUPS, window.report()
    assert driver < DRIVER_WAKEUPS, window.report()
    # the parked workers' heartbeats, and the working one's
    assert window.commands.get("set", 0) / WORKERS < PARKED_BEATS, window.report()
