"""Processes as ``/proc`` tells of them: whether a recorded one still runs, and how much memory this one holds.

Every read of ``/proc`` is here. A pid alone is not enough to tell that a process still
runs: after it dies the kernel hands the number to the next process. ``token(pid)`` is the
boot id and the process's start time, which no later process on the same host can share.
Only the host that ran a process can check it; elsewhere the answer is None ("cannot tell
from here").
"""

from __future__ import annotations

import glob
import os
import resource
from collections.abc import Mapping
from typing import Any

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def host() -> str:
    """This host's name, as runs record it."""
    return os.uname().nodename


def token(pid: int) -> str | None:
    """``<boot id>:<start time in clock ticks>`` of process ``pid``, or None if it does not exist."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        with open(f"/proc/{pid}/stat") as fh:
            # the command name (field 2) may hold spaces and parentheses: count from its end
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):  # killed, and only waiting for its parent to reap it
        return None
    return f"{boot}:{fields[19]}"


def alive(recorded_host: str | None, pid: int | None, recorded_token: str | None) -> bool | None:
    """Whether the recorded process still runs: True, False, or None when this host cannot tell."""
    if not pid or recorded_host != host():
        return None
    now = token(pid)
    if now is None:
        return False
    return recorded_token is None or now == recorded_token


def run_alive(record: Mapping[str, Any]) -> bool | None:
    """Whether the process that wrote a run record (``run.json``: host, pid, pid_token) still runs."""
    return alive(record.get("host"), record.get("pid"), record.get("pid_token"))


def session_alive(record: Mapping[str, Any]) -> bool:
    """Whether a process of the session that the recorded process led (a local job's script, started in
    a session of its own) still runs here: its script may have been killed while its run goes on.
    (A session's id is never given to a new process while the session has members.)"""
    sid = record.get("pid")
    if not sid or record.get("host") != host():
        return False
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and fields[3] == str(sid) and fields[0] not in ("Z", "X"):
            return True
    return False


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return round(int(fh.read().split()[1]) * _PAGE_MB, 1)
    except (OSError, IndexError, ValueError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MB. Linux keeps ``ru_maxrss`` across ``exec``, so a run
    started from a big process (pytest, a Jupyter kernel) would report that one's peak; ``VmHWM``
    is this program's own."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
