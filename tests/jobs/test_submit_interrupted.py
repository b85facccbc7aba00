"""Ctrl-C during ``d4p-hpc submit`` never leaves a job running that nothing can find or cancel.

A local job is started in a session of its own and outlives the command that submitted it. Should
Ctrl-C land after the job has started but before it is recorded (its directory, ``state/local.json``,
``state/submitted``, the user's index of jobs), the job would run on with no record: ``d4p-hpc list``
would not show it and ``d4p-hpc cancel ID`` could not stop it. ``submit`` holds the stop signals back
from the scheduler's submit until the job is recorded, then acts on them (click's "Aborted!").

Proven from outside, as a user meets it: ``d4p-hpc submit GRAPH --scheduler local`` of a graph that
runs for a minute, started as a shell starts a foreground job (a session of its own, SIGINT at its
default), gets SIGINT on its process group at a series of delays covering its whole life (from
before the interpreter is up to after the job id is printed; the span is measured on this machine
first, by one submit left alone). After each, whatever the delay:

- every process of a job (found in /proc: its command line or working directory names the run's
  results root) belongs to a job, by its ``D4P_JOB_ID``, that ``d4p-hpc list --results-root ROOT``
  shows and that ``d4p-hpc cancel ID`` (the id alone: through the index) stops, after which nothing
  of it runs;
- a job id printed is that of a job running; a submit that printed none did not exit 0;
- the results root holds the directories of those jobs and nothing else (none when no job runs).

Where each SIGINT lands depends on the machine's load, so how many runs end in each outcome
(killed before the job started / aborted with the job running / submit completed) is printed,
never asserted: the invariant holds at every delay, so the test cannot fail on a slow machine.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers.dynamic import SLOW_GRAPH, write_graph
from helpers.runs import cli, d4p_hpc_cmd, explain, kill_group, processes_mentioning, wait_for

AT_ONCE = 3  # submits at a time; the first AT_ONCE are left alone, to measure how long a submit takes
TIMED = 12  # submits interrupted at delays spread over that time
AT_START = (0, 0, 0.001, 0.002, 0.004, 0.007, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1)  # s after the job's directory
OUTCOMES = ("killed before the job started", "aborted, job running", "submit completed")


def job_ids_of(pids) -> dict[str, list[str]]:
    """``D4P_JOB_ID`` -> the argv of the processes (still there) whose environment holds it; a process
    of the results root without one is returned under ""."""
    found: dict[str, list[str]] = {}
    for pid, argv in pids.items():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        ids = [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"D4P_JOB_ID=")]
        found.setdefault(ids[0] if ids else "", []).append(" ".join(argv))
    return found


def entries(root: Path) -> list[str]:
    """The names in ``root``, none if it is not there (a submit refused removes the root it made)."""
    try:
        return sorted(p.name for p in root.iterdir())
    except FileNotFoundError:
        return []


def stop_everything_under(root: Path) -> None:
    """SIGKILL the process groups of whatever runs under ``root`` (a job no cancel could reach)."""
    for pid in processes_mentioning(str(root)):
        try:
            kill_group(os.getpgid(pid))
        except ProcessLookupError:
            pass


def interrupted_submit(graph: Path, root: Path, work: Path, delay: float | None,
                       after_directory: bool = False) -> tuple[str, list[str], float]:
    """``d4p-hpc submit`` with results under ``root``, Ctrl-C ``delay`` s after it starts (None: left
    alone), or after the job's directory appears; every job it left is checked, cancelled and gone on
    return. Returns the outcome, what breaks the invariant, and how long the submit took."""
    argv = d4p_hpc_cmd() + ["submit", str(graph), "--scheduler", "local", "-m", "simple", "-i", "60",
                            "--results-root", str(root)]
    # its own session, as a shell's foreground job; SIGINT at its default there (see the test)
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    if delay is not None:
        # (when the Ctrl-C lands: a schedule, not an assertion)
        while after_directory and proc.poll() is None and not entries(root):
            time.sleep(0.001)
        time.sleep(delay)
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:  # it has ended already
            pass
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        raise
    took = time.monotonic() - started
    when = f"SIGINT {delay} s after {'its job directory appeared' if after_directory else 'it started'}"
    said = (f"submit ({'left alone' if delay is None else when}): exit {proc.returncode}\n"
            f"--- stdout\n{out}\n--- stderr\n{err}")
    printed = re.findall(r"^job (\S+)$", out, re.MULTILINE)
    problems = []
    running = job_ids_of(processes_mentioning(str(root)))
    if "" in running:
        problems.append(f"processes of no job: {running.pop('')}\n{said}")
    if printed and printed[0] not in running:
        problems.append(f"job {printed[0]} was printed but does not run\n{said}")
    if not printed and proc.returncode == 0:
        problems.append(f"exit 0 without a job id\n{said}")
    for job_id, processes in running.items():
        listing = cli("list", "--results-root", root, cwd=work)
        if job_id not in listing.stdout:
            problems.append(f"job {job_id} runs ({processes}) but d4p-hpc list does not show it\n"
                            f"{explain(listing)}\n{said}")
        cancelled = cli("cancel", job_id, cwd=work)  # the id alone: found through the index
        if cancelled.returncode != 0 or f"cancel requested for job {job_id}" not in cancelled.stdout:
            problems.append(f"job {job_id} runs ({processes}) but d4p-hpc cancel cannot stop it\n"
                            f"{explain(cancelled)}\n{said}")
    if problems:  # a job no cancel reached: stopped here, so that nothing is left running
        stop_everything_under(root)
    try:
        wait_for(lambda: not processes_mentioning(str(root)))
    except AssertionError:
        problems.append(f"still running 60 s after d4p-hpc cancel: {job_ids_of(processes_mentioning(str(root)))}\n"
                        f"{said}")
        stop_everything_under(root)
    left = entries(root)
    if left != sorted(f"{graph.stem}-{job_id}" for job_id in running):
        problems.append(f"left in the results root: {left}; jobs that ran: {sorted(running)}\n{said}")
    outcome = OUTCOMES[2] if printed else OUTCOMES[1] if running else OUTCOMES[0]
    return outcome, problems, took


def test_ctrl_c_during_submit_never_leaves_a_job_that_cannot_be_found_or_cancelled(isolated_config, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # this test's own index of jobs
    monkeypatch.setenv("SLOW_DELAY", "1.0")  # a second per item: with -i 60, far longer than the checks of a run
    graph = write_graph(tmp_path, SLOW_GRAPH, "slow.py")
    roots = [tmp_path / "results" / f"run{k:02d}" for k in range(AT_ONCE + TIMED + len(AT_START))]
    # A child started with SIGINT ignored keeps it ignored (so does a pytest started in the background):
    # SIGINT is given a handler here, which a child's exec resets to the default, rather than a
    # preexec_fn, which is not safe in threads
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with ThreadPoolExecutor(AT_ONCE) as pool:
            def submits(plan, first):
                return list(pool.map(lambda p, r: interrupted_submit(graph, r, isolated_config, *p), plan,
                                     roots[first:first + len(plan)]))
            # how long a submit takes here now, AT_ONCE at a time (the median: one caught in a burst of load
            # is not the rule; at most 4 s, so that a loaded machine does not make the test long)
            alone = submits([(None, False)] * AT_ONCE, 0)
            span = min(sorted(took for _, _, took in alone)[AT_ONCE // 2], 4.0)
            # from before the interpreter is up to past the end of a submit; then, as the likeliest moment
            # to lose a job, just after the job's directory appears (as it is about to start)
            plan = [(round(1.25 * span * k / (TIMED - 1), 3), False) for k in range(TIMED)]
            plan += [(offset, True) for offset in AT_START]
            results = submits(plan, AT_ONCE)
    finally:
        signal.signal(signal.SIGINT, previous)
        for root in roots:  # whatever an unfinished check left running
            stop_everything_under(root)
    counts = Counter(outcome for outcome, _, _ in results)
    print(f"\nsubmit left alone ({AT_ONCE} at once): {span:.2f} s (median); {len(results)} interrupted: "
          + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES))
    for (outcome, found, took), (delay, after_directory) in zip(results, plan, strict=True):
        when = f"{delay:.3f} s after {'its job directory appeared' if after_directory else 'it started'}"
        print(f"  SIGINT {when}: {outcome} (exit after {took:.2f} s){' BROKEN' if found else ''}")
    problems = [p for _, found, _ in (*alone, *results) for p in found]
    assert not problems, f"{len(problems)} broken run(s):\n\n" + "\n\n".join(problems)
