"""Live progress of ``d4p-hpc run`` and ``submit --wait``: on a pseudo-terminal a line redrawn
in place and cut to the terminal's width; through a pipe plain lines; the efficiency line at
the end of ``submit --wait`` and ``results``."""

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

from helpers.runs import cli, d4p_hpc_cmd, explain

COLUMNS = 60
FAST = {"D4P_HPC_SAMPLE_SECONDS": "0.2", "D4P_HPC_PROGRESS_SECONDS": "0.5", "D4P_TEST_SLEEP": "0.01"}


def _env():
    env = {k: v for k, v in os.environ.items() if k != "D4P_HPC_QUIET"}
    return {**env, **FAST}


def test_live_line_on_a_terminal_never_wraps(tmp_path, where_graph):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
    argv = d4p_hpc_cmd() + ["run", str(where_graph), "-i", "300", "--results", str(tmp_path / "r")]
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=_env(), close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: the run is over
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(30)
    os.close(master)
    text = out.decode()
    assert proc.returncode == 0, text
    drawn = [seg.split("\033[K")[0] for seg in text.split("\r") if "results" in seg and "\033[K" in seg]
    assert len(drawn) >= 2, repr(text)
    assert all(len(line) < COLUMNS for line in drawn), drawn
    assert any(len(line) == COLUMNS - 1 for line in drawn), "a line longer than the terminal is cut"
    assert any("/s" in line for line in drawn), drawn
    # the summary starts on a clean line: the live line was erased first
    assert "\r\033[KCOMPLETED" in text, repr(text)


def test_plain_lines_through_a_pipe_with_rate_slowest_pe_and_eta(tmp_path, where_graph):
    done = cli("run", where_graph, "-i", 300, "--results", tmp_path / "r", env=FAST)
    assert done.returncode == 0, explain(done)
    lines = [line for line in done.stderr.splitlines() if "results" in line]
    assert len(lines) >= 3, done.stderr
    assert "\r" not in done.stderr and "\033" not in done.stderr
    assert all(re.match(r"\d\d:\d\d:\d\d  [\d,]+ results", line) for line in lines), lines
    assert any("slowest Where (busy" in line for line in lines), lines
    assert any(re.search(r"ETA \d\d:\d\d:\d\d", line) for line in lines), lines


def test_submit_wait_shows_progress_then_state_and_efficiency(tmp_path, where_graph):
    argv = ["submit", where_graph, "--scheduler", "local", "--nodes", 2, "-m", "multi", "-i", 300,
            "--results-root", tmp_path / "jobs", "--python", sys.executable, "--wait"]
    done = cli(*argv, env=FAST)
    assert done.returncode == 0, explain(done)
    assert re.search(r"RUNNING\s+\d\d:\d\d:\d\d  [\d,]+ results", done.stderr), done.stderr
    last = done.stdout.strip().splitlines()
    assert last[-2].startswith("COMPLETED ")
    assert re.fullmatch(r"CPU efficiency \d+% of 2 cores; memory peak [\d.]+ GB", last[-1]), last
    shown = cli("results", last[-2].split()[1])
    assert shown.stdout.strip().splitlines()[-1].startswith("CPU efficiency ")


def test_status_watch_refreshes_until_the_job_ends(tmp_path, where_graph):
    argv = ["submit", where_graph, "--scheduler", "local", "-i", 100, "--results-root", tmp_path / "jobs",
            "--python", sys.executable]
    done = cli(*argv, env={"D4P_TEST_SLEEP": "0.03"})
    assert done.returncode == 0, explain(done)
    directory = done.stdout.split("results ", 1)[1].split()[0]
    watched = cli("status", "--watch", directory, timeout=120)
    assert watched.returncode == 0, explain(watched)
    tables = watched.stdout.split("\n\n")
    assert tables[-1].splitlines()[1].split()[2] == "COMPLETED", watched.stdout
    assert all(t.startswith("JOB ") for t in tables), watched.stdout
