"""A new user's first hour, taken literally (issue 7): the README's set-up commands in a fresh
copy of the repository, a fresh venv and a plain (non-editable) install.

The copy holds exactly what a clone of this working tree holds (tracked and untracked, not
ignored files), so the test sees uncommitted work as CI sees a clone of main. Jobs go to the
``local`` scheduler, which runs the very script a cluster would; a second job is submitted
from a directory whose ``inspect.py``, ``queue.py`` and empty ``d4p_hpc/`` package would
shadow the standard library and the installed package if any in-job command put the working
directory first on ``sys.path``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.runs import REPO, explain, independent_word_counts

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("first_hour")]  # one worker builds the venv
README = (REPO / "README.md").read_text()
# a module that must never be imported: the job fails loudly if it is
HOSTILE = "raise SystemExit('the submit directory shadowed a module: {name}')\n"


def readme_quick_start() -> str:
    """The install-and-run line of the README's quick start, as written there."""
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("python3 -m pip install .")]
    assert len(lines) == 1, f"the quick start should have one install-and-run line, found {lines}"
    return lines[0]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """What a fresh clone of this working tree holds (its committed links, d4p_hpc/mappings and
    d4p_hpc/templates, as links)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    target = tmp_path_factory.mktemp("clone") / "d4p-hpc"
    for name in filter(None, listed):
        source = REPO / name
        if source.is_symlink() or source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name, follow_symlinks=False)
    return target


@pytest.fixture(scope="module")
def user(clone, tmp_path_factory):
    """A fresh venv first on PATH, and the quick start run in the clone's root as the README says."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D4P_HPC_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["HOME"] = str(tmp_path_factory.mktemp("home"))  # no user config file of the developer's
    done = subprocess.run(["bash", "-c", readme_quick_start()], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=900)
    return venv, env, done


def run(env, *argv, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def counts_of(env, job_line: str, cwd: Path) -> dict:
    """The word counts of the job named in ``job <id>``, read back with `d4p-hpc results --show`."""
    job_id = re.search(r"^job (\S+)$", job_line, re.M).group(1)
    shown = run(env, "d4p-hpc", "results", job_id, "--show", "CountWords.output", cwd=cwd)
    assert shown.returncode == 0, explain(shown)
    import json
    return dict(tuple(json.loads(line)) for line in shown.stdout.splitlines())


def test_readme_quick_start_completes_in_a_fresh_clone(user, clone):
    venv, env, done = user
    assert done.returncode == 0, f"the README quick start failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    # the documented output: job id, results directory, then COMPLETED and that directory
    assert re.search(r"^job local-[0-9a-f]+$", done.stdout, re.M), done.stdout
    results = re.search(r"^results (\S+)$", done.stdout, re.M).group(1)
    assert re.search(rf"^COMPLETED {re.escape(results)}$", done.stdout, re.M), done.stdout
    assert Path(results).parent == clone / "d4p-results"
    # the plain install: nothing of the job came from the checkout's d4p_hpc/
    where = run(env, "python3", "-c", "import d4p_hpc; print(d4p_hpc.__file__)", cwd=clone.parent)
    assert str(venv) in where.stdout and str(clone) not in where.stdout, where.stdout
    assert counts_of(env, done.stdout, clone) == dict(independent_word_counts(1))
    # numpy is an extra: the plain install ran the job without it
    numpy = run(env, "python3", "-c", "import numpy", cwd=clone.parent)
    assert numpy.returncode != 0, "numpy came with a plain install"


def test_readme_test_command_is_what_ci_runs():
    assert "\n    bash .ci/run\n" in README
    assert re.search(r"^phase test bash \.ci/test$", (REPO / ".ci" / "run").read_text(), re.M)
    assert "`bash .ci/test`" in README


def test_python_m_d4p_hpc_from_the_repository_root(user, clone):
    _, env, _ = user
    help_ = run(env, "python3", "-m", "d4p_hpc", "--help", cwd=clone)
    assert help_.returncode == 0 and "submit" in help_.stdout, explain(help_)
    script = run(env, "d4p-hpc", "--help", cwd=clone)
    assert help_.stdout.split("\n", 1)[1] == script.stdout.split("\n", 1)[1]  # all but the usage line
    # the checkout's own d4p_hpc/ lacks mappings/ and templates/: it must still find them
    ran = run(env, "python3", "-m", "d4p_hpc", "run", "examples/word_count.py", "--results", clone / "r-m",
              cwd=clone)
    assert ran.returncode == 0 and "COMPLETED" in ran.stdout, explain(ran)


@pytest.fixture(scope="module")
def hostile(user, tmp_path_factory) -> Path:
    """A submit directory full of files named like modules the job imports."""
    venv, env, _ = user
    extras = run(env, "python3", "-m", "pip", "install", "-q", "mpi4py", "redis", cwd=tmp_path_factory.getbasetemp(),
                 timeout=900)
    assert extras.returncode == 0, explain(extras)
    where = tmp_path_factory.mktemp("hostile")
    for name in ("inspect", "queue", "json", "click", "redis", "mpi4py", "socket"):
        (where / f"{name}.py").write_text(HOSTILE.format(name=name))
    (where / "d4p_hpc").mkdir()
    (where / "d4p_hpc" / "__init__.py").write_text("")
    return where


@pytest.mark.parametrize("mapping", ["multi", "mpi", "hybrid_redis"])
def test_a_job_submitted_from_a_directory_that_shadows_modules(user, clone, hostile, mapping):
    _, env, _ = user
    env = dict(env, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    done = run(env, "d4p-hpc", "submit", clone / "examples" / "word_count.py", "--nodes", "2", "--wait",
               "--scheduler", "local", "-m", mapping, "-i", "3", cwd=hostile)
    assert done.returncode == 0, explain(done) + _job_err(hostile)
    assert re.search(r"^COMPLETED ", done.stdout, re.M), done.stdout
    assert counts_of(env, done.stdout, hostile) == dict(independent_word_counts(3))


def _job_err(root: Path) -> str:
    return "".join(f"\n--- {p}\n{p.read_text()[-2000:]}" for p in (root / "d4p-results").glob("*/job.err"))

