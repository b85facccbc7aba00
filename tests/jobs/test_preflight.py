"""Checks before the queue (issue 18): a job that can only fail is refused in one ``Error:`` line
before anything is queued or made, through the real command line.

The mapping's needs (mpi4py and the launcher, redis-py and redis-server) are looked for in the
job's own environment: with the interpreter it will use, after its set-up lines. A refusal that
depends on the scheduler says which one and why. Every value has an upper bound. Each refusal
leaves the results root as it was: absent.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.runs import EXAMPLES, cli

import click
import d4p_hpc
import jinja2
import markupsafe
from d4p_hpc import mappings
from d4p_hpc.supervisor import WORLD_VARS

WORD_COUNT = EXAMPLES / "word_count.py"
HUGE = "9" * 20


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """A venv whose python has d4p-hpc (this very code), click and Jinja2, and neither mpi4py nor
    redis-py: what ``pip install .`` without extras gives."""
    venv = tmp_path_factory.mktemp("bare") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    for package in (d4p_hpc, click, jinja2, markupsafe):
        (site / package.__name__).symlink_to(Path(package.__file__).parent)
    python = venv / "bin" / "python"
    for missing in ("mpi4py", "redis"):
        assert subprocess.run([python, "-c", f"import {missing}"], capture_output=True).returncode, missing
    return python


@pytest.fixture
def work(tmp_path, isolated_config) -> Path:
    """The submit directory, with no config of the developer's; ``results`` must never appear in it."""
    return isolated_config


@pytest.fixture
def only_bash(tmp_path) -> Path:
    """A PATH directory holding bash and a fake ``sbatch`` that refuses every job (a Slurm login
    node with neither srun, mpiexec nor redis-server)."""
    path = tmp_path / "bin"
    path.mkdir()
    (path / "bash").symlink_to("/bin/bash")
    (path / "sbatch").write_text("#!/bin/bash\necho 'sbatch: error: Invalid account' >&2\nexit 1\n")
    (path / "sbatch").chmod(0o755)
    return path


def refused(proc, *words: str) -> str:
    """The one ``Error:`` line of a refusal (exit 2 or, for the scheduler's own, 1), holding ``words``."""
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr
    assert all(word in errors[0] for word in words), errors[0]
    return errors[0]


@pytest.mark.parametrize("mapping, missing, install", [
    ("mpi", "needs mpi4py, which", "pip install 'd4p-hpc[mpi]'"),
    ("dyn_redis", "needs redis-py, which", "pip install 'd4p-hpc[redis]'"),
    ("hybrid_redis", "needs redis-py, which", "pip install 'd4p-hpc[redis]'"),
])
@pytest.mark.parametrize("command", ["submit", "render"])
def test_a_mapping_whose_package_the_jobs_python_lacks_is_refused_before_the_queue(
        work, bare, mapping, missing, install, command):
    proc = cli(command, WORD_COUNT, "-m", mapping, "--nodes", 2, "--scheduler", "local", "--python", bare,
               "--results-root", work / "results", cwd=work)
    refused(proc, f"the {mapping} mapping {missing} {bare} cannot import", install, "in the job's environment")
    assert not (work / "results").exists()


def test_the_check_runs_after_the_jobs_own_set_up(work, bare):
    # the venv's python3 (not this one) is the job's: --venv activates it, as the job script does
    proc = cli("submit", WORD_COUNT, "-m", "mpi", "--venv", bare.parent.parent, "--scheduler", "local",
               "--results-root", work / "results", cwd=work)
    refused(proc, "the mpi mapping needs mpi4py", "pip install")
    # a setup line that fails the set-up is named, with the way out
    proc = cli("submit", WORD_COUNT, "--setup", "exit 3", "--scheduler", "local", "--results-root",
               work / "results", cwd=work)
    refused(proc, "the job's environment cannot be set up on this host", "--no-check")
    assert not (work / "results").exists()


def test_run_check_and_run_refuse_a_missing_package_before_anything_starts(work, bare):
    for argv in (["-m", "mpi", "--check"], ["-m", "mpi", "-n", 2], ["-m", "dyn_redis", "-n", 2]):
        proc = cli("run", WORD_COUNT, *argv, "--results", work / "r", cwd=work,
                   cmd=[str(bare), "-m", "d4p_hpc"])
        refused(proc, "needs", f"{bare} cannot import", "pip install 'd4p-hpc[")
        assert not (work / "r").exists()


def test_a_missing_program_is_named_with_how_to_get_it(work, only_bash):
    path = {"PATH": str(only_bash)}
    local = ["--scheduler", "local", "--results-root", work / "results"]
    refused(cli("submit", WORD_COUNT, "-m", "mpi", *local, cwd=work, env=path),
            "the mpi mapping needs mpiexec to start its ranks, which is not on PATH", "apt install openmpi-bin")
    refused(cli("submit", WORD_COUNT, "-m", "dyn_redis", *local, cwd=work, env=path),
            "needs redis-server, which is not on PATH", "apt install redis-server or conda install redis",
            "--redis-server PATH")
    refused(cli("run", WORD_COUNT, "-m", "dyn_redis", "--redis-server", work / "no-redis", "--results", work / "r",
                cwd=work, env=path), f"needs redis-server, and {work / 'no-redis'} is not found")
    refused(cli("run", WORD_COUNT, "-m", "mpi", "--check", cwd=work, env=path),
            "needs an MPI launcher (mpiexec or mpirun)", "apt install openmpi-bin")
    assert not (work / "results").exists() and not (work / "r").exists()


def test_errors_that_depend_on_the_scheduler_say_which_and_why(work, only_bash):
    """With sbatch on PATH a newcomer's job goes to Slurm unasked: the README's local one-liner
    without --scheduler local must say so."""
    path = {"PATH": str(only_bash)}
    why = "scheduler slurm: sbatch is on PATH; use --scheduler local to run here"
    root = ["--results-root", work / "results"]
    refused(cli("submit", WORD_COUNT, "--nodes", 2, "--wait", *root, cwd=work, env=path),
            "mapping multi runs on one node", why)
    # the launch plan's launcher is what the job needs: srun here, not mpiexec
    refused(cli("submit", WORD_COUNT, "-m", "mpi", "--nodes", 2, *root, cwd=work, env=path),
            "the mpi mapping needs srun to start its ranks", why)
    # Slurm itself refusing the job
    refused(cli("submit", WORD_COUNT, "-m", "mpi", "--nodes", 2, "--no-check", *root, cwd=work, env=path),
            "sbatch: error: Invalid account", why)
    dry = cli("submit", WORD_COUNT, "-m", "mpi", "--nodes", 2, "--no-check", "--dry-run", *root, cwd=work, env=path)
    assert dry.returncode == 0, dry.stderr
    assert "slurm (sbatch is on PATH; use --scheduler local to run here) job word_count" in dry.stderr
    # chosen by hand, it says where it was chosen
    (work / "d4p-hpc.toml").write_text('scheduler = "slurm"\n')
    refused(cli("submit", WORD_COUNT, "--nodes", 2, *root, cwd=work, env=path),
            f"(scheduler slurm: from the project config {work / 'd4p-hpc.toml'})")
    assert not (work / "results").exists()


LONG = "a" * 10_000


@pytest.mark.parametrize("args, said", [
    (["--nodes", HUGE], f"nodes {HUGE} is too large: the limit is 100,000"),
    (["--tasks-per-node", HUGE], "tasks_per_node"),
    (["-c", HUGE], "cpus_per_task"),
    (["--nodes", 1000, "--tasks-per-node", 10_000], "10,000,000 tasks; the limit is 1,000,000"),
    (["--nodes", 100_000], "100000 tasks would be 100000 processes on this host"),
    (["-i", HUGE], "iterations"),
    (["--requeue", HUGE], "requeue"),
    (["--checkpoint-every", HUGE], "checkpoint_every"),
    (["--gpus-per-node", HUGE], "gpus_per_node"),
    (["--account", LONG], "account 'aaaa"),
    (["--partition", LONG], "is 10,000 characters long; the limit is 64"),
    (["--qos", LONG], "qos"),
    (["-J", LONG], "job_name"),
    (["--python", LONG], "the limit is 4,096"),
    (["--setup", LONG], "setup"),
    (["-d", json.dumps({"Words": ["a" * 110_000]})], "give larger inputs as a JSON file with -f"),
    (["--time", "25:99:99"], "minutes and seconds must be below 60"),
    (["--time", "9" * 5000], "walltime"),
    (["--time", "9999999-00:00:00"], "is over 366 days"),
    (["--mem", "-1G"], "is not a size"),
    (["--mem", "9" * 5000 + "M"], "memory"),
    (["--mem", "99999999T"], "over the limit of 1024T"),
    (["-J", "9lives"], "start with a letter"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_garbage_is_refused_in_one_line_and_nothing_is_made(work, args, said):
    proc = cli("submit", WORD_COUNT, "--scheduler", "local", "--no-check", "--results-root", work / "results",
               *args, cwd=work)
    assert proc.returncode == 2
    line = refused(proc, said)
    assert len(line) < 300, line  # the limit is named, the value is not repeated in full
    assert not (work / "results").exists()


@pytest.mark.skipif(not importlib.util.find_spec("mpi4py") or not importlib.util.find_spec("redis"),
                    reason="needs mpi4py and redis-py in this python")
def test_a_launcher_is_needed_where_the_run_starts_its_ranks_and_a_server_where_it_starts_one(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    for name in (*WORLD_VARS, mappings.LAUNCHER_ENV, "D4P_HPC_REDIS_SERVER"):
        monkeypatch.delenv(name, raising=False)
    mpi, redis = mappings.get("mpi"), mappings.get("dyn_redis")
    with pytest.raises(mappings.MissingNeedError, match=r"needs an MPI launcher \(mpiexec or mpirun\)"):
        mpi.check({})
    with pytest.raises(mappings.MissingNeedError, match="needs redis-server, which is not on PATH"):
        redis.check({})
    redis.check({"redis_url": "redis://elsewhere:6379"})  # a Redis of the user's: no server of ours
    monkeypatch.setenv(mappings.LAUNCHER_ENV, "srun")  # a Slurm job's check
    with pytest.raises(mappings.MissingNeedError, match="needs srun to start its workers"):
        redis.check({"redis_connection": "conn"})
    monkeypatch.setenv(WORLD_VARS[0], "2")  # a rank: its launcher has started it
    mpi.check({})


def test_render_to_an_unwritable_place_leaves_no_results_root(work):
    proc = cli("render", WORD_COUNT, "--scheduler", "local", "--results-root", work / "results",
               "-o", work / "no" / "such" / "job.sh", cwd=work)
    refused(proc, "cannot write the job script")
    assert not (work / "results").exists()


def test_a_job_that_cannot_start_leaves_nothing(isolated_config, monkeypatch):
    from click.testing import CliRunner

    from d4p_hpc.cli import main
    from d4p_hpc.schedulers import local

    def disk_full(*_args, **_kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local, "start", disk_full)
    with pytest.raises(OSError):
        CliRunner().invoke(main, ["submit", str(WORD_COUNT), "--scheduler", "local", "--no-check",
                                  "--results-root", "deep/results"], catch_exceptions=False)
    assert not (isolated_config / "deep").exists()


def test_run_keeps_its_results_under_the_profiles_results_root(work):
    (work / "d4p-hpc.toml").write_text('results_root = "runs"\n')
    proc = cli("run", WORD_COUNT, cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert [p.name.split("-")[0] for p in (work / "runs").iterdir()] == ["word_count"]
    assert not (work / "d4p-results").exists()
