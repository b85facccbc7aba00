"""The job commands through the CLI: submit, render, status, logs, results, cancel, wait, list."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
from helpers.runs import wait_pid

from d4p_hpc.cli import COMMANDS, main
from d4p_hpc.schedulers import local

NAMES = ["submit", "render", "status", "logs", "results", "cancel", "wait", "list", "resume"]


def submitted(cli, *args):
    result = cli("submit", *args, "--scheduler", "local")
    assert result.exit_code == 0, result.output
    return Path(result.output.split("results ")[1].split()[0])


def test_the_listing_is_each_commands_own_help():
    # `d4p-hpc --help` lists the table, not the commands (it imports none of their modules)
    assert set(NAMES) <= set(COMMANDS)
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
        assert " ".join((command.help or "").split("\n\n")[0].split()) == COMMANDS[name][2], name
    code = ("import sys\nfrom d4p_hpc.cli import main\nmain(['--help'], standalone_mode=False)\n"
            "print('LOADED', [m for m in sys.modules if m.startswith('d4p_hpc.cli.')])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "LOADED []" in result.stdout, result.stdout + result.stderr


def test_help(cli):
    assert all(name in cli("--help").output for name in NAMES)
    for name in NAMES:
        assert cli(name, "--help").exit_code == 0
    assert "--partition" in cli("submit", "--help").output


def test_dry_run_prints_the_script_and_creates_nothing(cli, isolated_config, where_graph):
    result = cli("submit", where_graph, "--scheduler", "slurm", "-m", "mpi", "-N", "2", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "#SBATCH --nodes=2" in result.output and "srun --nodes=2" in result.output
    assert "walltime 01:00:00 (built-in default" in result.output
    assert list(isolated_config.iterdir()) == []


def test_bad_input_is_a_usage_error(cli, isolated_config, where_graph):
    result = cli("submit", where_graph, "-m", "mpy", "--dry-run")
    assert result.exit_code == 2 and "Error: unknown mapping 'mpy'; valid: simple, multi" in result.output
    result = cli("submit", "nowhere.py", "--dry-run")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = cli("submit", where_graph, "--time", "90 minutes", "--dry-run")
    assert result.exit_code == 2 and "HH:MM:SS" in result.output
    result = cli("submit", where_graph, "--profile", "nope", "--dry-run")
    assert result.exit_code == 2 and "no profile 'nope'" in result.output


def test_render_writes_a_script_to_submit_by_hand(cli, isolated_config, where_graph, tmp_path):
    result = cli("render", where_graph, "--scheduler", "local", "-i", "4", "-o", "job.sh")
    assert result.exit_code == 0, result.output
    script = isolated_config / "job.sh"
    assert os.access(script, os.X_OK) and (isolated_config / "d4p-results").is_dir()
    # as a user would run it: the script makes its own results directory from its job id
    env = dict(os.environ, D4P_JOB_ID="by-hand", D4P_NODEFILE="/dev/null")
    wait_pid(local.start(script, env, isolated_config, tmp_path / "out", tmp_path / "err"))
    status = cli("status", "d4p-results/where-by-hand")
    assert "COMPLETED" in status.output, status.output
    assert "Where.output: 4 items" in cli("results", "by-hand").output


def test_inspection_of_a_finished_job(cli, isolated_config, where_graph):
    directory = submitted(cli, where_graph, "-i", "6", "--wait")
    job_id = directory.name.split("-", 1)[1]
    assert "COMPLETED" in cli("status", job_id).output
    assert "COMPLETED" in cli("status", directory).output
    assert job_id not in cli("status").output  # without JOB: the unfinished ones only
    listing = cli("list").output
    assert job_id in listing and "COMPLETED" in listing
    logs = cli("logs", job_id).output
    assert "job.out" in logs and "COMPLETED" in logs
    report = cli("results", job_id).output
    assert "Where" in report and "ITEMS/S" in report and "Where.output: 6 items" in report
    shown = cli("results", job_id, "--show", "Where.output", "--limit", "2").output.splitlines()
    assert len(shown) == 2 and len(json.loads(shown[0])) == 4
    assert cli("results", job_id, "--export", "Where.output", "out.jsonl").exit_code == 0
    assert len((isolated_config / "out.jsonl").read_text().splitlines()) == 6
    missing = cli("results", job_id, "--show", "Nope.output")
    assert missing.exit_code == 2 and "outputs: Where.output" in missing.output
    assert cli("wait", job_id).exit_code == 0
    cancelled = cli("cancel", job_id)
    assert cancelled.exit_code == 1 and "already ended" in cancelled.output


def test_a_failed_job_fails_wait(cli, isolated_config, where_graph):
    result = cli("submit", where_graph, "--scheduler", "local", "-i", "5", "--setup",
                 "export D4P_TEST_FAIL_AT=2", "--wait")
    assert result.exit_code == 1 and "FAILED" in result.output and "cursed" in result.output


def test_cancel_and_follow_logs(cli, isolated_config, where_graph):
    directory = submitted(cli, where_graph, "-i", "1000", "--setup", "export D4P_TEST_SLEEP=0.05")
    deadline = time.monotonic() + 60
    while not (directory / "state" / "started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert cli("cancel", directory).exit_code == 0
    follow = cli("logs", directory, "-f")  # returns once the job has ended
    assert follow.exit_code == 0
    assert "CANCELLED" in cli("status", directory).output


def test_unknown_jobs(cli, isolated_config):
    result = cli("status", "12345")
    assert result.exit_code == 2 and "no job 12345" in result.output


def test_profiles_apply_to_submit(cli, isolated_config, where_graph):
    (isolated_config / "d4p-hpc.toml").write_text(
        '[profiles.big]\nscheduler = "slurm"\npartition = "large"\nwalltime = "02:00:00"\n')
    result = cli("submit", where_graph, "--profile", "big", "--dry-run")
    assert "#SBATCH --partition=large" in result.output and "#SBATCH --time=02:00:00" in result.output
    assert "(built-in default" not in result.output


def best_time(argv, runs=3):
    best = None
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        assert result.returncode == 0, result.stderr
        best = elapsed if best is None else min(best, elapsed)
    return best, result


def test_help_and_dry_run_are_fast(isolated_config, where_graph):
    command = str(Path(sys.executable).parent / "d4p-hpc")  # the console script, not a pyenv shim
    elapsed, result = best_time([command, "--help"])
    assert "submit" in result.stdout, "d4p_hpc.cli must list the commands of d4p_hpc.cli.COMMANDS"
    assert elapsed < 0.3, f"d4p-hpc --help took {elapsed:.3f} s"
    elapsed, _ = best_time([command, "submit", str(where_graph), "--scheduler", "slurm", "--dry-run", "--no-check"])
    assert elapsed < 0.3, f"d4p-hpc submit --dry-run --no-check took {elapsed:.3f} s"
    # the check loads the graph in a child process: one more interpreter start
    elapsed, _ = best_time([command, "submit", str(where_graph), "--scheduler", "slurm", "--dry-run"])
    assert elapsed < 1.5, f"d4p-hpc submit --dry-run took {elapsed:.3f} s"


def test_the_submission_side_imports_no_runtime(isolated_config, where_graph):
    # the name table d4p_hpc.mappings may load; no mapping module, and nothing heavy, may
    code = ("import sys\nfrom d4p_hpc.cli import main\n"
            f"main(['submit', {str(where_graph)!r}, '--scheduler', 'pbs', '--dry-run'], standalone_mode=False)\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('numpy', 'mpi4py', 'redis') "
            "or m.startswith('d4p_hpc.mappings.')]\nprint('HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
