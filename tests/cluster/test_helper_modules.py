"""A graph's own helper modules import as they do under dispel4py (issue 7): from the graph
file's directory and from the working directory, in every process of every mapping, locally
and in a Slurm job; yet they come last on sys.path, so they never shadow a real module."""

from __future__ import annotations

import pytest

from helpers.clusters import connect
from helpers.dynamic import needs_redis
from helpers.runs import DATA, cli, explain, raw_items

MAPPINGS = [pytest.param(m, marks=needs_redis if m.endswith("_redis") else ())
            for m in ("simple", "multi", "mpi", "dyn_redis", "hybrid_redis")]
N = 12
EXPECTED = sorted([n, 3 * n + 1] for n in range(1, N + 1))
CWD_HELPER = "def scale(n):\n    return 3 * n + 1\n"


def _workdir(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "d4p_cwd_helper.py").write_text(CWD_HELPER)
    # a helper named like a standard module must not replace it in any process of the run
    (work / "inspect.py").write_text("raise SystemExit('inspect.py of the working directory was imported')\n")
    return work


@pytest.mark.parametrize("graph", ["g_helper_beside.py", "g_helper_cwd.py"])
@pytest.mark.parametrize("mapping", MAPPINGS)
def test_helper_modules_import_in_a_local_run(tmp_path, mapping, graph):
    work = _workdir(tmp_path)
    results = tmp_path / "r"
    proc = cli("run", DATA / graph, "-m", mapping, "-n", 2, "-i", N, "--results", results, cwd=work,
               env={"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
    assert proc.returncode == 0, explain(proc)
    assert sorted(item[:2] for item in raw_items(results, "Scale", "output")) == EXPECTED


@pytest.mark.slurm
@pytest.mark.parametrize("graph", ["g_helper_beside.py", "g_helper_cwd.py"])
@pytest.mark.parametrize("mapping", ["mpi", pytest.param("dyn_redis", marks=needs_redis),
                                     pytest.param("hybrid_redis", marks=needs_redis)])
def test_helper_modules_import_in_a_slurm_job_over_two_nodes(tmp_path, mapping, graph):
    connect("slurm")
    work = _workdir(tmp_path)
    proc = cli("submit", DATA / graph, "--scheduler", "slurm", "-m", mapping, "--nodes", 2, "--tasks-per-node", 2,
               "-i", N, "--time", 5, "--results-root", tmp_path / "results", "--wait", cwd=work, timeout=400,
               env={"D4P_TEST_SLEEP": "0.5"})  # 6 s of work: the second node's workers start seconds late
    logs = "".join(p.read_text()[-1500:] for p in (tmp_path / "results").glob("*/job.err"))
    assert proc.returncode == 0, explain(proc) + logs
    items = raw_items(next((tmp_path / "results").glob("g_helper_*-*")), "Scale", "output")
    assert sorted(item[:2] for item in items) == EXPECTED
    assert len({item[2] for item in items}) >= 2, "the helper was imported on one node only"
