"""The built wheel installs into a fresh venv and runs an example (issue 2, "Package").

The wheel is built from a copy of the checkout (so build/ and egg-info
directories never land in the repository), installed with its dependencies
into a new venv, and exercised from a directory outside the checkout so
nothing can be imported from the source tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers.runs import EXAMPLES, REPO, cli, explain, independent_word_counts, raw_items, read_json

pytestmark = pytest.mark.slow

SKIP_DIRS = {".git", "build", "dist", "d4p-results", "__pycache__", ".pytest_cache", "tests", "benchmarks"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src") / "d4p-hpc"

    def ignore(_dir, names):
        return [n for n in names if n in SKIP_DIRS or n.endswith(".egg-info") or n.startswith(".venv")]

    shutil.copytree(REPO, src, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"python -m build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    wheels = list(out.glob("d4p_hpc-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
    done = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"pip install of the wheel failed:\n{done.stdout}\n{done.stderr}"
    return env


def test_wheel_contains_the_runtime_the_shim_and_the_templates(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("__init__", "plan", "core", "runner", "simple", "multi", "mpi"):
        assert f"d4p_hpc/mappings/{module}.py" in names
    for module in ("__init__", "base", "core", "workflow_graph"):
        assert f"d4p_hpc/compat/dispel4py/{module}.py" in names
    for module in ("__init__", "__main__", "cli", "workflow", "loader", "results", "errors"):
        assert f"d4p_hpc/{module}.py" in names
    templates = [p.relative_to(REPO / "templates").as_posix() for p in (REPO / "templates").rglob("*")
                 if p.is_file() and p.suffix in (".j2", ".sh", ".py")]
    assert any(t.endswith(".j2") for t in templates), "the repository has no templates to ship"
    missing = [t for t in templates if f"d4p_hpc/templates/{t}" not in names]
    assert not missing, f"templates missing from the wheel: {missing}"
    assert not any(n.startswith(("mappings/", "templates/", "tests/")) for n in names), \
        "top-level folders leaked into the wheel"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "d4p-hpc = d4p_hpc.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_runs_help_and_an_example(venv, tmp_path):
    d4p = [str(venv / "bin" / "d4p-hpc")]
    help_ = cli("--help", cmd=d4p, cwd=tmp_path)
    assert help_.returncode == 0 and "run" in help_.stdout, explain(help_)
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import d4p_hpc, d4p_hpc.mappings.multi as m; print(d4p_hpc.__file__); print(m.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(str(venv) in line and str(REPO) not in line for line in where.stdout.split()), where.stdout
    results = tmp_path / "results"
    proc = cli("run", EXAMPLES / "word_count.py", "-i", 10, "-m", "multi", "-n", 2, "--results", results,
               cmd=d4p, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert read_json(results / "run.json")["state"] == "COMPLETED"
    assert dict(map(tuple, raw_items(results, "CountWords", "output"))) == dict(independent_word_counts(10))
