"""A results directory damaged in any file never makes a reading command print a traceback.

One real run directory and one real local-scheduler job directory (COMPLETED) are made once.
Then every file in them is damaged in several ways (emptied, cut short, garbage bytes, JSON of
the wrong type, an object or lines with wrongly typed fields, a directory in its place), and
every reading command runs on a copy: it may succeed or fail, but it ends with its exit code
(no Python crash), prints no traceback and at most one ``Error:`` line. The commands run in
this process (click's CliRunner: over a thousand of them); one pass runs each through the real
command line.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from d4p_hpc.cli import main
from helpers.runs import EXAMPLES, cli, d4p_hpc_cmd, explain, kill_group, wait_for

ENV = {"LONG_COUNT_SECONDS": "0.01", "D4P_HPC_SAMPLE_SECONDS": "0.2"}

#: a graph with a JSON output and a pickled one (sets), for the job
MIXED_GRAPH = '''
from dispel4py.base import ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Values(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self._add_output("sets")
        self.k = 0

    def _process(self, inputs):
        self.k += 1
        self.write("sets", {self.k, -self.k})
        return self.k


graph = WorkflowGraph()
graph.add(Values())
'''

CORRUPTIONS = ("empty", "truncated", "garbage", "wrong-type", "wrong-fields", "directory")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """{"run": (directory, an output), "job": (directory, an output)}: one run (multi, with
    checkpoints and samples) and one local job, both COMPLETED."""
    where = tmp_path_factory.mktemp("sources")
    run = where / "runs" / "long"
    proc = subprocess.Popen([*d4p_hpc_cmd(), "run", str(EXAMPLES / "long_count.py"), "-a", "graph", "-i", "150",
                             "-m", "multi", "-n", "2", "--checkpoint-every", "1", "--results", str(run)],
                            env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        kill_group(proc.pid)
    assert proc.returncode == 0, f"{out}\n{err}"
    graph = where / "mixed.py"
    graph.write_text(MIXED_GRAPH)
    done = cli("submit", graph, "-i", 20, "--scheduler", "local", "--results-root", where / "jobs", "--wait",
               env=ENV)
    assert done.returncode == 0, explain(done)
    job = next((where / "jobs").iterdir())
    wait_for(lambda: (job / "state" / "finished").exists(), 30)
    assert list(run.glob("checkpoints/*/part-*.pkl")) and list(job.glob("timeseries/*.jsonl"))
    return {"run": (run, "Slow.tagged"), "job": (job, "Values.sets")}


def files_of(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


# the files the two sources hold (a fixed list, so that the test ids are known before they run)
RUN_FILES = ["run.json", "metrics.json", "outputs/Slow.tagged/part-00000.jsonl", "outputs/Count.output/part-*",
             "logs/*", "timeseries/00000.jsonl", "timeseries/00001.jsonl", "timeseries/graph.json",
             "checkpoints/*/complete.json", "checkpoints/*/part-*.pkl", "checkpoints/*/*", ".parts/*"]
JOB_FILES = ["run.json", "metrics.json", "spec.json", "job.sh", "job.out", "job.err", "state/submitted",
             "state/started", "state/finished", "state/local.json", "state/nodefile",
             "outputs/Values.output/part-00000.jsonl", "outputs/Values.sets/part-00000.pickle", "logs/*",
             "timeseries/00000.jsonl", "timeseries/graph.json", ".parts/*"]


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif how == "garbage":
        path.write_bytes(random.Random(path.name).randbytes(200) + b"\xff\n")
    elif how == "wrong-type":
        path.write_bytes(b"[1, 2, 3]\n")
    elif how == "wrong-fields":
        path.write_bytes(_wrong_fields(data))
    else:
        path.unlink()
        path.mkdir()


def _wrong_fields(data: bytes) -> bytes:
    """Every field of the JSON object(s) in ``data`` (a file, or one a line) of another type; a
    pickle of a list for what is not JSON."""
    def swap(value):
        if isinstance(value, dict):
            return {k: swap_one(v) for k, v in value.items()}
        return swap_one(value)

    def swap_one(value):
        if isinstance(value, bool) or value is None:
            return "yes"
        if isinstance(value, (int, float)):
            return "x" if isinstance(value, int) else 1e400
        if isinstance(value, str):
            return 5
        if isinstance(value, list):
            return {"a": 1}
        return [1]

    try:
        return (json.dumps(swap(json.loads(data))) + "\n").encode()
    except ValueError:
        pass
    try:
        lines = [json.dumps(swap(json.loads(line))) for line in data.splitlines() if line.strip()]
        return ("\n".join(lines) + "\n").encode()
    except ValueError:
        return pickle.dumps([1, 2, {"state": 5}])


def commands(directory: Path, output: str, tmp: Path, kind: str) -> list[list[str]]:
    d = str(directory)
    found = [["status", d], ["results", d], ["results", d, "--show", output, "--limit", "3"],
             ["results", d, "--export", output, str(tmp / "export.jsonl")], ["logs", d],
             ["report", d, "-o", str(tmp / "report.html")], ["list", "--results-root", str(directory.parent)],
             ["wait", d, "--timeout", "0.2"], ["cancel", d]]
    if kind == "run":
        found.append(["resume", d])  # refused: a run is continued with run --resume
    return found


def check(args: list[str], code: int, output: str, crash: BaseException | None = None) -> None:
    what = f"d4p-hpc {' '.join(args)} -> exit {code}\n{output}"
    assert crash is None, f"{what}\n{crash!r}"
    assert code in (0, 1, 2), what
    assert "Traceback" not in output, what
    assert sum(line.startswith("Error:") for line in output.splitlines()) <= 1, what


def cases(kind: str, names: list[str]) -> list:
    return [pytest.param(kind, name, how, id=f"{kind}:{name}:{how}") for name in names for how in CORRUPTIONS]


def copy_damaged(sources, kind: str, name: str, how: str, tmp_path: Path) -> tuple[Path, str, list[Path]]:
    source, output = sources[kind]
    copy = tmp_path / "root" / source.name
    shutil.copytree(source, copy, symlinks=True)
    targets = sorted(copy.glob(name))
    assert targets, f"{name} is not in the {kind} directory: {files_of(copy)}"
    for target in targets:
        damage(target, how)
    return copy, output, targets


@pytest.mark.parametrize(("kind", "name", "how"), cases("run", RUN_FILES) + cases("job", JOB_FILES))
def test_no_reading_command_crashes_on_a_damaged_file(sources, tmp_path, kind, name, how):
    copy, output, _ = copy_damaged(sources, kind, name, how, tmp_path)
    runner = CliRunner()
    for args in commands(copy, output, tmp_path, kind):
        result = runner.invoke(main, args, env={"D4P_HPC_QUIET": None})
        crash = None if result.exception is None or isinstance(result.exception, SystemExit) else result.exception
        check(args, result.exit_code, result.output, crash)


@pytest.mark.parametrize(("kind", "name"), [("run", "run.json"), ("job", "state/finished")])
def test_the_real_command_line_prints_one_error_line_at_most(sources, tmp_path, kind, name):
    """The same through the real ``d4p-hpc`` (its own process each): garbage where the state is."""
    copy, output, _ = copy_damaged(sources, kind, name, "garbage", tmp_path)
    for args in commands(copy, output, tmp_path, kind):
        started = time.monotonic()
        done = cli(*args)
        check(args, done.returncode, done.stdout + done.stderr)
        assert time.monotonic() - started < 30, args


def test_every_file_of_the_sources_is_damaged_by_some_case(sources):
    """The lists above cover what the run and the job write (a new file must be added to them)."""
    for kind, names in (("run", RUN_FILES), ("job", JOB_FILES)):
        directory = sources[kind][0]
        covered = {str(p.relative_to(directory)) for name in names for p in directory.glob(name)}
        # written by others than the run and the job script: the lock of the one writer, the report
        left = set(files_of(directory)) - covered - {".lock", "report.html"}
        assert not left, f"{kind}: {sorted(left)}"
