"""The usual dispel4py producer, one ``process`` call that reads a whole file and writes every line,
is checkpointed inside that call, through the real command line.

Under simple, multi, mpi and hybrid_redis: a run stopped at the walltime signal (SIGUSR1) after
a checkpoint taken inside the root's call, then resumed and SIGKILLed with its whole process
group after one of its own, then resumed again, gives the outputs of one uninterrupted run: none
lost, none twice (the grouped counter's totals prove the states were kept). A root whose call does
not write the same items again fails the resume in one line naming it; one that says it is not
deterministic is named at the start and checkpointed between calls only.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
from pathlib import Path

import pytest

from helpers.dynamic import needs_redis
from helpers.runs import (DATA, cli, d4p_hpc_cmd, diff, explain, kill_group, outputs, processes_mentioning,
                          read_json, wait_for)

GRAPH = DATA / "g_one_call_file.py"
LINES = 40000
PROCESSES = {"simple": 1, "multi": 3, "mpi": 3, "hybrid_redis": 3}
#: the slow stage's delay per line: ~4 s for the 40,000 lines on one process, ~5 s on hybrid_redis's pool
DELAY = {"hybrid_redis": "0.0004"}


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "lines.txt"
    path.write_text("".join(f"line-{i}\n" for i in range(LINES)))
    return path


def env_of(lines: Path, mapping: str = "simple", **extra: str) -> dict:
    return {"D4P_ONE_CALL_FILE": str(lines), "D4P_ONE_CALL_SECONDS": DELAY.get(mapping, "0.0001"), **extra}


@pytest.fixture(scope="module")
def reference(lines, tmp_path_factory):
    """The outputs of one uninterrupted simple run (without the delay, which changes nothing)."""
    results = tmp_path_factory.mktemp("ref") / "r"
    done = cli("run", GRAPH, "--results", results, env={**env_of(lines), "D4P_ONE_CALL_SECONDS": "0"})
    assert done.returncode == 0, explain(done)
    found = outputs(results)
    assert sum(found["Slow.tagged"].values()) == LINES and sum(found["Count.output"].values()) == 7, found.keys()
    return found


def start(mapping: str, results: Path, lines: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """``d4p-hpc run`` of the graph in its own session (its process group is the run)."""
    argv = [*d4p_hpc_cmd(), "run", str(GRAPH), "-m", mapping, "-n", str(PROCESSES[mapping]),
            "--results", str(results), "--checkpoint-every", "1", *extra]
    return subprocess.Popen(argv, env={**os.environ, **env_of(lines, mapping), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def calls_under_way(results: Path, seq: int) -> dict:
    """What checkpoint ``seq`` holds of root calls under way: ``{gid: {"writes", "digest"}}``."""
    found: dict = {}
    for part in (results / "checkpoints" / f"{seq:06d}").glob("part-*.pkl"):
        found.update(pickle.loads(part.read_bytes()).get("replay", {}))
    return found


def complete(results: Path) -> list[int]:
    return sorted(int(p.parent.name) for p in (results / "checkpoints").glob("*/complete.json")
                  if p.parent.name.isdigit())


def checkpoint_after(proc: subprocess.Popen, results: Path, seen: list[int]) -> int:
    """Wait for a complete checkpoint newer than ``seen``, taken inside the root's call; return its number."""
    def newer():
        done = [seq for seq in complete(results) if seq not in seen]
        return done[-1] if done else proc.poll() is not None
    seq = wait_for(newer, 90)
    assert proc.poll() is None, f"the run ended before a checkpoint:\n{proc.communicate()}"
    return seq


@pytest.mark.parametrize("mapping", ["simple", "multi", "mpi", pytest.param("hybrid_redis", marks=needs_redis)])
def test_a_one_call_producer_is_checkpointed_inside_its_call_and_resumes_exactly(mapping, lines, reference,
                                                                                 tmp_path):
    results = tmp_path / "r"
    # segment 1: stopped at the walltime signal; its last checkpoint is inside the call
    first = start(mapping, results, lines)
    seq = checkpoint_after(first, results, [])
    assert [c["writes"] for c in calls_under_way(results, seq).values()] > [0], calls_under_way(results, seq)
    first.send_signal(signal.SIGUSR1)
    out, err = first.communicate(timeout=90)
    assert first.returncode == 138, f"exit {first.returncode}\n{out}\n{err}"
    assert read_json(results / "run.json")["state"] == "TIMEOUT"
    last = complete(results)[-1]
    written = sum(c["writes"] for c in calls_under_way(results, last).values())
    assert 0 < written < LINES, calls_under_way(results, last)
    # segment 2 resumes inside the call, and is killed outright (the whole process group) after a
    # checkpoint of its own, further inside the same call
    second = start(mapping, results, lines, "--resume")
    checkpoint_after(second, results, complete(results))
    os.killpg(second.pid, signal.SIGKILL)
    second.communicate(timeout=30)
    wait_for(lambda: not processes_mentioning(str(results)), 15)
    assert sum(c["writes"] for c in calls_under_way(results, complete(results)[-1]).values()) > written
    # segment 3 completes
    done = cli("run", GRAPH, "-m", mapping, "-n", PROCESSES[mapping], "--results", results, "--resume",
               env=env_of(lines, mapping), timeout=180)
    assert done.returncode == 0, explain(done)
    assert read_json(results / "run.json")["state"] == "COMPLETED"
    got = outputs(results)
    assert got == reference, diff(got, reference)
    assert not processes_mentioning(str(results))


def killed_inside_the_call(results: Path, lines: Path, env: dict) -> None:
    """A simple run SIGKILLed after a checkpoint inside its root's call."""
    proc = start("simple", results, lines, env=env)
    checkpoint_after(proc, results, [])
    kill_group(proc.pid)
    proc.communicate(timeout=30)


def test_a_root_that_writes_other_items_on_resume_fails_it_in_one_line(lines, tmp_path):
    results = tmp_path / "r"
    noisy = {"D4P_ONE_CALL_NOISE": "1"}
    killed_inside_the_call(results, lines, noisy)
    done = cli("run", GRAPH, "--results", results, "--resume", env=env_of(lines, **noisy))
    assert done.returncode == 1, explain(done)
    record = read_json(results / "run.json")
    assert record["state"] == "FAILED" and record["error"]["pe"] == "ReadFile", record
    message = record["error"]["traceback"]
    assert "\n" not in message.strip() and "PE ReadFile is not deterministic" in message, message
    assert "deterministic = False" in message and "checkpoint()" in message, message
    assert "PE ReadFile is not deterministic" in done.stdout + done.stderr, explain(done)
    # nothing the replay wrote reached the outputs: they are the checkpoint's
    assert sum(outputs(results).get("Slow.tagged", {}).values()) < LINES


def test_a_root_that_says_it_is_not_deterministic_is_named_and_checkpointed_between_calls_only(lines, tmp_path):
    results = tmp_path / "r"
    declared = {"D4P_ONE_CALL_DECLARED": "1"}
    proc = start("simple", results, lines, env={**declared, "D4P_ONE_CALL_SECONDS": "0.00005"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"{out}\n{err}"
    assert "root PE ReadFile has deterministic = False: a checkpoint waits for each of its process() calls" \
        in out + err, out + err
    assert "root PE ReadFile has deterministic = False" in " ".join(read_json(results / "run.json")["notices"])
    # its one call took seconds: no checkpoint inside it, one after it at the most
    assert all(not calls_under_way(results, seq) for seq in complete(results))
