"""Shared test options and fixtures.

``pytest --update-golden`` rewrites the golden job scripts in ``tests/golden/``
instead of comparing against them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
REPO = TESTS.parent
FAKE_INTERPRETER = TESTS / "fake_interpreter.sh"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/<scheduler>/<mapping>.sh from the templates")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Undo pytest-mpi's skip of tests that are not MPI-world tests.

    pytest-mpi skips every item whose *keywords* hold "mpi" unless --with-mpi is given, and a
    parameter id is a keyword: a test parametrised over the mappings would silently skip its
    ``mpi`` case. Only the ``mpi`` marker (tests/mpi, run under mpiexec) means an MPI-world test.
    """
    for item in items:
        if item.get_closest_marker("mpi") is None:
            item.own_markers = [m for m in item.own_markers
                                if not (m.name == "skip" and m.kwargs.get("reason") == "need --with-mpi option to run")]


@pytest.fixture
def update_golden(request) -> bool:
    """Whether golden files are to be rewritten rather than compared."""
    return request.config.getoption("--update-golden")


@pytest.fixture
def cli(monkeypatch):
    """Run ``d4p-hpc ARGS...`` in-process; returns click's Result (output has stdout and stderr)."""
    from click.testing import CliRunner

    from d4p_hpc import cli_jobs
    from d4p_hpc.cli import main

    for command in cli_jobs.COMMANDS:  # until d4p_hpc.cli adds them itself
        if command.name not in main.commands:
            main.add_command(command)

    def invoke(*args, **kwargs):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)
    return invoke


class FakeInterpreter:
    """``tests/fake_interpreter.sh`` as the job's python, with a log of its calls."""

    def __init__(self, log: Path) -> None:
        self.path = str(FAKE_INTERPRETER)
        self.log = log

    def calls(self) -> list[list[str]]:
        """The argument lists it was called with, ``-c BOOTSTRAP MODULE`` read as ``-m MODULE``."""
        from d4p_hpc.launch import SAFE_MODULE

        files = sorted(self.log.glob("argv.*"), key=lambda p: p.stat().st_mtime_ns)
        calls = [[w.decode() for w in p.read_bytes().split(b"\0")[:-1]] for p in files]
        return [["-m", *c[2:]] if tuple(c[:2]) == SAFE_MODULE else c for c in calls]


@pytest.fixture
def fake_python(tmp_path, monkeypatch) -> FakeInterpreter:
    """A fake interpreter recording its calls; job scripts started by the test inherit its log."""
    log = tmp_path / "fake-calls"
    log.mkdir()
    monkeypatch.setenv("D4P_FAKE_LOG", str(log))
    return FakeInterpreter(log)


@pytest.fixture
def isolated_config(tmp_path, monkeypatch) -> Path:
    """No user or project config and no D4P_HPC_* job variables; returns the working directory."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in list(os.environ):
        if name.startswith("D4P_HPC_") and name not in ("D4P_HPC_SLURM", "D4P_HPC_PBS"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(work)
    return work


def wait_pid(pid: int, timeout: float = 60) -> int:
    """Wait for child ``pid`` (started detached by the local runner); returns its exit code."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running after {timeout} s")


WHERE_GRAPH = '''"""Test graph: numbers 1..N; each is tagged with where it was processed."""
import os
import socket
import time

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Numbers(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.k = 0

    def _process(self, inputs):
        self.k += 1
        return self.k


class Where(IterativePE):
    """Writes [n, host, Slurm node, pid]; sleeps $D4P_TEST_SLEEP s; raises at $D4P_TEST_FAIL_AT."""

    def __init__(self):
        IterativePE.__init__(self)
        self.numprocesses = 4

    def _process(self, n):
        if n == int(os.environ.get("D4P_TEST_FAIL_AT", "0")):
            raise ValueError(f"item {n} is cursed")
        time.sleep(float(os.environ.get("D4P_TEST_SLEEP", "0")))
        return [n, socket.gethostname(), os.environ.get("SLURMD_NODENAME", ""), os.getpid()]


graph = WorkflowGraph()
graph.connect(Numbers(), "output", Where(), "input")
'''


@pytest.fixture
def where_graph(tmp_path) -> Path:
    """A two-PE graph whose result says on which host and process each item was processed."""
    path = tmp_path / "where.py"
    path.write_text(WHERE_GRAPH)
    return path


def pids_mentioning(text: str) -> dict[int, list[str]]:
    """pid -> argv of the live processes (any node of an emulated cluster) whose command line
    contains ``text``."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = [w.decode(errors="replace") for w in cmdline.read_bytes().split(b"\0")[:-1]]
            stat = (cmdline.parent / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        pid = int(cmdline.parent.name)
        if text in " ".join(words) and stat and stat[0] != "Z" and pid != os.getpid():
            found[pid] = words
    return found


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes (any node of an emulated cluster) that contain ``text``."""
    return [" ".join(words) for words in pids_mentioning(text).values()]


def items(job) -> list:
    """The result items of the test graph (``where_graph``) in a job's results directory."""
    from d4p_hpc.results import output_items

    return list(output_items(job.directory, "Where", "output"))


def wait_for(predicate, timeout: float = 60) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"still waiting after {timeout} s"
        time.sleep(0.1)
