"""The job commands through the CLI: submit, render, status, logs, results, cancel, wait, list."""

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from helpers.runs import cli as run_cli
from helpers.runs import d4p_hpc_cmd, explain, kill_group, processes_mentioning, wait_for, wait_pid

from d4p_hpc.cli import COMMANDS, main
from d4p_hpc.jobs import state
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
    assert cancelled.exit_code == 2 and "already ended" in cancelled.output  # bad input: nothing to cancel


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


def modules_loaded(argv: list[str]) -> set[str]:
    """The modules a ``d4p-hpc`` command line imports (read in-process after it ran)."""
    code = ("import sys\nfrom d4p_hpc.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('LOADED', ' '.join(sorted(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("LOADED ")), None)
    assert line is not None, result.stdout + result.stderr
    return set(line.split()[1:])


def test_help_and_dry_run_load_only_what_they_need(isolated_config, where_graph):
    # what makes these commands answer fast is what they do not import: asserted here, where it
    # does not depend on the machine; their seconds are measured by benchmarks/cli_startup.py
    ours = {m for m in modules_loaded(["--help"]) if m.startswith("d4p_hpc")}
    assert ours <= {"d4p_hpc", "d4p_hpc.cli", "d4p_hpc.errors"}, sorted(ours)
    dry = modules_loaded(["submit", str(where_graph), "--scheduler", "slurm", "--dry-run", "--no-check"])
    heavy = {m for m in dry if m.split(".")[0] in ("numpy", "mpi4py", "redis", "multiprocessing", "asyncio")
             or m.startswith(("d4p_hpc.mappings.", "d4p_hpc.report"))}
    assert not heavy, sorted(heavy)


def test_the_submission_side_imports_no_runtime(isolated_config, where_graph):
    # the name table d4p_hpc.mappings may load; no mapping module, and nothing heavy, may
    code = ("import sys\nfrom d4p_hpc.cli import main\n"
            f"main(['submit', {str(where_graph)!r}, '--scheduler', 'pbs', '--dry-run'], standalone_mode=False)\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('numpy', 'mpi4py', 'redis') "
            "or m.startswith('d4p_hpc.mappings.')]\nprint('HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def as_a_foreground_job() -> None:
    """In the child, before exec: SIGINT at its default, as a shell starts a foreground job. A process
    started with SIGINT ignored keeps it ignored across exec, and Python then installs no
    KeyboardInterrupt handler: so is every child of a pytest that a non-interactive shell started in
    the background (``pytest ... &``, or a CI launched that way), and Ctrl-C would never reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def started(argv, cwd, out: Path, timeout=60):
    """``d4p-hpc ARGV`` in a session of its own, its stdout and stderr into ``out``.out/.err."""
    return subprocess.Popen(d4p_hpc_cmd() + [str(a) for a in argv], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=open(f"{out}.out", "w"), stderr=open(f"{out}.err", "w"), start_new_session=True,
                            preexec_fn=as_a_foreground_job)


def interrupt(proc) -> int:
    """Ctrl-C, as a terminal sends it: SIGINT to the foreground process group; the exit code."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    finally:
        kill_group(proc.pid)


def on_a_terminal(argv, cwd, columns: int) -> str:
    """What ``d4p-hpc ARGV`` writes to a pseudo-terminal ``columns`` wide (a pipe gets whole lines)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(d4p_hpc_cmd() + [str(a) for a in argv], cwd=cwd, stdin=slave, stdout=slave,
                            stderr=slave, env=dict(os.environ, COLUMNS=str(columns)))
    os.close(slave)
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536) if select.select([master], [], [], 30)[0] else b""
            except OSError:  # EIO: the program has ended
                chunk = b""
            if not chunk:
                break
            shown += chunk
        proc.wait(timeout=30)
    finally:
        os.close(master)
    return shown.decode(errors="replace")


def in_a_terminal(argv, cwd, until, timeout=60) -> tuple[int, str]:
    """Run ``d4p-hpc ARGV`` in a pseudo-terminal, press Ctrl-C once ``until(what it has shown)`` is true;
    return the exit code and everything it wrote there."""
    master, slave = pty.openpty()
    # (faulthandler: SIGABRT makes a command that never ends say where each thread is)
    proc = subprocess.Popen(d4p_hpc_cmd() + [str(a) for a in argv], cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                            preexec_fn=as_a_foreground_job)
    os.close(slave)
    shown, deadline = b"", time.monotonic() + timeout

    def read(wait: float) -> bool:
        try:
            chunk = os.read(master, 65536) if select.select([master], [], [], wait)[0] else b""
        except OSError:  # EIO: the program has ended
            chunk = b""
        nonlocal shown
        shown += chunk
        return bool(chunk)

    try:
        while not until(shown.decode(errors="replace")):
            assert time.monotonic() < deadline and proc.poll() is None, shown.decode(errors="replace")
            read(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        # the terminal is read while the command ends: one that could not write would never end
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                os.kill(proc.pid, signal.SIGABRT)  # its threads' stacks, on the terminal
                while read(1.0):
                    pass
                raise AssertionError(f"still running {timeout} s after Ctrl-C:\n" + shown.decode(errors="replace"))
            read(0.1)
        code = proc.returncode
        while read(0.5):
            pass
    finally:
        os.close(master)
        kill_group(proc.pid)
    return code, shown.decode(errors="replace")


def test_ctrl_c_stops_following_not_the_job(cli, isolated_config, where_graph, tmp_path):
    """#18 item 11: Ctrl-C on submit --wait, wait and status --watch says the job goes on, and how to
    follow or cancel it, in one line; exit 130; the job still runs until it is cancelled."""
    notice = "notice: PE Where asks for 4 instances; it gets 1 (1 process)"  # from the run record
    code, shown = in_a_terminal(["submit", where_graph, "--scheduler", "local", "-i", "2000", "--setup",
                                 "export D4P_TEST_SLEEP=0.05", "--wait"], isolated_config,
                                until=lambda shown: "RUNNING" in shown.partition(notice)[2])
    job_id = re.search(r"job (local-\w+)", shown)[1]
    said = (f"stopped following job {job_id}; it is still RUNNING: d4p-hpc wait {job_id} follows it again, "
            f"d4p-hpc cancel {job_id} stops it")
    assert code == 130 and said in shown and "Aborted" not in shown, shown
    assert "RUNNING" in cli("status", job_id).output
    for argv, name in ((["wait", job_id], "wait"), (["status", "--watch", job_id], "watch")):
        proc = started(argv, isolated_config, tmp_path / name)
        wait_for(lambda name=name: "RUNNING" in (tmp_path / f"{name}.out").read_text()
                 + (tmp_path / f"{name}.err").read_text())
        assert interrupt(proc) == 130
        err = (tmp_path / f"{name}.err").read_text()
        lines = [line for line in err.splitlines() if line.startswith("stopped")]
        what = "following" if name == "wait" else "watching"
        assert lines == [said.replace("following", what)] and "Aborted" not in err, err
    directory = state.find(job_id, isolated_config / "d4p-results").directory
    assert "RUNNING" in cli("status", job_id).output
    assert cli("cancel", job_id).exit_code == 0
    assert "CANCELLED" in cli("wait", job_id).output
    wait_for(lambda: not processes_mentioning(str(directory)))


def test_tables_fit_the_terminal_and_wide_shows_the_rest(cli, isolated_config, tmp_path):
    """#18 item 12: a long reason is cut to the width; -l/--wide gives it whole, with the directory."""
    graph = tmp_path / "long_reason.py"
    graph.write_text(LONG_REASON)
    proc = run_cli("run", graph, cwd=isolated_config)
    assert proc.returncode == 1, explain(proc)
    table = on_a_terminal(["list"], isolated_config, columns=100).splitlines()
    assert len(table) == 2 and all(len(line) <= 100 for line in table), table
    assert table[1].endswith("...") and "FAILED  00:00:00  PE Bad raised Value" in table[1], table
    wide = cli("list", "--wide", env={"COLUMNS": "100"}).output.splitlines()
    directory = next((isolated_config / "d4p-results").iterdir())
    assert wide[0].split() == ["JOB", "NAME", "STATE", "ELAPSED", "DIRECTORY", "REASON"], wide
    assert str(directory) in wide[1] and wide[1].endswith("too long " * 19 + "too long"), wide
    assert cli("status", "-l", directory).output.splitlines() == wide


LONG_REASON = '''
from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph

class Source(ProducerPE):
    def _process(self, inputs):
        return 1

class Bad(IterativePE):
    def _process(self, data):
        raise ValueError(" ".join(["too long"] * 20))

graph = WorkflowGraph()
graph.connect(Source(), "output", Bad(), "input")
'''


def test_export_makes_its_folder_and_says_in_one_line_what_it_cannot(cli, isolated_config, where_graph):
    directory = submitted(cli, where_graph, "-i", "3", "--wait")
    result = cli("results", directory, "--export", "Where.output", "new/folder/out.jsonl")
    assert result.exit_code == 0 and len((isolated_config / "new/folder/out.jsonl").read_text().splitlines()) == 3
    (isolated_config / "file").write_text("")
    result = cli("results", directory, "--export", "Where.output", "file/out.jsonl")
    assert result.exit_code == 2 and result.output.startswith("Error: cannot write file/out.jsonl: "), result.output
    assert len(result.output.splitlines()) == 1, result.output


def test_render_to_an_unwritable_place_leaves_no_results_root(cli, isolated_config, where_graph):
    result = cli("render", where_graph, "--scheduler", "local", "--results-root", "rroot", "-o", "nowhere/job.sh")
    assert result.exit_code == 2 and "cannot write the job script to nowhere/job.sh" in result.output
    assert not (isolated_config / "rroot").exists()


def test_submit_says_the_plan_notices_before_the_queue(cli, isolated_config, where_graph):
    """#18 item 7: the notice that explains a slow run, from the check before submitting; once."""
    notice = "notice: PE Where asks for 4 instances; it gets 1 (2 processes)"
    for command in (["submit", "--dry-run"], ["render"], ["submit", "--wait"]):
        result = cli(*command, where_graph, "--scheduler", "local", "--nodes", "2", "-i", "2")
        assert result.exit_code == 0 and result.output.count(notice) == 1, (command, result.output)
    # without the check, --wait says it once the run has started, from its record
    result = cli("submit", where_graph, "--scheduler", "local", "--nodes", "2", "-i", "2", "--no-check", "--wait")
    assert result.exit_code == 0 and result.output.count(notice) == 1, result.output
    assert result.output.index(notice) < result.output.index("COMPLETED")
    result = cli("submit", where_graph, "--scheduler", "slurm", "-N", "1", "-m", "mpi", "--dry-run", "--no-check")
    assert "mapping mpi, 1 node x 1 task x 1 CPU, walltime" in result.output, result.output
