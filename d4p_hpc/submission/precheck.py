"""What ``submit`` and ``render`` check on the submit host before a job is queued.

A job that can only fail should fail here, in a second, not after hours in the queue: the graph
must load (syntax, imports, ``--attr``), the inputs must fit it, the mapping must accept it and
find what it needs (:meth:`d4p_hpc.mappings.Mapping.check`: mpi4py and the launcher for ``mpi``,
redis-py and ``redis-server`` for the Redis mappings), and the environment the script activates
(venv, conda env, container image, modules) must exist where that can be seen from here.

All but the last are checked in the job's own environment: a small script rendered from the job
script's own environment set-up (``templates/common/check.sh.j2``: modules, venv, conda, the
container, the ``--setup`` lines, run here with bash) runs ``d4p-hpc run --check`` with the job's
interpreter, so the user's code (and numpy, mpi4py or redis with it) never runs inside the
submitting command, and a missing piece is named with how to install it. The setup lines run on
this host too, in a private scratch directory that stands in for the results directory.

What this host cannot show: a module, a conda env or a path that exists only on the compute
nodes (the set-up fails here: the message says so), an mpi4py that finds its package but not
the MPI library it was built against on the nodes, and a ``redis-server`` on the first node that
is not on this one. ``--no-check`` skips the check in the job's environment, for such jobs and for
graphs that only import on the compute nodes (a module of theirs, a GPU library).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from d4p_hpc import schedulers, settings
from d4p_hpc.errors import GraphError, SpecError
from d4p_hpc.mappings import budget, files_needed
from d4p_hpc.submission import launch, render
from d4p_hpc.submission.config import scheduler_why
from d4p_hpc.submission.spec import JobSpec

# a graph that takes longer than this to import (with the environment's set-up) is surely doing
# work at import time
LOAD_TIMEOUT = 120
#: what the check script writes to stderr once the job's environment is set up
READY = "d4p-hpc: the job's environment is set up; checking the job in it"
# the variables of d4p-hpc's own that the job sees too (the others are for this command, or job keys)
_PASSED = ("D4P_HPC_REDIS_SERVER",)


def check(spec: JobSpec, graph: bool = True, sources: dict | None = None) -> list[str]:
    """Raise a one-line UsageError for what would make the job fail at its start; return the
    notices of its plan (an instance count scaled down, processes shared), for the user.

    ``graph``: also check the job in its own environment (``--no-check`` turns it off).
    ``sources``: where each value came from (:attr:`~d4p_hpc.submission.config.Resolved.sources`),
    for saying why the job's scheduler was chosen when its launcher is what is missing.
    """
    _check_environment(spec)
    _check_connections(spec)
    return _check_in_environment(spec, sources or {}) if graph else []


def _check_in_environment(spec: JobSpec, sources: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("D4P_HPC_") or k in _PASSED}
    scheduler = schedulers.scheduler_class(spec.scheduler)
    if not scheduler.on_this_host:  # they start on compute nodes, not here
        env["D4P_HPC_MAX_PROCESSES"] = str(spec.total_tasks)
    elif os.environ.get(settings.MAX_PROCESSES):  # the job runs here, with what this command has
        env[settings.MAX_PROCESSES] = os.environ[settings.MAX_PROCESSES]
    with tempfile.TemporaryDirectory(prefix="d4p-check-") as scratch:
        script = Path(scratch) / "check.sh"
        # inside a job (resuming it at its walltime stop) its environment is set up already
        script.write_text(render.render_check(spec, scratch, READY, set_up=settings.job_id() is None))
        try:
            done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=LOAD_TIMEOUT,
                                  env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise GraphError(f"setting up the job's environment and loading {spec.graph} took over "
                             f"{LOAD_TIMEOUT} s here; if it only loads on the compute nodes, submit with "
                             "--no-check") from None
    if done.returncode == 0:
        return [line[len("notice: "):] for line in done.stderr.splitlines() if line.startswith("notice: ")]
    # bash names the script in its messages ("/tmp/.../check.sh: line 9: module: command not found")
    lines = [re.sub(rf"^{re.escape(str(script))}: (line \d+: )?", "", line) for line in done.stderr.splitlines()]
    if READY not in lines:
        said = _last(lines) or _last(done.stdout.splitlines()) or f"exit code {done.returncode}"
        raise SpecError(f"the job's environment cannot be set up on this host: {said}; fix the --module/--venv/"
                        "--conda/--container/--setup values, or if it exists only on the compute nodes, submit "
                        "with --no-check")
    after = lines[lines.index(READY) + 1:]
    errors = [line[len("Error: "):] for line in after if line.startswith("Error: ")]
    message = errors[0] if errors else _last(after) or f"exit code {done.returncode}"
    if not errors and done.returncode in (126, 127):  # bash could not run the interpreter
        message = f"the job's python {spec.python} cannot be run in its environment: {message}"
    started_by = launch.launcher(spec)
    if started_by and f"needs {started_by} " in message:
        message += f" (scheduler {spec.scheduler}: {scheduler_why(spec.scheduler, sources)})"
    # skipping the check helps only a graph that loads on the compute nodes alone (their modules)
    hint = "; if it loads only on the compute nodes, --no-check (check=False in Python) skips this" \
        if any(word in message for word in ("No module named", "ImportError", "cannot be run")) else ""
    raise GraphError(f"{message} (checked in the job's environment before submitting{hint})")


def _last(lines: list[str]) -> str:
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


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


def _check_connections(spec: JobSpec) -> None:
    """The per-job Redis must accept the workers' connections, or at least (where it cannot) each node's
    relay's: it can hold as many clients as the open-files hard limit of the job's first node allows
    (this host's, unless told otherwise)."""
    if spec.launch_kind != "redis":
        return
    limit = settings.nofile_limit()
    if files_needed(spec.total_tasks, spec.nodes) > limit:
        told = settings.NOFILE_LIMIT if os.environ.get(settings.NOFILE_LIMIT, "").strip() else "ulimit -Hn here"
        raise SpecError(f"-m {spec.mapping} with {spec.total_tasks:,} workers on {spec.nodes:,} node(s) needs "
                        f"{budget(spec.total_tasks, spec.nodes)} on the job's first node; it is {limit:,} ({told}): "
                        f"run on fewer nodes per job, or, if the compute nodes allow more, set "
                        f"{settings.NOFILE_LIMIT} to their ulimit -Hn")


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
