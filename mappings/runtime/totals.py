"""The figures of a run over all its segments: what :func:`~d4p_hpc.mappings.runtime.runner.end`
writes to ``metrics.json``.

A run resumed in its directory (``run --resume``, ``submit --requeue``, ``d4p-hpc resume``) runs in
*segments*, each with processes of its own whose counters start from 0. ``metrics.json`` keeps one
entry per segment under ``segments``: the segment's own metrics, or, for a segment killed before it
could write them, the last of its samples (``"source": "samples"``). At the top level it holds
their totals, which is what ``results``, ``report`` and the efficiency line show: items, busy and
blocked seconds summed per PE and per instance, wall time summed (the time between two segments,
queued or stopped, is not the run's), items/s of those, the largest backlog. Items a segment
processed after its last checkpoint are processed again by the next one, and count in both: the
totals are work done, the outputs are each written once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from d4p_hpc import results as rd
from d4p_hpc import units
from d4p_hpc.errors import ResultsError

#: the per-instance counters, summed per PE and over segments
COUNTERS = ("items_in", "items_out", "busy_seconds", "blocked_seconds")
#: the dynamic mappings' own figures summed over segments, and those whose largest is the run's
SUMMED = ("redeliveries", "truncated_parts")
PEAKS = ("backlog_peak", "pool_max", "redis_used_memory_peak_mb")
#: what a segment's entry holds besides the mapping's own figures
ENTRY = ("segment", "job_id", "state", "started", "source", "wall_seconds", "items", "items_per_second", "instances",
         "process_list")


def pe_sums(instances: list[dict], order: list[str]) -> dict[str, dict]:
    """Per PE, in ``order`` (the pipeline's), its instances and their summed counters."""
    pes: dict[str, dict] = {pe: {"instances": [], **dict.fromkeys(COUNTERS, 0)} for pe in order}
    for inst in sorted(instances, key=lambda i: (i["instance"], i["process"])):
        pe = pes.setdefault(inst["pe"], {"instances": [], **dict.fromkeys(COUNTERS, 0)})
        pe["instances"].append(inst)
        for k in COUNTERS:
            pe[k] += inst.get(k, 0)
    for pe in pes.values():
        pe["busy_seconds"] = round(pe["busy_seconds"], 6)
        pe["blocked_seconds"] = round(pe["blocked_seconds"], 6)
    return {name: pe for name, pe in pes.items() if pe["instances"]}


def entry(number: int, record: dict, wall: float | None, instances: list[dict], process_list: list[dict],
          extra: dict, source: str = rd.Layout.METRICS) -> dict:
    """One segment's figures: ``record`` is its run record (or what ``run.json`` kept of it)."""
    items = sum(i["items_in"] for i in instances)
    return {"segment": number, "job_id": record.get("job_id"), "state": record.get("state"),
            "started": record.get("started"), "source": source,
            "wall_seconds": round(wall, 6) if wall is not None else None, "items": items,
            "items_per_second": round(items / wall, 2) if wall else None,
            "instances": instances, "process_list": process_list, **extra}


def earlier(results: Path, segments: list[dict]) -> list[dict]:
    """The entries of the segments before the one running now (``segments``: ``run.json``'s), from
    the ``metrics.json`` the last of them left, else from their samples, else from ``run.json``."""
    try:
        previous: dict = dict(rd.read_metrics(results) or {})
    except ResultsError:  # cut short by the segment's end: the samples tell what it did
        previous = {}
    known = {e.get("segment"): e for e in previous.get("segments") or [] if isinstance(e, dict)}
    if previous and not known and segments:  # written by d4p-hpc 0.2, one segment at the top level
        instances = [i for pe in previous.get("pes", {}).values() for i in pe.get("instances", [])]
        known[len(segments)] = entry(len(segments), segments[-1], previous.get("wall_seconds"), instances,
                                     previous.get("process_list") or [], {})
    found = []
    for number, record in enumerate(segments, 1):
        found.append(known.get(number) or _from_samples(results, number, record) or
                     {**entry(number, record, record.get("wall_seconds"), [], [], {}, rd.Layout.RUN),
                      "items": record.get("items") or 0})
    return found


def _from_samples(results: Path, number: int, record: dict) -> dict | None:
    """Segment ``number``'s figures from the last sample of each of its processes (a segment killed
    before it wrote its metrics); None without samples of it."""
    try:
        series = rd.read_series(results)
        last: dict[int, dict] = {}
        rss: dict[int, float] = {}
        for proc, (_head, samples) in series.items():
            for s in samples:
                if s.get("seg", 1) == number:
                    last[proc] = s
                    rss[proc] = max(rss.get(proc, 0.0), float(s.get("rss") or 0.0))
        if not last:
            return None
        instances = [{"pe": row[0], "instance": row[1], "process": proc, "items_in": row[2], "items_out": row[3],
                      "busy_seconds": row[4], "blocked_seconds": row[5] if len(row) > 5 else 0.0}
                     for proc, s in last.items() for row in s["i"]]
        started = units.epoch(record.get("started"))
        wall = max(s["t"] for s in last.values()) - started if started else None
        hosts = {proc: head.get("host") for proc, (head, _samples) in series.items()}
        process_list = [{"process": proc, "host": hosts.get(proc), "pid": None, "max_rss_mb": rss[proc],
                         "state": record.get("state")} for proc in sorted(last)]
    except (ResultsError, LookupError, TypeError, ValueError):
        return None  # samples that cannot be read: the segment's figures stay unknown
    return entry(number, record, wall, instances, process_list, {}, "samples")


def combine(entries: list[dict], order: list[str]) -> dict:
    """The run's totals over ``entries``: wall time, items, items/s, per PE and per instance."""
    merged: dict[tuple, dict] = {}
    for e in entries:
        for inst in e.get("instances") or []:
            key = (inst["pe"], inst["instance"], inst["process"])
            into = merged.setdefault(key, {"pe": inst["pe"], "instance": inst["instance"],
                                           "process": inst["process"], **dict.fromkeys(COUNTERS, 0)})
            for k in COUNTERS:
                into[k] += inst.get(k, 0)
    for into in merged.values():
        into["busy_seconds"] = round(into["busy_seconds"], 6)
        into["blocked_seconds"] = round(into["blocked_seconds"], 6)
    walls = [e["wall_seconds"] for e in entries if e.get("wall_seconds") is not None]
    wall = sum(walls)
    items = sum(e.get("items") or 0 for e in entries)
    totals: dict[str, Any] = {"wall_seconds": round(wall, 6), "items": items,
                              "items_per_second": round(items / wall, 2) if wall > 0 else None,
                              "pes": pe_sums(list(merged.values()), order)}
    # the mapping's own figures (backlog, pool) of the segment running now, and over the run where they add up
    totals.update({k: v for k, v in entries[-1].items() if k not in ENTRY})
    for name in SUMMED:
        if any(name in e for e in entries):
            totals[name] = sum(e.get(name) or 0 for e in entries)
    for name in PEAKS:
        if any(name in e for e in entries):
            totals[name] = max(e.get(name) or 0 for e in entries)
    return totals
