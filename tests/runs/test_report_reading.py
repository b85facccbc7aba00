"""What ``d4p-hpc report`` tells a newcomer (issue 18, items 6 and 10), read in headless Chromium:
under dyn_multi with a root held back by back-pressure, the root's waiting is drawn apart from
its work (never as the bottleneck), the backlog chart draws the limit and agrees with
metrics.json, PEs come in pipeline order, and every chart says how to read it. A report that
cannot be written, or sample files that cannot be read whole, cost one line, never a traceback."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from helpers.runs import EXAMPLES, cli, explain, read_json

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (apt-get install chromium)")

# names whose alphabetical order (Aggregate, Parse, Source) is not the pipeline's
BACK_PRESSURED = """
import time
from dispel4py.base import IterativePE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph


class Source(GenericPE):
    # writes its whole stream in one call, as a root reading a file does
    def __init__(self):
        GenericPE.__init__(self)
        self._add_output("output")

    def _process(self, inputs):
        for k in range(1500):
            self.write("output", k)


class Parse(IterativePE):
    def _process(self, data):
        time.sleep(0.002)
        return data


class Aggregate(IterativePE):
    def _process(self, data):
        return data


graph = WorkflowGraph()
parse = Parse()
graph.connect(Source(), "output", parse, "input")
graph.connect(parse, "output", Aggregate(), "input")
"""
PIPELINE = ["Source", "Parse", "Aggregate"]


@pytest.fixture(scope="module")
def back_pressured(tmp_path_factory):
    """A dyn_multi run whose root waits for the workers most of the time, and its report."""
    where = tmp_path_factory.mktemp("backpressure")
    graph = where / "back_pressured.py"
    graph.write_text(BACK_PRESSURED)
    results = where / "r"
    done = cli("run", graph, "-m", "dyn_multi", "-n", 2, "--results", results,
               env={"D4P_HPC_MAX_BACKLOG": "40", "D4P_HPC_SAMPLE_SECONDS": "0.2"})
    assert done.returncode == 0, explain(done)
    made = cli("report", results, "-o", where / "report.html")
    assert made.returncode == 0, explain(made)
    from helpers.browser import open_page

    return results, read_json(results / "metrics.json"), open_page((where / "report.html").resolve().as_uri()).dom


def _busy_chart(dom: str) -> str:
    return dom.split("<title>Busy and blocked share per instance", 1)[1].split("</svg>", 1)[0]


def test_the_root_s_waiting_is_drawn_apart_from_its_work_and_is_never_the_bottleneck(back_pressured):
    _results, metrics, dom = back_pressured
    source = metrics["pes"]["Source"]
    assert source["blocked_seconds"] > source["busy_seconds"], source  # the test's premise: held back
    chart = _busy_chart(dom)
    root = f"busy {source['busy_seconds']:.2f} s, blocked {source['blocked_seconds']:.2f} s of "
    assert root in chart, chart
    bars = re.findall(r'<rect class="(busy|blocked)" x="[\d.]+" y="[\d.]+" width="([\d.]+)" height="13" '
                      r'fill="([^"]+)"[^>]*><title>(\w+)\[', chart)
    widths = {(kind, pe): float(width) for kind, width, _fill, pe in bars}
    assert widths["blocked", "Source"] > widths["busy", "Source"] >= 0, widths
    # the busiest is drawn red: Parse, whose work holds the others back, never the waiting root
    red = {pe for kind, _width, fill, pe in bars if kind == "busy" and fill == "#d62728"}
    assert red == {"Parse"}, bars


def test_the_backlog_chart_draws_the_limit_and_agrees_with_metrics_json(back_pressured):
    _results, metrics, dom = back_pressured
    limit, peak = metrics["backlog_limit"], metrics["backlog_peak"]
    assert limit == 40
    chart = dom.split("<title>Backlog (tasks queued, not finished)", 1)[1].split("</svg>", 1)[0]
    assert chart.startswith(f": peak {peak:,}, limit {limit:,}</title>"), chart[:200]
    assert f'<g class="limit-line"><title>back-pressure limit {limit:,}</title>' in chart


def test_pes_in_pipeline_order_and_a_sentence_under_every_chart(back_pressured):
    _results, _metrics, dom = back_pressured
    table = dom.split("<h2>PEs</h2>", 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<tr><td>(\w+)</td>", table) == PIPELINE
    bars = re.findall(r">(\w+)\[\d+\] p\d+</text>", _busy_chart(dom))
    assert list(dict.fromkeys(bars)) == PIPELINE, bars
    charts = dom.count('<svg xmlns="http://www.w3.org/2000/svg"')
    assert dom.count('<p class="how">') == charts, "one sentence under each chart"
    assert "The red bar is the busiest PE: give it more processes (-n) or instances (numprocesses)" in dom


@pytest.mark.parametrize("output, why", [
    ("/dev/full", "No space left on device"),
    ("{tmp}/missing/folder/report.html", "No such file or directory"),
    ("{tmp}/a-file/report.html", "Not a directory")])
def test_a_report_that_cannot_be_written_is_one_line(tmp_path, output, why):
    results = tmp_path / "r"
    assert cli("run", EXAMPLES / "word_count.py", "-i", 3, "--results", results).returncode == 0
    (tmp_path / "a-file").write_text("")
    done = cli("report", results, "-o", output.format(tmp=tmp_path))
    assert done.returncode == 2, explain(done)
    assert done.stderr == f"Error: cannot write the report to {output.format(tmp=tmp_path)}: {why}; give -o a " \
                          "writable path\n", explain(done)


def test_sample_files_that_cannot_be_read_whole_are_drawn_from_what_can(tmp_path):
    results = tmp_path / "r"
    assert cli("run", EXAMPLES / "word_count.py", "-m", "multi", "-n", 2, "-i", 30, "--results", results,
               env={"D4P_HPC_SAMPLE_SECONDS": "0.1"}).returncode == 0
    series = Path(results / "timeseries")
    with open(series / "00001.jsonl", "ab") as fh:
        fh.write(b"\xff\xfe not a sample\n{\"t\": \"yesterday\"}\n")
    with open(series / "00001.jsonl", "ab") as fh:
        fh.write(series.joinpath("00000.jsonl").read_bytes().splitlines(keepends=True)[-1])  # a good line after
    (series / "graph.json").write_text("[1, 2]")
    done = cli("report", results, "-o", tmp_path / "report.html")
    assert done.returncode == 0 and "Traceback" not in done.stderr, explain(done)
    page = (tmp_path / "report.html").read_text()
    assert re.search(r'left out: [^<]*00001\.jsonl: 2 lines of \d+ skipped', page), page
    assert re.search(r'left out: [^<]*graph\.json[^<]*: the graph is drawn from metrics\.json', page), page
    assert "Throughput per PE" in page and "SplitWords" in page
