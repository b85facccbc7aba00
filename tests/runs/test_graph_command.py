"""Issue 7, item 3: ``d4p-hpc graph`` and the stand-in's ``write_image`` draw a workflow.

Everything goes through the installed ``d4p-hpc`` command. The DOT text is
checked line by line; the SVG that Graphviz makes of it is parsed as XML and
must name every PE; the PNG must have a PNG signature and an IHDR size. The
placement drawn for a mapping and N must be the plan's, computed here with
the runtime's own ``build_plan``, for multi and mpi at two process counts.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

import pytest

from helpers.drawing import needs_dot, png_size
from helpers.runs import DATA, EXAMPLES, cli, explain

NODE = re.compile(r'^  pe(\d+) \[label="((?:[^"\\]|\\.)*)"\];$', re.M)
EDGE = re.compile(r'^  pe(\d+) -> pe(\d+) \[label="((?:[^"\\]|\\.)*)"\];$', re.M)


def draw(tmp_path, graph, *args, name="out.dot", env=None):
    out = tmp_path / name
    proc = cli("graph", graph, *args, "-o", out, env=env)
    return proc, out


def labels(dot: str) -> dict[int, list[str]]:
    """Node index -> its label lines (DOT's ``\\n`` separates them)."""
    return {int(i): text.split("\\n") for i, text in NODE.findall(dot)}


def edges(dot: str) -> list[tuple[int, int, list[str]]]:
    return [(int(a), int(b), text.split("\\n")) for a, b, text in EDGE.findall(dot)]


def placed(line: str) -> tuple[int, str, set[int]]:
    """``4,095 instances: ranks 1-4095`` -> (4095, "ranks", {1, ..., 4095})."""
    match = re.fullmatch(r"([\d,]+) instances?: (\w+) ([\d, -]+)", line)
    assert match, line
    numbers: set[int] = set()
    for part in match[3].split(", "):
        low, _, high = part.partition("-")
        numbers.update(range(int(low), int(high or low) + 1))
    return int(match[1].replace(",", "")), match[2], numbers


def plan_of(graph, n):
    from d4p_hpc.workflow.loader import load_graph
    from d4p_hpc.mappings.runtime.plan import build_plan

    return build_plan(load_graph(str(graph)), n)


def test_dot_has_every_pe_connection_and_grouping(tmp_path):
    proc, out = draw(tmp_path, EXAMPLES / "groupings.py")
    assert proc.returncode == 0, explain(proc)
    dot = out.read_text()
    assert dot.startswith("digraph workflow {") and dot.rstrip().endswith("}")
    plan = plan_of(EXAMPLES / "groupings.py", 1)
    nodes = labels(dot)
    assert {i: lines[0] for i, lines in nodes.items()} == {p.index: p.key for p in plan.pes}
    for p in plan.pes:
        # dispel4py's id, e.g. Scale2 (numbered by creation, so not the same as this process's load)
        assert any(re.fullmatch(rf"id {re.escape(p.key)}\d+", line) for line in nodes[p.index]), nodes[p.index]
        results = [o for o in p.outputs if not plan.outgoing(p.index, o)]
        assert [line for line in nodes[p.index] if line.startswith("result: ")] == [f"result: {o}" for o in results]
    want = sorted((c.src, c.dst, f"{c.output} -> {c.input}", c.grouping) for c in plan.connections)
    got = sorted((a, b, text[0], None if len(text) == 1 else text[1]) for a, b, text in edges(dot))
    named = {None: None, "all": "all (every instance)", "global": "global (one instance)"}
    assert got == [(a, b, conn, named.get(g) if not isinstance(g, list) else f"group_by {g}")
                   for a, b, conn, g in want]
    assert {g for *_, g in got} >= {"all (every instance)", "global (one instance)"}
    # without a mapping there is no placement
    assert not any("instance" in line or "worker" in line for lines in nodes.values() for line in lines[1:])


def test_group_by_is_drawn(tmp_path):
    proc, out = draw(tmp_path, EXAMPLES / "word_count.py")
    assert proc.returncode == 0, explain(proc)
    assert "output -> input\\ngroup_by [0]" in out.read_text()


@pytest.mark.parametrize("mapping", ["multi", "mpi"])
@pytest.mark.parametrize("n", [2, 7])
def test_placement_is_the_plan(mapping, n, tmp_path):
    graph = EXAMPLES / "split_merge.py"
    proc, out = draw(tmp_path, graph, "-m", mapping, "-n", n)
    assert proc.returncode == 0, explain(proc)
    dot = out.read_text()
    assert f"split_merge.py: {mapping} -n {n}" in dot
    word, words = ("rank", "ranks") if mapping == "mpi" else ("process", "processes")
    plan = plan_of(graph, n)
    nodes = labels(dot)
    for p in plan.pes:
        places = {plan.placement[g] for g in p.gids}
        assert placed(nodes[p.index][-1]) == (p.count, word if len(places) == 1 else words, places), \
            (p.key, nodes[p.index])
    if n == 7:  # HalveEven and TripleOdd get the 2 instances they ask for, each instance its own process
        assert [p.count for p in plan.pes if p.count > 1] == [2, 2]
        assert len(set(plan.placement)) == 7
    else:  # 5 instances share 2 processes
        assert set(plan.placement) == {0, 1}


def test_instances_sharing_a_process_name_it_once(tmp_path):
    proc, out = draw(tmp_path, EXAMPLES / "split_merge.py", "-m", "multi", "-n", 1)
    assert proc.returncode == 0, explain(proc)
    assert all(lines[-1].endswith(": process 0") for lines in labels(out.read_text()).values())


CHAIN = """
from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph

class Source(ProducerPE):
    def _process(self, inputs):
        return 1

class Work(IterativePE):
    numprocesses = 10000

    def _process(self, data):
        return data

graph = WorkflowGraph()
graph.connect(Source(), "output", Work(), "input")
"""


@needs_dot
def test_thousands_of_ranks_fit_in_a_label(tmp_path):
    # Graphviz refuses a label longer than 16,384 characters: 4,095 ranks listed one by one made 23,513
    graph = tmp_path / "chain.py"
    graph.write_text(CHAIN)
    proc, out = draw(tmp_path, graph, "-m", "mpi", "-n", 4096)
    assert proc.returncode == 0, explain(proc)
    work = labels(out.read_text())[1]
    assert work[-1] == "4,095 instances: ranks 1-4095", work
    proc, svg = draw(tmp_path, graph, "-m", "mpi", "-n", 4096, name="g.svg")
    assert proc.returncode == 0, explain(proc)
    texts = {t.text for t in ET.parse(svg).iter("{http://www.w3.org/2000/svg}text")}
    assert "4,095 instances: ranks 1&#45;4095" in texts or "4,095 instances: ranks 1-4095" in texts, texts


def test_without_o_the_dot_text_goes_to_stdout(tmp_path):
    proc = cli("graph", EXAMPLES / "word_count.py", "-m", "multi", "-n", 4, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", explain(proc)
    assert proc.stdout.startswith("digraph workflow {") and proc.stdout.rstrip().endswith("}")
    assert labels(proc.stdout)[2][-1] == "2 instances: processes 2-3"
    # the plan's notices are in the title, as run prints them; under simple too
    assert "PE CountWords asks for 3 instances; it gets 2 (4 processes)" in proc.stdout
    simple = cli("graph", EXAMPLES / "word_count.py", "-m", "simple", cwd=tmp_path)
    assert "it gets 1 (1 process)" in simple.stdout, explain(simple)
    assert os.listdir(tmp_path) == []


def test_dynamic_and_hybrid_mappings_say_any_worker(tmp_path):
    proc, out = draw(tmp_path, EXAMPLES / "split_merge.py", "-m", "dyn_multi", "-n", 3)
    assert proc.returncode == 0, explain(proc)
    nodes = labels(out.read_text())
    assert nodes[0][-1] == "run by the driver"
    assert all(lines[-1] == "any worker" for i, lines in nodes.items() if i)
    proc, out = draw(tmp_path, EXAMPLES / "word_count.py", "-m", "hybrid_redis", "-n", 4, name="h.dot")
    assert proc.returncode == 0, explain(proc)
    nodes = labels(out.read_text())
    counter = plan_of(EXAMPLES / "word_count.py", 4).by_key("CountWords")
    assert nodes[counter.index][-1] == f"{counter.count} instances, each on one worker"
    assert nodes[1][-1] == "any worker"
    # dyn_multi refuses the stateful counter, as run would
    proc, _ = draw(tmp_path, EXAMPLES / "word_count.py", "-m", "dyn_multi", "-n", 2, name="r.dot")
    assert proc.returncode == 2 and "hybrid_redis" in proc.stderr, explain(proc)


QUOTED = '''
from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph

class Source(ProducerPE):
    def _process(self, inputs):
        return 1

class Echo(IterativePE):
    def _process(self, data):
        return data

source, echo = Source(), Echo()
source.name = 'Say "hi" \\\\ <b>{x}</b>'
echo.name = "line one\\nline two"
graph = WorkflowGraph()
graph.connect(source, "output", echo, "input")
'''


@needs_dot
def test_names_with_quotes_survive_svg(tmp_path):
    graph = tmp_path / "quoted.py"
    graph.write_text(QUOTED)
    proc, out = draw(tmp_path, graph)
    assert proc.returncode == 0, explain(proc)
    assert '[label="Say \\"hi\\" \\\\ <b>{x}</b>\\nid ' in out.read_text()
    proc, svg = draw(tmp_path, graph, name="out.svg")
    assert proc.returncode == 0, explain(proc)
    texts = [t.text for t in ET.parse(svg).iter("{http://www.w3.org/2000/svg}text")]
    assert 'Say "hi" \\ <b>{x}</b>' in texts and "line one" in texts and "line two" in texts, texts


@needs_dot
def test_svg_parses_and_names_every_pe(tmp_path):
    proc, svg = draw(tmp_path, EXAMPLES / "composite.py", "-m", "mpi", "-n", 3, name="g.svg")
    assert proc.returncode == 0, explain(proc)
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    keys = {p.key for p in plan_of(EXAMPLES / "composite.py", 3).pes}
    assert keys <= texts, keys - texts


@needs_dot
def test_png_opens(tmp_path):
    proc, png = draw(tmp_path, EXAMPLES / "word_count.py", "-m", "multi", "-n", 4, name="g.png")
    assert proc.returncode == 0, explain(proc)
    width, height = png_size(png.read_bytes())
    assert width > 200 and height > 50


@needs_dot
def test_write_image_draws_the_same_picture(tmp_path):
    """The stand-in's draw() (what write_image renders) has the command's nodes and edges."""
    from d4p_hpc.compat import ensure_dispel4py

    assert ensure_dispel4py()
    import importlib.util

    from dispel4py.workflow_graph import draw as shim_draw

    spec = importlib.util.spec_from_file_location("g_monitoring_same", DATA / "g_monitoring.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not flattened: the chain is still a composite PE
    ids_before = [pe.id for pe in (n.get_contained_object() for n in module.graph.graph.nodes())
                  if hasattr(pe, "id")]
    from_shim = shim_draw(module.graph)
    assert [pe.id for pe in (n.get_contained_object() for n in module.graph.graph.nodes())
            if hasattr(pe, "id")] == ids_before  # drawing changed nothing
    proc, out = draw(tmp_path, DATA / "g_monitoring.py", "--attr", "graph")
    assert proc.returncode == 0, explain(proc)

    def body(dot):  # nodes and edges, ids left out (each load numbers its PEs afresh)
        return re.sub(r"\\nid [^\\\"]+", "", "\n".join(line for line in dot.splitlines() if line.startswith("  pe")))

    assert body(from_shim) == body(out.read_text()) and "PE_inc" in body(from_shim)


def test_without_dot_dot_works_and_images_fail_clearly(tmp_path):
    env = {"PATH": str(tmp_path / "no-graphviz-here")}
    proc, out = draw(tmp_path, EXAMPLES / "split_merge.py", env=env)
    assert proc.returncode == 0 and out.read_text().startswith("digraph"), explain(proc)
    for suffix in ("svg", "png"):
        proc, out = draw(tmp_path, EXAMPLES / "split_merge.py", name=f"g.{suffix}", env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, explain(proc)
        assert lines[0].startswith("Error: ") and "install graphviz" in lines[0], lines
        assert not out.exists()
    # a graph file calling write_image fails to load with the same one line
    proc = cli("run", DATA / "g_monitoring.py", "--attr", "graph", "--results", tmp_path / "r",
               env={**env, "D4P_TEST_IMAGES": str(tmp_path)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "install graphviz" in lines[0], explain(proc)


def test_bad_usage_is_refused_before_loading(tmp_path):
    proc, _ = draw(tmp_path, EXAMPLES / "split_merge.py", name="g.jpeg")
    assert proc.returncode == 2 and "end its name with .dot, .gv, .svg, .png" in proc.stderr, explain(proc)
    proc, _ = draw(tmp_path, EXAMPLES / "split_merge.py", "-n", "3")
    assert proc.returncode == 2 and "-n/--processes needs -m/--mapping" in proc.stderr, explain(proc)
    proc, _ = draw(tmp_path, EXAMPLES / "split_merge.py", "-m", "nope")
    assert proc.returncode == 2 and "unknown mapping" in proc.stderr, explain(proc)
    proc, _ = draw(tmp_path, tmp_path / "missing.py")
    assert proc.returncode == 2 and "does not exist" in proc.stderr, explain(proc)
    assert os.listdir(tmp_path) == []  # nothing written
