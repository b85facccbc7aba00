"""Live progress of ``d4p-hpc run`` and ``submit --wait``: on a pseudo-terminal a line redrawn
in place and fitted to the terminal's width (the least useful parts left out first, the slowest
PE's name shortened last, so that the slowest PE and the ETA stay in sight at 80 columns);
through a pipe plain lines; a graph that writes its results at its end; the efficiency line at
the end of ``submit --wait`` and ``results``."""

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

from helpers.runs import cli, d4p_hpc_cmd, explain

from d4p_hpc.jobs import progress

COLUMNS = 60
FAST = {"D4P_HPC_SAMPLE_SECONDS": "0.2", "D4P_HPC_PROGRESS_SECONDS": "0.5", "D4P_TEST_SLEEP": "0.01"}


def _env():
    env = {k: v for k, v in os.environ.items() if k != "D4P_HPC_QUIET"}
    return {**env, **FAST}


def _on_a_terminal(argv: list[str], columns: int, env: dict | None = None) -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal ``columns`` wide; its exit code and everything it drew."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env={**_env(), **(env or {})},
                            close_fds=True)
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
    return proc.returncode, out.decode()


def _drawn(text: str) -> list[str]:
    """The live lines drawn (each redrawn in place: a carriage return, the line, erase to its end)."""
    lines = [seg.split("\033[K")[0] for seg in text.split("\r") if "\033[K" in seg]
    return [line for line in lines if re.match(r"\d\d:\d\d:\d\d  ", line)]


def test_live_line_on_a_terminal_never_wraps(tmp_path, where_graph):
    argv = d4p_hpc_cmd() + ["run", str(where_graph), "-i", "300", "--results", str(tmp_path / "r")]
    code, text = _on_a_terminal(argv, COLUMNS)
    assert code == 0, text
    drawn = _drawn(text)
    assert len(drawn) >= 2, repr(text)
    assert all(len(line) < COLUMNS for line in drawn), drawn
    # what does not fit is left out whole, never cut in the middle: the slowest PE and the ETA stay
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d  (.*  )?slowest Where \(busy \d+%\)  (.*  )?ETA \d\d:\d\d:\d\d", line)
               for line in drawn), drawn
    # the summary starts on a clean line: the live line was erased first
    assert "\r\033[KCOMPLETED" in text, repr(text)


LONG_NAME = "SlowTransformationWithAVeryLongDescriptiveName"
AT_THE_END = f"""
import time
from dispel4py.base import IterativePE, ProducerPE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph


class Numbers(ProducerPE):
    def _process(self, inputs):
        return 1


class {LONG_NAME}(IterativePE):
    def _process(self, data):
        time.sleep(0.02)
        return data


class Total(GenericPE):
    # writes its one result at the end of the stream
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input", grouping="global")
        self._add_output("output")
        self.n = 0

    def _process(self, inputs):
        self.n += inputs["input"]

    def _postprocess(self):
        self.write("output", self.n)


graph = WorkflowGraph()
slow = {LONG_NAME}()
graph.connect(Numbers(), "output", slow, "input")
graph.connect(slow, "output", Total(), "input")
"""


def test_at_80_columns_the_slowest_pe_and_the_eta_stay_in_sight(tmp_path):
    """A graph writing its result in postprocess, a PE with a 46-character name: the live line says
    how many items were processed (not "0 results 0/s"), and keeps the slowest PE (shortened) and
    an ETA within 80 columns."""
    graph = tmp_path / "at_the_end.py"
    graph.write_text(AT_THE_END)
    argv = d4p_hpc_cmd() + ["run", str(graph), "-m", "multi", "-n", "2", "-i", "250", "--results", str(tmp_path / "r")]
    code, text = _on_a_terminal(argv, 80)
    assert code == 0, text
    drawn = _drawn(text)
    assert drawn and all(len(line) < 80 for line in drawn), drawn
    assert not any(re.search(r"\b0 results\s+0/s", line) for line in drawn), drawn
    shown = [line for line in drawn if "slowest SlowTransformation" in line]
    assert shown, drawn
    assert all(re.search(r"slowest SlowTransformation\w*…? \(busy \d+%\)", line) for line in shown), shown
    assert any(re.search(r"slowest \S+ \(busy \d+%\)  (.*  )?ETA \d\d:\d\d:\d\d$", line) for line in shown), shown


def test_a_graph_writing_its_results_at_the_end_shows_the_items_processed(tmp_path):
    graph = tmp_path / "at_the_end.py"
    graph.write_text(AT_THE_END.replace(LONG_NAME, "Slow"))
    done = cli("run", graph, "-m", "multi", "-n", 2, "-i", 150, "--results", tmp_path / "r", env=FAST)
    assert done.returncode == 0, explain(done)
    lines = [line for line in done.stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d  ", line)]
    assert any(re.match(r"\d\d:\d\d:\d\d  0 results yet, [\d,]+ items processed  [\d,]+/s  slowest Slow", line)
               for line in lines), lines


def test_a_narrow_line_leaves_parts_out_whole_and_shortens_the_name_last():
    parts = [(progress.KEEP_RESULTS, "1,234 results"), (progress.KEEP_RATE, "56/s"),
             (progress.KEEP_SLOWEST, f"slowest {LONG_NAME} (busy 98%)"), (progress.KEEP_STAGE, "600 of ~2,400"),
             (progress.KEEP_ROOTS, "inputs all read"), (progress.KEEP_ETA, "ETA 00:01:10")]
    assert progress.fit(parts, None, LONG_NAME) == "  ".join(text for _, text in parts)
    # the roots' state goes first, then the rate (then the stage's count, the results), the ETA and the
    # slowest PE last
    for expected in (f"1,234 results  56/s  slowest {LONG_NAME} (busy 98%)  600 of ~2,400  ETA 00:01:10",
                     f"1,234 results  slowest {LONG_NAME} (busy 98%)  600 of ~2,400  ETA 00:01:10",
                     f"1,234 results  slowest {LONG_NAME} (busy 98%)  ETA 00:01:10"):
        assert progress.fit(parts, len(expected), LONG_NAME) == expected
    assert progress.fit(parts, 69, LONG_NAME) == "slowest SlowTransformationWithAVeryLongDesc… (busy 98%)  ETA 00:01:10"
    # below the shortest name worth showing with the ETA, the ETA goes; the slowest PE stays
    assert progress.fit(parts, 30, LONG_NAME) == "slowest SlowTransf… (busy 98%)"
    for width in range(8, 160):
        assert len(progress.fit(parts, width, LONG_NAME)) <= width


def _sample(t: float, rows: list, sink: int) -> str:
    return json.dumps({"t": t, "seg": 1, "cpu": 0.0, "rss": 1.0, "sink": sink, "i": rows}) + "\n"


def test_a_root_writing_a_file_in_one_call_has_no_total_until_it_is_done(tmp_path):
    """A root fed one input that writes a whole file in its one call: "inputs all read" would be
    wrong while it writes; once it has finished, the items it wrote are what the next PE will
    take in, and the ETA is that PE's."""
    series = tmp_path / "timeseries"
    series.mkdir()
    (series / "graph.json").write_text(json.dumps({
        "pes": [{"name": "Read", "instances": 1, "root": True, "inputs": 1},
                {"name": "Slow", "instances": 1, "root": False, "inputs": None}],
        "edges": [{"src": "Read", "output": "output", "dst": "Slow", "input": "input", "grouping": None}]}))
    watch = progress.Progress(tmp_path)
    lines = []
    for t, written, slow_in, done in ((1, 1000, 100, False), (2, 2000, 300, False), (3, 2500, 500, True),
                                      (4, 2500, 700, True)):
        with open(series / "00000.jsonl", "a") as fh:
            fh.write(_sample(t, [["Read", 0, 1, written, 0.1, 0.8, done],
                                 ["Slow", 0, slow_in, slow_in, 0.9 * t, 0.0, False]], sink=slow_in))
        lines.append(watch.describe())
    assert "Read writing (2,000 out)" in lines[1] and "ETA" not in lines[1], lines
    assert "inputs all read" in lines[3] and "slowest Slow" in lines[3], lines
    # 1,800 items to go at 200/s
    assert "700 of 2,500" in lines[3] and "ETA 00:00:09" in lines[3], lines


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
