"""``d4p-hpc report SWEEP``: the page of a sweep, opened in real headless Chromium (DevTools
protocol) as a user would: a row a task with its values and its run's figures, the plots of the
duration and items/s against each numeric value the tasks vary (a series per value of the others),
and links that lead to each task's own report. Real sweeps on the local scheduler: a scaling study
(mapping x processes) that completes; one held mid-way (a task running behind a gate, one waiting
for a free slot); one whose task's metrics.json is cut short. Each report exits 0 with a page, never
a traceback, and leaves nothing running."""

import html
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest
from helpers.browser import distinct_pixels, open_page
from helpers.runs import EXAMPLES, cli, explain, processes_mentioning, read_json, wait_for

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (apt-get install chromium)")

SCALING = [{"mapping": m, "processes": p} for m in ("simple", "multi") for p in (1, 2)]

#: a graph whose one item waits for the file GATE (a deadline of its own: it never outlives a failed test)
GATED_GRAPH = '''import os
import time

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph

GATE = {gate!r}


class Numbers(ProducerPE):
    def _process(self, inputs):
        return 1


class Gate(IterativePE):
    def _process(self, n):
        deadline = time.monotonic() + 120
        while not os.path.exists(GATE) and time.monotonic() < deadline:
            time.sleep(0.05)
        return n


graph = WorkflowGraph()
graph.connect(Numbers(), "output", Gate(), "input")
'''


def submit_sweep(tmp_path, lines, graph=EXAMPLES / "word_count.py", *options):
    """Submit a local sweep of ``lines``; its id and directory."""
    sweep_file = tmp_path / "sweep.jsonl"
    sweep_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = cli("submit", graph, "--scheduler", "local", "--sweep", sweep_file, "--tasks-per-node", 2,
               "--results-root", tmp_path / "results", *options)
    assert done.returncode == 0, explain(done)
    said = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("sweep ", "results ")))
    return said["sweep"], Path(said["results"])


def report(sweep_id, tmp_path):
    """``d4p-hpc report SWEEP``: exits 0 and writes the page first; the page's path."""
    made = cli("report", sweep_id, "--results-root", tmp_path / "results")
    assert made.returncode == 0 and made.stderr == "", explain(made)
    written = [line.split(" ", 1)[1] for line in made.stdout.splitlines()]
    assert written[0].endswith("report.html"), written
    return Path(written[0])


def opened(page_path):
    """The page in Chromium: offline, no error, not blank."""
    url = page_path.resolve().as_uri()
    page = open_page(url)
    assert page.console_errors == []
    assert page.requests == [url], page.requests
    assert distinct_pixels(page.png) > 32, "the screenshot is blank"
    return page


def text(fragment):
    """What a piece of the DOM reads as (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split()


def task_rows(dom):
    """Task index -> (the words of its row's cells, the row's link or None)."""
    rows = {}
    for index, row in re.findall(r'<tr id="task-(\d+)">(.*?)</tr>', dom, re.S):
        cells = [" ".join(text(c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        link = re.search(r'<a href="([^"]+)"', row)
        rows[int(index)] = (cells, html.unescape(link[1]) if link else None)
    return rows


def chart(dom, title):
    """The SVG whose title is ``title``: its series (name -> the titles of its points, with their x and y)."""
    svg = next(s for s in re.findall(r"<svg.*?</svg>", dom, re.S) if f"<title>{title}</title>" in s)
    series = {}
    for name, body in re.findall(r'<g class="series"><title>(.*?)</title>(.*?)</g>', svg, re.S):
        series[html.unescape(name)] = [(float(cx), float(cy), html.unescape(tip)) for cx, cy, tip in re.findall(
            r'<circle class="point" cx="([\d.]+)" cy="([\d.]+)"[^>]*><title>(.*?)</title>', body)]
    legend = [html.unescape(n) for n in re.findall(r'<g class="legend"><title>(.*?)</title>', svg)]
    return series, legend


def target(page_path, href):
    """The file a relative link of the page leads to."""
    return Path(unquote(urlparse(urljoin(page_path.resolve().as_uri(), href)).path))


def nothing_left_running(directory):
    wait_for(lambda: not processes_mentioning(str(directory)), timeout=30)


def test_a_scaling_study_shows_a_row_a_task_items_per_second_against_processes_and_each_tasks_report(
        tmp_path, isolated_config):
    sweep_id, directory = submit_sweep(tmp_path, SCALING, EXAMPLES / "word_count.py", "-i", "20", "--wait")
    page_path = report(sweep_id, tmp_path)
    assert page_path == directory / "report.html"
    page = opened(page_path)
    assert f"d4p-hpc sweep report: word_count ({sweep_id})" in page.dom
    assert "COMPLETED" in text(page.dom[page.dom.index("Summary"):page.dom.index("Tasks")])
    assert "4 COMPLETED (4 tasks)" in " ".join(text(page.dom))

    rows = task_rows(page.dom)
    assert sorted(rows) == [0, 1, 2, 3]
    figures = {}
    for index, line in enumerate(SCALING):
        cells, href = rows[index]
        metrics = read_json(directory / "tasks" / str(index) / "metrics.json")
        figures[index] = metrics
        # task, name, mapping, processes, state, attempts, duration, items, items/s, report, note
        assert cells[:10] == [str(index), str(index), line["mapping"], str(line["processes"]), "COMPLETED", "1",
                              f"{metrics['wall_seconds']:.2f} s", f"{metrics['items']:,}",
                              f"{metrics['items_per_second']:,.0f}", "report"], cells
        # the link leads to the task's own report, which names its job
        assert href == f"tasks/{index}/report.html"
        own = target(page_path, href)
        assert own == directory / "tasks" / str(index) / "report.html" and own.is_file()
        job_id = read_json(directory / "tasks" / str(index) / "state" / "submitted")["job_id"]
        assert job_id in own.read_text()

    # items/s against processes: a series per mapping, a point per task, more processes to the right
    series, legend = chart(page.dom, "Items/s against processes")
    assert sorted(series) == sorted(legend) == ["mapping=multi", "mapping=simple"]
    for mapping, points in series.items():
        tasks = [i for i, line in enumerate(SCALING) if f"mapping={line['mapping']}" == mapping]
        assert len(points) == 2
        (x1, _, tip1), (x2, _, tip2) = sorted(points, key=lambda p: p[2])
        one, two = tasks  # processes 1, then 2
        assert tip1 == (f"task {one} ({one}): {mapping}, processes=1: "
                        f"{figures[one]['items_per_second']:,.0f} items/s")
        assert tip2 == (f"task {two} ({two}): {mapping}, processes=2: "
                        f"{figures[two]['items_per_second']:,.0f} items/s")
        assert x1 < x2
        higher = max(points, key=lambda p: float(p[2].rsplit(": ", 1)[1].split()[0].replace(",", "")))
        assert higher[1] == min(p[1] for p in points), "a higher rate is drawn higher"
    durations, _ = chart(page.dom, "Duration against processes")
    assert sorted(durations) == ["mapping=multi", "mapping=simple"]
    assert sum(len(p) for p in durations.values()) == 4

    # a task's report opens as the job report does, from the sweep page's link
    task_page = open_page(target(page_path, rows[3][1]).as_uri())
    assert task_page.console_errors == [] and "CountWords" in task_page.dom
    assert f"{figures[3]['items']:,}" in task_page.dom

    # written elsewhere (-o), with each plot as a PNG: the links still lead to the tasks' reports
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    made = cli("report", sweep_id, "--results-root", tmp_path / "results", "--png", "-o", elsewhere / "sweep.html")
    assert made.returncode == 0 and made.stderr == "", explain(made)
    written = [Path(line.split(" ", 1)[1]) for line in made.stdout.splitlines()]
    pngs = [elsewhere / f"sweep-{plot}-processes.png" for plot in ("duration", "rate")]
    assert written == [elsewhere / "sweep.html", *pngs]  # (the tasks' reports are in their own folders)
    assert all((directory / "tasks" / str(i) / "report.html").is_file() for i in range(4))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["sweep-duration-processes.png", "sweep-rate-processes.png",
                                                          "sweep.html"]
    for png in pngs:
        assert distinct_pixels(png.read_bytes()) > 8, f"{png.name} is blank"
    links = {i: href for i, (_, href) in task_rows((elsewhere / "sweep.html").read_text()).items()}
    assert {i: target(elsewhere / "sweep.html", href) for i, href in links.items()} == {
        i: directory / "tasks" / str(i) / "report.html" for i in range(4)}
    assert all(not href.startswith(("/", "file:")) for href in links.values()), links
    nothing_left_running(directory)


def test_a_sweep_still_running_and_a_task_that_never_ran_give_a_page_with_dashes(tmp_path, isolated_config):
    gate = tmp_path / "gate"
    graph = tmp_path / "gated.py"
    graph.write_text(GATED_GRAPH.format(gate=str(gate)))
    hostile = '<img src=x onerror="alert(1)"> & </td>'
    lines = [{"name": "first", "iterations": 1, "env": {"LABEL": hostile}}, {"name": "second", "iterations": 2}]
    sweep_id, directory = submit_sweep(tmp_path, lines, graph, "-m", "simple", "--max-parallel", 1)
    try:
        # one task runs (held by the gate), the other waits for the one slot
        started = wait_for(lambda: [i for i in (0, 1) if (directory / "tasks" / str(i) / "run.json").is_file()],
                           timeout=60)
        assert len(started) == 1
        running, waiting = started[0], 1 - started[0]
        page_path = report(sweep_id, tmp_path)
        page = opened(page_path)
        summary = " ".join(text(page.dom[page.dom.index("Summary"):page.dom.index("Tasks")]))
        assert "state RUNNING" in summary and "1 PENDING, 1 RUNNING (2 tasks)" in summary
        rows = task_rows(page.dom)
        names = ("first", "second")
        # task, name, iterations, env, state, attempts, duration, items, items/s, report, note
        cells, href = rows[running]
        assert cells[1] == names[running] and cells[4:9] == ["RUNNING", "1", "-", "-", "-"], cells
        assert href == f"tasks/{running}/report.html" and target(page_path, href).is_file()
        cells, href = rows[waiting]
        assert cells[1] == names[waiting] and cells[4:10] == ["PENDING", "1", "-", "-", "-", "-"], cells
        assert href is None and "waiting for a free slot" in cells[10]
        assert not (directory / "tasks" / str(waiting) / "report.html").exists()
        # a value of the sweep file is shown as text, never as markup
        env_cell = rows[0][0][3]
        assert env_cell == " ".join(json.dumps({"LABEL": hostile}, separators=(",", ":")).split())
        assert "<img" not in page.dom.replace("&lt;img", "")
        # iterations vary, but no task has completed: the section says so instead of a plot
        against = " ".join(text(page.dom[page.dom.index("Against iterations"):]))
        assert "no task has completed with figures yet" in against and "2 tasks not drawn" in against
        # the waiting task is cancelled before it ever runs; the running one goes on to its end
        cancelled = cli("cancel", sweep_id, "--tasks", waiting, "--results-root", tmp_path / "results")
        assert cancelled.returncode == 0, explain(cancelled)
    finally:
        gate.touch()
    waited = cli("wait", sweep_id, "--results-root", tmp_path / "results")
    assert waited.returncode == 1, explain(waited)
    nothing_left_running(directory)
    # written again once both ended: the figures and report of the one that ran; dashes for the other
    page = opened(report(sweep_id, tmp_path))
    summary = " ".join(text(page.dom[page.dom.index("Summary"):page.dom.index("Tasks")]))
    assert "state CANCELLED" in summary and "1 CANCELLED, 1 COMPLETED (2 tasks)" in summary
    rows = task_rows(page.dom)
    metrics = read_json(directory / "tasks" / str(running) / "metrics.json")
    cells, href = rows[running]
    assert cells[4:10] == ["COMPLETED", "1", f"{metrics['wall_seconds']:.2f} s", f"{metrics['items']:,}",
                           f"{metrics['items_per_second']:,.0f}", "report"], cells
    assert target(page_path, href) == directory / "tasks" / str(running) / "report.html"
    cells, href = rows[waiting]
    assert cells[4:10] == ["CANCELLED", "1", "-", "-", "-", "-"] and href is None, cells
    assert not (directory / "tasks" / str(waiting) / "run.json").exists()
    assert not (directory / "tasks" / str(waiting) / "report.html").exists()
    series, legend = chart(page.dom, "Items/s against iterations")
    assert [tip for points in series.values() for _, _, tip in points] == [
        f"task {running} ({names[running]}): {legend[0]}, iterations={running + 1}: "
        f"{metrics['items_per_second']:,.0f} items/s"]
    assert "1 task not drawn" in " ".join(text(page.dom))


def test_a_task_whose_metrics_file_is_cut_short_gets_a_row_saying_so(tmp_path, isolated_config):
    sweep_id, directory = submit_sweep(tmp_path, [{"processes": 1}, {"processes": 2}], EXAMPLES / "word_count.py",
                                       "-m", "simple", "--wait")
    broken = directory / "tasks" / "1" / "metrics.json"
    broken.write_text('{"wall_seconds": 0.5, "ite')
    page = opened(report(sweep_id, tmp_path))
    rows = task_rows(page.dom)
    cells, href = rows[1]
    # its state is its job's; its figures and its report cannot be had, and the row says why
    assert cells[:9] == ["1", "1", "2", "COMPLETED", "1", "-", "-", "-", "-"], cells
    assert href is None
    # the task's files named as in its folder (the row says whose they are)
    assert cells[9].startswith("metrics.json is not valid JSON (") and cells[9].endswith(
        "it was cut short or changed by hand; move it away to read the rest of the directory; so no report"), cells[9]
    assert not (directory / "tasks" / "1" / "report.html").exists()
    assert broken.read_text() == '{"wall_seconds": 0.5, "ite', "the report changes no file of the task"
    # the other task is whole, and alone in the plot
    cells, href = rows[0]
    assert cells[3] == "COMPLETED" and cells[5] != "-" and href == "tasks/0/report.html"
    series, _ = chart(page.dom, "Items/s against processes")
    assert [tip for points in series.values() for _, _, tip in points] == [
        f"task 0 (0): processes=1: {read_json(directory / 'tasks' / '0' / 'metrics.json')['items_per_second']:,.0f}"
        " items/s"]
    assert "1 task not drawn" in " ".join(text(page.dom))
    nothing_left_running(directory)
