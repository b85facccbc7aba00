"""The results directory of a ``d4p-hpc run`` seen from outside (issues 7 and 8): ``status``,
``results``, ``logs``, ``list`` and ``cancel`` read it as they read a job's; a dead run is told
from a live one; a directory the user gave keeps its mode, and one that cannot hold a run is
refused with one line before anything runs, under every kind of mapping."""

from __future__ import annotations

import contextlib
import glob
import shutil
import json
import os
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from helpers.runs import (DATA, EXAMPLES, alive, cli, d4p_hpc_cmd, every_mapping, explain, kill_group,
                             processes_mentioning, raw_items)

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def start(tmp_path, *args, tmpdir: Path | None = None) -> subprocess.Popen:
    """A ``d4p-hpc run`` in its own session, as a user's terminal would start it (with its own
    ``TMPDIR`` when given, so that what it leaves there is told apart from other runs')."""
    env = {k: v for k, v in os.environ.items() if k != "D4P_HPC_QUIET"}
    env.update(MPI_ENV)
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.Popen(d4p_hpc_cmd() + ["run", *map(str, args)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_handler(pid: int, signum: int, timeout: float = 60) -> None:
    """Until process ``pid`` has installed a handler for ``signum`` (its SigCgt mask in /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
            if caught >> (signum - 1) & 1:
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} installed no handler for signal {signum} in {timeout} s")


def state_of(results) -> str:
    try:
        return json.loads((results / "run.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return ""


def wait_running(results, timeout=60) -> None:
    deadline = time.monotonic() + timeout
    while state_of(results) != "RUNNING" or not list((results / "outputs").glob("*/part-*")):
        assert time.monotonic() < deadline, f"{results} did not start within {timeout} s"
        time.sleep(0.1)


def test_status_results_logs_and_list_read_a_run_directory(tmp_path):
    root = tmp_path / "d4p-results"
    results = root / "wc"
    done = cli("run", EXAMPLES / "word_count.py", "-m", "multi", "-n", 2, "-i", 4, "--results", results)
    assert done.returncode == 0, explain(done)

    status = cli("status", results)
    assert status.returncode == 0 and "COMPLETED" in status.stdout, explain(status)
    report = cli("results", results)
    assert report.returncode == 0, explain(report)
    # d4p-hpc's key beside dispel4py's own id of each PE
    ids = json.loads((results / "run.json").read_text())["pe_ids"]
    assert ids["CountWords"].startswith("CountWords") and ids["CountWords"] != "CountWords"
    assert f"CountWords ({ids['CountWords']})" in report.stdout, report.stdout
    shown = cli("results", "wc", "--show", "CountWords.output", "--results-root", root)
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) > 3, explain(shown)
    listed = cli("list", "--results-root", root)
    assert listed.returncode == 0 and "wc" in listed.stdout and "COMPLETED" in listed.stdout, explain(listed)
    logs = cli("logs", results)
    assert logs.returncode == 0, explain(logs)


def test_a_run_killed_with_sigkill_is_reported_dead_not_running(tmp_path):
    results = tmp_path / "r"
    proc = start(tmp_path, DATA / "g_long.py", "-i", 100000, "--results", results)
    try:
        wait_running(results)
        assert "RUNNING" in cli("status", results).stdout
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_group(proc.pid)
    status = cli("status", results)
    assert status.returncode == 0, explain(status)
    assert "FAILED" in status.stdout and "gone without recording its end" in status.stdout, status.stdout
    assert "RUNNING" not in status.stdout


@pytest.mark.parametrize("mapping", ["simple", "multi", "mpi", "dyn_multi"])
def test_cancel_of_a_run_directory_ends_it_cancelled(tmp_path, mapping):
    results = tmp_path / "r"
    proc = start(tmp_path, DATA / "g_long.py", "-m", mapping, "-n", 2, "-i", 100000, "--results", results)
    try:
        wait_running(results)
        cancel = cli("cancel", results)
        assert cancel.returncode == 0, explain(cancel)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        kill_group(proc.pid)
    assert state_of(results) == "CANCELLED"
    again = cli("cancel", results)
    assert again.returncode == 2 and "already ended: CANCELLED" in again.stderr, explain(again)


@pytest.mark.parametrize("signum, state, early", [
    (signal.SIGINT, "CANCELLED", False), (signal.SIGTERM, "CANCELLED", False),
    (signal.SIGUSR1, "TIMEOUT", False), (signal.SIGTERM, "CANCELLED", True), (signal.SIGINT, "CANCELLED", True)])
def test_mpi_run_answers_a_signal_with_its_state_and_exit_code(tmp_path, signum, state, early):
    results = tmp_path / "r"
    proc = start(tmp_path, DATA / "g_long.py", "-m", "mpi", "-n", 2, "-i", 100000, "--results", results)
    try:
        if early:
            # as soon as d4p-hpc answers stop signals (SIGTERM: Python itself catches SIGINT from its
            # start, before it can do anything with it): mpiexec is still starting the ranks. Waiting
            # on the handler, not on a clock, keeps this early on a loaded machine.
            wait_for_handler(proc.pid, signal.SIGTERM)
        else:
            wait_running(results)
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
        out, err = proc.communicate()
    finally:
        kill_group(proc.pid)
    assert code == 128 + signum, f"{code}\n{out}\n{err}"
    if (results / "run.json").exists():
        assert state_of(results) == state
    else:
        assert f"{state} by signal {signum} before the run started" in err
    time.sleep(0.5)
    leftover = subprocess.run(["pgrep", "-f", str(results)], capture_output=True, text=True).stdout.split()
    assert not [p for p in leftover if alive(int(p))], leftover


def test_dyn_refusal_names_a_twice_fed_input_once(tmp_path):
    graph = tmp_path / "twice.py"
    graph.write_text(
        "from dispel4py.core import GenericPE\n"
        "from dispel4py.base import ProducerPE\n"
        "from dispel4py.workflow_graph import WorkflowGraph\n"
        "class P(ProducerPE):\n"
        "    def _process(self, inputs):\n        return 1\n"
        "class Count(GenericPE):\n"
        "    def __init__(self):\n"
        "        GenericPE.__init__(self)\n"
        "        self._add_input('input', grouping=[0])\n"
        "    def process(self, inputs):\n        pass\n"
        "graph = WorkflowGraph()\n"
        "count = Count()\n"
        "graph.connect(P(), 'output', count, 'input')\n"
        "graph.connect(P(), 'output', count, 'input')\n")
    proc = cli("run", graph, "-m", "dyn_multi", "--results", tmp_path / "r")
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.count("input: [0]") == 1, proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("mapping", ["simple", "multi", "mpi", "dyn_multi"])
def test_a_non_empty_directory_that_is_no_run_is_refused(tmp_path, mapping):
    target = tmp_path / "project"
    target.mkdir()
    (target / "notes.txt").write_text("mine\n")
    before = sorted(p.name for p in target.iterdir())
    proc = cli("run", EXAMPLES / "word_count.py", "-m", mapping, "-n", 2, "--results", target, env=MPI_ENV)
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.count("\n") == 1 and "is not empty (notes.txt)" in proc.stderr, proc.stderr
    assert sorted(p.name for p in target.iterdir()) == before


@pytest.mark.parametrize("mapping", ["simple", "multi", "mpi", "dyn_multi"])
def test_a_shared_setgid_directory_keeps_its_mode(tmp_path, mapping):
    target = tmp_path / "shared"
    target.mkdir()
    os.chmod(target, 0o2770)
    proc = cli("run", DATA / "g_long.py", "-m", mapping, "-n", 2, "-i", 20, "--results", target, env=MPI_ENV)
    assert proc.returncode == 0, explain(proc)
    assert stat.S_IMODE(target.stat().st_mode) == 0o2770
    for path in target.rglob("*"):  # what d4p-hpc made is private
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


@contextlib.contextmanager
def _tmpfs(where, options: str):
    """A real file system that fails as the test needs: mounted at ``where``, removed after."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode:
        reason = f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture
def read_only(tmp_path):
    """A read-only mount: writing there fails as on a read-only or lost file system."""
    with _tmpfs(tmp_path / "ro", "size=1m,ro") as where:
        yield where


@pytest.mark.parametrize("mapping", ["simple", "multi", "mpi", "dyn_multi", "dyn_redis", "hybrid_redis"])
def test_an_unwritable_results_directory_is_one_line_before_anything_runs(tmp_path, read_only, mapping):
    proc = cli("run", EXAMPLES / "word_count.py", "-m", mapping, "-n", 2, "--results", read_only / "r",
               env=MPI_ENV, timeout=60)
    assert proc.returncode == 2, explain(proc)
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"Error: cannot create the results directory {read_only / 'r'}: {read_only} is not "
                     "writable; give a writable --results directory (or --results-root)"], proc.stderr


def _gone(results, timeout) -> dict[int, list[str]]:
    """Wait until no process mentions ``results``; return those still there after ``timeout`` (to show them)."""
    deadline = time.monotonic() + timeout
    while processes_mentioning(str(results)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return processes_mentioning(str(results))


@pytest.mark.parametrize("mapping", every_mapping())
def test_sigkill_of_the_driver_leaves_a_dead_run_and_nothing_else(tmp_path, mapping):
    results = tmp_path / "r"
    # a short private TMPDIR (MPI's socket paths live there too): other runs on the machine
    # make and remove their own Redis configs meanwhile
    private_tmp = Path(tempfile.mkdtemp(prefix="d4pt-"))
    proc = start(tmp_path, DATA / "g_long.py", "-m", mapping, "-n", 2, "-i", 100000, "--results", results,
                 tmpdir=private_tmp)
    try:
        wait_running(results)
        os.kill(json.loads((results / "run.json").read_text())["pid"], signal.SIGKILL)
        left = _gone(results, 20)
    finally:
        kill_group(proc.pid)
    assert not left, f"still running 20 s after the driver was killed: {left}"
    status = cli("status", results)
    # mpi: the launcher saw mpiexec end and recorded it; else the record is told dead by its pid
    why = "mpiexec exited with code" if mapping == "mpi" else "gone without recording its end"
    assert "FAILED" in status.stdout and why in status.stdout, status.stdout
    assert not (results / "redis.json").exists(), "the connection file (with the password) outlived its Redis"
    left_secrets = list(private_tmp.glob("d4p-redis-*/redis.conf"))
    shutil.rmtree(private_tmp, ignore_errors=True)
    assert not left_secrets, f"a Redis config (password) is left: {left_secrets}"


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live children of ``pid``."""
    found = []
    for stat_file in glob.glob("/proc/[0-9]*/stat"):
        fields = _read(stat_file).rsplit(b")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
            cmdline = _read(stat_file[:-4] + "cmdline").replace(b"\0", b" ").decode(errors="replace")
            found.append((int(stat_file.split("/")[2]), cmdline))
    return found


def _stuck(driver: int, results: Path) -> str:
    """Where the driver and its children are blocked (their kernel wait channel and state), and the
    end of each process's log."""
    lines = []
    for pid, cmd in [(driver, "driver"), *_children(driver)]:
        state = _read(f"/proc/{pid}/stat").rsplit(b")", 1)[-1].split()[:1]
        wchan = _read(f"/proc/{pid}/wchan").decode(errors="replace")
        lines.append(f"pid {pid} {state} waits in {wchan or '?'}: {cmd[:120]}")
    for log in sorted((results / "logs").glob("*.log")):
        lines.append(f"--- {log.name}: " + " | ".join(_read(str(log)).decode(errors="replace").splitlines()[-5:]))
    return "\n".join(lines)


def _victim(driver: int, what: str) -> int:
    """A worker (a forked child of the driver) or the per-job redis-server."""
    kids = _children(driver)
    return next(p for p, cmd in kids if ("redis-server" in cmd) == (what == "redis-server"))


# (mapping, what is killed, the run's final state)
FAULTS = [("multi", "worker", "FAILED"), ("dyn_multi", "worker", "FAILED"), ("dyn_auto_multi", "worker", "FAILED"),
          ("dyn_redis", "worker", "COMPLETED"), ("dyn_auto_redis", "worker", "COMPLETED"),
          ("hybrid_redis", "worker", "COMPLETED"), ("dyn_redis", "redis-server", "FAILED"),
          ("dyn_auto_redis", "redis-server", "FAILED"), ("hybrid_redis", "redis-server", "FAILED")]


@pytest.mark.parametrize("mapping, what, final", FAULTS, ids=[f"{m}-{w}" for m, w, _ in FAULTS])
def test_sigkill_of_one_process_ends_in_a_clear_state(tmp_path, mapping, what, final):
    results = tmp_path / "r"
    env_extra = {"D4P_HPC_CLAIM_IDLE": "2"}  # a dead worker's tasks are taken over after 2 s
    os.environ.update(env_extra)
    try:
        proc = start(tmp_path, DATA / "g_long.py", "-m", mapping, "-n", 2, "-i", 6000, "--results", results)
    finally:
        for key in env_extra:
            os.environ.pop(key)
    try:
        wait_running(results)
        driver = json.loads((results / "run.json").read_text())["pid"]
        os.kill(_victim(driver, what), signal.SIGKILL)
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:  # (seen once in CI, under load): what each process waits in
            raise AssertionError(f"the run did not end in 90 s after its {what} was killed:\n"
                                 + _stuck(driver, results)) from None
        left = _gone(results, 20)
    finally:
        kill_group(proc.pid)
    record = json.loads((results / "run.json").read_text())
    assert record["state"] == final, (code, record.get("error"))
    assert code == (0 if final == "COMPLETED" else 1)
    assert not left, left
    assert not (results / "redis.json").exists()
    if final == "COMPLETED":  # the dead worker's tasks were redone: nothing lost, nothing twice
        assert sorted(raw_items(results, "Pass", "output")) == list(range(1, 6001))


def test_sigkill_of_one_mpi_rank_fails_the_run_and_leaves_nothing(tmp_path):
    results = tmp_path / "r"
    proc = start(tmp_path, DATA / "g_long.py", "-m", "mpi", "-n", 2, "-i", 100000, "--results", results)
    try:
        wait_running(results)
        rank0 = json.loads((results / "run.json").read_text())["pid"]
        ranks = [int(p.split("/")[2]) for p in glob.glob("/proc/[0-9]*/cmdline")
                 if str(results).encode() in _read(p) and b"runpy" in _read(p)]
        os.kill(next(r for r in ranks if r != rank0), signal.SIGKILL)
        code = proc.wait(timeout=60)
        left = _gone(results, 20)
    finally:
        kill_group(proc.pid)
    assert code == 1 and state_of(results) == "FAILED"
    assert not left, left


def _read(path: str) -> bytes:
    try:
        return open(path, "rb").read()
    except OSError:
        return b""


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs: a run of large items fills it within a second."""
    with _tmpfs(tmp_path / "tiny", "size=1m") as where:
        yield where


@pytest.mark.parametrize("mapping", every_mapping())
def test_a_full_disk_ends_the_run_failed_with_whole_outputs(tmp_path, tiny_disk, mapping):
    results = tiny_disk / "r"
    proc = cli("run", DATA / "g_big_items.py", "-m", mapping, "-n", 2, "-i", 5000, "--results", results,
               env=MPI_ENV, timeout=90)
    assert proc.returncode == 1, explain(proc)
    record = json.loads((results / "run.json").read_text())
    assert record["state"] == "FAILED", record
    why = record["error"]["traceback"].splitlines()[0]
    assert "results directory" in why and "no space left on device" in why.lower(), why
    kept = raw_items(results, "Pass", "output")  # every part reads back: cut to whole items
    assert kept and all(item.endswith("x" * 1016) for item in kept)
    assert len(set(kept)) == len(kept)
    assert not list(results.rglob(".*.tmp")) and not (results / ".parts" / "reserve").exists()
    assert not _gone(results, 20)


STOPS = [(signal.SIGTERM, "CANCELLED"), (signal.SIGINT, "CANCELLED"), (signal.SIGUSR1, "TIMEOUT")]


@pytest.mark.parametrize("target", ["run", "group"])
@pytest.mark.parametrize("signum, state", STOPS, ids=[s.name for s, _ in STOPS])
@pytest.mark.parametrize("mapping", every_mapping())
def test_every_mapping_answers_a_stop_signal_alike(tmp_path, mapping, signum, state, target):
    """As a terminal (the run) or a scheduler (its whole process group) sends it."""
    results = tmp_path / "r"
    proc = start(tmp_path, DATA / "g_long.py", "-m", mapping, "-n", 2, "-i", 100000, "--results", results)
    try:
        wait_running(results)
        time.sleep(1)  # Redis workers' first units committed: a stop keeps committed outputs only
        (os.killpg if target == "group" else os.kill)(proc.pid, signum)
        code = proc.wait(timeout=60)
        left = _gone(results, 20)
    finally:
        kill_group(proc.pid)
    record = json.loads((results / "run.json").read_text())
    assert (record["state"], record["exit_code"], code) == (state, 128 + signum, 128 + signum), \
        (record.get("error"), proc.stderr.read()[-3000:])
    assert raw_items(results, "Pass", "output"), "the outputs written before the stop were lost"
    assert not left, left


def test_cancel_of_a_job_during_postprocess_ends_cancelled_everywhere(tmp_path, isolated_config):
    """The job's trap stops Redis while the driver is still stopping: that is the cancel, not a
    lost Redis (hybrid_redis, whose stateful PE postprocesses on a worker)."""
    root = tmp_path / "results"
    done = cli("submit", DATA / "g_slow_postprocess.py", "--scheduler", "local", "-m", "hybrid_redis",
               "--nodes", 2, "-i", 50, "--results-root", root, env={"D4P_TEST_POST_SLEEP": "30"})
    assert done.returncode == 0, explain(done)
    directory = next(root.iterdir())
    deadline = time.monotonic() + 60
    while not any("postprocess started" in _read(str(p)).decode() for p in (directory / "logs").glob("*.log")):
        assert time.monotonic() < deadline, "postprocess never started"
        time.sleep(0.2)
    assert cli("cancel", directory).returncode == 0
    waited = cli("wait", directory, "--timeout", 60, timeout=90)
    assert waited.returncode == 1 and "CANCELLED" in waited.stdout, explain(waited)
    record = json.loads((directory / "run.json").read_text())
    assert record["state"] == "CANCELLED", record.get("error")
    assert not _gone(directory, 20)


def test_sigkill_of_mpiexec_stops_its_ranks_and_fails_the_run(tmp_path):
    results = tmp_path / "r"
    proc = start(tmp_path, DATA / "g_long.py", "-m", "mpi", "-n", 2, "-i", 100000, "--results", results)
    try:
        wait_running(results)
        mpiexec = next(p for p, cmd in _children(proc.pid) if "mpiexec" in cmd)
        os.kill(mpiexec, signal.SIGKILL)
        code = proc.wait(timeout=60)
        left = _gone(results, 20)
    finally:
        kill_group(proc.pid)
    assert not left, f"ranks outlived their mpiexec: {left}"
    record = json.loads((results / "run.json").read_text())
    assert (code, record["state"]) == (1, "FAILED"), record
    assert "mpiexec was killed by signal 9" in record["error"]["traceback"]
