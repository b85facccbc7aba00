"""The trust boundary of a results directory: which files d4p-hpc may unpickle.

Unpickling a file runs whatever code the file names, so d4p-hpc unpickles a file (a checkpoint
part, an output part of your own) only when nobody but you could have written it:

* the file is a regular file, not a link, owned by you (the effective user) and not writable by
  group or others;
* every directory from *the results directory* down to the file is owned by you and not
  writable by group or others (a group-writable, setgid ``checkpoints/`` is refused too).

The results directory is the directory a run writes (``--results``, or a job's directory); for
every file d4p-hpc unpickles it is the file's great-grandparent: ``DIR/checkpoints/<seq>/part-*.pkl``,
``DIR/checkpoints/<seq>/complete.json``, ``DIR/outputs/<PE.output>/part-*.pickle``. What lies above
it is not its business: a world-writable, sticky ``/tmp`` or a setgid, group-writable project
folder is the normal place for results. Someone who replaces the results directory there (or any
entry below it) leaves a directory or file owned by them, which the rule refuses.

Sharing results with a project group therefore means making them *readable* by the group
(``chmod -R g+rX DIR``), never writable. Reading them is safe for the group: ``d4p-hpc results``
counts the items of pickle parts without unpickling, and ``--show``/``--export`` loads another
user's pickle parts with an unpickler that builds only plain data and refuses any class
(:mod:`d4p_hpc.results`). Another user's checkpoint is never loaded: copy the results you trust
into a directory of your own (``cp -r`` makes you the owner) and resume that copy.

A run that takes checkpoints unpickles them itself (the first checkpoint reads its parts back),
so its results directory must pass the rule before it starts: :func:`require_checkpoint_dir`
refuses, in one line and before anything is written, a new run's ``--results`` directory that is
writable by group or others (a setgid project folder given as ``--results`` itself) or is another
user's; a resume is refused as it loads its checkpoint, before anything runs. Checkpoints are not
written there in the hope that nobody swaps them: ``--results DIR/run`` (which d4p-hpc creates
0700) or a directory only you can write is what the refusal asks for.

The check and the use are one step: :func:`open_private` walks down from the results directory
through directory descriptors, never following a link, checks each opened descriptor (``fstat``)
and returns the file it checked, so nothing renamed or linked into place in between can win.
"""

from __future__ import annotations

import builtins
import errno
import functools
import os
import pickle
import pwd
import stat
from pathlib import Path
from typing import Any, BinaryIO

from d4p_hpc.errors import UntrustedFileError

#: mode bits that let someone else write
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
#: what to do with results of another user that d4p-hpc refuses to load
COPY = "copy the results you trust into a directory of your own"


def open_private(path: str | os.PathLike, what: str, *, root: str | os.PathLike | None = None) -> BinaryIO:
    """``path`` opened for reading (binary) after the trust check; :class:`UntrustedFileError` if
    it fails. ``what`` names the file in the message (``checkpoint part``); ``root`` is the results
    directory, by default ``path``'s great-grandparent (see the module docstring). A missing file
    raises :class:`FileNotFoundError`, as :func:`open` does."""
    path = Path(os.path.abspath(path))  # not resolved: links above the results directory are allowed
    top = path.parents[2] if root is None else Path(os.path.abspath(root))
    names = path.relative_to(top).parts
    # the results directory itself may be reached through a link (a successor job's id): its
    # target is what is checked
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _check(fd, top, path, what)
        here = top
        for name in names[:-1]:
            here = here / name
            step = _open_below(fd, name, os.O_DIRECTORY, here, path, what)
            os.close(fd)
            fd = step
            _check(fd, here, path, what)
        found = _open_below(fd, names[-1], os.O_NONBLOCK, path, path, what)  # a FIFO must not block us
    finally:
        os.close(fd)
    try:
        _check(found, path, path, what)
        os.set_blocking(found, True)
        return os.fdopen(found, "rb")
    except BaseException:
        os.close(found)
        raise


def require_checkpoint_dir(results: str | os.PathLike) -> None:
    """Refuse (:class:`UntrustedFileError`, one line, exit code 2) a new run that would take
    checkpoints in ``results`` when :func:`open_private` would refuse to load them: the directory
    exists and is another user's, or is writable by group or others. A directory that does not
    exist yet passes: the run creates it 0700.

    Checked before the run starts, not at its first checkpoint: a run that takes checkpoints reads
    them back (the first one, to complete it), and a checkpoint it could not load would end the
    run after it had worked for nothing. The rule is not relaxed for the run's own directory:
    anyone who may write the results directory may replace ``checkpoints/`` in it, so the files
    below it are only as safe as the directory itself. What to do instead goes with the refusal:
    a private directory below the shared one (``--results DIR/run``, created 0700), or
    ``chmod go-w`` if nobody else should write it. (A resume needs no such check: the checkpoint
    it continues from is loaded, through :func:`open_private`, before anything runs.)
    """
    results = Path(os.path.abspath(results))
    try:
        st = os.stat(results)  # the results directory may be reached through a link, as in open_private
    except OSError:
        return  # missing (it is created private), or it cannot be read: the run's own checks say so
    if not stat.S_ISDIR(st.st_mode):
        return
    mode = f"mode {stat.S_IMODE(st.st_mode):04o}"
    mine = st.st_uid == os.geteuid()
    if not mine:
        why = f"is a directory of user {_user(st.st_uid)} ({mode})"
    elif st.st_mode & _OTHERS_WRITE:
        who = " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit)
        why = f"is writable by {who} ({mode})"
    else:
        return
    chmod = f", or chmod go-w {results} (share results read-only: chmod -R g+rX)" if mine else ""
    raise UntrustedFileError(f"refusing to take checkpoints in {results}: it {why}, so another user could replace "
                             "them, and d4p-hpc never loads a checkpoint another user could have written; give a "
                             f"results directory only you can write, e.g. --results {results / 'run'} (d4p-hpc "
                             f"creates it private){chmod}", why)


def require_private(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`UntrustedFileError` unless ``path`` passes the trust check; read the file
    through :func:`open_private` instead where you can (one check for what is read)."""
    open_private(path, what).close()


def open_checked(path: str | os.PathLike, what: str) -> tuple[BinaryIO, UntrustedFileError | None]:
    """``path`` opened for reading, with why it fails the trust check (None: it passes), for a
    reader that reads the files of others as plain data only (:class:`DataUnpickler`)."""
    try:
        return open_private(path, what), None
    except UntrustedFileError as refused:
        try:
            return open_regular(path, what), refused
        except (OSError, UntrustedFileError):
            raise refused from None


def open_regular(path: str | os.PathLike, what: str) -> BinaryIO:
    """``path`` opened for reading if it is a regular file and not a link (a FIFO would block a
    reader, a link may lead anywhere), whoever wrote it: for what is read as data only."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused(what, path, "is a symbolic link", "move it away") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _refused(what, path, f"is not a regular file (mode {stat.S_IMODE(mode):04o})", "move it away")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_below(fd: int, name: str, flags: int, where: Path, path: Path, what: str) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | flags, dir_fd=fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        why = ("is a symbolic link" if where == path else f"is reached through the symbolic link {where}") \
            if Path(where).is_symlink() else f"is below {where}, which is not a directory"
        raise _refused(what, path, why, f"d4p-hpc follows no link below a results directory: {COPY}") from None


def _check(fd: int, where: Path, path: Path, what: str) -> None:
    st = os.fstat(fd)
    mode = f"mode {stat.S_IMODE(st.st_mode):04o}"
    if where == path and not stat.S_ISREG(st.st_mode):
        raise _refused(what, path, f"is not a regular file ({mode})", "move it away")
    if st.st_uid != os.geteuid():
        why = f"was written by user {_user(st.st_uid)} ({mode})" if where == path \
            else f"is in {where}, a directory of user {_user(st.st_uid)} ({mode})"
        raise _refused(what, path, why, f"d4p-hpc never unpickles a file another user could have written: {COPY}")
    if st.st_mode & _OTHERS_WRITE:
        who = " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit)
        writable = f"writable by {who} ({mode}, owner {_user(st.st_uid)})"
        why = f"is {writable}" if where == path else f"is in {where}, which is {writable}"
        raise _refused(what, path, why, f"another user could have written it: if nobody did, chmod go-w {where} "
                       f"(share results read-only: chmod -R g+rX), else {COPY}")


def _refused(what: str, path: Path, why: str, advice: str) -> UntrustedFileError:
    return UntrustedFileError(f"refusing to load {what} {path}: it {why}; {advice}", why)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


# --- pickles read as data ------------------------------------------------------------------------
#: the only classes a pickle read as data may name: plain data that takes no code to build
DATA_CLASSES = frozenset({"complex", "set", "frozenset", "bytearray"})


class NotData(pickle.UnpicklingError):
    """A pickle read as data names a class or function (``what``); nothing of it was called."""

    def __init__(self, what: str) -> None:
        super().__init__(f"it names {what}, which is not plain data")
        self.what = what


class DataUnpickler(pickle.Unpickler):
    """Builds only plain data: None, bool, int, float, complex, str, bytes, bytearray, list, tuple,
    dict, set, frozenset. Any other class or function a pickle names (the way a pickle runs code) raises
    :class:`NotData` before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        # protocols 0 to 2 name the builtins module __builtin__
        if module in ("builtins", "__builtin__") and name in DATA_CLASSES:
            return getattr(builtins, name)
        raise NotData(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise NotData("a persistent id")


#: the argument of an opcode that is not of a fixed size: lines (one, two), or a little-endian
#: length prefix of 1, 4 or 8 bytes (signed for BINSTRING and LONG4)
_LINE, _TWO_LINES = -1, -2
_PREFIX = {"bytes1": 1, "string1": 1, "long1": 1, "unicodestring1": 1, "bytes4": 4, "string4": 4, "long4": 4,
           "unicodestring4": 4, "bytes8": 8, "bytearray8": 8, "unicodestring8": 8}
_SIGNED = {"string4", "long4"}


@functools.cache
def _opcodes() -> tuple[dict[int, int], frozenset[int]]:
    """Per opcode, the size of its argument (>= 0), :data:`_LINE`, :data:`_TWO_LINES` or
    -(10 + the size of its length prefix); and the opcodes whose length prefix is signed.
    (pickletools is imported here, when a part is counted: not by every command.)"""
    import pickletools

    def size(arg: pickletools.ArgumentDescriptor | None) -> int:
        if arg is None:
            return 0
        if arg.n >= 0:
            return arg.n
        if arg.n == pickletools.UP_TO_NEWLINE:
            return _TWO_LINES if arg is pickletools.stringnl_noescape_pair else _LINE
        return -(10 + _PREFIX[arg.name])

    return ({ord(op.code): size(op.arg) for op in pickletools.opcodes},
            frozenset(ord(op.code) for op in pickletools.opcodes if op.arg and op.arg.name in _SIGNED))


_STOP = ord(pickle.STOP)
_CHUNK = 1 << 20


def scan_pickles(fh: BinaryIO, start: int = 0) -> tuple[int, int]:
    """How many whole pickles ``fh`` holds from ``start`` on, one after the other, and where the
    last of them ends. Nothing is built, nothing imported: the opcodes are walked (their arguments
    skipped, so a frame is walked through), and the walk stops at the end or at the first byte
    that is not a whole opcode (a part cut short, or not a pickle; a protocol 0 line longer than
    :data:`_CHUNK`). The file is read a chunk at a time, never mapped: a part cut back while it is
    read ends the walk, not the process."""
    arguments, signed = _opcodes()
    size = os.fstat(fh.fileno()).st_size
    count, end, at = 0, start, start
    buffer, base = b"", start
    while at < size:
        i = at - base
        if i + 9 > len(buffer):  # an opcode and the longest length prefix
            fh.seek(at)
            buffer, base, i = fh.read(_CHUNK), at, 0
            if not buffer:
                break
        code = buffer[i]
        argument = arguments.get(code)
        if argument is None:
            break
        if argument >= 0:
            at += 1 + argument
        elif argument >= _TWO_LINES:
            for _ in range(-argument):
                newline = buffer.find(b"\n", at + 1 - base)
                if newline < 0:
                    fh.seek(at)
                    buffer, base = fh.read(_CHUNK), at
                    newline = buffer.find(b"\n", 1)
                if newline < 0:
                    return count, end
                at = base + newline
            at += 1
        else:
            width = -argument - 10
            length = int.from_bytes(buffer[i + 1:i + 1 + width], "little", signed=code in signed)
            if length < 0:
                break
            at += 1 + width + length
        if at > size:
            break
        if code == _STOP:
            count, end = count + 1, at
    return count, end
