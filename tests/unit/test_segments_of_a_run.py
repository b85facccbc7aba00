"""A run in several segments (issue 18, item 4): ``metrics.json`` keeps each segment's figures
(from the metrics it wrote, else from the last of its samples, killed before it could write
them, else from ``run.json``) and the run's totals are their sums, per PE and per instance; each
segment appends its samples to the same files, thinned apart from the earlier ones'."""

import json

import pytest

from d4p_hpc.mappings.runtime import totals


def _instance(pe, instance, process, items_in, items_out, busy, blocked=0.0):
    return {"pe": pe, "instance": instance, "process": process, "items_in": items_in, "items_out": items_out,
            "busy_seconds": busy, "blocked_seconds": blocked}


def test_a_segment_killed_before_its_metrics_is_counted_from_its_last_samples(tmp_path):
    first = totals.entry(1, {"job_id": "j1", "state": "TIMEOUT", "started": "2026-01-01T00:00:00+00:00"}, 10.0,
                         [_instance("Read", 0, 0, 1, 100, 0.5, 4.0), _instance("Work", 0, 1, 100, 100, 9.0)],
                         [{"process": 0, "host": "a", "pid": 1, "max_rss_mb": 20.0, "state": "TIMEOUT"}], {})
    (tmp_path / "metrics.json").write_text(json.dumps({"items": 101, "segments": [first]}))
    series = tmp_path / "timeseries"
    series.mkdir()
    # segment 2 was killed: what its processes sampled last is what it did
    for proc, rows in ((0, [["Read", 0, 1, 50, 0.2, 2.0, None]]), (1, [["Work", 0, 40, 40, 3.5, 0.0, None]])):
        lines = [{"process": proc, "host": "a", "pid": 9, "interval": 1.0, "t": 100.0, "segment": 2, "cpu0": 0.1},
                 {"t": 101.0, "seg": 2, "cpu": 0.1, "rss": 30.0, "sink": 0, "i": rows},
                 {"t": 104.0, "seg": 2, "cpu": 0.2, "rss": 31.0, "sink": 0, "i": rows}]
        (series / f"{proc:05d}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    earlier = [{"job_id": "j1", "state": "TIMEOUT", "started": "2026-01-01T00:00:00+00:00", "wall_seconds": 10.0},
               {"job_id": "j2", "state": "FAILED", "started": "1970-01-01T00:01:40+00:00"},
               {"job_id": "j3", "state": "FAILED", "started": None, "wall_seconds": 2.0, "items": 7}]
    found = totals.earlier(tmp_path, earlier)
    assert [(e["segment"], e["source"]) for e in found] == [(1, "metrics.json"), (2, "samples"), (3, "run.json")]
    assert found[1]["items"] == 41 and found[1]["wall_seconds"] == pytest.approx(4.0)
    assert [p["max_rss_mb"] for p in found[1]["process_list"]] == [31.0, 31.0]
    assert (found[2]["wall_seconds"], found[2]["items"], found[2]["instances"]) == (2.0, 7, [])

    current = totals.entry(4, {"job_id": "j4", "state": "COMPLETED"}, 5.0,
                           [_instance("Read", 0, 0, 0, 0, 0.0), _instance("Work", 0, 1, 60, 60, 5.0)], [],
                           {"backlog_peak": 12, "backlog_limit": 64, "redeliveries": 1})
    run = totals.combine([*found, current], ["Read", "Work"])
    assert run["items"] == 101 + 41 + 7 + 60
    assert run["wall_seconds"] == pytest.approx(10.0 + 4.0 + 2.0 + 5.0)
    assert run["items_per_second"] == round(209 / 21.0, 2)
    assert list(run["pes"]) == ["Read", "Work"]
    assert run["pes"]["Work"]["items_in"] == 200 and run["pes"]["Work"]["busy_seconds"] == pytest.approx(17.5)
    assert run["pes"]["Read"]["blocked_seconds"] == pytest.approx(6.0)
    assert run["pes"]["Work"]["instances"] == [_instance("Work", 0, 1, 200, 200, 17.5)]
    assert (run["backlog_peak"], run["backlog_limit"], run["redeliveries"]) == (12, 64, 1)


class _Counters:
    def __init__(self):
        self.n = 0
        self.written = 0

    def stats(self):
        self.n += 1
        return [{"pe": "P", "instance": 0, "items_in": self.n, "items_out": self.n, "busy_seconds": 0.0,
                 "blocked_seconds": 0.5, "done": False}]


def test_a_later_segment_appends_its_samples_and_thins_only_its_own(tmp_path, monkeypatch):
    from d4p_hpc.mappings.runtime import sampler

    monkeypatch.setattr(sampler, "MAX_LINES", 50)
    path = tmp_path / "00000.jsonl"
    first = sampler.Sampler(path, 0, _Counters(), _Counters(), 1.0, segment=1)
    for _ in range(30):
        first.sample()
    first._fh.write('{"t": 1, "seg": 1, "cpu"')  # killed in the middle of a line
    first._fh.close()
    earlier = path.read_text()
    second = sampler.Sampler(path, 0, _Counters(), _Counters(), 1.0, segment=2)
    for _ in range(500):
        second.sample()
    second._fh.close()
    text = path.read_text()
    assert text.startswith(earlier + "\n"), "the earlier segment's lines are kept as they were"
    records = [json.loads(line) for line in text[len(earlier) + 1:].splitlines()]
    head, samples = records[0], records[1:]
    assert (head["segment"], head["process"]) == (2, 0) and "cpu0" in head
    assert len(samples) <= 50 and {s["seg"] for s in samples} == {2}
    assert samples[-1]["i"][0] == ["P", 0, 500, 500, 0.0, 0.5, False], "the newest sample survives the thinning"
    assert sampler.segment(tmp_path) == 1  # no run.json: the first
    (tmp_path / "run.json").write_text(json.dumps({"segments": [{}, {}]}))
    assert sampler.segment(tmp_path) == 3
