"""Whether the process that recorded a run is still that run: host, pid and start time.

A pid alone is not enough: after the run dies the kernel hands the number to the
next process. ``token(pid)`` is the boot id and the process's start time, which
no later process on the same host can share. Only the host that ran a process
can check it; elsewhere the answer is None ("cannot tell from here").
"""

from __future__ import annotations

import os


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
