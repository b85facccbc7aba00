"""Sweeps against what an outside attacker found, each finding's fix held through the real ``d4p-hpc``
command line on the local scheduler (and the Python API where the finding is the API's).

What is proven, and how:

1. ``cancel SWEEP`` of a sweep whose tasks are held by a gate (one running, one queued behind
   ``--max-parallel 1``), then ``resume SWEEP --failed``: the tasks really run again (their new
   ``state/started`` and ``run.json``, RUNNING and PENDING, not CANCELLED), each earlier
   ``state/cancel_requested`` archived into segment 001; once the test opens the gate the sweep
   COMPLETES, TRIES 2, and each task's items are there;
2. ``cancel``/``resume SWEEP --tasks 0-30000000`` (and ``0-99999999999999999``) answer with one
   ``Error:`` line naming the sweep's range, under an address-space limit of 1 GiB set in the child
   (so no list of the range is built), and change nothing in the sweep;
3. SIGKILL to a running task's ``job.sh`` (its pid from ``state/local.json``) while its run goes on:
   ``status --tasks`` says RUNNING, its script gone; ``resume --tasks`` refuses it; ``cancel --tasks``
   leaves no process in its session (``/proc/*/stat``'s session field), it ends CANCELLED or FAILED,
   and ``resume --failed`` reruns it to COMPLETED;
4. ``--sweep /dev/zero`` (and a link to it), a FIFO and a sparse file over 64 MiB: one ``Error:`` line
   at once (a timeout guards the FIFO), nothing made;
5. without ``--max-parallel`` the local scheduler's sweep says "at most K tasks at once" (K this host's
   cores over the job's size) and its array runner's record (``arrays/1.json``) holds K;
6. the Python API takes an index or a list of them for ``status``/``cancel``/``resume`` and refuses
   ``[True]``, ``-1``, ``wait(timeout=-5)``, ``wait(timeout="x")``, ``attach_sweep(None)``, each a
   one-line UsageError that changes nothing;
7. a task's ``env`` setting PATH, HOME, TMPDIR, D4P_*, SLURM_*, OMPI_* is refused naming the line and
   the key; a value over 4,096 characters is refused naming ``env``, not the job's setup lines;
8. a submit SIGKILLed after it made the sweep's directory (stopped deterministically: a ``bash`` first
   on its PATH holds its first ``bash -n``, or the one of the array script, until the test kills the
   submit's process group) leaves a ``sweep.json``: ``list`` and ``status`` show the tasks "never
   submitted", and ``resume --failed`` submits them and they COMPLETE;
9. ``wait SWEEP --timeout 5`` on a sweep that ended FAILED earlier (a task SIGKILLed with its whole
   job, so its end is inferred) exits 1 at its first look, printing FAILED, not "has not ended";
10. the sweep file: a CSV with a UTF-8 byte-order mark runs (its ``name`` column read), a ``.jsonl``
    whose first task line is not JSON is a JSON error naming its line, a name given twice names both
    lines, an ``input_file`` that is a directory says so;
11. a ``sweep.json`` of valid JSON in the wrong shape is one ``Error:`` line (no traceback, exit != 0)
    for ``status``, ``results`` and ``resume``, and touches nothing; ``results`` of a sweep with one
    task folder deleted still prints a row per task, that one saying why.

Beside the findings, tests of what the fixes left open (they fail until it is closed): ``--tasks``
of digits ``int()`` refuses (``²``, 5,000 of them); an env value within the 4,096 characters the
file's check allows, refused as a ``setup`` line once quoted; a ``sweep.json`` without its spec, or
with a task's env not an object, that ``resume`` reads with a traceback; a task rerun while the first
array's local runner still lists it, started a second time by that runner once its cancel request
is archived; ``Sweep.job(True)`` taken for task 1.

Findings 2, 5, 9 and 11 share one sweep (module fixture): two tasks submitted without
``--max-parallel``, one COMPLETED and one SIGKILLed with its whole job (FAILED, inferred); the tests
that change it change a copy. The graph is tests/data/g_sweep_squares.py (env variables steer its
failures and gates). Every wait is a poll with a deadline; nothing asserts a time or a rate.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from helpers.runs import alive, d4p_hpc_cmd, explain, kill_group, processes_mentioning, wait_for
from helpers.runs import cli as run_cli
from test_sweeps import DEADLINE, GRAPH, Place, jsonl, marker, nothing_left_running, shown, task_table, wait_sweep

import d4p_hpc
import test_sweeps

#: test_sweeps' fixture: a working directory, results root and index of jobs of the test's own
place = test_sweeps.place

#: the address space a command gets when it is handed a huge range: far below a list of 30 million
#: ints, far above what the command needs
GIB = 2 ** 30
#: what a task's env may not set (the job script's, d4p-hpc's, the scheduler's or MPI's own)
RESERVED = ("PATH", "HOME", "TMPDIR", "D4P_X", "SLURM_X", "OMPI_X")


def one_error(proc: subprocess.CompletedProcess, exit_code: int | None = 2) -> str:
    """The one ``Error:`` line of a refused command (nothing on stdout, no traceback); its text."""
    said = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and (exit_code is None or proc.returncode == exit_code), explain(proc)
    assert proc.stdout == "" and len(said) == 1 and said[0].startswith("Error: "), explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    return said[0]


def files(directory: Path) -> dict[str, int]:
    """Every path under ``directory`` -> its size (0 for a folder): what a refused command must not change."""
    return {str(p.relative_to(directory)): (p.stat().st_size if p.is_file() else 0)
            for p in sorted(directory.rglob("*"))}


def session_members(sid: int) -> list[int]:
    """The live processes of session ``sid`` (the 6th field of /proc/PID/stat), zombies left out."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[3] == str(sid) and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def local_record(directory: Path, index: int) -> dict | None:
    """Task ``index``'s ``state/local.json`` (the pid of its job script, or of its array's runner while queued)."""
    return marker(directory, index, "local.json")


def running(directory: Path, index: int) -> bool:
    """Task ``index``'s run has started (its script started, not queued, and its run recorded)."""
    record = local_record(directory, index)
    return bool(record and not record.get("queued") and (directory / "tasks" / str(index) / "run.json").exists())


def wait_ended(place: Place, sweep: str, directory: Path) -> subprocess.CompletedProcess:
    """``wait SWEEP`` once each task has written its finished marker (its end then seen at its first
    look, without the command's poll interval)."""
    count = len(json.loads((directory / "sweep.json").read_text())["tasks"])
    wait_for(lambda: all(marker(directory, k, "finished") for k in range(count)), DEADLINE)
    return wait_sweep(place, sweep)


def default_parallel(directory: Path) -> int:
    """What the local scheduler runs at once when no --max-parallel is given: this host's cores over
    the job's processes, at least 1."""
    spec = json.loads((directory / "sweep.json").read_text())["spec"]
    return max(1, (os.cpu_count() or 1) // (spec["nodes"] * spec["tasks_per_node"]))


# --- the shared sweep: one task COMPLETED, one SIGKILLed with its whole job ----------------------------

class Site(Place):
    """A Place whose environment (its own HOME, config and index of jobs) is given to each command,
    for a fixture that outlives one test's monkeypatch."""

    def __init__(self, tmp: Path) -> None:
        (tmp / "home").mkdir()
        (tmp / "work").mkdir()
        super().__init__(tmp, tmp / "work")
        self.env = {"HOME": str(tmp / "home"), "XDG_CONFIG_HOME": str(tmp / "home" / ".config"),
                    "XDG_STATE_HOME": str(tmp / "state")}

    def d4p(self, *args, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_cli(*args, cwd=self.work, env={**self.env, **(env or {})}, timeout=DEADLINE)


class Ended:
    """The shared sweep: its site, id, directory and what its submit printed on stderr."""

    def __init__(self, site: Site, sweep: str, directory: Path, said: str) -> None:
        self.site, self.sweep, self.directory, self.said = site, sweep, directory, said


@pytest.fixture(scope="module")
def ended(tmp_path_factory):
    """A sweep of two tasks submitted without --max-parallel: task 0 COMPLETED; task 1, held by a gate
    never opened, SIGKILLed with every process of its job (so it ended without its finished marker:
    FAILED, inferred). Afterwards whatever is left under its folder is killed."""
    tmp = tmp_path_factory.mktemp("ended")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if (name.startswith("D4P_HPC_") and name not in ("D4P_HPC_SLURM", "D4P_HPC_PBS")) or \
                    name.startswith("SWEEP_"):
                mp.delenv(name)
        site = Site(tmp)
        lines = [{"name": "done", "iterations": 2, "env": {"SWEEP_TAG": "a"}},
                 {"name": "killed", "iterations": 2, "env": {"SWEEP_GATE": str(tmp / "never-opened")}}]
        path = site.write("s.jsonl", jsonl(*lines))
        try:
            proc = site.d4p("submit", GRAPH, "--scheduler", "local", "--sweep", path)
            assert proc.returncode == 0, explain(proc)
            said = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
            sweep, directory = said["sweep"], Path(said["results"])
            wait_for(lambda: running(directory, 1), DEADLINE)
            kill_group(local_record(directory, 1)["pid"])  # its script and everything it started
            wait_for(lambda: marker(directory, 0, "finished"), DEADLINE)
            wait_for(lambda: "FAILED: 1 COMPLETED, 1 FAILED" in site.d4p("status", directory).stdout, DEADLINE)
            nothing_left_running(directory)
            yield Ended(site, sweep, directory, proc.stderr)
        finally:
            for pid in processes_mentioning(f"{tmp}/"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# --- 1 -------------------------------------------------------------------------------------------------

def test_resume_failed_after_a_cancel_really_reruns_the_cancelled_tasks_and_the_sweep_completes(place):
    gate = place.tmp / "gate"
    lines = [{"iterations": 2, "env": {"SWEEP_TAG": t}} for t in "ab"]
    sweep, directory = place.submit(place.write("s.jsonl", jsonl(*lines)), "--max-parallel", "1",
                                    "--setup", f"export SWEEP_GATE={gate}")
    wait_for(lambda: running(directory, 0), DEADLINE)
    _, rows = task_table(place, sweep)
    assert [rows[k]["STATE"] for k in (0, 1)] == ["RUNNING", "PENDING"], rows

    proc = place.d4p("cancel", sweep)
    assert proc.returncode == 0 and proc.stdout.strip() == f"cancel requested for 2 tasks of sweep {sweep}: 0, 1", \
        explain(proc)
    proc = wait_ended(place, sweep, directory)
    assert proc.returncode == 1 and f"CANCELLED {directory}" in proc.stdout, explain(proc)
    nothing_left_running(directory)
    first = (directory / "tasks/0/state/started").read_bytes()
    assert marker(directory, 1, "started") is None
    assert all(marker(directory, k, "cancel_requested") is not None for k in (0, 1))

    proc = place.d4p("resume", sweep, "--failed")
    assert proc.returncode == 0 and proc.stdout.strip() == f"sweep {sweep}: 2 tasks submitted again: 0, 1", \
        explain(proc)
    # the new attempt runs: its own started marker and run, the cancel request of the first archived
    wait_for(lambda: running(directory, 0) and marker(directory, 0, "started"), DEADLINE)
    _, rows = task_table(place, sweep)
    assert [rows[k]["STATE"] for k in (0, 1)] == ["RUNNING", "PENDING"], rows
    assert [rows[k]["TRIES"] for k in (0, 1)] == ["2", "2"], rows
    assert "waiting for a free slot" in rows[1]["REASON"], rows
    for k in (0, 1):
        segment = directory / "tasks" / str(k) / "state" / "segments" / "001"
        assert (segment / "cancel_requested").is_file() and marker(directory, k, "cancel_requested") is None
    assert (directory / "tasks/0/state/segments/001/started").read_bytes() == first
    assert (directory / "tasks/0/state/started").read_bytes() != first

    gate.write_text("")
    proc = wait_ended(place, sweep, directory)
    assert proc.returncode == 0 and f"COMPLETED {directory}" in proc.stdout, explain(proc)
    summary, rows = task_table(place, sweep)
    assert summary == f"sweep {sweep} (g_sweep_squares): COMPLETED: 2 COMPLETED (2 tasks)", summary
    assert [rows[k]["TRIES"] for k in (0, 1)] == ["2", "2"], rows
    assert all(marker(directory, k, "started") for k in (0, 1))
    items = shown(place, sweep)
    assert sorted((i["task"], tuple(i["item"])) for i in items) == [(0, (1, 1, "a")), (0, (2, 4, "a")),
                                                                  (1, (1, 1, "b")), (1, (2, 4, "b"))], items
    nothing_left_running(directory)


def test_a_task_rerun_while_its_first_arrays_runner_lives_is_not_started_again_by_that_runner(place):
    """Task 1, queued behind task 0 (``--max-parallel 1``), is cancelled and rerun (``resume --tasks 1``)
    while task 0 still runs: its rerun runs in a new array. When task 0 ends, the first array's runner
    (which still lists task 1) must not start task 1 a second time in the same directory: its cancel
    request, which told that runner to skip it, was archived by the rerun. Each task has a gate of its
    own, so the rerun is still running when the first runner moves on."""
    gates = [place.tmp / f"gate-{k}" for k in (0, 1)]
    lines = [{"iterations": 2, "env": {"SWEEP_TAG": t, "SWEEP_GATE": str(g)}} for t, g in zip("ab", gates, strict=True)]
    sweep, directory = place.submit(place.write("s.jsonl", jsonl(*lines)), "--max-parallel", "1")
    wait_for(lambda: running(directory, 0), DEADLINE)
    first_runner = local_record(directory, 1)["pid"]  # (task 1 is queued: its record names its array's runner)
    assert local_record(directory, 1).get("queued") and alive(first_runner)
    proc = place.d4p("cancel", sweep, "--tasks", "1")
    assert proc.returncode == 0, explain(proc)
    proc = place.d4p("resume", sweep, "--tasks", "1")
    assert proc.returncode == 0 and proc.stdout.strip() == f"sweep {sweep}: 1 task submitted again: 1", explain(proc)
    wait_for(lambda: running(directory, 1), DEADLINE)
    rerun = local_record(directory, 1)["pid"]

    gates[0].write_text("")  # task 0 ends: the first runner moves on to task 1, and must skip it
    wait_for(lambda: not alive(first_runner), DEADLINE)
    _, rows = task_table(place, sweep)
    assert rows[0]["STATE"] == "COMPLETED", rows
    assert (rows[1]["STATE"], rows[1]["TRIES"]) == ("RUNNING", "2"), rows
    assert "already holds a run" not in rows[1]["REASON"], rows
    assert local_record(directory, 1)["pid"] == rerun and marker(directory, 1, "finished") is None
    assert "already holds a run" not in (directory / "tasks/1/job.err").read_text()

    gates[1].write_text("")
    proc = wait_ended(place, sweep, directory)
    assert proc.returncode == 0 and f"COMPLETED {directory}" in proc.stdout, explain(proc)
    assert sorted((i["task"], tuple(i["item"])) for i in shown(place, sweep)) == [
        (0, (1, 1, "a")), (0, (2, 4, "a")), (1, (1, 1, "b")), (1, (2, 4, "b"))]
    nothing_left_running(directory)


# --- 2 -------------------------------------------------------------------------------------------------

def capped(site: Site, *args) -> subprocess.CompletedProcess:
    """``d4p-hpc ARGS`` with an address space of at most :data:`GIB` (a guard of its own, not a timing)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (GIB, GIB))

    argv = d4p_hpc_cmd() + [str(a) for a in args]
    proc = subprocess.Popen(argv, cwd=site.work, env={**os.environ, **site.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=cap)
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"d4p-hpc {' '.join(argv[1:])} did not answer within {DEADLINE} s\n{out}\n{err}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.parametrize("text", ["0-30000000", "0-99999999999999999",
                                  pytest.param("0-" + "9" * 5000, id="0-(5000 nines)"),
                                  pytest.param("\u00b2", id="superscript-two")])
def test_a_huge_tasks_range_is_one_error_line_naming_the_sweeps_range(ended, text):
    site, sweep, directory = ended.site, ended.sweep, ended.directory
    before = files(directory)
    for command in ("cancel", "resume"):
        proc = capped(site, command, directory, "--tasks", text)
        said = one_error(proc)
        assert f"sweep {sweep} has tasks 0-1" in said or "tasks are indices and ranges" in said, explain(proc)
        if len(text) < 30 and text.isascii():
            assert said == f"Error: sweep {sweep} has tasks 0-1; tasks {text!r:.60} names {text}", explain(proc)
    assert files(directory) == before
    nothing_left_running(directory)


# --- 3 -------------------------------------------------------------------------------------------------

def test_a_task_whose_job_script_was_sigkilled_is_running_until_cancel_stops_its_session(place):
    gate = place.tmp / "gate"
    sweep, directory = place.submit(place.write("s.jsonl", jsonl({"iterations": 2, "env": {"SWEEP_TAG": "k"}})),
                                    "--setup", f"export SWEEP_GATE={gate}")
    wait_for(lambda: running(directory, 0), DEADLINE)
    script = local_record(directory, 0)["pid"]
    os.kill(script, signal.SIGKILL)
    wait_for(lambda: not alive(script), DEADLINE)
    assert session_members(script), "the task's run should go on without its script"

    summary, rows = task_table(place, sweep)
    assert summary == f"sweep {sweep} (g_sweep_squares): RUNNING: 1 RUNNING (1 task)", summary
    assert rows[0]["STATE"] == "RUNNING" and "its job script is gone" in rows[0]["REASON"], rows
    said = one_error(place.d4p("resume", sweep, "--tasks", "0"))
    assert f"task 0 of sweep {sweep} is RUNNING" in said, said
    said = one_error(place.d4p("resume", sweep, "--failed"))
    assert f"1 task of sweep {sweep} (0) not ended" in said, said
    assert marker(directory, 0, "finished") is None and not (directory / "tasks/0/state/segments").exists()

    proc = place.d4p("cancel", sweep, "--tasks", "0")
    assert proc.returncode == 0 and proc.stdout.strip() == f"cancel requested for 1 task of sweep {sweep}: 0", \
        explain(proc)
    wait_for(lambda: not session_members(script), DEADLINE)
    proc = wait_sweep(place, sweep)
    assert proc.returncode == 1, explain(proc)
    _, rows = task_table(place, sweep)
    assert rows[0]["STATE"] in ("CANCELLED", "FAILED"), rows
    nothing_left_running(directory)

    gate.write_text("")
    proc = place.d4p("resume", sweep, "--failed")
    assert proc.returncode == 0 and proc.stdout.strip() == f"sweep {sweep}: 1 task submitted again: 0", explain(proc)
    proc = wait_ended(place, sweep, directory)
    assert proc.returncode == 0 and f"COMPLETED {directory}" in proc.stdout, explain(proc)
    summary, rows = task_table(place, sweep)
    assert summary == f"sweep {sweep} (g_sweep_squares): COMPLETED: 1 COMPLETED (1 task)", summary
    assert rows[0]["TRIES"] == "2", rows
    assert sorted(tuple(i["item"]) for i in shown(place, sweep)) == [(1, 1, "k"), (2, 4, "k")]
    nothing_left_running(directory)
    assert not session_members(script)


# --- 4 -------------------------------------------------------------------------------------------------

def special(work: Path, kind: str) -> tuple[Path | str, str]:
    """A sweep file in ``work`` that is no regular file of a sensible size, and what its refusal says."""
    if kind == "/dev/zero":
        return "/dev/zero", "Error: sweep file /dev/zero is not a regular file"
    if kind == "a link to /dev/zero":
        (work / "zero.jsonl").symlink_to("/dev/zero")
        return "zero.jsonl", "Error: sweep file zero.jsonl is not a regular file"
    if kind == "a FIFO":
        os.mkfifo(work / "fifo.jsonl")
        return "fifo.jsonl", "Error: sweep file fifo.jsonl is not a regular file"
    with open(work / "big.jsonl", "wb") as fh:  # sparse: no disk used
        fh.truncate(65 * 2 ** 20)
    return "big.jsonl", "Error: sweep file big.jsonl has 65 MiB; a sweep file is at most 64 MiB"


@pytest.mark.parametrize("kind", ["/dev/zero", "a link to /dev/zero", "a FIFO", "a sparse file of 65 MiB"])
def test_a_sweep_file_that_is_a_device_a_fifo_or_too_large_is_refused_at_once(place, kind):
    path, message = special(place.work, kind)
    # (a guard against a hang, never a timing: the FIFO has no writer, /dev/zero no end)
    proc = run_cli("submit", GRAPH, "--scheduler", "local", "--sweep", path, cwd=place.work, timeout=120)
    said = one_error(proc)
    assert said.startswith(message), said
    place.nothing_made()


# --- 5 -------------------------------------------------------------------------------------------------

def test_a_local_sweep_without_max_parallel_runs_at_most_this_hosts_cores_and_says_so(ended):
    k = default_parallel(ended.directory)
    notices = [line for line in ended.said.splitlines() if "at once:" in line]
    assert notices == [f"notice: at most {k} task{'s' * (k > 1)} at once: the local scheduler runs them on this "
                       f"host ({os.cpu_count()} core{'s' * ((os.cpu_count() or 1) > 1)}); --max-parallel K sets it"], \
        ended.said
    runner = json.loads((ended.directory / "arrays" / "1.json").read_text())
    assert runner["max_parallel"] == k and len(runner["elements"]) == 2, runner
    assert json.loads((ended.directory / "sweep.json").read_text())["max_parallel"] == k


# --- 6 -------------------------------------------------------------------------------------------------

def test_the_python_api_takes_indices_and_lists_of_tasks_and_refuses_bad_ones_in_one_line(place):
    gate = place.tmp / "never-opened"
    path = place.write("s.jsonl", jsonl(*[{"iterations": 2, "env": {"SWEEP_TAG": str(k)}} for k in range(4)]))
    sweep = d4p_hpc.submit_sweep(str(GRAPH), str(path), scheduler="local", max_parallel=1,
                                 setup=[f"export SWEEP_GATE={gate}"])
    directory = sweep.directory
    wait_for(lambda: running(directory, 0), DEADLINE)

    found = sweep.status(tasks=2)
    assert [(t.task.index, t.state) for t in found.tasks] == [(2, "PENDING")] and found.state == "PENDING"
    found = sweep.status(tasks=[0, 2])
    assert [(t.task.index, t.state) for t in found.tasks] == [(0, "RUNNING"), (2, "PENDING")], found
    assert sweep.cancel(tasks=[3]) == [3]
    (cancelled,) = sweep.status(tasks=[3]).tasks
    assert cancelled.state == "CANCELLED" and "before it started" in cancelled.reason, cancelled
    assert sweep.resume(tasks=[3]) == [3]
    (again,) = sweep.status(tasks=3).tasks
    assert again.state in ("PENDING", "RUNNING") and again.attempts == 2, again
    wait_for(lambda: running(directory, 3), DEADLINE)  # (its own array: no slot to wait for)

    before = {t.task.index: (t.state, t.attempts) for t in sweep.status().tasks}
    bad = {"cancel(tasks=[True])": lambda: sweep.cancel(tasks=[True]),
           "resume(tasks=[True])": lambda: sweep.resume(tasks=[True]),
           "status(tasks=-1)": lambda: sweep.status(tasks=-1),
           "cancel(tasks=-1)": lambda: sweep.cancel(tasks=-1),
           "wait(timeout=-5)": lambda: sweep.wait(timeout=-5),
           "wait(timeout='x')": lambda: sweep.wait(timeout="x"),
           "attach_sweep(None)": lambda: d4p_hpc.attach_sweep(None)}
    for call, go in bad.items():
        with pytest.raises(d4p_hpc.UsageError) as raised:
            go()
        message = str(raised.value)
        assert message and "\n" not in message, (call, message)
    assert "not [True]" in str(pytest.raises(d4p_hpc.UsageError, sweep.cancel, tasks=[True]).value)
    assert f"sweep {sweep.id} has tasks 0-3" in str(pytest.raises(d4p_hpc.UsageError, sweep.status, tasks=-1).value)
    assert "timeout must be a number of seconds" in str(pytest.raises(d4p_hpc.UsageError, sweep.wait,
                                                                      timeout=-5).value)
    assert "attach_sweep takes a sweep's id" in str(pytest.raises(d4p_hpc.UsageError, d4p_hpc.attach_sweep,
                                                                  None).value)
    assert {t.task.index: (t.state, t.attempts) for t in sweep.status().tasks} == before

    # task 3 first: array 1's runner still lists it (see the test after test 1)
    assert sweep.cancel(tasks=[3]) == [3] and sweep.cancel() == [0, 1, 2]
    assert sweep.wait(timeout=DEADLINE - 30, poll=0.5) == "CANCELLED"
    assert not any(marker(directory, k, "started") for k in (1, 2))
    nothing_left_running(directory)


# --- 7 -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RESERVED)
def test_a_tasks_env_may_not_set_the_jobs_own_variables(place, name):
    place.write("s.jsonl", jsonl({"iterations": 1}, {"iterations": 1, "env": {"SWEEP_TAG": "a", name: "x"}}))
    said = one_error(place.d4p("submit", GRAPH, "--scheduler", "local", "--sweep", "s.jsonl"))
    assert said.startswith(f"Error: s.jsonl, line 2: env {name} is the job's own"), said
    place.nothing_made()


def test_an_env_value_over_4096_characters_is_refused_naming_env_not_setup(place):
    place.write("s.jsonl", jsonl({"iterations": 1}, {"env": {"SWEEP_TAG": "x" * 4097}}))
    said = one_error(place.d4p("submit", GRAPH, "--scheduler", "local", "--sweep", "s.jsonl"))
    assert said.startswith("Error: s.jsonl, line 2: env SWEEP_TAG must be at most 4,096 characters"), said
    assert "setup" not in said, said
    place.nothing_made()


@pytest.mark.parametrize("value", [pytest.param("x" * 4096, id="4096 characters"),
                                   pytest.param("'" * 1000, id="1000 quotes")])
def test_an_env_value_within_4096_characters_is_never_refused_as_a_setup_line(place, value):
    """An env value the sweep file's check lets through (at most 4,096 characters) must not then be
    refused as the job's ``setup`` line it becomes (``export NAME='...'``, longer once quoted): the
    user never wrote a setup line. Accepted, or refused naming its line and env."""
    place.write("s.jsonl", jsonl({"iterations": 1}, {"env": {"SWEEP_TAG": value}}))
    proc = place.d4p("submit", GRAPH, "--scheduler", "local", "--sweep", "s.jsonl", "--dry-run")
    if proc.returncode:
        said = one_error(proc)
        assert "line 2" in said and "env SWEEP_TAG" in said and "setup" not in said, said
    place.nothing_made()


# --- 8 -------------------------------------------------------------------------------------------------

#: a ``bash`` put first on a submit's PATH: the first ``bash -n`` whose script matches holds the submit
#: (it is killed there by the test); every other call is the real bash's
STOPPING_BASH = """#!{real}
if [ "$1" = "-n" ] && [ ! -e {reached} ]; then
  script=$(cat)
  if [[ $script == *{needle}* ]]; then
    : > {reached}
    exec sleep 600
  fi
  printf '%s\\n' "$script" | exec {real} -n
fi
exec {real} "$@"
"""


@pytest.mark.parametrize("stop", ["at its first bash -n", "at its array script's bash -n"])
def test_a_submit_killed_after_it_made_the_sweep_directory_leaves_a_sweep_that_resume_submits(place, stop):
    """The submit is stopped at a known point by a ``bash`` of the test's: at the check of its first
    task script (just after ``sweep.json`` is written, before any task's folder), or at the check of
    its array script (every task written, none submitted); then SIGKILLed with its process group."""
    real = shutil.which("bash")
    reached = place.tmp / "reached"
    first = stop == "at its first bash -n"
    needle = "''" if first else "'d4p_tasks=('"  # (a bash pattern: '' matches any script)
    folder = place.tmp / "bin"
    folder.mkdir()
    (folder / "bash").write_text(STOPPING_BASH.format(real=real, reached=reached, needle=needle))
    (folder / "bash").chmod(0o755)
    path = place.write("s.jsonl", jsonl(*[{"iterations": 2, "env": {"SWEEP_TAG": t}} for t in "ab"]))
    argv = d4p_hpc_cmd() + ["submit", str(GRAPH), "--scheduler", "local", "--sweep", str(path), "--max-parallel", "1"]
    proc = subprocess.Popen(argv, cwd=place.work, env={**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for(lambda: reached.exists() or proc.poll() is not None, DEADLINE)
    finally:
        kill_group(proc.pid)  # the submit and its held bash
        out, err = proc.communicate()
    assert reached.exists() and proc.returncode == -signal.SIGKILL and "sweep " not in out, (out, err)

    (directory,) = place.root.glob("g_sweep_squares-sweep-*")
    record = json.loads((directory / "sweep.json").read_text())
    sweep = record["id"]
    assert directory.name.endswith(sweep) and record["arrays"] == [] and len(record["tasks"]) == 2, record
    written = [(directory / "tasks" / str(k) / "job.sh").exists() for k in (0, 1)]
    assert written == ([False, False] if first else [True, True]), written
    assert not list(directory.glob("tasks/*/state/submitted"))

    proc = place.d4p("list")
    assert proc.returncode == 0 and f"sweep {sweep} (g_sweep_squares): FAILED: 2 FAILED (2 tasks)" in proc.stdout, \
        explain(proc)
    summary, rows = task_table(place, directory)
    assert summary == f"sweep {sweep} (g_sweep_squares): FAILED: 2 FAILED (2 tasks)", summary
    assert all("never submitted" in rows[k]["REASON"] for k in (0, 1)), rows

    proc = place.d4p("resume", directory, "--failed")
    assert proc.returncode == 0 and proc.stdout.strip() == f"sweep {sweep}: 2 tasks submitted again: 0, 1", \
        explain(proc)
    proc = wait_ended(place, sweep, directory)
    assert proc.returncode == 0 and f"COMPLETED {directory}" in proc.stdout, explain(proc)
    summary, rows = task_table(place, sweep)
    assert summary == f"sweep {sweep} (g_sweep_squares): COMPLETED: 2 COMPLETED (2 tasks)", summary
    items = shown(place, sweep)
    assert sorted((i["task"], tuple(i["item"])) for i in items) == [(0, (1, 1, "a")), (0, (2, 4, "a")),
                                                                  (1, (1, 1, "b")), (1, (2, 4, "b"))], items
    nothing_left_running(directory)
    assert not processes_mentioning(f"{place.tmp}/")


# --- 9 -------------------------------------------------------------------------------------------------

def test_wait_on_a_sweep_that_ended_failed_earlier_says_failed_at_once(ended):
    proc = ended.site.d4p("wait", ended.sweep, "--timeout", "5")
    assert proc.returncode == 1 and proc.stdout == f"FAILED {ended.directory}\n", explain(proc)
    assert "has not ended" not in proc.stderr and "Traceback" not in proc.stderr, explain(proc)
    assert f"d4p-hpc resume {ended.sweep} --failed" in proc.stderr, explain(proc)
    _, rows = task_table(ended.site, ended.sweep)
    assert [rows[k]["STATE"] for k in (0, 1)] == ["COMPLETED", "FAILED"], rows
    assert "killed before its exit trap ran" in rows[1]["REASON"], rows


# --- 10 ------------------------------------------------------------------------------------------------

REFUSED_FILES = {
    "a .jsonl whose first task line is not JSON": ("s.jsonl", "# tasks\n\nname,iterations\na,1\n",
                                                   "Error: s.jsonl, line 3: not a JSON object"),
    "a name given twice": ("s.jsonl", '{"name": "a"}\n\n{"name": "b"}\n{"name": "a"}\n',
                           "Error: s.jsonl, line 4: name 'a' is the name of line 1 too"),
    "a name given twice in a CSV": ("s.csv", "name,iterations\nx,1\ny,1\nx,2\n",
                                    "Error: s.csv, line 4: name 'x' is the name of line 2 too"),
    "an input_file that is a directory": ("s.jsonl", '{"iterations": 1}\n{"input_file": "inputs"}\n',
                                          "Error: s.jsonl, line 2: input file {work}/inputs is a directory"),
}


def test_sweep_files_are_read_as_written_bom_json_lines_names_and_input_files(place):
    (place.work / "inputs").mkdir()
    for case, (name, text, message) in REFUSED_FILES.items():
        path = place.write(name, text)
        said = one_error(place.d4p("submit", GRAPH, "--scheduler", "local", "--sweep", name))
        assert said.startswith(message.format(work=place.work)), (case, said)
        path.unlink()
    (place.work / "inputs").rmdir()
    place.nothing_made()

    # a spreadsheet's CSV: a byte-order mark before its first column's name
    path = place.work / "bom.csv"
    path.write_bytes("\ufeffname,iterations,env.SWEEP_TAG\nlow,1,x\nhigh,2,y\n".encode())
    sweep, directory = place.submit(path, "--wait")
    summary, rows = task_table(place, sweep)
    assert summary == f"sweep {sweep} (g_sweep_squares): COMPLETED: 2 COMPLETED (2 tasks)", summary
    assert [rows[k]["NAME"] for k in (0, 1)] == ["low", "high"], rows
    items = shown(place, sweep)
    assert sorted((i["name"], tuple(i["item"])) for i in items) == [("high", (1, 1, "y")), ("high", (2, 4, "y")),
                                                                  ("low", (1, 1, "x"))], items
    nothing_left_running(directory)


# --- 11 ------------------------------------------------------------------------------------------------

def reshaped(record: dict, shape: str) -> dict:
    """The shared sweep's record in ``shape``."""
    record = json.loads(json.dumps(record))
    if shape == "an object of other keys":
        return {"x": 1}
    if shape == "tasks a string":
        record["tasks"] = "0,1"
    elif shape == "a task index ../../etc":
        record["tasks"][1]["index"] = "../../etc"
    elif shape == "no spec":
        del record["spec"]
    elif shape == "a task's env a number":
        record["tasks"][1]["values"]["env"] = 5
    return record


#: shapes no command can read (the record's own check refuses them)
UNREADABLE = ["an object of other keys", "tasks a string", "a task index ../../etc"]
#: shapes a status can still show, that a rerun cannot use: at least ``resume`` refuses them in one line
UNUSABLE = ["no spec", "a task's env a number"]


@pytest.mark.parametrize("shape", UNREADABLE + UNUSABLE)
def test_a_sweep_json_of_the_wrong_shape_is_one_error_line_for_every_command(ended, tmp_path, shape):
    copy = tmp_path / "deep" / f"copy-{ended.sweep}"
    shutil.copytree(ended.directory, copy, symlinks=True)
    record = json.loads((copy / "sweep.json").read_text())
    (copy / "sweep.json").write_text(json.dumps(reshaped(record, shape)))
    before = files(tmp_path)
    try:
        for command in (["status", copy, "--tasks"], ["results", copy], ["resume", copy, "--failed"]):
            proc = ended.site.d4p(*command)
            if shape in UNUSABLE and command[0] != "resume" and proc.returncode == 0:
                assert "Traceback" not in proc.stderr, explain(proc)
                continue
            said = one_error(proc, exit_code=None)
            assert "sweep.json" in said or ended.sweep in said, (command, said)
        assert files(tmp_path) == before
        nothing_left_running(copy)
    finally:
        for pid in processes_mentioning(str(copy)):  # (a rerun let through would run the gated task)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_results_of_a_sweep_with_a_task_folder_deleted_still_shows_a_row_per_task(ended, tmp_path):
    copy = tmp_path / f"copy-{ended.sweep}"
    shutil.copytree(ended.directory, copy, symlinks=True)
    shutil.rmtree(copy / "tasks" / "0")
    proc = ended.site.d4p("results", copy)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, explain(proc)
    lines = proc.stdout.splitlines()
    header = next(k for k, line in enumerate(lines) if line.startswith("TASK "))
    rows = {line.split()[0]: line for line in lines[header + 1:] if line[:1].isdigit()}
    assert sorted(rows) == ["0", "1"], proc.stdout
    assert rows["0"].split()[1] == "done" and f"{copy / 'tasks' / '0'}: not a directory" in rows["0"], proc.stdout
    assert rows["1"].split()[1:3] == ["killed", "FAILED"], proc.stdout


# --- beside 6: a bool is no task index anywhere in the API ---------------------------------------------

def test_sweep_job_refuses_a_bool_as_a_task_index(ended):
    """``Sweep.job(True)`` is task 1 to a comparison (True == 1), but no index: it must be refused as
    ``cancel(tasks=[True])`` is, in one UsageError line."""
    sweep = d4p_hpc.attach_sweep(ended.directory)
    assert sweep.job(1).directory == ended.directory / "tasks" / "1"
    with pytest.raises(d4p_hpc.UsageError) as raised:
        sweep.job(True)
    assert "\n" not in str(raised.value) and "0-1" in str(raised.value), raised.value
