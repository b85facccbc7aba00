"""A job script rendered by d4p-hpc 0.1, still in a queue when 0.2 is installed, runs to its end.

0.1's Redis jobs start ``python -m d4p_hpc.mappings.redis_server`` and ``d4p_hpc.mappings.worker``,
which 0.2 keeps as shims (``mappings/redis_server.py``, ``mappings/worker.py``). The scripts are
0.1's golden files themselves (``tests/data/golden-0.1/local/``), with only the golden spec's
placeholders replaced (tests/unit/test_render.py ``golden_spec``: the graph, the results root,
``python3``), run with bash as the local scheduler runs a job (``d4p_hpc.schedulers.local.start``:
its own session, ``D4P_JOB_ID`` and ``D4P_NODEFILE`` set). The job must complete with the outputs
of ``d4p-hpc run -m simple`` of the same graph and inputs, and the processes that did the work
(``metrics.json``) must be the old entry points' (the job's python records what it was asked to
run, and its pid, before it becomes the real interpreter).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import sys
from pathlib import Path

import pytest
from helpers.dynamic import needs_redis
from helpers.runs import EXAMPLES, TESTS, cli, diff, explain, outputs, processes_mentioning, wait_pid

from d4p_hpc.jobs import state as jobs
from d4p_hpc.results import read_metrics, read_run
from d4p_hpc.schedulers import local

pytestmark = needs_redis

GOLDEN_01 = TESTS / "data" / "golden-0.1" / "local"
# what golden_spec put into 0.1's goldens, for what this machine has
GRAPH, RESULTS_ROOT, PYTHON = "/home/user/graphs/word_count.py", "/scratch/user/d4p-results", "python3"
ITERATIONS, TASKS = 10, 4  # the goldens' -i, and nodes x tasks per node (the node file's lines)
OLD_SERVER, OLD_WORKER = "d4p_hpc.mappings.redis_server", "d4p_hpc.mappings.worker"

# the job's python: records each call (its pid, then its words, NUL-terminated, a file per call),
# then becomes the real one (same pid)
RECORDING_PYTHON = """#!/bin/bash
printf '%s\\0' "$$" "$@" >"$(mktemp "$D4P_PYTHON_CALLS/argv.XXXXXX")"
exec {python} "$@"
"""


def old_script(mapping: str, graph: Path, results_root: Path, python: Path) -> str:
    """0.1's golden script of ``mapping`` for this machine: only the golden spec's placeholders change."""
    text = (GOLDEN_01 / f"{mapping}.sh").read_text()
    for placeholder, value in ((GRAPH, graph), (RESULTS_ROOT, results_root)):
        # written into the script as they are (unquoted, and inside spec.json's JSON)
        assert re.fullmatch(r"[\w/.-]+", str(value)), f"{value} needs quoting: use a plain path"
        assert placeholder in text, f"{placeholder} is not in {mapping}.sh"
        text = text.replace(placeholder, str(value))
    assert f"{PYTHON} -c " in text, f"{mapping}.sh starts no {PYTHON} -c"
    return text.replace(f"{PYTHON} -c ", f"{python} -c ").replace(f'"python": "{PYTHON}"', f'"python": "{python}"')


def started(log: Path) -> list[tuple[int, str, list[str]]]:
    """What the job's python was asked to run: (pid, module, arguments) per call."""
    found = []
    for path in sorted(log.glob("argv.*")):
        pid, *argv = [w.decode() for w in path.read_bytes().split(b"\0")[:-1]]
        assert argv[0] == "-c", argv  # job scripts run `python -c BOOTSTRAP MODULE ARGS`
        found.append((int(pid), argv[2], argv[3:]))
    return found


@pytest.mark.parametrize("mapping, example", [
    ("dyn_redis", "split_merge.py"),  # dyn_* run stateless graphs only
    ("hybrid_redis", "word_count.py"),  # its stateful counter on fixed instances
])
def test_a_queued_0_1_redis_job_completes_with_the_outputs_of_simple(tmp_path, mapping, example):
    pytest.importorskip("redis")
    graph = EXAMPLES / example
    log = tmp_path / "python-calls"
    log.mkdir()
    python = tmp_path / "python"
    python.write_text(RECORDING_PYTHON.format(python=sys.executable))
    python.chmod(0o700)
    script = tmp_path / "job-0.1.sh"
    script.write_text(old_script(mapping, graph, tmp_path / "results", python))

    job_id = f"local-{secrets.token_hex(4)}"
    nodefile = tmp_path / "nodefile"
    nodefile.write_text(f"{socket.gethostname()}\n" * TASKS)
    env = {**os.environ, "D4P_JOB_ID": job_id, "D4P_NODEFILE": str(nodefile), "D4P_PYTHON_CALLS": str(log)}
    pid = local.start(script, env, tmp_path, tmp_path / "job.out", tmp_path / "job.err")
    wait_pid(pid, timeout=180)

    directory = tmp_path / "results" / f"word_count-{job_id}"  # the 0.1 golden's job name
    logs = (tmp_path / "job.err").read_text()
    state = jobs.status([jobs.open_job(directory)])[0]
    assert state.state == "COMPLETED", (state, logs)
    assert read_run(directory)["mapping"] == mapping
    assert not processes_mentioning(str(directory)), "the job left processes behind"

    calls = started(log)
    assert sorted(module for _, module, _ in calls) == sorted([OLD_SERVER, *[OLD_WORKER] * TASKS, "d4p_hpc"]), calls
    # the old server wrote the connection file that the old workers and the driver read
    connection = str(directory / "redis.json")
    assert f"connection file {connection}" in logs, logs
    workers = {pid for pid, module, args in calls if module == OLD_WORKER and args == ["--connection", connection]}
    driver = {pid for pid, module, _ in calls if module == "d4p_hpc"}
    metrics = read_metrics(directory)
    assert metrics is not None
    # the processes of the run: the driver and the workers that joined it (a late one may find it over)
    ran = {p["pid"] for p in metrics["process_list"]}
    assert driver < ran <= workers | driver, (metrics["process_list"], calls)

    reference = tmp_path / "simple"
    done = cli("run", graph, "-m", "simple", "-i", ITERATIONS, "--results", reference)
    assert done.returncode == 0, explain(done)
    expected, got = outputs(reference), outputs(directory)
    assert expected and got == expected, diff(got, expected)

