"""Helpers shared by the runtime tests (test_contract, test_runtime, test_packaging, tests/mpi).

Runs go through the real command line (``d4p-hpc`` console script, as a user
types it) or, for the reference ``simple`` run, through the library in this
process. Outputs are compared as multisets of canonical values: JSON turns
tuples into lists, pickle keeps numpy arrays, floats are rounded.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DATA = Path(__file__).resolve().parent / "data"
FLOAT_DIGITS = 9

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
    from d4p_hpc.mappings import core, runner, simple

    ctx = runner.prepare(str(graph), attr, "simple", 1, inputs, results)
    record = simple.run(ctx)
    core.restore_signals()
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


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes (not zombies) whose command line or working directory contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                cwd = ""
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if (text in cmdline or text in cwd) and alive(int(entry.name)):
            found.append((int(entry.name), cmdline))
    return found


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
