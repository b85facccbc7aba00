"""``d4p-hpc status`` without JOB lists what has not recorded its end: a finished ``d4p-hpc run``
(which writes no state markers) is not listed; a run gone without recording its end is."""

from __future__ import annotations

import json

from helpers.runs import EXAMPLES, cli, explain


def test_status_lists_unfinished_runs_only(tmp_path):
    root = tmp_path / "d4p-results"
    for name in ("done", "killed"):
        done = cli("run", EXAMPLES / "word_count.py", "-i", 5, "--results", root / name)
        assert done.returncode == 0, explain(done)
    record = json.loads((root / "killed" / "run.json").read_text())
    # what a SIGKILL leaves: the record still says RUNNING, and its process is gone
    record.update(state="RUNNING", ended=None, exit_code=None, pid=2**22 + 7, pid_token="gone")
    (root / "killed" / "run.json").write_text(json.dumps(record))
    listed = cli("status", "--wide", "--results-root", root)  # whole reasons
    assert listed.returncode == 0, explain(listed)
    rows = listed.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["killed"], explain(listed)
    assert "FAILED" in rows[0] and "gone without recording its end" in rows[0]
    every = cli("list", "--results-root", root)
    assert sorted(row.split()[0] for row in every.stdout.splitlines()[1:]) == ["done", "killed"], explain(every)
