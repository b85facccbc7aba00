"""Issue 7, item 2: the dispel4py 2.9 API a graph file imports, without stream-d4py.

The surface test lists the public names of each module graph files import,
in stream-d4py 2.9.1 itself (in the cached reference venv of test_contract)
and in d4p-hpc's stand-in, and requires the same names, the same function
signatures, the same constant values, and every public class member of the
reference (with its signature) in the stand-in's class.

Which names count: dir() of the module minus names starting with ``_``, and
minus names a module merely re-imports from outside dispel4py: modules
(``sys``, ``uuid``, ``nx`` for networkx, ``copy``, ...) and objects whose
``__module__`` lies outside dispel4py (``typing.Any``/``Dict``,
``abc.abstractmethod``, ``collections.deque``, ``sys.getsizeof``,
``importlib.import_module``, ``from __future__ import annotations``). Those
are not dispel4py's API (a graph importing ``Dict`` from dispel4py.core is
using an accident of its source), and the stand-in's own helper imports
(``d4p_hpc.workflow.drawing``) are left out by the same rule. Names re-exported from
another dispel4py module (``WorkflowGraph`` in base and utils, ``NAME`` in
base) do count.

Then a graph that calls ``write_image`` and wraps PEs in ``ProcessTimingPE``
(tests/data/g_monitoring.py) runs under every mapping with the results of
``simple``. Its ``graph`` is stateless, so it runs under the dyn_* mappings
too; its ``stateful_graph`` adds a grouped (stateful) wrapped PE and runs
under the mappings with fixed instances (multi, mpi, hybrid_redis).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers.dynamic import needs_redis
from helpers.drawing import needs_dot, png_size
from helpers.runs import DATA, cli, diff, explain, outputs, read_json, run_simple
from test_contract import refvenv  # noqa: F401 - the cached venv with stream-d4py 2.9.1 (a fixture)

MODULES = ["dispel4py", "dispel4py.core", "dispel4py.base", "dispel4py.workflow_graph", "dispel4py.utils",
           "dispel4py.new", "dispel4py.new.monitoring"]

# Prints {module: {name: description}} for the dispel4py in the running interpreter; argv[1] is
# the comma-separated module prefixes that count as "defined by dispel4py" there.
PROBE = r"""
import importlib, inspect, json, sys, types
own_prefixes = tuple(sys.argv[1].split(","))
if sys.argv[2] == "stand-in":
    from d4p_hpc.compat import ensure_dispel4py
    assert ensure_dispel4py(), "stream-d4py is installed here: the stand-in would not be used"

def params(fn):
    try:
        return [p.name for p in inspect.signature(fn).parameters.values()]
    except (TypeError, ValueError):
        return None

def describe(obj):
    if inspect.isclass(obj):
        members = {m: params(getattr(obj, m)) if callable(getattr(obj, m)) else "attribute"
                   for m in dir(obj) if m == "__init__" or not (m.startswith("__") or "__" in m)}
        return {"kind": "class", "members": members}
    if callable(obj):
        return {"kind": "function", "params": params(obj)}
    return {"kind": "value", "repr": repr(obj)}

def defined_here(obj):
    if isinstance(obj, types.ModuleType):
        return False
    module = getattr(obj, "__module__", None)
    return module is None or module.startswith(own_prefixes)

report = {}
for name in sys.argv[3:]:
    mod = importlib.import_module(name)
    report[name] = {n: describe(getattr(mod, n)) for n in dir(mod)
                    if not n.startswith("_") and defined_here(getattr(mod, n))}
print(json.dumps(report))
"""

def probe(python: str, prefixes: str, which: str) -> dict:
    done = subprocess.run([python, "-c", PROBE, prefixes, which, *MODULES], capture_output=True, text=True,
                          cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_stand_in_has_every_public_name_of_stream_d4py(refvenv):  # noqa: F811
    real = probe(str(refvenv / "bin" / "python"), "dispel4py", "real")
    ours = probe(sys.executable, "dispel4py,d4p_hpc", "stand-in")
    assert set(real["dispel4py.workflow_graph"]) >= {"write_image", "draw", "drawDot", "DIRECTION",
                                                      "FROM_CONNECTION", "TO_CONNECTION"}  # the probe sees them
    for module in MODULES:
        assert set(ours[module]) == set(real[module]), \
            f"{module}: missing {sorted(set(real[module]) - set(ours[module]))}, " \
            f"extra {sorted(set(ours[module]) - set(real[module]))}"
        for name, want in real[module].items():
            got = ours[module][name]
            where = f"{module}.{name}"
            assert got["kind"] == want["kind"], (where, got, want)
            if want["kind"] == "function":
                assert got["params"] == want["params"], where
            elif want["kind"] == "value":
                assert got["repr"] == want["repr"], where
            else:
                missing = sorted(set(want["members"]) - set(got["members"]))
                assert not missing, f"{where} lacks {missing}"
                for member, signature in want["members"].items():
                    assert got["members"][member] == signature, (f"{where}.{member}", got["members"][member],
                                                                 signature)


@pytest.mark.parametrize("module", ["dispel4py.new.processor", "dispel4py.new.simple_process",
                                    "dispel4py.new.multi_process", "dispel4py.new.mpi_process",
                                    "dispel4py.examples.graph_testing.testing_PEs", "dispel4py.provenance"])
@pytest.mark.parametrize("form", ["import", "from"])
def test_a_module_left_out_gets_a_one_line_error(module, form, tmp_path):
    parent, _, leaf = module.rpartition(".")
    line = f"import {module}" if form == "import" else f"from {parent} import {leaf}"
    graph = tmp_path / "uses_dispel4py_internals.py"
    graph.write_text(line + "\n")
    proc = cli("run", graph, "--results", tmp_path / "results")
    assert proc.returncode == 2, explain(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert "install stream-d4py" in lines[0], lines[0]
    # the first module on the way that the stand-in lacks is the one named
    named = "dispel4py.examples" if ".examples." in module else module
    assert f"{named} is not part of d4p-hpc's dispel4py stand-in" in lines[0], lines[0]
    assert not (tmp_path / "results").exists()


# --- a graph using write_image and ProcessTimingPE under every mapping ----------------------------

GRAPH = DATA / "g_monitoring.py"
ITERATIONS = 40


def _runs(*runs):
    return [pytest.param(m, n, id=m, marks=needs_redis if "redis" in m else []) for m, n in runs]


STATELESS_RUNS = _runs(("multi", 3), ("mpi", 3), ("dyn_multi", 2), ("dyn_auto_multi", 2), ("dyn_redis", 2),
                       ("dyn_auto_redis", 2), ("hybrid_redis", 3))
STATEFUL_RUNS = _runs(("multi", 3), ("mpi", 3), ("hybrid_redis", 3))


@pytest.fixture(scope="module")
def simple_outputs(tmp_path_factory):
    """The simple mapping's outputs of each graph of g_monitoring.py, run once in this process."""
    cache: dict[str, dict] = {}

    def get(attr: str) -> dict:
        if attr not in cache:
            images = tmp_path_factory.mktemp(f"images-{attr}")
            results = tmp_path_factory.mktemp(f"simple-{attr}") / "results"
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("D4P_TEST_IMAGES", str(images))
                record = run_simple(GRAPH, ITERATIONS, results, attr=attr)
            assert record["state"] == "COMPLETED", record
            assert list(images.glob("graph-*.png")), "write_image drew nothing"
            cache[attr] = outputs(results)
        return cache[attr]

    return get


@needs_dot
def test_simple_reference_is_right(simple_outputs):
    got = simple_outputs("graph")
    numbers = range(2, ITERATIONS + 2)  # the chain adds 1
    assert sorted(got) == ["Describe.even", "Describe.odd"]
    assert sum(got["Describe.even"].values()) + sum(got["Describe.odd"].values()) == ITERATIONS
    assert got["Describe.even"][("seq", 2, 4, "even")] == 1 and got["Describe.odd"][("seq", 41, 1681, "odd")] == 1
    counts = simple_outputs("stateful_graph")["CountParity.output"]
    assert counts == {("seq", p, 20, sum(n * n for n in numbers if (n % 2 == 0) == (p == "even"))): 1
                      for p in ("even", "odd")}


def _run_and_compare(mapping: str, n: int, attr: str, want: dict, tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    results = tmp_path / "results"
    proc = cli("run", GRAPH, "--attr", attr, "-m", mapping, "-n", n, "-i", ITERATIONS, "--results", results,
               env={"D4P_TEST_IMAGES": str(images)}, timeout=180)
    assert proc.returncode == 0, explain(proc)
    got = outputs(results)
    assert got == want, f"{attr} under {mapping} -n {n} differs from simple:\n{diff(got, want)}"
    drawn = list(images.glob("graph-*.png"))
    assert drawn and all(png_size(p.read_bytes()) for p in drawn), drawn
    # ProcessTimingPE logged its average through the mapping's pe.log
    logs = "".join(p.read_text() for p in (results / "logs").glob("*.log"))
    assert "Average processing time" in logs, logs[-2000:]
    assert read_json(results / "run.json")["state"] == "COMPLETED"


@needs_dot
@pytest.mark.parametrize("mapping,n", STATELESS_RUNS)
def test_stateless_graph_equals_simple(mapping, n, simple_outputs, tmp_path):
    _run_and_compare(mapping, n, "graph", simple_outputs("graph"), tmp_path)


@needs_dot
@pytest.mark.parametrize("mapping,n", STATEFUL_RUNS)
def test_stateful_graph_equals_simple(mapping, n, simple_outputs, tmp_path):
    _run_and_compare(mapping, n, "stateful_graph", simple_outputs("stateful_graph"), tmp_path)
