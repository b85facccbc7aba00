"""The built sdist and wheel carry every source file, and the wheel installs into a fresh venv and
runs an example.

Both are built from a copy of the checkout that keeps its links (``d4p_hpc/mappings`` and
``d4p_hpc/templates`` point at the top-level folders), the wheel from the sdist as pip builds
it; the wheel is installed with its dependencies into a new venv and exercised from a
directory outside the checkout so nothing can be imported from the source tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from helpers.runs import EXAMPLES, REPO, cli, explain, independent_word_counts, raw_items, read_json

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("packaging")]  # one worker builds the dists

SKIP_DIRS = {".git", "build", "dist", "d4p-results", "__pycache__", ".pytest_cache", "tests", "benchmarks"}


def source_files() -> list[str]:
    """Every file the package is made of, as its path inside the installed package."""
    found = []
    for top, prefix in (("d4p_hpc", "d4p_hpc"), ("mappings", "d4p_hpc/mappings"), ("templates", "d4p_hpc/templates")):
        for path in (REPO / top).rglob("*"):
            if path.is_symlink() or not path.is_file() or "__pycache__" in path.parts:
                continue
            if path.suffix in (".py", ".j2", ".sh", ".typed"):
                found.append(f"{prefix}/{path.relative_to(REPO / top).as_posix()}")
    return sorted(found)


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src") / "d4p-hpc"

    def ignore(_dir, names):
        return [n for n in names if n in SKIP_DIRS or n.endswith(".egg-info") or n.startswith(".venv")]

    shutil.copytree(REPO, src, ignore=ignore, symlinks=True)
    assert (src / "d4p_hpc" / "mappings").is_symlink(), "the copy lost the link it is meant to test"
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"python -m build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(dists) -> Path:
    wheels = list(dists.glob("d4p_hpc-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_sdist_carries_the_real_files_of_the_linked_folders(dists):
    sdists = list(dists.glob("d4p_hpc-*.tar.gz"))
    assert len(sdists) == 1, sdists
    with tarfile.open(sdists[0]) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
    links = [name for name, m in members.items() if m.issym() or m.islnk()]
    assert not links, f"the sdist holds links, not files: {links}"
    for path in source_files():
        top = path.split("/")[1] if path.startswith(("d4p_hpc/mappings/", "d4p_hpc/templates/")) else None
        # an sdist keeps the checkout's layout: mappings/ and templates/ at its top, or inside d4p_hpc/
        candidates = {path, path.removeprefix("d4p_hpc/")} if top else {path}
        assert any(c in members and members[c].isfile() for c in candidates), f"{path} is not in the sdist"


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
    missing = [path for path in source_files() if path not in names]
    assert not missing, f"source files missing from the wheel: {missing}"
    for path in ("d4p_hpc/mappings/static/mpi.py", "d4p_hpc/mappings/worker.py", "d4p_hpc/compat/dispel4py/core.py"):
        assert path in names
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
                            "import d4p_hpc, d4p_hpc.mappings.static.multi as m; "
                            "print(d4p_hpc.__file__); print(m.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(str(venv) in line and str(REPO) not in line for line in where.stdout.split()), where.stdout
    results = tmp_path / "results"
    proc = cli("run", EXAMPLES / "word_count.py", "-i", 10, "-m", "multi", "-n", 2, "--results", results,
               cmd=d4p, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert read_json(results / "run.json")["state"] == "COMPLETED"
    assert dict(map(tuple, raw_items(results, "CountWords", "output"))) == dict(independent_word_counts(10))
