"""The helpers the tests share (tests/conftest.py holds only fixtures and hooks).

Runs go through the real command line (``d4p-hpc`` console script, as a user
types it) or, for the reference ``simple`` run, through the library in this
process. Outputs are compared as multisets of canonical values: JSON turns
tuples into lists, pickle keeps numpy arrays, floats are rounded. Processes a
test leaves behind are found in /proc, on every node of an emulated cluster.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from d4p_hpc.workflow import GenericPE, WorkflowGraph

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent
EXAMPLES = REPO / "examples"
DATA = TESTS / "data"
FAKE_INTERPRETER = TESTS / "fake_interpreter.sh"
FLOAT_DIGITS = 9

#: Every mapping a run can use: the behaviour they must share is tested over all of them.
MAPPINGS = ("simple", "multi", "mpi", "dyn_multi", "dyn_auto_multi", "dyn_redis", "dyn_auto_redis", "hybrid_redis")

# name -> (example file, inputs: an iteration count (-i) or a dict (-d))
CASES = {
    "word_count": ("word_count.py", 60),
    "numpy_pipeline": ("numpy_pipeline.py", 24),
    "split_merge": ("split_merge.py", 50),
    "producer_input-d": ("producer_input.py", {"ReadNumbers": [{"input": 5}, {"input": 7}]}),
    "producer_input-i": ("producer_input.py", 20),
    "composite": ("composite.py", 40),
    "groupings": ("groupings.py", 50),
}


def input_args(inputs: Any) -> list[str]:
    """The command-line form of a case's inputs."""
    return ["-i", str(inputs)] if isinstance(inputs, int) else ["-d", json.dumps(inputs)]


def d4p_hpc_cmd() -> list[str]:
    """The ``d4p-hpc`` console script of the Python running the tests."""
    script = Path(sys.executable).parent / "d4p-hpc"
    if script.exists():
        return [str(script)]
    found = shutil.which("d4p-hpc")
    if found:
        return [found]
    return [sys.executable, "-m", "d4p_hpc"]  # the same command, per the contract


def cli(*args: Any, cwd: Path | None = None, env: dict | None = None, timeout: float = 120,
        cmd: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``d4p-hpc ARGS`` and return the finished process (text output captured)."""
    full_env = dict(os.environ)
    full_env.pop("D4P_HPC_QUIET", None)
    for var in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK", "MPI_LOCALNRANKS"):
        # the tests/mpi phase runs inside mpiexec: a child d4p-hpc must not think it is a rank
        full_env.pop(var, None)
    full_env.update(env or {})
    argv = (cmd or d4p_hpc_cmd()) + [str(a) for a in args]
    # its own session: if it hangs, the whole process group (mpiexec, ranks, children) is killed
    proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"d4p-hpc {' '.join(argv[1:])} did not finish within {timeout} s (killed)\n"
                             f"--- stdout\n{out}\n--- stderr\n{err}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def kill_group(pgid: int) -> None:
    """SIGKILL the process group a test started (its own session)."""
    import signal

    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def canon(value: Any) -> Any:
    """A hashable, order-free-comparable form of an output item."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        np = None
    if np is not None and isinstance(value, np.ndarray):
        return ("ndarray", value.shape, tuple(canon(x) for x in value.ravel().tolist()))
    if np is not None and isinstance(value, np.generic):
        return canon(value.item())
    if isinstance(value, (list, tuple)):
        return ("seq",) + tuple(canon(x) for x in value)
    if isinstance(value, dict):
        return ("dict",) + tuple(sorted(((str(k), canon(v)) for k, v in value.items()), key=repr))
    if isinstance(value, (set, frozenset)):
        return ("set",) + tuple(sorted((canon(v) for v in value), key=repr))
    if isinstance(value, float):
        return round(value, FLOAT_DIGITS)
    return value


def outputs(results: Path) -> dict[str, Counter]:
    """``{"PE.output": Counter(canonical items)}`` of a results directory."""
    from d4p_hpc import results as rd

    return {f"{pe}.{out}": Counter(canon(x) for x in rd.output_items(results, pe, out))
            for pe, out in rd.list_outputs(results)}


def raw_items(results: Path, pe: str, output: str) -> list:
    from d4p_hpc import results as rd

    return list(rd.output_items(results, pe, output))


def diff(a: dict[str, Counter], b: dict[str, Counter], limit: int = 8) -> str:
    """A short description of how two output sets differ."""
    lines = []
    for key in sorted(set(a) | set(b)):
        ca, cb = a.get(key, Counter()), b.get(key, Counter())
        if ca != cb:
            lines.append(f"{key}: {sum(ca.values())} vs {sum(cb.values())} items; "
                         f"only left {list((ca - cb).items())[:limit]}; only right {list((cb - ca).items())[:limit]}")
    return "\n".join(lines) or "equal"


def run_simple(graph: Path | str, inputs: Any, results: Path, attr: str | None = None) -> dict:
    """Run ``graph`` under the simple mapping in this process, through the library; return run.json."""
    from d4p_hpc import supervisor
    from d4p_hpc.mappings.runtime.prepare import prepare
    from d4p_hpc.mappings.static import simple

    ctx = prepare(str(graph), attr, "simple", 1, inputs, results)
    record = simple.run(ctx)
    supervisor.restore_signals()
    return record


def corpus_of_word_count() -> list[str]:
    """``CORPUS`` of examples/word_count.py, read from its source (not imported)."""
    tree = ast.parse((EXAMPLES / "word_count.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CORPUS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("examples/word_count.py has no CORPUS")


def independent_word_counts(iterations: int) -> Counter:
    """Word counts of ``iterations`` lines of the corpus, computed here, not by the example."""
    corpus = corpus_of_word_count()
    counts: Counter = Counter()
    for k in range(iterations):
        for token in corpus[k % len(corpus)].split():
            word = token.strip(".,;:!?").lower()
            if word:
                counts[word] += 1
    return counts


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def processes_mentioning(text: str) -> dict[int, list[str]]:
    """pid -> argv of the live processes (not zombies, not this one) whose command line or working
    directory contains ``text``: what a run or job left behind (pids to kill, argv to tell them apart)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [w.decode(errors="replace") for w in (entry / "cmdline").read_bytes().split(b"\0")[:-1]]
        except OSError:
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            cwd = ""
        if (text in " ".join(argv) or text in cwd) and alive(int(entry.name)):
            found[int(entry.name)] = argv
    return found


def wait_for(predicate, timeout: float = 60):
    """Poll ``predicate`` until it returns a true value, and return that value; fail after ``timeout`` s.

    It fails rather than returning false so that a test cannot go on, unnoticed, after a wait that timed out.
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"still waiting after {timeout} s")
        time.sleep(0.1)
    return value


def wait_pid(pid: int, timeout: float = 60) -> int:
    """Wait for child ``pid`` (started detached by the local runner); returns its exit code."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running after {timeout} s")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def complete_checkpoints(results: Path) -> set[int]:
    """The numbers of the complete checkpoints of the run in ``results``."""
    return {json.loads(p.read_text())["seq"] for p in (results / "checkpoints").glob("*/complete.json")}


def kill_after_its_next_checkpoint(proc: subprocess.Popen, results: Path) -> bool:
    """SIGKILL the process group of run ``proc`` (started in a session of its own) 0.3 s after a
    checkpoint it completes in ``results``, unless it ends first; return, once nothing of it runs,
    whether it was killed (a lost node: only its periodic checkpoints help)."""
    seen = complete_checkpoints(results)
    wait_for(lambda: complete_checkpoints(results) - seen or proc.poll() is not None, 60)
    if proc.poll() is not None:
        return False
    time.sleep(0.3)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_for(lambda: not processes_mentioning(str(results)), 15)
    return True


def instances_of(results: Path, pe: str) -> list[dict]:
    """The per-instance metrics of ``pe`` in a results directory (where each instance ran, what it did)."""
    return read_json(results / "metrics.json")["pes"][pe]["instances"]


def every_mapping() -> list:
    """``MAPPINGS`` as pytest parameters, the Redis ones marked ``needs_redis`` (skipped without a
    redis-server, except under CI). Imported here, not at the top: helpers.dynamic imports this module."""
    from helpers.dynamic import needs_redis

    return [pytest.param(m, marks=needs_redis if m.endswith("_redis") else ()) for m in MAPPINGS]


# --- graphs built in code, for plans and the workflow API ----------------------------------------

class PE(GenericPE):
    """A PE with given inputs (and groupings), outputs and numprocesses, for building plans."""

    def __init__(self, name, inputs=(), outputs=("output",), numprocesses=1, grouping=None):
        GenericPE.__init__(self)
        self.name = name
        for inp in inputs:
            self._add_input(inp, grouping=grouping)
        for out in outputs:
            self._add_output(out)
        self.numprocesses = numprocesses


def chain(*specs):
    """root -> specs[0] -> specs[1] ...; each spec is (numprocesses, grouping)."""
    g = WorkflowGraph()
    prev = PE("Root")
    pes = [prev]
    for k, (num, grouping) in enumerate(specs):
        pe = PE(f"P{k}", inputs=["input"], numprocesses=num, grouping=grouping)
        g.connect(prev, "output", pe, "input")
        pes.append(pe)
        prev = pe
    return g, pes


def diamond():
    """Root -> A (2) and B (3) -> C (grouped by [0], 2) -> D (global, asks for 4)."""
    g = WorkflowGraph()
    root = PE("Root", outputs=["left", "right"])
    a = PE("A", ["input"], numprocesses=2)
    b = PE("B", ["input"], numprocesses=3)
    c = PE("C", ["l", "r"], grouping=[0], numprocesses=2)
    d = PE("D", ["input"], grouping="global", numprocesses=4)
    g.connect(root, "left", a, "input")
    g.connect(root, "right", b, "input")
    g.connect(a, "output", c, "l")
    g.connect(b, "output", c, "r")
    g.connect(c, "output", d, "input")
    return g


def two_roots():
    """R1 (asks for 3) and R2 -> M -> S (2): a graph with two roots and a non-root M."""
    g = WorkflowGraph()
    r1, r2 = PE("R1", numprocesses=3), PE("R2")
    m = PE("M", ["x", "y"])
    s = PE("S", ["input"], numprocesses=2)
    g.connect(r1, "output", m, "x")
    g.connect(r2, "output", m, "y")
    g.connect(m, "output", s, "input")
    return g


# --- jobs: the test graph of the job tests and the fake interpreter ------------------------------

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


def items(job) -> list:
    """The result items of the test graph (``where_graph``) in a job's results directory."""
    from d4p_hpc.results import output_items

    return list(output_items(job.directory, "Where", "output"))


class FakeInterpreter:
    """``tests/fake_interpreter.sh`` as the job's python, with a log of its calls."""

    def __init__(self, log: Path) -> None:
        self.path = str(FAKE_INTERPRETER)
        self.log = log

    def calls(self) -> list[list[str]]:
        """The argument lists it was called with, ``-c BOOTSTRAP MODULE`` read as ``-m MODULE``."""
        from d4p_hpc.submission.launch import SAFE_MODULE

        files = sorted(self.log.glob("argv.*"), key=lambda p: p.stat().st_mtime_ns)
        calls = [[w.decode() for w in p.read_bytes().split(b"\0")[:-1]] for p in files]
        return [["-m", *c[2:]] if tuple(c[:2]) == SAFE_MODULE else c for c in calls]


def isolate(mp, home: Path, work: Path) -> None:
    """Through the monkeypatch ``mp``: no user or project config (``home`` is the home directory) and no
    D4P_HPC_* job variables (but the switches saying which clusters are up); ``work`` the working directory."""
    mp.setenv("HOME", str(home))
    mp.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in list(os.environ):
        if name.startswith("D4P_HPC_") and name not in ("D4P_HPC_SLURM", "D4P_HPC_PBS"):
            mp.delenv(name)
    mp.chdir(work)
