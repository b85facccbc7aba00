"""Sweeps (issue #20) on the emulated 4-node Slurm of .ci/slurm-up.sh, through the ``d4p-hpc`` command
line alone, as a user types it. The cluster's ``MaxArraySize`` is 4 (array indices 0-3).

One sweep of 10 tasks of the ``mpi`` mapping, each a job of 2 nodes x 1 rank, is followed from its
submission to its end, and what is seen on the way is recorded (the ``swept`` fixture); the tests
check it. The graph is examples/word_count.py whose first line waits while a "gate" file exists when
the task's line sets ``SWEEP_GATE`` (task 3's does): task 3 stays RUNNING, inside its graph, until the
test cancels it, which makes its cancellation deterministic without any timing. What is proven:

- the submit says in a notice that the 10 tasks are 3 arrays of at most 4; ``sweep.json`` records 3
  arrays (tasks 0-3, 4-7, 8-9) whose element ids are ``<array>_0``, ``<array>_1``... (every array
  indexed from 0), and each task's ``state/submitted`` names its element;
- with ``--max-parallel 2`` each array is throttled (``--array=0-3%2``) and waits for the one before
  (``--dependency=afterany:<previous array>``): while task 3 is held, the tasks of arrays 2 and 3 are
  PENDING with Slurm's reason "Dependency" (afterany: array 1 ending with a cancelled element lets them go);
- ``d4p-hpc cancel SWEEP --tasks 3`` of the running task cancels that element alone (Slurm's own
  record: CANCELLED; its siblings COMPLETED), the sweep ends CANCELLED and ``wait`` exits 1, naming
  the rerun command; ``d4p-hpc resume SWEEP --failed`` reruns task 3 alone, as a 4th array of one
  element ``<array>_0``, its first attempt archived as a segment; ``wait`` then exits 0, the sweep
  COMPLETED;
- every task ran over both nodes of its job and its outputs (``d4p-hpc results SWEEP --show``) equal
  those of a plain ``d4p-hpc run`` of the same graph, mapping, processes and iterations (multisets),
  and the word counts computed here;
- nothing of the sweep is left running (no process on any node, no element queued) and the arrays'
  folder holds only their scripts (each element's Slurm logs moved into its task's directory).

Without jobs: ``--dry-run`` prints the 3 arrays and queues nothing; a sweep with more tasks than the
cluster's ``MaxJobCount`` (10,000) is refused in one line naming the limit, before anything is made.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers.clusters import TIMEOUT, connect
from helpers.runs import EXAMPLES, canon, cli, explain, independent_word_counts, isolate, outputs, \
    processes_mentioning, wait_for

from d4p_hpc.results import read_metrics

# tests/conftest.py puts them in xdist group "slurm", with the other Slurm tests; those of the
# followed sweep (the ``swept`` fixture: about half a minute on the cluster) are marked slow too
pytestmark = pytest.mark.slurm

#: examples/word_count.py (imported from beside it) whose first line waits while $SWEEP_GATE exists
GATED = '''"""examples/word_count.py; with $SWEEP_GATE set, its first line waits while that file exists."""
import os
import time

from dispel4py.workflow_graph import WorkflowGraph
from word_count import CountWords, ProduceLines, SplitWords


class GatedLines(ProduceLines):
    def _process(self, inputs):
        gate = os.environ.get("SWEEP_GATE")
        if gate and self.k == 0:
            open(gate + ".reached", "w").close()
            deadline = time.monotonic() + 600
            while os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.2)
        return ProduceLines._process(self, inputs)


split = SplitWords()
split.numprocesses = 2
count = CountWords()
count.numprocesses = 3
graph = WorkflowGraph()
graph.connect(GatedLines(), "output", split, "input")
graph.connect(split, "output", count, "input")
'''
TASKS = 10
#: task i counts the words of ITERATIONS[i] lines: every task's result differs from the others'
ITERATIONS = [3 + i for i in range(TASKS)]
HELD = 3
K = 2
#: the job every task is: 2 nodes x 1 rank of mpi
JOB = ["--scheduler", "slurm", "-m", "mpi", "-N", "2", "--tasks-per-node", "1", "-t", "5"]
CHUNKS = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
NOTICE = ("notice: the Slurm cluster allows array indices up to 3 (MaxArraySize=4, scontrol show config): "
          "the 10 tasks are 3 arrays of at most 4, each waiting for the one before")


def d4p(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """``d4p-hpc ARGS`` in the user's working directory (the current one)."""
    return cli(*args, cwd=Path.cwd(), timeout=timeout)


def task_table(proc: subprocess.CompletedProcess) -> dict[int, dict]:
    """``status SWEEP --tasks -l``'s rows: task index -> state, tries, job id and reason."""
    assert proc.returncode == 0, explain(proc)
    rows = {}
    for line in proc.stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0].isdigit():
            rows[int(cells[0])] = {"state": cells[2], "tries": int(cells[3]), "job": cells[5], "reason": cells[-1]}
    assert sorted(rows) == list(range(TASKS)), proc.stdout
    return rows


def squeue(*args: str) -> list[str]:
    return subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout.splitlines()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A user of the cluster: no config, the graph files in the working directory (the current one),
    the sweep file beside them."""
    connect("slurm")
    base = tmp_path_factory.mktemp("sweeps-slurm")
    home, work = base / "home", base / "work"
    home.mkdir()
    work.mkdir()
    shutil.copy(EXAMPLES / "word_count.py", work / "word_count.py")
    (work / "gated_count.py").write_text(GATED)
    gate = base / "gate"
    with open(work / "sweep.jsonl", "w") as f:
        for i, iterations in enumerate(ITERATIONS):
            line: dict = {"name": f"t{i}", "iterations": iterations}
            if i == HELD:
                line["env"] = {"SWEEP_GATE": str(gate)}
            f.write(json.dumps(line) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, home, work)
        yield {"work": work, "base": base, "gate": gate, "job": [*JOB, "--python", sys.executable]}


@pytest.fixture(scope="module")
def swept(site) -> dict:
    """The sweep followed from its submission to its end; what was seen at each step."""
    seen: dict = {}
    plain_runs = ThreadPoolExecutor(1)
    gate = site["gate"]
    gate.touch()
    results = site["base"] / "results"
    submitted = d4p("submit", "gated_count.py", "--sweep", "sweep.jsonl", "--max-parallel", K, *site["job"],
                    "--results-root", results)
    seen["submit"] = submitted
    assert submitted.returncode == 0, explain(submitted)
    sweep_id = re.search(r"^sweep (sweep-[0-9a-f]{8})$", submitted.stdout, re.M).group(1)
    directory = Path(re.search(r"^results (.+)$", submitted.stdout, re.M).group(1))
    seen.update(id=sweep_id, directory=directory)
    try:
        seen["record"] = json.loads((directory / "sweep.json").read_text())
        seen["submitted"] = {i: json.loads((directory / "tasks" / str(i) / "state" / "submitted").read_text())
                             for i in range(TASKS)}
        # the reference, made here while the cluster runs the sweep
        reference = plain_runs.submit(plain, site["base"])

        # task 3 is inside its graph, held; arrays 2 and 3 wait for array 1, which it is part of
        last: list[str] = [""]

        def held():
            shown = d4p("status", sweep_id, "--tasks", "-l")
            rows, last[0] = task_table(shown), shown.stdout
            ended = [i for i, r in rows.items() if r["state"] not in ("PENDING", "RUNNING", "COMPLETED")]
            assert not ended, f"tasks {ended} ended before task {HELD} was cancelled:\n{shown.stdout}"
            expected = ["COMPLETED"] * HELD + ["RUNNING"] + ["PENDING"] * (TASKS - HELD - 1)
            reasons = {rows[i]["reason"] for i in range(HELD + 1, TASKS)}
            return rows if ([r["state"] for r in rows.values()] == expected and reasons == {"Dependency"}
                            and Path(f"{gate}.reached").exists()) else None
        try:
            seen["held"] = wait_for(held, TIMEOUT)
        except AssertionError as err:
            raise AssertionError(f"{err}; the sweep's status last:\n{last[0]}") from None
        seen["cancel"] = d4p("cancel", sweep_id, "--tasks", HELD)
        seen["first wait"] = d4p("wait", sweep_id, "--timeout", TIMEOUT, timeout=TIMEOUT + 60)
        seen["after cancel"] = d4p("status", sweep_id, "--tasks", "-l")
        seen["summary after cancel"] = d4p("status", sweep_id)
        seen["record after cancel"] = json.loads((directory / "sweep.json").read_text())

        gate.unlink()
        seen["resume"] = d4p("resume", sweep_id, "--failed")
        seen["second wait"] = d4p("wait", sweep_id, "--timeout", TIMEOUT, timeout=TIMEOUT + 60)
        seen["final"] = d4p("status", sweep_id, "--tasks", "-l")
        seen["summary"] = d4p("status", sweep_id)
        seen["record after resume"] = json.loads((directory / "sweep.json").read_text())
        seen["items"] = d4p("results", sweep_id, "--show", "CountWords.output")
        seen["plain"] = reference.result(timeout=TIMEOUT)
    except BaseException:
        gate.unlink(missing_ok=True)
        d4p("cancel", sweep_id)  # nothing of a failed fixture stays on the cluster
        raise
    finally:
        plain_runs.shutdown()
    return seen


def plain(base: Path) -> dict[int, Counter]:
    """iterations -> the outputs of a plain ``d4p-hpc run`` of the sweep's graph with them, as a task's
    job runs it (mpi, 2 processes)."""
    found = {}
    for iterations in sorted(set(ITERATIONS)):
        results = base / f"plain-{iterations}"
        run = d4p("run", "gated_count.py", "-m", "mpi", "-n", "2", "-i", iterations, "--results", results)
        assert run.returncode == 0, explain(run)
        found[iterations] = outputs(results)["CountWords.output"]
    return found


@pytest.mark.slow
def test_a_sweep_of_ten_tasks_is_three_arrays_each_indexed_from_zero(swept):
    submitted = swept["submit"]
    assert NOTICE in submitted.stderr.splitlines(), explain(submitted)
    assert ("slurm sweep gated_count: 10 tasks in 3 job arrays, each task a job of 2 nodes x 1 task, at most 2 at "
            "once") in submitted.stderr, explain(submitted)
    arrays = swept["record"]["arrays"]
    assert [a["tasks"] for a in arrays] == CHUNKS, arrays
    ids = [a["job_ids"][0].rsplit("_", 1)[0] for a in arrays]
    assert len(set(ids)) == 3 and all(i.isdigit() for i in ids), arrays
    for array, job in zip(arrays, ids, strict=True):
        assert array["job_ids"] == [f"{job}_{k}" for k in range(len(array["tasks"]))], arrays
    element = {t: e for a in arrays for t, e in zip(a["tasks"], a["job_ids"], strict=True)}
    assert {i: s["job_id"] for i, s in swept["submitted"].items()} == element
    scripts = [(swept["directory"] / "arrays" / f"{n}.sh").read_text() for n in (1, 2, 3)]
    assert [re.findall(r"^#SBATCH --array=(\S+)$", s, re.M) for s in scripts] == [["0-3%2"], ["0-3%2"], ["0-1%2"]]
    assert [re.findall(r"^d4p_tasks=\((.*)\)$", s, re.M) for s in scripts] == [["0 1 2 3"], ["4 5 6 7"], ["8 9"]]


@pytest.mark.slow
def test_each_array_is_throttled_to_k_and_waits_for_the_one_before(swept):
    arrays = [a["job_ids"][0].rsplit("_", 1)[0] for a in swept["record"]["arrays"]]
    dependencies = [re.findall(r"^#SBATCH --dependency=(\S+)$", (swept["directory"] / "arrays" / f"{n}.sh").read_text(),
                               re.M) for n in (1, 2, 3)]
    assert dependencies == [[], [f"afterany:{arrays[0]}"], [f"afterany:{arrays[1]}"]]
    # seen while task 3 was held (the fixture waited for it): Slurm kept arrays 2 and 3 back for array 1
    held = swept["held"]
    assert {held[i]["reason"] for i in range(HELD + 1, TASKS)} == {"Dependency"}, held
    # (the wait's lines are not counted: afterany lets Slurm start the next array while the element
    # cancelled last is still COMPLETING, which a status shows as RUNNING)


@pytest.mark.slow
def test_cancel_of_a_running_task_cancels_it_alone_and_wait_exits_1(swept):
    sweep_id = swept["id"]
    assert swept["held"][HELD]["state"] == "RUNNING"
    cancel = swept["cancel"]
    assert (cancel.returncode, cancel.stdout) == (0, f"cancel requested for 1 task of sweep {sweep_id}: 3\n"), \
        explain(cancel)
    first = swept["first wait"]
    assert first.returncode == 1, explain(first)
    assert first.stdout == f"CANCELLED {swept['directory']}\n", explain(first)
    assert f"rerun the tasks that did not complete with: d4p-hpc resume {sweep_id} --failed" in first.stderr
    assert swept["summary after cancel"].stdout.splitlines()[0] == \
        f"sweep {sweep_id} (gated_count): CANCELLED: 1 CANCELLED, 9 COMPLETED (10 tasks)"
    rows = task_table(swept["after cancel"])
    assert {i: r["state"] for i, r in rows.items()} == {i: "CANCELLED" if i == HELD else "COMPLETED"
                                                        for i in range(TASKS)}, swept["after cancel"].stdout
    # Slurm's own record: the element of task 3 alone was cancelled, its siblings of array 1 completed
    first_array = swept["record"]["arrays"][0]["job_ids"][0].rsplit("_", 1)[0]
    said = dict(line.split("|") for line in squeue("-r", "-t", "all", "-j", first_array, "-o", "%i|%T"))
    assert said == {f"{first_array}_{k}": "CANCELLED" if k == HELD else "COMPLETED" for k in range(4)}, said
    archived = swept["directory"] / "tasks" / str(HELD) / "state" / "segments" / "001"
    assert json.loads((archived / "finished").read_text())["state"] == "CANCELLED"
    assert json.loads((archived / "submitted").read_text())["job_id"] == f"{first_array}_{HELD}"


@pytest.mark.slow
def test_resume_failed_reruns_only_the_cancelled_task_and_the_sweep_completes(swept):
    sweep_id = swept["id"]
    resume = swept["resume"]
    assert (resume.returncode, resume.stdout) == (0, f"sweep {sweep_id}: 1 task submitted again: 3\n"), explain(resume)
    second = swept["second wait"]
    assert second.returncode == 0, explain(second)
    assert second.stdout == f"COMPLETED {swept['directory']}\n", explain(second)
    assert swept["summary"].stdout.splitlines()[0] == \
        f"sweep {sweep_id} (gated_count): COMPLETED: 10 COMPLETED (10 tasks)"
    before, after = swept["record after cancel"]["arrays"], swept["record after resume"]["arrays"]
    assert after[:3] == before and len(after) == 4, after
    rerun = after[3]
    assert rerun["tasks"] == [HELD] and re.fullmatch(r"\d+_0", rerun["job_ids"][0]), rerun
    script = (swept["directory"] / "arrays" / "4.sh").read_text()
    assert re.findall(r"^#SBATCH --(array|dependency)=(\S+)$", script, re.M) == [("array", "0-0%2")]
    rows = task_table(swept["final"])
    assert {i: (r["state"], r["tries"]) for i, r in rows.items()} == {
        i: ("COMPLETED", 2 if i == HELD else 1) for i in range(TASKS)}, swept["final"].stdout
    element = {t: e for a in before for t, e in zip(a["tasks"], a["job_ids"], strict=True)}
    assert {i: r["job"] for i, r in rows.items()} == {**element, HELD: rerun["job_ids"][0]}
    segments = {i: swept["directory"] / "tasks" / str(i) / "state" / "segments" for i in range(TASKS)}
    assert [p.name for p in segments[HELD].iterdir()] == ["001"]  # its cancelled attempt
    assert not any(segments[i].exists() for i in range(TASKS) if i != HELD)  # only task 3 was touched


@pytest.mark.slow
def test_every_task_ran_on_two_nodes_with_the_outputs_of_a_plain_run_of_its_parameters(swept):
    items = swept["items"]
    assert items.returncode == 0, explain(items)
    got: dict[int, Counter] = {i: Counter() for i in range(TASKS)}
    for line in items.stdout.splitlines():
        row = json.loads(line)
        assert (row["name"], row["iterations"]) == (f"t{row['task']}", ITERATIONS[row["task"]]), row
        got[row["task"]][canon(row["item"])] += 1
    for i, iterations in enumerate(ITERATIONS):
        assert got[i] == swept["plain"][iterations], (i, got[i], swept["plain"][iterations])
        assert Counter(dict((canon(w), n) for (_, w, n) in got[i])) == independent_word_counts(iterations), i
        processes = read_metrics(swept["directory"] / "tasks" / str(i))["process_list"]
        assert len(processes) == 2 and len({p["host"] for p in processes}) == 2, (i, processes)


@pytest.mark.slow
def test_nothing_of_the_sweep_is_left_running_nor_in_the_arrays_folder(swept):
    directory = swept["directory"]
    arrays = ",".join(a["job_ids"][0].rsplit("_", 1)[0] for a in swept["record after resume"]["arrays"])
    wait_for(lambda: not squeue("-r", "-t", "PENDING,RUNNING,COMPLETING", "-j", arrays, "-o", "%i"), 60)
    wait_for(lambda: not processes_mentioning(str(directory)), 60)
    assert sorted(p.name for p in (directory / "arrays").iterdir()) == ["1.sh", "2.sh", "3.sh", "4.sh"]
    for i in range(TASKS):  # each element's Slurm logs moved into its task's directory
        assert (directory / "tasks" / str(i) / "job.out").is_file(), i


@pytest.mark.slow
def test_a_rerun_task_keeps_no_cancel_request_of_its_earlier_attempt(swept):
    """The rerun's directory is as a job finds it before its run starts (jobs/resume.py:archive_segment):
    the cancel request of the attempt cancelled goes with that attempt, else a later look at the task
    without Slurm's word or a finished marker takes the rerun for cancelled by d4p-hpc cancel (and the
    local scheduler's array runner skips it: the rerun never runs)."""
    state = swept["directory"] / "tasks" / str(HELD) / "state"
    assert not (state / "cancel_requested").exists(), sorted(p.name for p in state.iterdir())


def dry_run(site, *args) -> subprocess.CompletedProcess:
    return d4p("submit", "gated_count.py", "--sweep", "sweep.jsonl", "--max-parallel", K, *site["job"],
               "--results-root", site["base"] / "dry-results", "-J", "dryswp", "--dry-run", *args)


def test_a_dry_run_prints_the_three_arrays_and_queues_nothing(site):
    shown = dry_run(site)
    assert shown.returncode == 0, explain(shown)
    assert NOTICE in shown.stderr.splitlines(), explain(shown)
    scripts = shown.stdout.split("#!/bin/bash\n")[1:]
    assert [re.findall(r"^#SBATCH --array=(\S+)$", s, re.M) for s in scripts] == [["0-3%2"], ["0-3%2"], ["0-1%2"]]
    assert [re.findall(r"^d4p_tasks=\((.*)\)$", s, re.M) for s in scripts] == [["0 1 2 3"], ["4 5 6 7"], ["8 9"]]
    assert not (site["base"] / "dry-results").exists()
    assert squeue("-t", "all", "-n", "dryswp") == []


def test_a_dry_run_shows_that_each_array_waits_for_the_one_before(site):
    """``SweepPlan.array_scripts`` (sweeps/submit.py) renders "the arrays' scripts as they would be
    submitted", but with the sweep's spec, whose ``after`` is None: the ``--dependency=afterany:``
    that ``_submit_arrays`` gives arrays 2 and 3 under ``--max-parallel`` is not shown."""
    scripts = dry_run(site).stdout.split("#!/bin/bash\n")[1:]
    waits = [bool(re.search(r"^#SBATCH --dependency=afterany:\S+$", s, re.M)) for s in scripts]
    assert waits == [False, True, True], [re.findall(r"^#SBATCH --(?:array|dependency)=.*$", s, re.M)
                                          for s in scripts]


def test_a_sweep_of_more_tasks_than_max_job_count_is_refused_in_one_line_before_anything_is_made(site):
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    limit = int(re.search(r"^MaxJobCount\s*=\s*(\d+)$", config, re.M).group(1))
    big = site["base"] / "big.jsonl"
    big.write_text('{"iterations": 1}\n' * (limit + 1))
    root = site["base"] / "big-results"
    refused = d4p("submit", "gated_count.py", "--sweep", big, *site["job"], "--results-root", root, "-J", "bigswp")
    assert refused.returncode == 2 and refused.stdout == "", explain(refused)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, explain(refused)
    assert lines[0].startswith(f"Error: the sweep has {limit + 1:,} tasks, more than the Slurm cluster keeps jobs at "
                               f"once (MaxJobCount={limit:,}"), lines
    assert lines[0].endswith(": split the sweep file"), lines
    assert not root.exists()
    assert squeue("-t", "all", "-n", "bigswp") == []
