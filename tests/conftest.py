"""Shared test options, hooks and fixtures; nothing here is meant to be imported.

The helpers the tests import live in the ``tests/helpers/`` package. ``pytest --update-golden``
rewrites the golden job scripts in ``tests/golden/`` instead of comparing against them.

Under pytest-xdist (``.ci/test`` runs ``-n 4 --dist loadgroup``) the tests of one test cluster
run one after another on one worker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers.dynamic import skip_without_redis
from helpers.runs import WHERE_GRAPH, FakeInterpreter, isolate


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/<scheduler>/<mapping>.sh from the templates")


def pytest_configure(config):
    """The user's index of jobs (d4p_hpc.jobs.index) of this session: a folder of its own, so that no
    test reads or writes the real one, and removed at the end."""
    config._d4p_state = tempfile.mkdtemp(prefix="d4p-test-state-")
    os.environ["XDG_STATE_HOME"] = config._d4p_state


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_d4p_state", ""), ignore_errors=True)


def pytest_itemcollected(item):
    """The tests of one cluster run one after another, on one xdist worker: a test's blocker job
    holds every node, and the long runs fill the Slurm cluster for minutes."""
    for cluster in ("slurm", "pbs"):
        if item.get_closest_marker(cluster):
            item.add_marker(pytest.mark.xdist_group(cluster))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Skip the Redis tests where there is no redis-server (helpers.dynamic), and undo pytest-mpi's
    skip of tests that are not MPI-world tests.

    pytest-mpi skips every item whose *keywords* hold "mpi" unless --with-mpi is given, and a
    parameter id is a keyword: a test parametrised over the mappings would silently skip its
    ``mpi`` case. Only the ``mpi`` marker (tests/mpi, run under mpiexec) means an MPI-world test.
    """
    skip_without_redis(items)
    for item in items:
        if item.get_closest_marker("mpi") is None:
            item.own_markers = [m for m in item.own_markers
                                if not (m.name == "skip" and m.kwargs.get("reason") == "need --with-mpi option to run")]


@pytest.fixture
def update_golden(request) -> bool:
    """Whether golden files are to be rewritten rather than compared."""
    return request.config.getoption("--update-golden")


@pytest.fixture
def cli(monkeypatch):
    """Run ``d4p-hpc ARGS...`` in-process; returns click's Result (output has stdout and stderr)."""
    from click.testing import CliRunner

    from d4p_hpc.cli import main

    def invoke(*args, **kwargs):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)
    return invoke


@pytest.fixture
def fake_python(tmp_path, monkeypatch) -> FakeInterpreter:
    """A fake interpreter recording its calls; job scripts started by the test inherit its log."""
    log = tmp_path / "fake-calls"
    log.mkdir()
    monkeypatch.setenv("D4P_FAKE_LOG", str(log))
    return FakeInterpreter(log)


@pytest.fixture
def isolated_config(tmp_path, monkeypatch) -> Path:
    """No user or project config and no D4P_HPC_* job variables; returns the working directory."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    isolate(monkeypatch, home, work)
    return work


@pytest.fixture
def where_graph(tmp_path) -> Path:
    """A two-PE graph whose result says on which host and process each item was processed."""
    path = tmp_path / "where.py"
    path.write_text(WHERE_GRAPH)
    return path


@pytest.fixture(scope="module", params=[pytest.param("slurm", marks=pytest.mark.slurm),
                                        pytest.param("pbs", marks=pytest.mark.pbs)])
def cluster(request):
    """Each test that takes it runs on the test Slurm and on the test PBS (see helpers.clusters),
    marked ``slurm`` and ``pbs`` respectively."""
    from helpers.clusters import connect

    return connect(request.param)


@pytest.fixture
def submit(cluster, tmp_path, where_graph):
    """``submit(**spec fields)`` -> the Job of a job of ``where_graph`` on ``cluster``, 2 nodes x 2 tasks."""
    import sys

    from d4p_hpc.jobs import state as jobs
    from d4p_hpc.submission.render import render_script
    from d4p_hpc.submission.submit import submit
    from d4p_hpc.submission.spec import JobSpec

    def go(**kw):
        values = dict(graph=str(where_graph), results_root=str(tmp_path / "results"), scheduler=cluster.name,
                      python=sys.executable, walltime="5", iterations=16, nodes=2, tasks_per_node=2)
        spec = JobSpec(**{**values, **kw})
        _, directory = submit(spec, render_script(spec))
        return jobs.open_job(directory)
    return go
