"""Sweeps (``d4p-hpc submit --sweep``) on the real 2-node OpenPBS of .ci/pbs-up.sh, through the
``d4p-hpc`` command line alone, as a user types it (a process per command; no project file, every
option on the command line).

What is proven:

* A sweep of 4 ``hybrid_redis`` tasks (word_count, 8/12/16/20 iterations), each a job of 2 nodes x 1
  worker with its own Redis, with ``--max-parallel 2``: one job array ``-J 0-3%2`` (PBS's record of it
  says ``max_run_subjobs`` 2, and no more than 2 of the tasks' runs overlapped; the testbed's 2 nodes x
  2 CPUs hold only 2 such tasks at once anyway, so PBS's record is what shows the limit), every task
  COMPLETED, ``wait`` exits 0, and each task's outputs equal, as multisets, those of a plain ``d4p-hpc run`` of the
  same graph, mapping, size and iterations (and word counts computed here); ``results --show`` gives
  the same items, labelled with their task. ``logs SWEEP --task 0`` shows that task's PBS stdout and
  stderr (``<subjob id>.OU``/``.ER``) and its Redis log. Nothing of it is left running, nor a Redis
  connection file.
* In a sweep of 2 ``mpi`` tasks of long_count (2 nodes x 1 rank each), a subjob deleted with
  ``qdel "<array>[1].server"`` while its run goes on (task 1's line makes it slow: ``env``
  LONG_COUNT_SECONDS): ``status --tasks`` shows task 1 CANCELLED (stopped by SIGTERM),
  task 0 COMPLETED, the sweep CANCELLED; ``wait`` exits 1; its outputs so far are partial and nothing
  of it runs any more. ``resume SWEEP --failed`` reruns task 1 alone, as a new one-element array:
  its directive is ``-J 0-1:2`` (PBS refuses ``-J 0-0``, checked here too), the element is
  ``<new array>[0].server`` and PBS's record of the array says indices ``0-1:2``; task 1 then
  COMPLETED after 2 tries with exactly the outputs of an uninterrupted run (its first attempt archived
  as segment 001), task 0 untouched.

Each sweep is submitted once per module (a fixture) and followed to its end; the tests read what it
left. These tests need PBS: skipped without it, failed when D4P_HPC_PBS=1 says it is up.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from helpers.clusters import TIMEOUT, connect
from helpers.dynamic import needs_redis
from helpers.runs import EXAMPLES, canon, cli, explain, independent_word_counts, isolate, outputs, \
    processes_mentioning, run_simple, wait_for

pytestmark = [pytest.mark.pbs, needs_redis]

WORD_COUNT = EXAMPLES / "word_count.py"
LONG_COUNT = EXAMPLES / "long_count.py"
#: task -> iterations of the word_count sweep
ITERATIONS = [8, 12, 16, 20]
MAX_PARALLEL = 2
#: task 1 of the second sweep: at least SLOW_ITEMS x SLOW_SECONDS s of sleeping in one Slow instance,
#: time enough to be deleted while it runs; task 0 is quick
SLOW_ITEMS, SLOW_SECONDS, QUICK_ITEMS = 300, "0.03", 40
#: the job every task is: 2 nodes x 1 task, on the PBS testbed
JOB = ["--scheduler", "pbs", "-N", "2", "--tasks-per-node", "1", "-t", "5", "--python", sys.executable]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A user of the PBS testbed: no config files, no D4P_HPC_* job variables, a working directory of
    its own (qsub's PBS_O_WORKDIR)."""
    connect("pbs")
    base = tmp_path_factory.mktemp("sweeps-pbs")
    home, work = base / "home", base / "work"
    home.mkdir()
    work.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, home, work)
        yield work


def d4p(*args, ok: bool = True, **kw) -> subprocess.CompletedProcess:
    """``d4p-hpc ARGS`` in its own process; with ``ok``, it must exit 0."""
    proc = cli(*args, **kw)
    if ok:
        assert proc.returncode == 0, explain(proc)
    return proc


def submit_sweep(work: Path, graph: Path, lines: list[dict], *options: str) -> tuple[str, Path]:
    """``d4p-hpc submit GRAPH --sweep FILE OPTIONS``: the sweep's id and directory it printed."""
    file = work / f"{graph.stem}-sweep.jsonl"
    file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    proc = d4p("submit", graph, "--sweep", file, *JOB, "--results-root", work / "results", *options, cwd=work)
    found = re.search(r"^sweep (sweep-[0-9a-f]{8})\nresults (.+)$", proc.stdout, re.M)
    assert found, explain(proc)
    return found[1], Path(found[2])


def task_rows(sweep_id: str) -> tuple[str, dict[int, dict[str, str]]]:
    """``status SWEEP --tasks``: its summary line and a row per task (TASK NAME STATE TRIES ELAPSED JOB
    VALUES REASON), columns being 2 or more spaces apart."""
    text = d4p("status", sweep_id, "--tasks").stdout
    lines = text.splitlines()
    header = re.split(r"\s{2,}", lines[1].strip())
    assert header == ["TASK", "NAME", "STATE", "TRIES", "ELAPSED", "JOB", "VALUES", "REASON"], text
    rows = {}
    for line in lines[2:]:
        row = dict(zip(header, re.split(r"\s{2,}", line.strip(), maxsplit=len(header) - 1), strict=True))
        rows[int(row["TASK"])] = row
    return lines[0], rows


def qstat(job_id: str) -> dict:
    """PBS's own record of ``job_id`` (``qstat -x -f -F json``, the id one argv word)."""
    proc = subprocess.run(["qstat", "-x", "-f", "-F", "json", job_id], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)["Jobs"]
    assert len(records) == 1, records
    return next(iter(records.values()))


def submitted_id(task_dir: Path) -> str:
    return json.loads((task_dir / "state" / "submitted").read_text())["job_id"]


def array_of(element: str) -> str:
    """``12[].server`` of ``12[3].server``."""
    return re.sub(r"\[\d+\]", "[]", element, count=1)


def nothing_left(directory: Path) -> None:
    """No process of ``directory`` on any node (the nodes are namespaces of this host), and no Redis
    connection file in any of its tasks."""
    wait_for(lambda: not processes_mentioning(str(directory)), 60)
    assert not list(directory.glob("tasks/*/redis.json"))


def run_interval(task_dir: Path) -> tuple[datetime, datetime]:
    run = json.loads((task_dir / "run.json").read_text())
    return datetime.fromisoformat(run["started"]), datetime.fromisoformat(run["ended"])


# --- a sweep of 4 hybrid_redis tasks, at most 2 at once --------------------------------------------


@pytest.fixture(scope="module")
def word_sweep(site) -> dict:
    """The word_count sweep, followed to its end by ``d4p-hpc wait``."""
    lines = [{"name": f"i{n}", "iterations": n} for n in ITERATIONS]
    sweep_id, directory = submit_sweep(site, WORD_COUNT, lines, "-m", "hybrid_redis", "--max-parallel",
                                       str(MAX_PARALLEL))
    waited = d4p("wait", sweep_id, "--timeout", TIMEOUT, ok=False, timeout=TIMEOUT + 60)
    return {"id": sweep_id, "directory": directory, "wait": waited}


@pytest.fixture(scope="module")
def plain_runs(site) -> dict[int, dict[str, Counter]]:
    """iterations -> the outputs of ``d4p-hpc run`` of word_count with the sweep's mapping and size."""
    found = {}
    for n in ITERATIONS:
        results = site / "plain" / f"i{n}"
        d4p("run", WORD_COUNT, "-m", "hybrid_redis", "-n", "2", "-i", n, "--results", results, cwd=site)
        found[n] = outputs(results)
    return found


def test_a_sweep_of_four_hybrid_redis_tasks_over_two_nodes_completes_every_task(word_sweep):
    summary, rows = task_rows(word_sweep["id"])
    logs = d4p("logs", word_sweep["id"], "--task", "0", ok=False)
    assert word_sweep["wait"].returncode == 0, (explain(word_sweep["wait"]) + f"\n{summary}\n" + "\n".join(
        " | ".join(row.values()) for row in rows.values()) + f"\n--- logs --task 0\n{logs.stdout}{logs.stderr}")
    assert summary == f"sweep {word_sweep['id']} (word_count): COMPLETED: 4 COMPLETED (4 tasks)", summary
    assert [(r["NAME"], r["STATE"], r["TRIES"]) for r in rows.values()] == \
        [(f"i{n}", "COMPLETED", "1") for n in ITERATIONS]
    # one array, its elements in task order, each task's run on both nodes
    record = json.loads((word_sweep["directory"] / "sweep.json").read_text())
    assert [a["tasks"] for a in record["arrays"]] == [[0, 1, 2, 3]]
    ids = record["arrays"][0]["job_ids"]
    assert [rows[i]["JOB"] for i in range(4)] == ids == [ids[0].replace("[0]", f"[{i}]") for i in range(4)]
    for i in range(4):
        # a worker placed on each of the task's 2 nodes (which one first takes a process slot of a run this
        # short is a race: CI saw both slots on pbsn1 once, the other worker joining as the run ended)
        task = word_sweep["directory"] / "tasks" / str(i)
        shown = d4p("logs", word_sweep["id"], "--task", i, ok=False)
        assert "MPI placement: mpiexec --map-by ppr:1:node" in shown.stdout, (i, explain(shown))
        metrics = json.loads((task / "metrics.json").read_text())
        assert {p["host"] for p in metrics["process_list"]} <= {"pbsn1", "pbsn2"}, metrics["process_list"]
    nothing_left(word_sweep["directory"])


def test_each_task_has_the_outputs_of_a_plain_run_with_its_values(word_sweep, plain_runs):
    assert word_sweep["wait"].returncode == 0, explain(word_sweep["wait"])
    for i, n in enumerate(ITERATIONS):
        task = outputs(word_sweep["directory"] / "tasks" / str(i))
        assert task == plain_runs[n], (i, n)
        counted = Counter({word: count for _seq, word, count in task["CountWords.output"]})  # canonical items
        assert counted == independent_word_counts(n), (i, n)
    # the same items through `results --show`, each labelled with its task
    shown = d4p("results", word_sweep["id"], "--show", "CountWords.output").stdout.splitlines()
    by_task: dict[int, Counter] = {}
    for line in shown:
        item = json.loads(line)
        assert (item["name"], item["iterations"]) == (f"i{ITERATIONS[item['task']]}", ITERATIONS[item["task"]])
        by_task.setdefault(item["task"], Counter())[canon(item["item"])] += 1
    assert by_task == {i: plain_runs[n]["CountWords.output"] for i, n in enumerate(ITERATIONS)}


def test_max_parallel_2_is_the_arrays_limit_and_no_more_than_2_tasks_ran_at_once(word_sweep):
    assert word_sweep["wait"].returncode == 0, explain(word_sweep["wait"])
    directory = word_sweep["directory"]
    assert "#PBS -J 0-3%2\n" in (directory / "arrays" / "1.sh").read_text()
    array = qstat(array_of(submitted_id(directory / "tasks" / "0")))
    assert (array["array_indices_submitted"], array["max_run_subjobs"]) == ("0-3", MAX_PARALLEL), array
    intervals = [run_interval(directory / "tasks" / str(i)) for i in range(4)]
    most = max(sum(start <= moment < end for start, end in intervals) for moment, _ in intervals)
    assert most <= MAX_PARALLEL, intervals


def test_logs_of_task_0_show_its_pbs_stdout_stderr_and_redis_log(word_sweep):
    element = submitted_id(word_sweep["directory"] / "tasks" / "0")
    logs = d4p("logs", word_sweep["id"], "--task", "0").stdout
    assert f"{element}.OU" in logs and f"{element}.ER" in logs, logs
    assert "redis-server.log" in logs, logs
    assert "COMPLETED in " in logs and "CountWords.output: " in logs, logs
    # only task 0's: no other element's logs
    others = [submitted_id(word_sweep["directory"] / "tasks" / str(i)) for i in (1, 2, 3)]
    assert not [o for o in others if o in logs], logs


# --- a subjob deleted by qdel while it runs, then resume --failed -----------------------------------


@pytest.fixture(scope="module")
def deleted_sweep(site) -> dict:
    """A sweep of 2 mpi tasks of long_count (task 1 slow), task 1's subjob deleted with qdel once its
    run has started and written outputs, followed to its end; what was seen of it."""
    lines = [{"name": "quick", "iterations": QUICK_ITEMS, "env": {"LONG_COUNT_SECONDS": "0"}},
             {"name": "slow", "iterations": SLOW_ITEMS, "env": {"LONG_COUNT_SECONDS": SLOW_SECONDS}}]
    sweep_id, directory = submit_sweep(site, LONG_COUNT, lines, "-a", "graph", "-m", "mpi")
    slow = directory / "tasks" / "1"
    element = submitted_id(slow)
    wait_for(lambda: list(slow.glob("outputs/Slow.tagged/part-*.jsonl")) and (slow / "run.json").exists(),
             TIMEOUT)
    deleted = subprocess.run(["qdel", element], capture_output=True, text=True, timeout=60)
    waited = d4p("wait", sweep_id, "--timeout", TIMEOUT, ok=False, timeout=TIMEOUT + 60)
    summary, rows = task_rows(sweep_id)
    partial = outputs(slow)
    return {"id": sweep_id, "directory": directory, "element": element, "qdel": deleted, "wait": waited,
            "summary": summary, "rows": rows, "partial": partial}


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory) -> dict[int, dict[str, Counter]]:
    """iterations -> the outputs of long_count under ``simple``, without its sleep."""
    os.environ["LONG_COUNT_SECONDS"] = "0"
    try:
        found = {}
        for n in (QUICK_ITEMS, SLOW_ITEMS):
            results = tmp_path_factory.mktemp("long-count") / "r"
            assert run_simple(LONG_COUNT, n, results, attr="graph")["state"] == "COMPLETED"
            found[n] = outputs(results)
        return found
    finally:
        del os.environ["LONG_COUNT_SECONDS"]


def test_a_subjob_deleted_by_qdel_while_it_runs_shows_its_task_cancelled(deleted_sweep, long_reference):
    seen = deleted_sweep
    assert seen["qdel"].returncode == 0, seen["qdel"].stderr
    assert re.fullmatch(r"\d+\[1\]\.\S+", seen["element"]), seen["element"]
    assert seen["wait"].returncode == 1, explain(seen["wait"])
    assert f"d4p-hpc resume {seen['id']} --failed" in seen["wait"].stderr
    assert seen["summary"] == f"sweep {seen['id']} (long_count): CANCELLED: 1 CANCELLED, 1 COMPLETED (2 tasks)"
    quick, slow = seen["rows"][0], seen["rows"][1]
    assert (quick["STATE"], quick["TRIES"]) == ("COMPLETED", "1"), quick
    assert (slow["NAME"], slow["STATE"], slow["TRIES"], slow["JOB"]) == ("slow", "CANCELLED", "1", seen["element"])
    assert slow["REASON"] == "stopped by SIGTERM during the run", slow
    # PBS's own record (its F comes a moment after the task's marker): deleted while it ran
    record = wait_for(lambda: (r := qstat(seen["element"]))["job_state"] == "F" and r, 60)
    assert "terminated by" in record["comment"], record
    # the outputs so far are kept, and are fewer than a whole run's
    assert 0 < sum(seen["partial"]["Slow.tagged"].values()) < sum(long_reference[SLOW_ITEMS]["Slow.tagged"].values())
    assert "Count.output" not in seen["partial"]  # the counter never reached its postprocess
    assert outputs(seen["directory"] / "tasks" / "0") == long_reference[QUICK_ITEMS]
    nothing_left(seen["directory"])


def test_pbs_refuses_an_array_of_the_one_index_0_0(site):
    """Why a one-element array is ``-J 0-1:2``: qsub refuses ``-J 0-0`` before anything is queued."""
    proc = subprocess.run(["qsub", "-J", "0-0", "-l", "select=1:ncpus=1", "-o", "/dev/null", "-j", "oe", "--",
                           "/bin/true"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "illegal -J value" in proc.stderr, (proc.returncode, proc.stdout, proc.stderr)


def test_resume_failed_reruns_the_cancelled_task_alone_as_a_one_element_array_to_completed(deleted_sweep,
                                                                                           long_reference):
    seen = deleted_sweep
    assert seen["wait"].returncode == 1, explain(seen["wait"])
    directory = seen["directory"]
    proc = d4p("resume", seen["id"], "--failed")
    assert proc.stdout.strip() == f"sweep {seen['id']}: 1 task submitted again: 1", explain(proc)
    # a new array of task 1 alone: one element, index 0, in steps of 2 (PBS refuses 0-0)
    script = (directory / "arrays" / "2.sh").read_text()
    assert [line for line in script.splitlines() if line.startswith("#PBS -J")] == ["#PBS -J 0-1:2"], script
    assert re.search(r"^d4p_tasks=\(1\)$", script, re.M), script
    element = submitted_id(directory / "tasks" / "1")
    assert re.fullmatch(r"\d+\[0\]\.\S+", element) and array_of(element) != array_of(seen["element"]), element
    array = qstat(array_of(element))
    assert array["array_indices_submitted"] == "0-1:2", array
    record = json.loads((directory / "sweep.json").read_text())
    assert [(a["tasks"], a["job_ids"]) for a in record["arrays"]][1:] == [([1], [element])], record["arrays"]

    waited = d4p("wait", seen["id"], "--timeout", TIMEOUT, ok=False, timeout=TIMEOUT + 60)
    summary, rows = task_rows(seen["id"])
    assert waited.returncode == 0, explain(waited) + summary + str(rows)
    assert summary == f"sweep {seen['id']} (long_count): COMPLETED: 2 COMPLETED (2 tasks)"
    assert (rows[1]["STATE"], rows[1]["TRIES"], rows[1]["JOB"]) == ("COMPLETED", "2", element), rows[1]
    assert (rows[0]["STATE"], rows[0]["TRIES"], rows[0]["JOB"]) == ("COMPLETED", "1", seen["rows"][0]["JOB"])
    # exactly one uninterrupted run's outputs; the deleted attempt archived beside, as segment 001
    slow = directory / "tasks" / "1"
    assert outputs(slow) == long_reference[SLOW_ITEMS]
    segment = slow / "state" / "segments" / "001"
    assert json.loads((segment / "submitted").read_text())["job_id"] == seen["element"]
    assert json.loads((segment / "finished").read_text())["state"] == "CANCELLED"
    assert outputs(segment / "attempt") == seen["partial"]
    assert outputs(directory / "tasks" / "0") == long_reference[QUICK_ITEMS]
    nothing_left(directory)
