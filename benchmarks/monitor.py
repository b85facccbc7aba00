"""Watch the memory of a benchmark run: peak RSS of each of its processes, Redis memory.

The benchmark makes itself a child subreaper, so processes of a run that outlive their
parent (daemons, orphaned workers) are re-parented to it and stay visible as its
descendants.  ``Monitor`` samples every descendant except the ones it is told to ignore,
and also tells when they have stopped using CPU: a hung run.
"""
import ctypes
import os
import socket
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# a run whose processes use less CPU than this in a while is waiting, not working
STALL_CPU_SECONDS = 0.5


def become_subreaper():
    """Make orphaned descendants of this process its children instead of init's."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def stat_fields(pid):
    """The fields of ``/proc/PID/stat`` after the command name (state first), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # the command name in brackets may hold spaces: the fields after it are fixed
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(fields):
    """User + system CPU seconds in ``stat_fields`` (all threads)."""
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def scan():
    """Return ``pid -> (parent pid, CPU seconds used)`` for every process.

    The kernel here has no ``/proc/PID/task/TID/children``, so the tree is rebuilt from
    the ``stat`` file of every process (about 1 ms for a hundred processes).
    """
    processes = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(entry)) is not None:
            processes[int(entry)] = (int(fields[1]), cpu_seconds(fields))
    return processes


def descendants(root, processes):
    """Return the pids of every descendant of ``root`` in a ``scan()``."""
    children = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def read_status(pid):
    """Return ``(name, peak RSS in kB)`` of a process, or None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        return None
    if "VmHWM" not in fields:
        return None
    return fields["Name"].strip(), int(fields["VmHWM"].split()[0])


def redis_info_memory(host, port, password=None, timeout=1.0):
    """Return Redis ``INFO memory`` as a dict of strings, spoken in plain RESP.

    A raw socket keeps the benchmark free of a Redis client dependency.
    """

    def command(*words):
        parts = [f"*{len(words)}\r\n".encode()]
        for word in words:
            data = str(word).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(parts)

    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall((command("AUTH", password) if password else b"") + command("INFO", "memory"))
        reply = sock.makefile("rb")
        if password and not reply.readline().startswith(b"+"):
            raise ConnectionError(f"Redis at {host}:{port} refused the password")
        header = reply.readline()
        if not header.startswith(b"$"):
            raise ConnectionError(f"Redis at {host}:{port} answered {header!r}")
        body = reply.read(int(header[1:]))
    return dict(
        line.split(":", 1) for line in body.decode().splitlines() if ":" in line
    )


class Monitor(threading.Thread):
    """Sample the run's processes (and Redis) until ``stop()`` is called.

    Parameters
    ----------
    ignore : set of int
        Pids that are this benchmark's own helpers (e.g. a Redis server it started for the
        reference), not part of the run.
    redis : callable, optional
        Returns ``(host, port, password)`` of the run's Redis, or None while it is not known
        yet; its peak ``used_memory`` is then recorded too.
    interval : float
        Seconds between samples of the process tree.

    Attributes
    ----------
    peaks : dict
        ``pid -> (name, peak RSS in kB)`` for every process seen.
    redis_peak : int or None
        Highest Redis ``used_memory_peak`` seen, in bytes.
    """

    def __init__(self, ignore=(), redis=None, interval=0.05):
        super().__init__(daemon=True)
        self.ignore, self.redis, self.interval = set(ignore), redis, interval
        self.peaks, self.redis_peak = {}, None
        self._cpu = {}  # pid -> CPU seconds, also of processes that have ended
        self._progress = (0.0, time.monotonic())  # CPU total at the last progress, and when
        self._stopped = threading.Event()

    def run(self):
        tick = 0
        while True:
            self.sample_processes()
            # Redis keeps its own peak, so a sample every few ticks loses nothing
            if self.redis and tick % 4 == 0:
                self.sample_redis()
            tick += 1
            if self._stopped.wait(self.interval):
                return

    def stop(self):
        """Take a last sample and end the thread."""
        self._stopped.set()
        self.join()
        self.sample_processes()

    def run_pids(self, processes=None):
        """Return the pids of the run's live processes."""
        processes = processes or scan()
        return [pid for pid in descendants(os.getpid(), processes) if pid not in self.ignore]

    def sample_processes(self):
        processes = scan()
        for pid in self.run_pids(processes):
            self._cpu[pid] = processes[pid][1]
            status = read_status(pid)
            if status:
                name, peak = status
                self.peaks[pid] = (name, max(peak, self.peaks.get(pid, (name, 0))[1]))
        total = sum(self._cpu.values())
        if total >= self._progress[0] + STALL_CPU_SECONDS:
            self._progress = (total, time.monotonic())

    def idle_seconds(self):
        """Seconds since the run's processes last used ``STALL_CPU_SECONDS`` of CPU."""
        return time.monotonic() - self._progress[1]

    def sample_redis(self):
        address = self.redis()
        if not address:
            return
        try:
            info = redis_info_memory(*address)
        except (OSError, ValueError):
            return  # not up yet, or already stopped at the end of the run
        self.redis_peak = max(self.redis_peak or 0, int(info["used_memory_peak"]))
