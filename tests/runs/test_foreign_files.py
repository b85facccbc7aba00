"""Reading a results directory never runs another user's code (see d4p_hpc.trust).

Each hostile file here is a pickle whose loading would create a marker file: the marker must
never appear. A checkpoint another user could have written (theirs, or in a directory others can
write) is refused in one line by ``run --resume`` and ``resume JOB`` before anything runs;
another user's output parts are counted without unpickling and shown as plain data only. Your
own private files, and a results directory inside a setgid group-writable project folder, still
work. Needs root (to make files of another local user); the other cases run as anyone.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers.runs import EXAMPLES, cli, d4p_hpc_cmd, explain, kill_group, wait_for

GRAPH = EXAMPLES / "long_count.py"
ENV = {"LONG_COUNT_SECONDS": "0.01"}
ITEMS = 300
RUN = ["run", GRAPH, "-a", "graph", "-i", ITEMS]

#: values JSON cannot hold, so the sink pickles them: sets on ``output``, a Fraction (a class) on ``exact``
PICKLED_GRAPH = '''
from fractions import Fraction

from dispel4py.base import ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Values(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self._add_output("exact")
        self.k = 0

    def _process(self, inputs):
        self.k += 1
        self.write("exact", Fraction(self.k, 3))
        return {self.k, -self.k}


graph = WorkflowGraph()
graph.add(Values())
'''

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making files of another user needs root")


class Planted:
    """Unpickled, it creates ``marker``: what a hostile pickle could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def plant(path: Path, marker: Path, *before) -> None:
    """Write a pickle part at ``path``: the plain values ``before``, then the hostile item."""
    with open(path, "wb") as fh:
        for value in (*before, Planted(marker)):
            fh.write(pickle.dumps(value, protocol=5))


def one_error(done: subprocess.CompletedProcess, *words: str) -> str:
    """The one ``Error:`` line of a refused command, which must hold ``words``."""
    assert done.returncode == 2, explain(done)
    assert "Traceback" not in done.stdout + done.stderr, explain(done)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, explain(done)
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def stranger():
    """A local user that is not us (removed afterwards, even when a test fails)."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("creating a local user needs root and useradd")
    name = f"d4ptest-{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", name], check=True, capture_output=True)
    try:
        import pwd

        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def stopped_after_a_checkpoint(results: Path, umask: int | None = None) -> None:
    """A run of RUN into ``results``, stopped at the walltime signal once it has a checkpoint."""
    proc = subprocess.Popen([*d4p_hpc_cmd(), *map(str, RUN), "--checkpoint-every", "1", "--results", str(results)],
                            env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=None if umask is None else lambda: os.umask(umask))
    try:
        wait_for(lambda: list(results.glob("checkpoints/*/complete.json")) or proc.poll() is not None, 60)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGUSR1)
        proc.communicate(timeout=60)
    finally:
        kill_group(proc.pid)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A run stopped at the walltime signal after a checkpoint: TIMEOUT, resumable."""
    results = tmp_path_factory.mktemp("base") / "r"
    stopped_after_a_checkpoint(results)
    assert json.loads((results / "run.json").read_text())["state"] == "TIMEOUT"
    return results


@pytest.fixture
def run_copy(stopped_run, tmp_path) -> Path:
    copy = tmp_path / "r"
    shutil.copytree(stopped_run, copy, symlinks=True)
    return copy


@pytest.fixture(scope="module")
def pickled_run(tmp_path_factory) -> Path:
    """A COMPLETED run whose outputs are pickle parts (sets; Fractions)."""
    where = tmp_path_factory.mktemp("pickled")
    graph = where / "pickled.py"
    graph.write_text(PICKLED_GRAPH)
    done = cli("run", graph, "-i", 5, "--results", where / "r")
    assert done.returncode == 0, explain(done)
    return where / "r"


def newest_part(results: Path) -> Path:
    return sorted(results.glob("checkpoints/*/part-00000.pkl"))[-1]


def untouched(results: Path) -> dict[str, bytes]:
    """The run record and output bytes of a results directory: what a refused resume must not change."""
    return {str(p.relative_to(results)): p.read_bytes() for p in [results / "run.json", *results.glob("outputs/*/*")]}


@needs_root
def test_a_checkpoint_part_of_another_user_is_refused_before_anything_runs(run_copy, stranger, tmp_path):
    marker = tmp_path / "PWNED"
    part = newest_part(run_copy)
    plant(part, marker)
    os.chown(part, stranger.pw_uid, -1)
    before = untouched(run_copy)
    line = one_error(cli(*RUN, "--results", run_copy, "--resume", env=ENV),
                     "refusing to load checkpoint part", str(part), f"written by user {stranger.pw_name}",
                     "mode 0600", "copy the results you trust into a directory of your own")
    assert not marker.exists(), line
    assert untouched(run_copy) == before


@pytest.mark.parametrize("what", ["part 0660", "part 0606", "checkpoints 2770", "seq 0777", "results 0775"])
def test_a_checkpoint_others_can_write_is_refused(run_copy, tmp_path, what):
    """Group- or world-writable: the part, ``checkpoints/`` (setgid, as a shared folder would make
    it), the checkpoint's own directory, or the results directory itself."""
    marker = tmp_path / "PWNED"
    part = newest_part(run_copy)
    plant(part, marker)
    name, mode = what.split()
    target = {"part": part, "checkpoints": run_copy / "checkpoints", "seq": part.parent, "results": run_copy}[name]
    os.chmod(target, int(mode, 8))
    one_error(cli(*RUN, "--results", run_copy, "--resume", env=ENV),
              "refusing to load checkpoint", "writable by", f"chmod go-w {target}")
    assert not marker.exists()


def test_a_linked_checkpoint_part_is_refused(run_copy, tmp_path):
    marker = tmp_path / "PWNED"
    elsewhere = tmp_path / "elsewhere.pkl"
    plant(elsewhere, marker)
    part = newest_part(run_copy)
    part.unlink()
    part.symlink_to(elsewhere)
    one_error(cli(*RUN, "--results", run_copy, "--resume", env=ENV), "refusing to load checkpoint part",
              "symbolic link")
    assert not marker.exists()


def test_your_own_private_checkpoint_resumes(run_copy):
    done = cli(*RUN, "--results", run_copy, "--resume", env=ENV)
    assert done.returncode == 0, explain(done)
    assert json.loads((run_copy / "run.json").read_text())["state"] == "COMPLETED"


def test_a_run_in_a_setgid_group_writable_project_folder_resumes(tmp_path):
    """The project folder above is the group's; what d4p-hpc creates in it is private, so the
    resume loads it, even under a umask that lets the group write."""
    project = tmp_path / "project"
    project.mkdir()
    os.chmod(project, 0o2775)
    results = project / "runs" / "long"
    stopped_after_a_checkpoint(results, umask=0o002)
    assert os.stat(project / "runs").st_mode & 0o2020 == 0o2020  # the group's, as the umask made it
    done = cli(*RUN, "--results", results, "--resume", env=ENV)
    assert done.returncode == 0, explain(done)
    assert json.loads((results / "run.json").read_text())["state"] == "COMPLETED"


# --- output parts ---------------------------------------------------------------------------------
@pytest.fixture
def foreign_outputs(pickled_run, tmp_path, stranger) -> tuple[Path, Path]:
    """A copy of the pickled run with a part of another user holding plain data, then a hostile
    item; returns (results directory, marker)."""
    results = tmp_path / "r"
    shutil.copytree(pickled_run, results)
    marker = tmp_path / "PWNED"
    part = results / "outputs" / "Values.output" / "part-00007.pickle"
    plant(part, marker, {7}, complex(1, 2), b"raw", frozenset({8}))
    os.chown(part, stranger.pw_uid, -1)
    return results, marker


@needs_root
def test_another_users_output_part_is_counted_and_reported_without_unpickling(foreign_outputs, tmp_path):
    results, marker = foreign_outputs
    done = cli("results", results)
    assert done.returncode == 0, explain(done)
    assert "output Values.output: 10 items" in done.stdout, explain(done)  # 5 of ours, 5 planted
    report = tmp_path / "report.html"
    done = cli("report", results, "-o", report)
    assert done.returncode == 0 and report.exists(), explain(done)
    assert not marker.exists()


@needs_root
@pytest.mark.parametrize("how", ["--show", "--export"])
def test_another_users_output_part_is_read_as_plain_data_only(foreign_outputs, tmp_path, how):
    results, marker = foreign_outputs
    extra = [tmp_path / "out.jsonl"] if how == "--export" else []
    done = cli("results", results, how, "Values.output", *extra)
    one_error(done, "part-00007.pickle: item 5 names builtins.exec, not plain data",
              "ask its owner to export the output")
    assert not marker.exists()
    if how == "--export":  # a file is written whole or not at all: an export refused midway leaves none
        assert not extra[0].exists() and not list(tmp_path.glob(".out.jsonl.*")), list(tmp_path.iterdir())
        return
    assert ['"{7}"', '"(1+2j)"', '"b\'raw\'"', '"frozenset({8})"'] == done.stdout.splitlines()[5:9]


@needs_root
def test_another_users_results_show_their_plain_data_and_refuse_classes(pickled_run, tmp_path, stranger):
    """A whole results directory of another user (a colleague's, readable by the group)."""
    results = tmp_path / "theirs"
    shutil.copytree(pickled_run, results)
    for path in [results, *results.rglob("*")]:
        os.chown(path, stranger.pw_uid, -1, follow_symlinks=False)
    done = cli("results", results, "--show", "Values.output")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 5, explain(done)
    one_error(cli("results", results, "--show", "Values.exact"), "names fractions.Fraction, not plain data",
              f"a directory of user {stranger.pw_name}")


def test_your_own_output_parts_are_unpickled_in_full(pickled_run):
    done = cli("results", pickled_run, "--show", "Values.exact")
    assert done.returncode == 0, explain(done)
    assert done.stdout.splitlines() == [f'"Fraction({k}, 3)"' if k % 3 else f'"Fraction({k // 3}, 1)"'
                                        for k in range(1, 6)]


# --- a job ----------------------------------------------------------------------------------------
@needs_root
def test_resume_job_refuses_a_checkpoint_of_another_user_before_anything_is_queued(stranger, tmp_path):
    """``d4p-hpc resume JOB`` (local scheduler): refused in its pre-check; nothing archived or submitted."""
    root = tmp_path / "jobs"
    done = cli("submit", GRAPH, "-a", "graph", "-i", 1000, "--scheduler", "local", "--checkpoint-every", 1,
               "--results-root", root, env=ENV)
    assert done.returncode == 0, explain(done)
    job = next(root.iterdir())
    try:
        wait_for(lambda: len(list(job.glob("checkpoints/*/complete.json"))) >= 2, 60)  # one to fall back on
    finally:
        cancelled = cli("cancel", job)
    assert cancelled.returncode == 0, explain(cancelled)
    wait_for(lambda: (job / "state" / "finished").exists(), 60)
    marker = tmp_path / "PWNED"
    part = newest_part(job)
    plant(part, marker)
    os.chown(part, stranger.pw_uid, -1)
    state = sorted(p.name for p in (job / "state").iterdir())
    one_error(cli("resume", job, env=ENV), "refusing to load checkpoint part", f"written by user {stranger.pw_name}")
    assert not marker.exists()
    assert sorted(p.name for p in (job / "state").iterdir()) == state  # no segment archived, no successor
