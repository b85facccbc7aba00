"""Sweeps (issue #20) through the real ``d4p-hpc`` command line on the local scheduler.

What is proven, and how:

* a 6-task sweep with ``--max-parallel 2`` never runs more than 2 tasks at once: from every task's
  ``state/started`` and ``state/finished`` epochs (whole seconds, taken as half-open intervals,
  which can only undercount a real overlap), each task made to last over a second by its graph so
  that tasks run at once could not hide; one task, whose line sets an env var naming a marker file
  that is absent, fails: ``wait`` exits 1, ``status`` says FAILED with 5 COMPLETED; once the test
  has made the file, ``resume SWEEP --failed`` reruns that task alone (one new array of that task,
  its TRIES 2, the others' TRIES 1 and their ``state/started`` byte for byte as before, its first
  attempt archived as a segment) and the sweep COMPLETES; each task's ``results --show`` items
  equal, as a multiset, those of a plain ``d4p-hpc run`` with the task's graph, mapping, process
  count, iterations and env;
* bad input is one ``Error:`` line, exit 2, with no results root, no index entry and no process
  left: an empty file, a malformed line (its number named, blank and comment lines counted), an
  unknown key, ``processes`` above the job's tasks, ``--max-parallel 0``, ``-d`` with ``data`` in
  the lines, ``--max-parallel`` without ``--sweep``, a missing file, a CSV with an unknown column;
* a CSV sweep sets each task's env from its ``env.NAME`` column (seen in the outputs);
  ``--dry-run`` prints the array script and makes nothing;
* ``cancel SWEEP --tasks 1`` of a task queued behind ``--max-parallel 1`` (task 0 held by a gate
  file the test opens only after the cancel) ends it CANCELLED "before it started", never started,
  while the others COMPLETE; ``cancel SWEEP`` of a running sweep (tasks held by a gate never opened)
  ends every task CANCELLED; in both, no process of the sweep is left (its tasks' and runner's pids,
  and any process naming its directory); the tasks still queued when a whole sweep is cancelled
  never start (the cancel marks the pending tasks before it stops the running ones, whose freed slots
  the local runner would otherwise fill);
* ``list`` shows a sweep in one line, ``results SWEEP --show PE.OUTPUT`` gives each item with its
  task's index, name and values, ``logs SWEEP --task 0`` prints the task's ``job.out``.
* ``--requeue`` is per task: a task that outlasts its walltime is continued by successor jobs in
  its own folder, its outputs exact (examples/long_count.py).

The graph is tests/data/g_sweep_squares.py (its env variables steer failure, duration and gates).
Every wait is a poll with a deadline; nothing asserts a time or a rate. Each test has its own
working directory, results root and index of jobs, and kills whatever it left under its folder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from helpers.runs import DATA, canon, d4p_hpc_cmd, explain, processes_mentioning, wait_for
from helpers.runs import cli as run_cli

from d4p_hpc import liveness

GRAPH = DATA / "g_sweep_squares.py"
OUTPUT = "Square.output"
#: a generous bound on any one wait: a loaded 2-core machine, never a timing assertion
DEADLINE = 180


class Place:
    """A test's working directory, index of jobs and folder."""

    def __init__(self, tmp: Path, work: Path) -> None:
        self.tmp = tmp
        self.work = work
        self.root = work / "d4p-results"
        self.index = tmp / "state" / "d4p-hpc" / "jobs"

    def write(self, name: str, text: str) -> Path:
        path = self.work / name
        path.write_text(text)
        return path

    def d4p(self, *args, env: dict | None = None) -> subprocess.CompletedProcess:
        """``d4p-hpc ARGS`` in the working directory."""
        return run_cli(*args, cwd=self.work, env=env, timeout=DEADLINE)

    def submit(self, sweep_file: Path, *options) -> tuple[str, Path]:
        """Submit the test graph as a sweep on the local scheduler; its id and directory."""
        proc = self.d4p("submit", GRAPH, "--scheduler", "local", "--sweep", sweep_file, *options)
        assert proc.returncode == 0, explain(proc)
        said = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
        assert re.fullmatch(r"sweep-[0-9a-f]{8}", said["sweep"]), proc.stdout
        directory = Path(said["results"])
        assert directory.parent == self.root and directory.name.endswith(said["sweep"]), proc.stdout
        return said["sweep"], directory

    def nothing_made(self) -> None:
        """No results root, no index entry, no job script, no process of the test's folder."""
        assert not self.root.exists(), sorted(self.root.rglob("*"))
        assert not self.index.is_dir() or not list(self.index.iterdir())
        assert not list(self.tmp.rglob("job.sh")) and not list(self.tmp.rglob("sweep.json"))
        assert not processes_mentioning(f"{self.tmp}/")


@pytest.fixture
def place(tmp_path, isolated_config, monkeypatch) -> Place:
    """No user config, a working directory and an index of jobs of the test's own; afterwards,
    whatever the test left running under its folder is killed."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in ("SWEEP_TAG", "SWEEP_FAIL_UNLESS", "SWEEP_MIN_SECONDS", "SWEEP_GATE"):
        monkeypatch.delenv(name, raising=False)
    yield Place(tmp_path, isolated_config)
    for pid in processes_mentioning(f"{tmp_path}/"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def jsonl(*tasks: dict) -> str:
    return "".join(json.dumps(t) + "\n" for t in tasks)


def marker(directory: Path, index: int, name: str) -> dict | None:
    """Task ``index``'s ``state/<name>`` marker, or None while there is none."""
    path = directory / "tasks" / str(index) / "state" / name
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # (markers are written whole, by a rename)
        return None


def task_table(place: Place, sweep: str) -> tuple[str, dict[int, dict[str, str]]]:
    """``status SWEEP --tasks -l``: its summary line and each task's row by column name."""
    proc = place.d4p("status", sweep, "--tasks", "-l")
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.splitlines()
    header = next(k for k, line in enumerate(lines) if line.startswith("TASK "))
    names = lines[header].split()
    starts = [lines[header].index(f"{n} " if n != names[-1] else n) for n in names]
    rows = {}
    for line in lines[header + 1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows[int(cells[0])] = dict(zip(names, cells, strict=True))
    return lines[0], rows


def wait_sweep(place: Place, sweep: str) -> subprocess.CompletedProcess:
    proc = place.d4p("wait", sweep, "--timeout", DEADLINE - 30)  # (its own error before the command's kill)
    assert proc.returncode in (0, 1), explain(proc)
    return proc


def shown(place: Place, what: str) -> list[dict]:
    """The JSON lines of ``results WHAT --show Square.output``."""
    proc = place.d4p("results", what, "--show", OUTPUT)
    assert proc.returncode == 0, explain(proc)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def together(commands: list[tuple[list, dict]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """``d4p-hpc ARGV`` for each (argv, extra env), all at once; each finished process."""
    procs = [(argv, subprocess.Popen(d4p_hpc_cmd() + [str(a) for a in argv], cwd=cwd, env={**os.environ, **env},
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)) for argv, env in commands]
    done = []
    for argv, proc in procs:
        out, err = proc.communicate(timeout=DEADLINE)
        done.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return done


def most_at_once(intervals: list[tuple[int, int]]) -> int:
    """The most half-open ``[start, end)`` intervals that hold one instant (an end before a start
    at the same second)."""
    running = peak = 0
    for _, step in sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals]):
        running += step
        peak = max(peak, running)
    return peak


def records_of(directory: Path) -> list[dict]:
    """The processes the local scheduler recorded for the sweep: each task's job (or the array's
    runner while the task was queued), with what tells each from a later process given its pid."""
    return [json.loads(p.read_text()) for p in directory.glob("tasks/*/state/local.json")]


def nothing_left_running(directory: Path) -> None:
    wait_for(lambda: not processes_mentioning(str(directory)), DEADLINE)
    # (by pid and start time: on a busy machine a pid comes round again within minutes; CI saw one)
    assert not [r["pid"] for r in records_of(directory) if liveness.run_alive(r)]


def test_a_sweep_keeps_to_max_parallel_and_its_rerun_redoes_only_the_failed_task(place):
    tags = ["a", "b", "c", "d", "e", "f"]
    flag = place.tmp / "second-attempt"  # made by the test before the rerun
    lines = [{"iterations": 2 + k, "env": {"SWEEP_TAG": tag}} for k, tag in enumerate(tags)]
    lines[1]["name"] = "two"
    lines[2]["mapping"] = "simple"
    lines[3]["env"]["SWEEP_FAIL_UNLESS"] = str(flag)
    sweep, directory = place.submit(place.write("sweep.jsonl", jsonl(*lines)), "--max-parallel", "2",
                                    "--setup", "export SWEEP_MIN_SECONDS=1.1")

    proc = wait_sweep(place, sweep)
    assert proc.returncode == 1 and f"FAILED {directory}" in proc.stdout, explain(proc)
    assert f"d4p-hpc resume {sweep} --failed" in proc.stderr, explain(proc)
    summary, rows = task_table(place, sweep)
    assert summary == f"sweep {sweep} (g_sweep_squares): FAILED: 5 COMPLETED, 1 FAILED (6 tasks)", summary
    assert [rows[k]["STATE"] for k in range(6)] == ["COMPLETED"] * 3 + ["FAILED"] + ["COMPLETED"] * 2, rows
    assert f"failing on purpose: {flag} is absent" in rows[3]["REASON"], rows[3]
    assert rows[1]["NAME"] == "two" and {rows[k]["TRIES"] for k in range(6)} == {"1"}, rows

    # never more than 2 at once: each task lasted over a second, so each interval holds a second
    intervals = [(marker(directory, k, "started")["epoch"], marker(directory, k, "finished")["epoch"])
                 for k in range(6)]
    assert all(end > start for start, end in intervals), intervals
    assert most_at_once(intervals) <= 2, intervals

    before = {k: (directory / "tasks" / str(k) / "state" / "started").read_bytes() for k in range(6)}
    flag.write_text("")
    proc = place.d4p("resume", sweep, "--failed")
    assert proc.returncode == 0 and proc.stdout.strip() == f"sweep {sweep}: 1 task submitted again: 3", explain(proc)
    proc = wait_sweep(place, sweep)
    assert proc.returncode == 0 and f"COMPLETED {directory}" in proc.stdout, explain(proc)
    summary, rows = task_table(place, sweep)
    assert summary == f"sweep {sweep} (g_sweep_squares): COMPLETED: 6 COMPLETED (6 tasks)", summary
    assert [rows[k]["TRIES"] for k in range(6)] == ["1", "1", "1", "2", "1", "1"], rows
    after = {k: (directory / "tasks" / str(k) / "state" / "started").read_bytes() for k in range(6)}
    assert {k for k in range(6) if after[k] != before[k]} == {3}
    record = json.loads((directory / "sweep.json").read_text())
    assert [a["tasks"] for a in record["arrays"]] == [list(range(6)), [3]], record["arrays"]
    first = json.loads((directory / "tasks/3/state/segments/001/finished").read_text())
    assert first["state"] == "FAILED" and (directory / "tasks/3/state/segments/001/started").read_bytes() == before[3]

    # each task's items equal a plain run's with the same graph, mapping, processes, iterations and env
    items = shown(place, sweep)
    assert {(i["task"], i["name"]) for i in items} == {(k, "two" if k == 1 else str(k)) for k in range(6)}
    plain = []
    for k, line in enumerate(lines):
        spec = json.loads((directory / "tasks" / str(k) / "spec.json").read_text())["spec"]
        assert spec["iterations"] == line["iterations"] and spec["mapping"] == line.get("mapping", spec["mapping"])
        plain.append((["run", GRAPH, "-m", spec["mapping"], "-n", spec["nodes"] * spec["tasks_per_node"],
                       "-i", line["iterations"], "--results", place.tmp / f"plain-{k}"], line["env"]))
    for proc in together(plain, place.work):
        assert proc.returncode == 0, explain(proc)
    for proc in together([(["results", place.tmp / f"plain-{k}", "--show", OUTPUT], {}) for k in range(6)],
                         place.work):
        assert proc.returncode == 0, explain(proc)
        k = int(proc.args[1].name.split("-")[1])
        want = Counter(canon(json.loads(line)) for line in proc.stdout.splitlines())
        got = Counter(canon(i["item"]) for i in items if i["task"] == k)
        assert got == want and sum(want.values()) == lines[k]["iterations"], (k, got, want)
        assert {i["item"][2] for i in items if i["task"] == k} == {tags[k]}
    nothing_left_running(directory)


BAD = {
    "an empty file": ({"s.jsonl": ""}, ["--sweep", "s.jsonl"],
                      "Error: sweep file s.jsonl holds no task: write one JSON object (or CSV row) per task"),
    "only blank and comment lines": ({"s.jsonl": "\n# none yet\n\n"}, ["--sweep", "s.jsonl"], "holds no task"),
    "a malformed line": ({"s.jsonl": '{"iterations": 2}\n\n# the next one is broken\n{"iterations": 3,}\n'},
                         ["--sweep", "s.jsonl"], "Error: s.jsonl, line 4: not a JSON object"),
    "an unknown key": ({"s.jsonl": '{"iterations": 2}\n{"iterations": 2, "nodes": 3}\n'}, ["--sweep", "s.jsonl"],
                       "Error: s.jsonl, line 2: unknown key 'nodes'; a task may set name, data, iterations"),
    "processes above the job's tasks": ({"s.jsonl": '{"processes": 2}\n{"processes": 4}\n'},
                                        ["--sweep", "s.jsonl", "--tasks-per-node", "2"],
                                        "s.jsonl, line 2 (task 1): processes 4 does not fit the job's 1 node x "
                                        "2 tasks: give at most 2"),
    "max-parallel 0": ({"s.jsonl": '{"iterations": 2}\n'}, ["--sweep", "s.jsonl", "--max-parallel", "0"],
                       "Error: --max-parallel must be at least 1 (tasks running at once), not 0"),
    "-d and data in the lines": ({"s.jsonl": '{"iterations": 1}\n{"data": {"Numbers": 2}}\n'},
                                 ["--sweep", "s.jsonl", "-d", '{"Numbers": 3}'],
                                 "Error: -d/--data was given, and data is set by line 2 of "),
    "max-parallel without a sweep": ({}, ["-i", "3", "--max-parallel", "2"],
                                     "Error: --max-parallel is for a sweep: give --sweep FILE too"),
    "a missing sweep file": ({}, ["--sweep", "nowhere.jsonl"], "Error: sweep file nowhere.jsonl does not exist"),
    "a CSV with an unknown column": ({"s.csv": "name,iterations,colour\na,2,red\n"}, ["--sweep", "s.csv"],
                                     "Error: s.csv, line 1: unknown column 'colour'; the columns are name, data"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sweep_input_is_one_error_line_and_nothing_is_queued_or_made(place, case):
    files, options, message = BAD[case]
    for name, text in files.items():
        place.write(name, text)
    proc = place.d4p("submit", GRAPH, "--scheduler", "local", *options)
    assert proc.returncode == 2 and proc.stdout == "", explain(proc)
    said = proc.stderr.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("Error: ") and message in said[0], explain(proc)
    place.nothing_made()


CSV = "name,iterations,env.SWEEP_TAG\nlow,2,x\nhigh,3,y z\n"


def test_dry_run_of_a_sweep_prints_its_array_script_and_queues_nothing(place):
    proc = place.d4p("submit", GRAPH, "--scheduler", "local", "--sweep", place.write("s.csv", CSV), "--dry-run")
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.startswith("#!/bin/bash\n") and "d4p_tasks=(0 1)\n" in proc.stdout, proc.stdout
    assert "D4P_ARRAY_INDEX" in proc.stdout and 'exec bash "$d4p_dir/job.sh"' in proc.stdout, proc.stdout
    assert "local sweep g_sweep_squares: 2 tasks in 1 job array" in proc.stderr, explain(proc)
    place.nothing_made()


def test_a_csv_sweep_sets_each_tasks_env_and_list_results_and_logs_show_it(place):
    sweep, directory = place.submit(place.write("s.csv", CSV), "--wait")
    assert (directory / "sweep-file.csv").read_text() == CSV
    summary, rows = task_table(place, sweep)
    assert summary == f"sweep {sweep} (g_sweep_squares): COMPLETED: 2 COMPLETED (2 tasks)", summary
    assert [rows[k]["NAME"] for k in (0, 1)] == ["low", "high"], rows

    # results --show: each item with its task's index, name and values
    items = shown(place, sweep)
    values = {0: {"iterations": 2, "env": {"SWEEP_TAG": "x"}}, 1: {"iterations": 3, "env": {"SWEEP_TAG": "y z"}}}
    assert sorted((i["task"], i["item"][0]) for i in items) == [(0, 1), (0, 2), (1, 1), (1, 2), (1, 3)], items
    for i in items:
        task = i.pop("task")
        assert i == {"name": ["low", "high"][task], **values[task], "item": i["item"]}, i
        n, square, tag = i["item"]
        assert square == n * n and tag == values[task]["env"]["SWEEP_TAG"], i

    # list: the sweep in one line, its tasks in none
    proc = place.d4p("list")
    assert proc.returncode == 0, explain(proc)
    mentions = [line for line in proc.stdout.splitlines() if sweep in line or "local-" in line]
    assert mentions == [f"sweep {sweep} (g_sweep_squares): COMPLETED: 2 COMPLETED (2 tasks)"], proc.stdout

    # logs --task 0: the task's job.out
    out = directory / "tasks" / "0" / "job.out"
    proc = place.d4p("logs", sweep, "--task", "0")
    assert proc.returncode == 0 and f"==> {out} <==\n{out.read_text()}" in proc.stdout, explain(proc)
    assert str(directory / "tasks" / "1") not in proc.stdout
    nothing_left_running(directory)


def test_cancel_of_a_task_queued_behind_max_parallel_ends_it_before_it_starts(place):
    gate = place.tmp / "gate"
    lines = [{"iterations": 2, "env": {"SWEEP_TAG": t}} for t in "abc"]
    sweep, directory = place.submit(place.write("s.jsonl", jsonl(*lines)), "--max-parallel", "1",
                                    "--setup", f"export SWEEP_GATE={gate}")
    wait_for(lambda: (directory / "tasks/0/run.json").exists(), DEADLINE)  # task 0 runs, held by the gate
    _, rows = task_table(place, sweep)
    assert [rows[k]["STATE"] for k in range(3)] == ["RUNNING", "PENDING", "PENDING"], rows
    assert "waiting for a free slot" in rows[1]["REASON"], rows

    proc = place.d4p("cancel", sweep, "--tasks", "1")
    assert proc.returncode == 0 and proc.stdout.strip() == f"cancel requested for 1 task of sweep {sweep}: 1", \
        explain(proc)
    _, rows = task_table(place, sweep)
    assert rows[1]["STATE"] == "CANCELLED" and "before it started" in rows[1]["REASON"], rows
    assert rows[0]["STATE"] == "RUNNING" and rows[2]["STATE"] == "PENDING", rows

    gate.write_text("")
    proc = wait_sweep(place, sweep)
    assert proc.returncode == 1 and f"CANCELLED {directory}" in proc.stdout, explain(proc)
    summary, rows = task_table(place, sweep)
    assert summary == f"sweep {sweep} (g_sweep_squares): CANCELLED: 1 CANCELLED, 2 COMPLETED (3 tasks)", summary
    assert "before it started" in rows[1]["REASON"], rows
    assert marker(directory, 1, "started") is None and not (directory / "tasks/1/outputs").exists()
    items = shown(place, sweep)
    assert sorted((i["task"], tuple(i["item"])) for i in items) == [(0, (1, 1, "a")), (0, (2, 4, "a")),
                                                                  (2, (1, 1, "c")), (2, (2, 4, "c"))], items
    nothing_left_running(directory)


def gated_sweep(place: Place, tasks: int, max_parallel: int) -> tuple[str, Path]:
    """A sweep of ``tasks`` tasks held by a gate that is never opened, once its first ``max_parallel``
    tasks run (and the others wait for a free slot)."""
    lines = [{"iterations": 2, "env": {"SWEEP_TAG": str(k)}} for k in range(tasks)]
    sweep, directory = place.submit(place.write("s.jsonl", jsonl(*lines)), "--max-parallel", max_parallel,
                                    "--setup", f"export SWEEP_GATE={place.tmp / 'never-opened'}")
    wait_for(lambda: all((directory / "tasks" / str(k) / "run.json").exists() for k in range(max_parallel)),
             DEADLINE)
    _, rows = task_table(place, sweep)
    assert [rows[k]["STATE"] for k in range(tasks)] == ["RUNNING"] * max_parallel + ["PENDING"] * (
        tasks - max_parallel), rows
    return sweep, directory


def test_cancel_of_a_running_sweep_ends_every_task_and_leaves_no_process(place):
    sweep, directory = gated_sweep(place, 4, 2)
    proc = place.d4p("cancel", sweep)
    assert proc.returncode == 0 and proc.stdout.strip() == f"cancel requested for 4 tasks of sweep {sweep}: " \
                                                           "0, 1, 2, 3", explain(proc)
    proc = wait_sweep(place, sweep)
    assert proc.returncode == 1 and f"CANCELLED {directory}" in proc.stdout, explain(proc)
    summary, rows = task_table(place, sweep)
    assert summary == f"sweep {sweep} (g_sweep_squares): CANCELLED: 4 CANCELLED (4 tasks)", summary
    nothing_left_running(directory)
    proc = place.d4p("cancel", sweep)
    assert proc.returncode == 2 and f"no task of sweep {sweep} is queued or running" in proc.stderr, explain(proc)


def test_cancel_of_a_sweep_never_starts_the_tasks_still_queued(place):
    """A task still waiting for a free slot when the whole sweep is cancelled must never start (as a
    batch system never starts a cancelled pending element): it ends CANCELLED "before it started",
    with no ``state/started`` and no run. (Found by this test: the cancel stopped the running tasks one
    by one, and the local array runner started a queued task in each slot so freed before the cancel
    reached it; the pending are now cancelled first.)"""
    sweep, directory = gated_sweep(place, 4, 2)
    proc = place.d4p("cancel", sweep)
    assert proc.returncode == 0, explain(proc)
    assert wait_sweep(place, sweep).returncode == 1
    _, rows = task_table(place, sweep)
    nothing_left_running(directory)
    started = {k: (marker(directory, k, "started") is not None, (directory / "tasks" / str(k) / "run.json").exists())
               for k in (2, 3)}
    assert started == {2: (False, False), 3: (False, False)}, (started, rows)
    assert [rows[k]["STATE"] for k in range(4)] == ["CANCELLED"] * 4, rows
    assert all("before it started" in rows[k]["REASON"] for k in (2, 3)), rows


@pytest.mark.slow
def test_a_task_with_requeue_continues_across_walltimes_to_exact_outputs(place):
    """``--requeue`` is per task: a task whose run outlasts its walltime (1 minute, warned 50 s before:
    about 10 s a segment) is continued from its checkpoint by successor jobs in its own folder, and its
    outputs are exact (each tagged line once, the counter's totals those of one uninterrupted run)."""
    from helpers.runs import EXAMPLES

    sweep_file = place.write("s.jsonl", jsonl({"name": "long", "iterations": 500}))
    proc = place.d4p("submit", EXAMPLES / "long_count.py", "-a", "graph", "--scheduler", "local", "-m", "simple",
                     "--sweep", sweep_file, "-t", "1", "--signal-seconds", "50", "--requeue", "5",
                     "--checkpoint-every", "5")
    assert proc.returncode == 0, explain(proc)
    sweep = dict(line.split(" ", 1) for line in proc.stdout.splitlines())["sweep"]
    directory = Path(dict(line.split(" ", 1) for line in proc.stdout.splitlines())["results"])
    done = place.d4p("wait", sweep)
    assert done.returncode == 0 and f"COMPLETED {directory}" in done.stdout, explain(done)
    _, rows = task_table(place, sweep)
    assert rows[0]["STATE"] == "COMPLETED" and int(rows[0]["TRIES"]) >= 2, rows  # a segment per walltime, at least
    segments = sorted((directory / "tasks" / "0" / "state" / "segments").iterdir())
    assert [json.loads((s / "finished").read_text())["state"] for s in segments] == ["TIMEOUT"] * len(segments)
    got = run_cli("results", directory / "tasks" / "0", "--show", "Count.output", cwd=place.work)
    totals = dict(json.loads(line) for line in got.stdout.splitlines())
    # 500 lines of the 4-line corpus: 125 of each
    assert totals == {"the": 375, "quick": 250, "brown": 125, "fox": 250, "jumps": 125, "over": 125, "lazy": 125,
                      "dog": 250, "sleeps": 125, "a": 125, "is": 125}, totals
    tagged = run_cli("results", directory / "tasks" / "0", "--show", "Slow.tagged", cwd=place.work)
    lines = [tuple(json.loads(line)) for line in tagged.stdout.splitlines()]
    assert len(lines) == len(set(lines)) == 2000
    nothing_left_running(directory)
