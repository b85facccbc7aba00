"""d4p_hpc.durable: the lock of a run directory's one writer, its durable steps, and the crash
points a test can stop a run at."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers.runs import alive, wait_for

from d4p_hpc import durable
from d4p_hpc.errors import BusyError


def hold(directory: Path, what: str, then: str = "time.sleep(60)", **env: str) -> subprocess.Popen:
    """A process that takes the lock of ``directory`` as ``what``, says so, then runs ``then``."""
    code = textwrap.dedent(f"""
        import sys, time
        from d4p_hpc import durable
        durable.lock({str(directory)!r}, {what!r})
        print("locked", flush=True)
        {then}
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


def test_a_directory_has_one_writer_and_the_other_is_told_who_in_one_line(tmp_path):
    holder = hold(tmp_path, "d4p-hpc run --resume", D4P_HPC_JOB_ID="local-1234")
    try:
        with pytest.raises(BusyError) as refused:
            durable.lock(tmp_path, "d4p-hpc run")
        said = str(refused.value)
        assert "\n" not in said
        assert said.startswith(f"the run in {tmp_path} is being written by d4p-hpc run --resume (pid {holder.pid} on ")
        assert ", job local-1234) since " in said and said.endswith("(d4p-hpc cancel local-1234)")
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops a lock whose holder is killed: never a stale lock
    with durable.locked(tmp_path, "d4p-hpc resume"):
        pass
    assert (tmp_path / durable.LOCK).stat().st_mode & 0o777 == 0o600


def test_a_lock_held_by_a_resume_is_waited_for_by_the_job_it_submits(tmp_path):
    holder = hold(tmp_path, durable.RESUME, then="time.sleep(1)")
    started = time.monotonic()
    with durable.locked(tmp_path, "d4p-hpc run --resume"):
        assert time.monotonic() - started >= 0.5
    holder.wait()


def test_what_a_launcher_holds_for_its_ranks_is_not_taken_again(tmp_path):
    holder = hold(tmp_path, "d4p-hpc run")
    try:
        assert durable.lock(tmp_path, "d4p-hpc run", holder=holder.pid) is False
    finally:
        holder.kill()
        holder.wait()


def crash(tmp_path: Path, script: str, at: int, mode: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    counter, trace = tmp_path / "steps", tmp_path / "trace"
    counter.write_text("")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env={**os.environ, "D4P_HPC_CRASH_COUNTER": str(counter), "D4P_HPC_CRASH_AT": str(at),
                               "D4P_HPC_CRASH_MODE": mode, "D4P_HPC_CRASH_TRACE": str(trace)},
                          start_new_session=True, timeout=60)
    return done, trace.read_text().splitlines()


def test_a_run_is_crashed_at_the_step_it_is_told_and_leaves_what_a_crash_leaves(tmp_path):
    target = tmp_path / "file"
    done, trace = crash(tmp_path, f"""
        from d4p_hpc import durable
        durable.write_file({str(target)!r}, b"first", sync=True)
        durable.write_file({str(target)!r}, b"second", sync=True)
    """, at=7, mode="process")
    assert done.returncode == durable.CRASH_EXIT, done.stderr
    # write, fsync, rename, fsync-dir of the first; write, fsync, (crash before the) rename of the second
    assert [line.split()[2] for line in trace] == ["write", "fsync", "rename", "fsync-dir", "write", "fsync", "CRASH"]
    assert trace[-1].split()[3:] == ["rename", str(target)]
    assert target.read_bytes() == b"first"
    temporary = [p.name for p in tmp_path.iterdir() if durable.is_temporary(p.name)]
    assert temporary == [f".file.{trace[0].split()[1]}.tmp"]
    assert durable.remove_leftovers(tmp_path) == 1 and target.read_bytes() == b"first"


def test_a_lost_node_kills_every_process_of_the_session(tmp_path):
    done, trace = crash(tmp_path, f"""
        import os, time
        from d4p_hpc import durable
        child = os.fork()
        if child == 0:
            open({str(tmp_path / "child")!r}, "w").write(str(os.getpid()))
            time.sleep(60)
            os._exit(0)
        while not os.path.exists({str(tmp_path / "child")!r}):
            time.sleep(0.01)
        durable.unlink({str(tmp_path / "child")!r}.replace("child", "absent"), missing_ok=True)
    """, at=1, mode="node")
    assert done.returncode == -signal.SIGKILL, done.stderr
    child = int((tmp_path / "child").read_text())
    wait_for(lambda: not alive(child), 10)
    assert trace[-1].split()[2:4] == ["CRASH", "unlink"]


def test_a_tree_is_removed_aside_first_and_a_removal_cut_short_is_finished(tmp_path):
    tree = tmp_path / "000003"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "part").write_bytes(b"x")
    durable.remove_tree(tree)
    assert not list(tmp_path.iterdir())
    left = tmp_path / (durable.REMOVING + "000004")  # a removal a crash cut short
    (left / "sub").mkdir(parents=True)
    assert durable.remove_leftovers(tmp_path) == 1 and not list(tmp_path.iterdir())
    durable.remove_tree(tmp_path / "never-there")  # another process removed it first
