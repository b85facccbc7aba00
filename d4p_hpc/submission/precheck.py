"""What ``submit`` and ``render`` check on the submit host before a job is queued.

A job that can only fail should fail here, in a second, not after hours in the queue: the graph
must load (syntax, imports, ``--attr``), the inputs must fit it, the mapping must accept it,
and the environment the script activates (venv, conda env, container image, modules) must
exist where that can be seen from here. ``--no-check`` skips the graph part, for graphs that
only import on the compute nodes (a module of theirs, a GPU library).

The graph is loaded by ``d4p-hpc run --check`` in a child process, so that the user's code
(and numpy, mpi4py or redis with it) never runs inside the submitting command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from d4p_hpc import schedulers
from d4p_hpc.errors import GraphError, SpecError
from d4p_hpc.submission.spec import JobSpec

# a graph that takes longer than this to import is surely doing work at import time
LOAD_TIMEOUT = 120


def check(spec: JobSpec, graph: bool = True) -> None:
    """Raise a one-line UsageError for what would make the job fail at its start."""
    _check_environment(spec)
    if graph:
        _check_graph(spec)


def _check_graph(spec: JobSpec) -> None:
    from d4p_hpc.submission.launch import run_options
    from d4p_hpc.supervisor import SAFE_MODULE

    argv = [sys.executable, *SAFE_MODULE, "d4p_hpc", "run", spec.graph, "-m", spec.mapping,
            "-n", str(spec.total_tasks), *run_options(spec), "--check"]
    if spec.continues:  # the checkpoint must fit the graph and inputs: refused here, not in the queue
        argv += ["--results", spec.continues]
    env = {k: v for k, v in os.environ.items() if not k.startswith("D4P_HPC_")}
    if not schedulers.scheduler_class(spec.scheduler).on_this_host:  # they start on compute nodes, not here
        env["D4P_HPC_MAX_PROCESSES"] = str(spec.total_tasks)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=LOAD_TIMEOUT, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise GraphError(f"loading {spec.graph} took over {LOAD_TIMEOUT} s here; if it only loads on the "
                         "compute nodes, submit with --no-check") from None
    if done.returncode:
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
        message = errors[0][len("Error: "):] if errors else (done.stderr.strip().splitlines() or ["?"])[-1]
        raise GraphError(f"{message} (checked before submitting; --no-check skips this)")


def _check_environment(spec: JobSpec) -> None:
    assert spec.results_root is not None  # JobSpec.__post_init__ fills in the default
    root = Path(spec.results_root)
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(f"results root {spec.results_root} cannot be created or written ({existing} is not a "
                        "writable directory); give --results-root a directory of yours")
    if spec.venv is not None:
        activate = Path(spec.venv).expanduser() / "bin" / "activate"
        if not activate.is_file():
            raise SpecError(f"venv {spec.venv} has no bin/activate: create it (python3 -m venv {spec.venv}) "
                            "or fix --venv")
    if spec.container is not None and "://" not in spec.container and not Path(spec.container).is_file():
        raise SpecError(f"container image {spec.container} does not exist; give the path of an Apptainer or "
                        "Singularity image (.sif) that the nodes can read")
    if spec.conda is not None:
        _check_conda(spec.conda)
    for module in spec.modules:
        _check_module(module)
    if not (spec.venv or spec.conda or spec.container or spec.modules):
        if shutil.which(spec.python) is None:
            raise SpecError(f"python {spec.python} is not found here; give --python the interpreter the nodes "
                            "should use, or --venv/--conda/--container/--module to provide one")


def _check_conda(name: str) -> None:
    if "/" in name:
        if not (Path(name).expanduser() / "conda-meta").is_dir():
            raise SpecError(f"conda env {name} does not exist (no conda-meta/ in it); fix --conda")
        return
    conda = shutil.which("conda")
    if conda is None:
        return  # conda is a login-shell function on many clusters: the job checks it
    try:
        listed = json.loads(subprocess.run([conda, "env", "list", "--json"], capture_output=True, text=True,
                                           timeout=60).stdout)
    except (ValueError, subprocess.SubprocessError, OSError):
        return
    names = [Path(p).name for p in listed.get("envs", [])]
    if name not in names and name != "base":
        raise SpecError(f"conda env {name} does not exist; choose one of: {', '.join(names) or 'none'}")


def _check_module(name: str) -> None:
    """Where Lmod runs the module system (its LMOD_CMD is set), ask it; elsewhere the job checks."""
    lmod = os.environ.get("LMOD_CMD")
    if not lmod:
        return
    try:
        found = subprocess.run([lmod, "bash", "is-avail", name], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return
    if found.returncode:
        raise SpecError(f"module {name} is not available (module is-avail {name}); see `module avail`")
