"""Where a run's results go, and what happens when that place is wrong, through the real command line.

* A run that takes checkpoints in a ``--results`` directory others can write (a setgid project
  folder given itself) or that is another user's could not load its own checkpoints there
  (:mod:`d4p_hpc.trust`): it is refused in one line before it starts, nothing written, and the
  private directory the refusal names works. A checkpoint that becomes untrusted in the middle of
  a run ends the run FAILED with that one line, no traceback.
* A results location that cannot be created (under ``/proc`` or ``/sys``), for ``run`` and for
  ``submit``, is one ``Error:`` line, exit code 2.
* A full disk at the start (a 64 KB tmpfs: needs root) is one ``Error:`` line each time and
  leaves nothing behind: no directory, no reserve file keeping the disk full.
* A resume without ``--checkpoint-every`` keeps the interval of the run it continues, so a second
  kill keeps what the resumed segment did (a new checkpoint of it exists); one given another keeps that.
* A job whose graph file calls ``os._exit(0)`` at import is FAILED with a one-line reason, not
  COMPLETED, although its finished marker says COMPLETED.

Each fault is checked for its exit code, its message, the final state and that nothing is left
running or on disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers.runs import EXAMPLES, cli, d4p_hpc_cmd, explain, kill_group, processes_mentioning, wait_for

GRAPH = EXAMPLES / "long_count.py"
ENV = {"LONG_COUNT_SECONDS": "0.01"}
#: iterations of long_count.py: at least 30 s of work at 0.01 s a line, so a run that is killed
#: after a checkpoint or two is never done by then
LONG = 3000

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs and making another user's folder need root")


def start(cwd: Path, *args, env: dict | None = None) -> subprocess.Popen:
    """``d4p-hpc ARGS`` in its own session (to kill it and all it started at once)."""
    full_env = {k: v for k, v in os.environ.items() if k != "D4P_HPC_QUIET"}
    full_env.update(ENV, **(env or {}))
    return subprocess.Popen(d4p_hpc_cmd() + [str(a) for a in args], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def record(results: Path) -> dict:
    try:
        return json.loads((results / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def complete_checkpoints(results: Path) -> list[int]:
    """The sequence numbers of the complete checkpoints in ``results``."""
    return sorted(int(d.name) for d in (results / "checkpoints").glob("[0-9]*") if (d / "complete.json").exists())


def kill_run(proc: subprocess.Popen, results: Path) -> None:
    """SIGKILL a run and everything it started; wait until none of it lives."""
    kill_group(proc.pid)
    proc.communicate()
    wait_for(lambda: not processes_mentioning(str(results)), 30)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def assert_one_error(done: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit code 2, one ``Error:`` line holding each of ``expected``, no traceback; returns the line."""
    assert done.returncode == 2, explain(done)
    assert "Traceback" not in done.stderr, explain(done)
    found = errors(done.stderr)
    assert len(found) == 1, explain(done)
    for text in expected:
        assert text in found[0], explain(done)
    return found[0]


# --- A: checkpoints only where nobody else can write ---------------------------------------------
@pytest.mark.parametrize("owner, mode, why", [
    pytest.param(None, 0o2775, "it is writable by group (mode 2775)", id="a setgid group-writable folder"),
    pytest.param("nobody", 0o777, "it is a directory of user nobody (mode 0777)", id="another user's folder",
                 marks=needs_root),
])
def test_a_checkpointing_run_in_a_folder_others_can_write_is_refused_before_it_starts(tmp_path, owner, mode, why):
    shared = tmp_path / "project"
    shared.mkdir()
    if owner:
        shutil.chown(shared, owner)
    os.chmod(shared, mode)

    done = cli("run", GRAPH, "-a", "graph", "-i", 100, "--checkpoint-every", 1, "--results", shared, cwd=tmp_path,
               env=ENV)

    line = assert_one_error(done, f"refusing to take checkpoints in {shared}: {why}",
                            f"--results {shared / 'run'} (d4p-hpc creates it private)")
    assert ("chmod go-w" in line) == (owner is None), line  # another user's folder is not yours to chmod
    assert not list(shared.iterdir()), "a run refused at its start wrote into the folder"
    assert not processes_mentioning(str(shared))
    # what the refusal asks for works: a private directory of its own in the shared folder
    private = shared / "run"
    done = cli("run", GRAPH, "-a", "graph", "-i", 100, "--checkpoint-every", 1, "--results", private, cwd=tmp_path,
               env={**ENV, "D4P_HPC_CHECKPOINT_EVERY_TEST": "0.2"})
    assert done.returncode == 0, explain(done)
    assert record(private)["state"] == "COMPLETED" and complete_checkpoints(private)
    assert os.stat(private).st_mode & 0o777 == 0o700
    assert os.stat(shared).st_mode & 0o7777 == mode  # the folder keeps its mode


def test_a_checkpoint_that_becomes_untrusted_in_the_middle_of_a_run_fails_it_in_one_line(tmp_path):
    results = tmp_path / "r"
    proc = start(tmp_path, "run", GRAPH, "-a", "graph", "-i", LONG, "--checkpoint-every", 1, "--results", results)
    try:
        wait_for(lambda: complete_checkpoints(results), 60)
        os.chmod(results, 0o2775)  # from now on another user could replace its checkpoints
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc.pid)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert done.returncode == 1, explain(done)
    assert "Traceback" not in err, explain(done)
    assert re.search(rf"the run failed \(process 0\):\nrefusing to load checkpoint part {results}/checkpoints/"
                     rf"\d+/part-00000\.pkl: it is in {results}, which is writable by group", err), explain(done)
    final = record(results)
    assert final["state"] == "FAILED" and len(final["error"]["traceback"].splitlines()) == 1, final["error"]
    status = cli("status", results)
    assert "FAILED" in status.stdout and "refusing to load checkpoint part" in status.stdout, explain(status)
    assert not processes_mentioning(str(results))


def test_a_resume_in_a_folder_others_can_write_is_refused_before_anything_runs(tmp_path):
    results = tmp_path / "r"
    proc = start(tmp_path, "run", GRAPH, "-a", "graph", "-i", LONG, "--checkpoint-every", 1, "--results", results)
    try:
        wait_for(lambda: complete_checkpoints(results), 60)
    finally:
        kill_run(proc, results)
    os.chmod(results, 0o2770)
    before = (results / "run.json").read_bytes()

    done = cli("run", GRAPH, "-a", "graph", "-i", LONG, "--results", results, "--resume", cwd=tmp_path, env=ENV)

    assert_one_error(done, "refusing to load checkpoint", f"it is in {results}, which is writable by group "
                     "(mode 2770", f"chmod go-w {results}", "copy the results you trust into a directory of your own")
    assert (results / "run.json").read_bytes() == before
    assert not processes_mentioning(str(results))


# --- B: a results location that cannot be created -------------------------------------------------
@pytest.mark.parametrize("command, where", [
    pytest.param(["run", EXAMPLES / "word_count.py", "--results"], "/proc/x", id="run under /proc"),
    pytest.param(["run", EXAMPLES / "word_count.py", "--results"], "/sys/x", id="run under /sys"),
    pytest.param(["submit", EXAMPLES / "word_count.py", "--scheduler", "local", "--results-root"], "/proc/x",
                 id="submit under /proc"),
])
def test_a_results_directory_that_cannot_be_created_is_one_error_line(isolated_config, command, where):
    where = f"{where}-{uuid.uuid4().hex[:12]}"  # this test's own: the others (other xdist workers) run beside it
    done = cli(*command, where, cwd=isolated_config)

    assert_one_error(done, f"cannot create the results directory {where}", "writable")
    assert not os.path.exists(where)
    assert not list(isolated_config.iterdir()), "nothing is written in the working directory either"
    assert not processes_mentioning(where)


# --- C: a full disk at the start -------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KB tmpfs: too small for a run's reserve (256 KB). Unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "T"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)]).returncode:
            subprocess.run(["umount", "-l", str(disk)])


def used_bytes(disk: Path) -> int:
    vfs = os.statvfs(disk)
    return (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize


def test_a_full_disk_at_the_start_is_one_error_line_and_leaves_nothing_behind(tmp_path, tiny_disk):
    full = "No space left on device"
    done = cli("run", GRAPH, "-a", "graph", "-i", LONG, "-m", "multi", "-n", 2, "--results", tiny_disk / "r",
               cwd=tmp_path, env=ENV)
    assert_one_error(done, f"cannot write the results directory {tiny_disk / 'r'}: {full}")
    assert not list(tiny_disk.iterdir()) and used_bytes(tiny_disk) == 0, list(tiny_disk.rglob("*"))

    # the disk was left as it was: the next run is refused the same way, not by a traceback
    done = cli("run", EXAMPLES / "word_count.py", "--results", tiny_disk / "r2", cwd=tmp_path)
    assert_one_error(done, f"cannot write the results directory {tiny_disk / 'r2'}: {full}")
    assert not list(tiny_disk.iterdir())

    # an empty directory given as --results stays empty; a disk with no byte left refuses even the lock
    (tiny_disk / "empty").mkdir()
    with open(tiny_disk / "fill", "wb", buffering=0) as fh, pytest.raises(OSError):
        while True:
            fh.write(bytes(4096))
    for name in ("empty", "r3"):
        done = cli("run", EXAMPLES / "word_count.py", "--results", tiny_disk / name, cwd=tmp_path)
        assert_one_error(done, f"cannot write the results directory {tiny_disk / name}: {full}")
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["empty", "fill"]
    assert not list((tiny_disk / "empty").iterdir())
    assert not processes_mentioning(str(tiny_disk))


def test_a_full_disk_at_the_start_of_an_mpi_run_leaves_nothing_behind(tmp_path, tiny_disk):
    """Under mpi the launching process makes and locks the directory, and its ranks are refused:
    their one Error: line is the run's, and the launcher removes what it made."""
    done = cli("run", EXAMPLES / "word_count.py", "-m", "mpi", "-n", 2, "--results", tiny_disk / "r", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: cannot write the results directory {tiny_disk / 'r'}: No space left on device; give "
                      "a writable --results directory (or --results-root)"], done.stderr
    assert "Traceback" not in done.stderr and not list(tiny_disk.iterdir()), list(tiny_disk.rglob("*"))
    assert not processes_mentioning(str(tiny_disk))


# --- D: a resume keeps the checkpoint interval -----------------------------------------------------
def test_a_resume_keeps_the_checkpoint_interval_of_the_run_it_continues(tmp_path):
    results = tmp_path / "long"
    run = ["run", GRAPH, "-a", "graph", "-i", LONG, "--results", results]
    first = start(tmp_path, *run, "--checkpoint-every", 1)
    try:
        wait_for(lambda: complete_checkpoints(results), 60)
    finally:
        kill_run(first, results)
    base = complete_checkpoints(results)[-1]

    # as the README shows it: no --checkpoint-every
    resumed = start(tmp_path, *run, "--resume")
    try:
        wait_for(lambda: record(results).get("resumed_from") == base, 60)
        assert record(results)["checkpoint_every"] == 1.0
        wait_for(lambda: complete_checkpoints(results)[-1] > base, 60)  # the resumed segment takes its own
    finally:
        kill_run(resumed, results)
    newest = complete_checkpoints(results)[-1]
    status = cli("status", results)
    assert "FAILED" in status.stdout and "gone without recording its end" in status.stdout, explain(status)

    # a second resume goes on from the resumed segment's checkpoint; one given another interval keeps it
    again = start(tmp_path, *run, "--resume", "--checkpoint-every", 2)
    try:
        wait_for(lambda: record(results).get("resumed_from") == newest, 60)
        assert record(results)["checkpoint_every"] == 2.0
    finally:
        kill_run(again, results)
    assert not processes_mentioning(str(results))


# --- E: a job whose run never started did not complete --------------------------------------------
def test_a_job_whose_graph_exits_0_at_import_is_failed_not_completed(isolated_config):
    graph = isolated_config / "osexit.py"
    graph.write_text("import os\nos._exit(0)\n")
    submitted = cli("submit", graph, "--scheduler", "local", cwd=isolated_config)
    assert submitted.returncode == 0, explain(submitted)
    job_id = re.search(r"^job (\S+)$", submitted.stdout, re.M).group(1)
    directory = Path(re.search(r"^results (\S+)$", submitted.stdout, re.M).group(1))

    waited = cli("wait", job_id, cwd=isolated_config)

    assert waited.returncode == 1, explain(waited)
    said = waited.stdout + waited.stderr
    assert "FAILED" in said and "COMPLETED" not in said, explain(waited)
    assert "the run never recorded itself (no run.json)" in said, explain(waited)
    # the job script's trap saw exit code 0 and wrote COMPLETED: the state is decided over it
    assert json.loads((directory / "state" / "finished").read_text())["state"] == "COMPLETED"
    status = cli("status", job_id, cwd=isolated_config)
    line = next(line for line in status.stdout.splitlines() if line.startswith(job_id))
    assert "FAILED" in line and "never recorded itself" in line, explain(status)
    assert not (directory / "run.json").exists()
    assert not processes_mentioning(str(directory))


def test_a_job_that_completes_is_still_completed(isolated_config):
    submitted = cli("submit", EXAMPLES / "word_count.py", "--scheduler", "local", "-i", 2, cwd=isolated_config)
    assert submitted.returncode == 0, explain(submitted)
    job_id = re.search(r"^job (\S+)$", submitted.stdout, re.M).group(1)
    waited = cli("wait", job_id, cwd=isolated_config)
    assert waited.returncode == 0 and "COMPLETED" in waited.stdout, explain(waited)

