"""How the dynamic mappings cut tasks into queue entries: the broker's cost per item rests on it."""

from __future__ import annotations

import os
import pickle

from d4p_hpc.mappings.dynamic.tasks import (ENTRY_BYTES, ENTRY_TASKS, QUICK_ENTRY_TASKS, SLOW_UNIT, chunk, cut, pack,
                                            unit_seconds)
from d4p_hpc.mappings.redis.keys import pe_costs


def sizes(entries: list[list]) -> list[int]:
    return [len(entry) for entry in entries]


def test_tasks_of_unknown_cost_travel_in_entries_of_128_and_a_short_list_spreads_over_the_pool():
    assert sizes(chunk(list(range(1000)), workers=2)) == [128] * 7 + [104]
    assert sizes(chunk(list(range(40)), workers=4)) == [5] * 8


def test_quick_tasks_fill_entries_to_a_unit_of_work_up_to_the_cap_given():
    tasks = list(range(20_000))
    assert sizes(chunk(tasks, workers=8, task_seconds=1e-3)) == [128] * 156 + [32]
    assert sizes(chunk(tasks, workers=8, task_seconds=20e-6)) == [128] * 156 + [32]  # ENTRY_TASKS unless told
    assert sizes(chunk(tasks, workers=8, task_seconds=20e-6, most=QUICK_ENTRY_TASKS)) == [2500] * 8
    assert max(sizes(chunk(tasks, workers=8, task_seconds=1e-7, most=QUICK_ENTRY_TASKS))) == QUICK_ENTRY_TASKS
    assert sizes(chunk(list(range(1000)), workers=8, task_seconds=1e-3)) == [63] * 15 + [55]  # 2 per worker, not 50
    # slow tasks: the spread over the pool wins
    assert sizes(chunk(list(range(16)), workers=8, task_seconds=1.0)) == [1] * 16


def test_a_large_pool_gets_longer_units_so_that_its_commits_keep_within_their_share_of_redis():
    assert unit_seconds(1) == unit_seconds(33) == SLOW_UNIT
    assert round(unit_seconds(1_000), 3) == 1.5
    assert round(unit_seconds(10_000), 3) == 15.0
    # at 10,000 workers, 1 ms tasks go in entries of 15,000: each worker commits every 15 s
    assert sizes(chunk(list(range(30_000)), workers=10_000, task_seconds=1e-3, most=QUICK_ENTRY_TASKS)) == \
        [15_000, 15_000]


def test_an_entry_larger_than_its_byte_budget_is_halved_until_each_part_fits_or_holds_one_task():
    big = b"x" * (ENTRY_BYTES // 3)
    entry = [(7, "input", big + bytes([k])) for k in range(10)]  # distinct: pickle would share one
    payloads = pack(entry)
    assert all(len(p) <= ENTRY_BYTES for p in payloads)
    assert [task for p in payloads for task in pickle.loads(p)] == entry
    assert len(payloads) == 6  # 10 -> 5 + 5, each 5 -> 2 + 3, each 3 -> 1 + 2
    huge = [(7, "input", b"y" * (2 * ENTRY_BYTES))]
    assert [pickle.loads(p) for p in pack(huge)] == [huge]
    small = list(range(ENTRY_TASKS))
    assert [pickle.loads(p) for p in pack(small)] == [small]


def test_the_unit_of_work_can_be_set_for_the_run(monkeypatch):
    monkeypatch.setenv("D4P_HPC_UNIT_SECONDS", "4")
    assert unit_seconds(32) == 4.0
    assert sizes(chunk(list(range(8000)), workers=32, task_seconds=1e-3, most=QUICK_ENTRY_TASKS)) == [4000, 4000]


def test_entries_are_filled_past_128_only_by_what_their_own_pes_cost():
    """A quick PE's cost (the unit that wrote the tasks, the run's mean) would pack thousands of a
    slow PE's tasks into one entry: without a measure of every PE of the tasks, 128 at most."""
    pe_of = {10: 1, 20: 2}.__getitem__
    quick = [(10, "input", k) for k in range(8000)]
    assert sizes(cut(quick, 8, pe_of, {1: 20e-6}, None)) == [2499] * 3 + [503]  # (the mean, in floating point)
    assert sizes(cut(quick, 8, pe_of, {}, 20e-6)) == [128] * 62 + [64]
    slow_after_quick = quick[:4000] + [(20, "input", k) for k in range(4000)]
    assert max(sizes(cut(slow_after_quick, 8, pe_of, {1: 20e-6}, 20e-6))) == ENTRY_TASKS
    mixed = cut(slow_after_quick, 8, pe_of, {1: 20e-6, 2: 0.01}, None)  # mean 5 ms: SLOW_UNIT holds 9
    assert sizes(mixed) == [ENTRY_TASKS] * 62 + [64]  # two entries per worker come first
    assert cut([], 8, pe_of, {1: 1.0}, None) == []


def test_the_pools_costs_per_pe_are_read_from_the_work_hash():
    work = {b"tasks": b"12", b"busy": b"3.0", b"backlog": b"7", b"c:1": b"0.05", b"c:12": b"1.25"}
    assert pe_costs(work) == {1: 0.05, 12: 1.25}


def test_a_long_entry_goes_to_redis_compressed_when_that_pays_and_reads_back_whole():
    from d4p_hpc.mappings.redis.broker import SQUEEZE_BYTES, entry_items, squeeze

    quick = [(3, "input", k) for k in range(15_000)]  # a pool of 10,000's entry of 1 ms tasks
    raw = pickle.dumps(quick, protocol=5)
    assert len(raw) > SQUEEZE_BYTES and len(squeeze(raw)) < len(raw) // 4
    assert entry_items(squeeze(raw)) == quick
    noise = [(3, "input", os.urandom(64)) for _ in range(400)]  # incompressible: sent as it is
    raw = pickle.dumps(noise, protocol=5)
    assert squeeze(raw) == raw and entry_items(raw) == noise
    small = pickle.dumps([(3, "input", 1)], protocol=5)
    assert squeeze(small) == small and entry_items(small) == [(3, "input", 1)]
