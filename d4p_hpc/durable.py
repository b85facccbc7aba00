"""Every durable step d4p-hpc takes in a results directory, and the lock of its one writer.

A checkpoint, the cut-back of a resume and the archive of a job's segment are sequences of steps
that each reach the disk whole or not at all: writing a file under a temporary name and fsyncing
it, renaming it into place, fsyncing the directory that holds the new name, linking, unlinking,
truncating (then fsyncing), removing a tree (renamed aside first, so that no half-removed tree is
ever read). They are all taken here, so that the order and the syncs are right in one place, and
so that a test can stop the process at any of them.

The lock: a run directory has one live writer. :func:`lock` takes an exclusive ``flock`` on
``DIR/.lock`` (:data:`LOCK`) and writes who holds it (what, host, pid, job id, since) into it; the
kernel drops the lock when its holder dies, however it dies, so a lock is never stale. The
processes a holder forks inherit it: a run is over when the last of them is gone.

Test instrumentation (set by tests only; read once, at import)::

    D4P_HPC_CRASH_COUNTER=FILE  count the durable steps of every process of a run in FILE (the
                                steps taken so far, as a number, updated under flock; the test
                                creates it empty)
    D4P_HPC_CRASH_AT=N          step N is not taken: the run crashes there
    D4P_HPC_CRASH_MODE=process  (default) the process that reaches step N leaves at once,
                                ``os._exit(CRASH_EXIT)``: the others live on and see it die
    D4P_HPC_CRASH_MODE=node     every process of the session is SIGKILLed at step N, as when a
                                node is lost (start the run in a session of its own); the test
                                then cuts each output file back to its size at its last fsync
                                (the trace says it), the page cache a lost node loses
    D4P_HPC_CRASH_TRACE=FILE    one line per step: ``N PID KIND PATH [SIZE]`` (SIZE: what an
                                fsync or a truncate leaves on disk); ``N PID CRASH KIND PATH`` last
    D4P_HPC_CHECKPOINT_EVERY_TEST=SECONDS
                                checkpoints of a run that takes them come every SECONDS, below the
                                1 s ``--checkpoint-every`` allows: several in a short test run (see
                                :mod:`d4p_hpc.mappings.runtime.prepare`)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from d4p_hpc import liveness, settings
from d4p_hpc.errors import BusyError, UsageError
from d4p_hpc.supervisor import STOPS

#: the lock file of a results directory
LOCK = ".lock"
#: the exit code of a process crashed by D4P_HPC_CRASH_AT in mode "process"
CRASH_EXIT = 86
#: the prefix of a tree being removed (see :func:`remove_tree`)
REMOVING = ".removing-"

_COUNTER = os.environ.get("D4P_HPC_CRASH_COUNTER")
_CRASH_AT = int(os.environ.get("D4P_HPC_CRASH_AT") or 0)
_MODE = os.environ.get("D4P_HPC_CRASH_MODE", "process")
_TRACE = os.environ.get("D4P_HPC_CRASH_TRACE")
#: D4P_HPC_CHECKPOINT_EVERY_TEST, or None
TEST_CHECKPOINT_EVERY = float(os.environ.get("D4P_HPC_CHECKPOINT_EVERY_TEST") or 0) or None


# --- the steps -------------------------------------------------------------------------------------
def step(kind: str, path: str | os.PathLike, size: int | None = None) -> None:
    """One durable step is about to be taken (counted, traced, or crashed at: see the module
    docstring); costs one test of a variable in production."""
    if _COUNTER is None:
        return
    fd = os.open(_COUNTER, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        n = int(os.pread(fd, 32, 0).strip() or b"0") + 1
        os.pwrite(fd, f"{n:<20d}\n".encode(), 0)
        crash = n == _CRASH_AT
        if _TRACE:
            line = f"{n} {os.getpid()} {'CRASH ' if crash else ''}{kind} {path}{'' if size is None else f' {size}'}\n"
            with open(_TRACE, "a") as fh:
                fh.write(line)
        if crash:
            _crash()
    finally:
        os.close(fd)


def _crash() -> None:
    sys.stdout.flush()
    if _MODE == "node":
        # a stop signal must not cut the killing short (a worker gets SIGTERM once its parent is killed)
        with contextlib.suppress(ValueError):  # (not the main thread: the handlers run in the other)
            for signum in STOPS:
                signal.signal(signum, signal.SIG_IGN)
        me, session = os.getpid(), os.getsid(0)
        try:
            for _ in range(3):  # a process forked meanwhile is found by the next pass
                for pid in _session(session):
                    if pid != me:
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
        finally:
            os.kill(me, signal.SIGKILL)
    os._exit(CRASH_EXIT)


def _session(session: int) -> list[int]:
    """The processes of ``session`` (test instrumentation: the one read of /proc outside liveness)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == session:
                found.append(int(entry))
    return found


def write_file(path: str | os.PathLike, data: bytes, sync: bool) -> None:
    """Write ``data`` to ``path`` atomically (readers never see half a file), mode 0600, through a
    temporary file in the same directory and a rename. ``sync``: durable when this returns (the
    file fsynced before the rename, its directory after); without it, no step is counted."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if sync:
        step("write", tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if sync:
                fh.flush()
                fsync(fh.fileno(), tmp)
        if sync:
            replace(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half file behind
        raise


def fsync(fd: int, path: str | os.PathLike) -> None:
    """Fsync the open file ``fd`` (``path`` names it for the trace)."""
    step("fsync", path, os.fstat(fd).st_size)
    os.fsync(fd)


def sync_dir(path: str | os.PathLike) -> None:
    """Fsync directory ``path``: the names created, renamed or removed in it are on disk."""
    step("fsync-dir", path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` to ``dst`` (replacing it), durably."""
    step("rename", dst)
    os.replace(src, dst)
    sync_dir(Path(dst).parent)


def link(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Link ``dst`` to ``src`` (FileExistsError if ``dst`` exists: the first to link wins), durably."""
    step("link", dst)
    os.link(src, dst)
    sync_dir(Path(dst).parent)


def unlink(path: str | os.PathLike, missing_ok: bool = False) -> None:
    """Remove file ``path``, durably."""
    step("unlink", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return
    sync_dir(Path(path).parent)


def truncate(path: str | os.PathLike, size: int) -> None:
    """Cut file ``path`` to ``size`` bytes, durably."""
    step("truncate", path, size)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: str | os.PathLike) -> None:
    """Remove directory ``path`` and all it holds: renamed aside first (one step, after which it
    is gone for every reader), then deleted; :func:`remove_leftovers` ends a deletion a crash cut
    short."""
    path = Path(path)
    aside = path if path.name.startswith(REMOVING) else path.with_name(REMOVING + path.name)
    if aside != path:
        try:
            replace(path, aside)
        except FileNotFoundError:  # another process removes it (two completed a checkpoint at once)
            return
    step("rmtree", aside)
    shutil.rmtree(aside, ignore_errors=True)


def remove_leftovers(directory: str | os.PathLike) -> int:
    """Remove what a process killed in the middle of a step left in ``directory``: its temporary
    files (``.NAME.PID.tmp``) and the trees it was removing. Returns how many were removed."""
    removed = 0
    try:
        entries = list(os.scandir(os.fspath(directory)))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith(REMOVING) and entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
            removed += 1
        elif is_temporary(entry.name) and not entry.is_dir(follow_symlinks=False):
            unlink(entry.path, missing_ok=True)
            removed += 1
    return removed


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`write_file` (``.NAME.PID.tmp``)."""
    parts = name.split(".")
    return name.startswith(".") and len(parts) >= 4 and parts[-1] == "tmp" and parts[-2].isdigit()


# --- the lock --------------------------------------------------------------------------------------
#: the locks this process holds, by directory: held until it exits, or released by :func:`locked`
_HELD: dict[Path, int] = {}
#: who holds the lock while it submits a job's successor; a writer waits for it, up to RESUME_WAIT
#: seconds: it is submitting the very job that waits
RESUME = "d4p-hpc resume"
RESUME_WAIT = 60.0


def lock(directory: str | os.PathLike, what: str, *, holder: int | None = None) -> bool:
    """Take the lock of results directory ``directory`` for this process's life; ``what`` says
    who takes it (``d4p-hpc run --resume``). Raises :class:`~d4p_hpc.errors.BusyError`, whose one
    line says who holds it, when another process does; a lock held by ``d4p-hpc resume`` is waited
    for (up to :data:`RESUME_WAIT` s): it is submitting the job that asks. A lock file that cannot
    be created or written (a full disk) raises a one-line :class:`~d4p_hpc.errors.UsageError`. ``holder``: the pid
    of a process of this host that took the lock for this one (the launcher of an mpi run).

    Returns False when it holds no lock: taken by ``holder``, or a file system without locks
    (a one-line warning on stderr: Lustre mounted without ``flock``)."""
    directory = Path(directory).absolute()
    if directory in _HELD:
        return True
    path = directory / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot lock the results directory {directory} ({exc.strerror}): only a directory you "
                         "can write can be run in or resumed") from None
    deadline = None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            record = _holder(path)
            if holder is not None and record.get("pid") == holder and record.get("host") == liveness.host():
                os.close(fd)
                return False
            if record.get("what") == RESUME:
                deadline = deadline or time.monotonic() + RESUME_WAIT
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
            os.close(fd)
            raise BusyError(_busy(directory, record)) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            print(f"warning: cannot lock {directory} ({exc.strerror}: a file system mounted without flock?): "
                  "make sure that no other d4p-hpc writes it while this one does", file=sys.stderr)
            return False
    record = {"what": what, "host": liveness.host(), "pid": os.getpid(), "job_id": settings.job_id(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError as exc:  # a full disk, a quota: nothing could be run or resumed here
        os.close(fd)
        raise UsageError(f"cannot write the results directory {directory}: {exc.strerror or exc}; give a writable "
                         "--results directory (or --results-root)") from None
    _HELD[directory] = fd
    return True


@contextlib.contextmanager
def locked(directory: str | os.PathLike, what: str) -> Iterator[None]:
    """:func:`lock`, released when the block ends (``d4p-hpc resume``)."""
    directory = Path(directory).absolute()
    mine = directory not in _HELD and lock(directory, what)
    try:
        yield
    finally:
        if mine:
            os.close(_HELD.pop(directory))


def _holder(path: Path) -> dict:
    """The holder's record; it writes it just after taking the lock, so an empty one is read again."""
    for _ in range(20):
        try:
            record = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            record = {}
        if isinstance(record, dict) and record.get("pid") and liveness.alive(record.get("host"), record["pid"],
                                                                              None) is not False:
            return record
        time.sleep(0.05)
    return record if isinstance(record, dict) else {}


def _busy(directory: Path, record: dict) -> str:
    """One line: who holds the lock of ``directory``, and what to do."""
    if not record.get("pid"):
        return (f"the run in {directory} is being written by another d4p-hpc process: wait for it to end, "
                "or stop it")
    job = record.get("job_id")
    who = f"{record.get('what', 'd4p-hpc')} (pid {record['pid']} on {record.get('host')}" + \
        (f", job {job})" if job else ")") + f" since {record.get('since')}"
    if record.get("what") == RESUME:
        return f"the run in {directory} is being resumed by {who}: see d4p-hpc status {directory} once it is done"
    gone = liveness.alive(record.get("host"), record["pid"], None) is False
    ending = "; it has died and the processes it started are ending: try again in a few seconds" if gone else ""
    return (f"the run in {directory} is being written by {who}{ending}: wait for it to end, or stop it "
            f"(d4p-hpc cancel {job or directory})")
