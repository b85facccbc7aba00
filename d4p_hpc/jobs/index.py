"""The user's index of submitted jobs: a job id -> its results directory, so that every command and
:func:`d4p_hpc.attach` find a job by its id alone, whatever results root it was submitted with (as
``nextflow log`` does).

One small file per job in ``$XDG_STATE_HOME/d4p-hpc/jobs/`` (usually ``~/.local/state``), named
``<id>@<digest of the directory>`` and holding the directory: two submits at once never write the
same file, and a resumed job (a new id, the same directory) adds its own. The folder is the
user's alone (0700). An entry whose directory is gone is skipped, and kept (a scratch file
system may be mounted again), and the lookup says where the job was.
The index is a convenience that is never trusted beyond a path: what a job is, is read from its
directory, as for a directory given by hand; a lost index loses nothing but the lookup.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
from stat import S_ISREG

from d4p_hpc.results import Layout, make_private_dir, write_bytes


def folder(environ: os._Environ | dict | None = None) -> Path:
    """Where the entries are (``$XDG_STATE_HOME`` is used only when absolute, as the XDG rule says)."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or ""
    if not os.path.isabs(base):
        base = os.path.join(environ.get("HOME") or str(Path.home()), ".local", "state")
    return Path(base) / "d4p-hpc" / "jobs"


def _entry(job_id: str, directory: Path) -> Path:
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    return folder() / f"{_safe(job_id)}@{digest}"


def _safe(job_id: str) -> str:
    """A job id as a file name (PBS ids hold dots and brackets; none holds a slash, but never trust it)."""
    return job_id.replace("/", "%2F").replace("\0", "")


def record(job_id: str, directory: str | os.PathLike) -> str | None:
    """Add ``job_id`` -> ``directory``; None, or why it could not be added (the job is submitted
    whatever the index says: it is then found by its directory or results root)."""
    directory = Path(directory).resolve()
    try:
        make_private_dir(folder())
        found = folder().stat()
        if found.st_uid == os.getuid() and found.st_mode & 0o077:  # made open by hand: the index is yours alone
            folder().chmod(0o700)
        write_bytes(_entry(job_id, directory), str(directory).encode())
    except OSError as exc:
        return f"could not add job {job_id} to the index of your jobs in {folder()}: {exc.strerror or exc}"
    return None


def lookup(job_id: str) -> tuple[list[Path], list[Path]]:
    """The results directories recorded for ``job_id``: those that exist, and those that are gone
    (deleted, or on a file system not mounted here now: an entry is never removed for that).

    An entry is followed only if it is a plain file of the user's own (never a link: anyone who
    can write the folder could plant one), and only to a directory that holds that job
    (:func:`holds`), so a planted or stale entry can never name another job."""
    found: list[Path] = []
    gone: list[Path] = []
    try:
        entries = sorted(folder().glob(f"{glob.escape(_safe(job_id))}@*"))
    except OSError:
        return found, gone
    for entry in entries:
        try:
            stat = entry.lstat()
            if not S_ISREG(stat.st_mode) or stat.st_uid != os.getuid():
                continue
            directory = Path(entry.read_text())
        except (OSError, ValueError):
            continue
        if not directory.is_absolute():
            continue
        if not directory.is_dir():
            gone.append(directory)
        elif holds(directory, job_id):
            found.append(directory)
    return found, gone


def holds(directory: Path, job_id: str) -> bool:
    """Whether ``directory`` is the results directory of job ``job_id``: named for it, or a run it
    continued (the job id of one of its segments, or its current one)."""
    if directory.name == job_id or directory.name.endswith(f"-{job_id}"):  # (a run: its name is its id)
        return True
    layout = Layout(directory)
    for submitted in (layout.marker(Layout.SUBMITTED), *layout.segments.glob(f"*/{Layout.SUBMITTED}")):
        try:
            if json.loads(submitted.read_text()).get("job_id") == job_id:
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False
