"""The checked readers of d4p_hpc.results: a record of the wrong shape is one line naming the file
and the field; samples that are not samples are skipped and counted; output parts are counted
without unpickling."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from d4p_hpc import results
from d4p_hpc.errors import D4pHpcError, ResultsError

RUN = {"graph": "/g.py", "mapping": "multi", "processes": 2, "state": "COMPLETED", "exit_code": 0, "error": None,
       "pe_ids": {"A": "A0"}, "segments": [], "wall_seconds": 1.5, "items": 10, "checkpoint_every": None}
SAMPLE = {"t": 100.0, "cpu": 0.5, "rss": 20.1, "sink": 3, "i": [["A", 0, 5, 5, 0.25]]}


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_a_record_of_its_declared_shape_is_read(tmp_path):
    write(tmp_path / "run.json", {**RUN, "newer_field": [1]})  # a newer version may add fields
    assert results.read_run(tmp_path)["state"] == "COMPLETED"
    assert results.read_run(tmp_path / "nothing") is None


@pytest.mark.parametrize(("change", "said"), [
    ({"state": 5}, "field state is a JSON number (5), not one of RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT"),
    ({"processes": True}, "field processes is true or false (true), not a whole number"),
    ({"wall_seconds": "1"}, 'field wall_seconds is a JSON string ("1"), not a finite number'),
    ({"error": {"pe": 3, "process": 0, "traceback": ""}}, "field error.pe is a JSON number (3), not a string"),
    ({"error": {"pe": "A"}}, "field error.process is missing"),
    ({"pe_ids": {"A": ["x"]}}, 'field pe_ids["A"] is a JSON array, not a string'),
    ({"segments": [{"state": "LOST"}]}, "field segments[0].state is a JSON string"),
])
def test_a_field_of_the_wrong_type_is_one_line_naming_the_file_and_field(tmp_path, change, said):
    path = write(tmp_path / "run.json", {**RUN, **change})
    with pytest.raises(ResultsError) as caught:
        results.read_run(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {said}") and "\n" not in message
    assert message.endswith("move it away to read the rest of the directory")


def test_numbers_beyond_a_float_and_infinities_are_not_numbers(tmp_path):
    write(tmp_path / "state" / "finished", '{"state": "FAILED", "epoch": 1e400}')
    with pytest.raises(ResultsError, match="field epoch is a JSON number \\(Infinity\\), not a finite number"):
        results.read_marker(tmp_path / "state" / "finished")
    write(tmp_path / "metrics.json", '{"items": ' + "9" * 30 + "}")
    with pytest.raises(ResultsError, match="field items is a JSON number"):
        results.read_metrics(tmp_path)


def test_a_spec_needs_its_spec(tmp_path):
    write(tmp_path / "spec.json", {"sources": {}})
    with pytest.raises(ResultsError, match="field spec is missing, not an object"):
        results.read_spec(tmp_path)
    write(tmp_path / "spec.json", {"spec": {"nodes": "2"}})
    with pytest.raises(ResultsError, match='field spec.nodes is a JSON string \\("2"\\), not a whole number'):
        results.read_spec(tmp_path)


def test_lines_that_are_not_samples_are_skipped_and_counted(tmp_path):
    header = {"process": 0, "host": "h", "pid": 1, "interval": 1.0, "t": 99.0}
    lines = [json.dumps(header), json.dumps(SAMPLE), '{"t": "soon", "i": []}', "\xff garbage", "[1, 2]",
             json.dumps({**SAMPLE, "t": 101.0, "i": [["A", 0, 6, 6, 0.3, 0.1]]}),  # a newer version's 6th value
             '{"t": 102, "cpu"']  # the last line, still being written
    write(tmp_path / "timeseries" / "00000.jsonl", "\n".join(lines))
    write(tmp_path / "timeseries" / "notes.jsonl", "not a process's file")
    skipped: list[str] = []
    found = results.read_series(tmp_path, skipped)
    assert list(found) == [0]
    head, samples = found[0]
    assert head == header and [s["t"] for s in samples] == [100.0, 101.0]
    assert skipped == [f"{tmp_path / 'timeseries' / '00000.jsonl'}: 3 lines of 7 skipped: not samples (changed by "
                       "hand, or cut short by a crash)"]
    assert results.last_samples(tmp_path)[0]["t"] == 101.0


def test_a_sample_file_that_cannot_be_read_is_left_out(tmp_path):
    (tmp_path / "timeseries" / "00003.jsonl").mkdir(parents=True)
    skipped: list[str] = []
    assert results.read_series(tmp_path, skipped) == {} and len(skipped) == 1
    assert results.last_samples(tmp_path) == {}


def test_graph_json_of_the_wrong_shape(tmp_path):
    write(tmp_path / "timeseries" / "graph.json", {"pes": [{"instances": 2}]})
    with pytest.raises(ResultsError, match="field pes\\[0\\].name is missing"):
        results.read_graph(tmp_path)


class Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_items_are_counted_without_unpickling_and_a_torn_part_says_where(tmp_path):
    part = tmp_path / "outputs" / "A.output" / "part-00000.pickle"
    part.parent.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    data = b"".join(pickle.dumps(v, protocol=5) for v in ({1}, {2}, Planted(marker)))
    part.write_bytes(data)
    os.chmod(part, 0o600)
    assert results.count_items(tmp_path, "A", "output") == 3 and not marker.exists()
    part.write_bytes(data[:-4])
    with pytest.raises(ResultsError, match="cannot be read past item 2 .* the items before it are intact"):
        results.count_items(tmp_path, "A", "output")


def test_a_part_that_is_a_directory_is_one_line(tmp_path):
    (tmp_path / "outputs" / "A.output" / "part-00000.jsonl").mkdir(parents=True)
    with pytest.raises(D4pHpcError) as caught:
        list(results.output_items(tmp_path, "A", "output"))
    assert "is not a regular file" in str(caught.value) and "\n" not in str(caught.value)
