"""What limits the Redis mappings at scale, on this machine: the broker's cost per item.

For ``dyn_redis`` and ``hybrid_redis`` at several worker counts (default 8, 32 and 128), one
``d4p-hpc run`` of the light graph (``benchmarks/graphs/light.py``: ``Numbers -> Light -> Tag ->
Report`` for dyn_redis, ``graph_stateless``; ``Numbers -> Light -> Tally -> Report`` with the
grouped, stateful ``Tally`` for hybrid_redis, ``graph``), the same ``-i`` for every worker count,
and one markdown table:

- items/s: items fed to the root (``-i``), each of which goes through the whole graph, over
  ``metrics.json`` ``wall_seconds`` (the run's own clock, worker start-up included);
- Redis CPU µs per item: the redis-server's user + system CPU (``INFO cpu``, ``getrusage`` of
  the server process) from just before the run to just after it, over the items; and the same
  as a share of one core over the run's wall time (near 100 %: Redis is the bottleneck);
- commits per item: the Lua script calls (``EVALSHA`` + ``EVAL``; all but a few per run are
  COMMIT, one per unit a worker finishes and per batch the driver sends) over the items, and in
  brackets its inverse, items per commit; Redis CPU µs per commit, and in brackets the time spent
  inside the script (``INFO commandstats``, ``usec`` of the script calls): the rest is reading,
  parsing and answering the requests;
- Redis commands per item: ``total_commands_processed`` delta over the items, which counts the
  commands a Lua script calls as well as the script call itself (``--json`` has them by name);
  bytes per item: ``total_net_input_bytes`` + ``total_net_output_bytes`` delta over the items;
- driver and workers CPU µs per item: the CPU seconds each process reports in the last sample
  of its ``timeseries/<process>.jsonl`` (``time.process_time()`` since it began sampling, at the
  start of the run; the final sample is written as the process ends), process 0 (the driver,
  which runs the root) and the sum over the workers;
- connections: the peak of Redis ``connected_clients`` (sampled every 0.1 s, less the clients
  connected before anything of the run started: this script's own two) and the ``maxclients``
  Redis took; and, from ``/proc`` twice a second, the TCP connections to Redis' port held by the
  driver, by each worker and by the relay (most seen; a socket a worker inherited from the driver
  by the fork is the driver's connection, not counted again).

Under the table, a projection per mapping (stated assumptions: one core for Redis, its cost
linear in items, as measured at the largest worker count), and the ratio of Redis µs per item
at the largest worker count to that at the smallest, measured side by side in this invocation
(a ratio, not an absolute time, is what compares across machines).

**Modes** (``--modes``, default ``direct``; the ``mode`` column):

- ``direct``: the workers ``d4p-hpc run -n N`` forks itself; each connects to Redis directly
  (:data:`~d4p_hpc.mappings.WORKER_CONNECTIONS` connections each);
- ``relay``: a job's way. The script writes the connection file of its Redis
  (``write_connection_file``, as ``python -m d4p_hpc.mappings.redis.server`` does) into the results
  folder, starts N external workers as a job script does (``python -m d4p_hpc.mappings.redis.worker
  --connection DIR/redis.json``, each in a session of its own), which reach Redis through this
  host's relay (``mappings/redis/relay.py``: started by the first of them,
  :data:`~d4p_hpc.mappings.RELAY_CONNECTIONS` connections whatever N), waits until every worker
  holds its socket to the relay and a single relay runs (the worker that takes the node's relay lock
  starts it, the others wait while the lock is held), then starts the driver, ``d4p-hpc run ...
  --redis-connection DIR/redis.json --external-workers``. The workers' start-up (interpreter,
  imports) is thus out of ``wall_seconds``, as a fork's is in ``direct``; each worker's loading of
  the graph, after the run is announced, is in it (a forked worker inherits the driver's). Redis's
  counters are read after the workers and the relay have exited. Columns of this mode only: relay
  CPU µs/item, the relay's user + system CPU over the run (``/proc/PID/stat`` just before the driver
  starts, and the ``wait4`` rusage of its exit: the script is a child subreaper, so the relay,
  orphaned when the worker that started it exits, is its child), over the items; ``--json`` also has
  its context switches (wake-ups, all threads) per item, its most threads, how many relay processes
  were seen while the workers started (``relays_seen``: 1 since ``b105874``; before it, each worker
  that found no relay started one, and all but one left on its lock) and how long they took
  (``settle_seconds``). The workers' column stays the sum of their time series, so that it compares
  with ``direct``; the relay is not in it.

When more than one mode is measured, every run holds ``/tmp/heavy.lock``, whatever its size: the
rows compared must not see different loads.

Both modes of a worker count get a Redis of the same ``maxclients`` (``direct``'s need), so the
column shows it; a job's relay mode asks ``connections(N, nodes)``: 5 per node + 16.

**Which Redis.** This script starts its own ``redis-server`` for every run (random password,
127.0.0.1 and a free port, in a temporary folder it deletes) and passes it with ``--redis
redis://127.0.0.1:PORT`` (the password in ``$D4P_HPC_REDIS_PASSWORD``, off the command line).
It is configured line for line as the per-job Redis (``mappings/redis/server.py``: requirepass,
protected-mode, no saving, one database, ``maxclients`` = 3 per worker + 16 from
``d4p_hpc.mappings.connections``). Its life is ours, so the counters are read exactly before the
run starts and after it has ended; the per-job Redis stops with the run, and a poll of it would
miss the run's last commits. What differs from a per-job Redis: the run does not start a server
(start-up is not in ``wall_seconds`` either way), and at the end the driver deletes the run's
keys (``forget``: a SCAN and a few DELs), a few commands per run, not per item.

**Load.** A measurement with more than 16 workers holds an exclusive ``flock`` on
``/tmp/heavy.lock`` (shared with other heavy experiments on the machine) for its run: it waits
for it. Every run has a timeout, runs in its own session and is killed with it.

It asserts nothing beyond that each run COMPLETED with every item through (the counts of
``metrics.json``); it prints the load average before and after::

    python benchmarks/scale.py                         # dyn_redis and hybrid_redis at 8, 32, 128 workers
    python benchmarks/scale.py --workers 8,64 --items 100000 --json scale.json
    python benchmarks/scale.py --quick                 # 4 and 16 workers, 40,000 items: a smoke test
    python benchmarks/scale.py --workers 8,32,128 --items 100000 --modes direct,relay --mappings dyn_redis
    python benchmarks/scale.py --workers 8,32 --items 128000 --mappings dyn_redis --work-ms 1 --fan 1000 \
        --unit-seconds=-,0.4,4         # the units a larger pool gets ("-": the pool's own), side by side

``--unit-seconds`` runs each count once per value of ``D4P_HPC_UNIT_SECONDS`` (the work an entry of
quick tasks is filled to; a pool of W > 33 workers gets W x 1.5 ms): Redis's cost per item with the
units of a pool this machine cannot hold, printed as ratios to the pool's own and as the workers one
Redis core would feed at that cost. ``--work-ms`` makes ``Light`` sleep that long per item; ``--fan K``
runs ``graph_fanout`` (dyn_redis) and ``graph_fanout_grouped`` (hybrid_redis), each root item becoming K
items for ``Light`` (``--items`` counts those), so that the workers, not the driver, queue most tasks.
"""
import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import redis

from d4p_hpc.mappings import REDIS_WORKER, RELAY_CONNECTIONS, WORKER_CONNECTIONS, connections
from d4p_hpc.mappings.dynamic.tasks import COMMIT_SECONDS
from d4p_hpc.mappings.redis.conn import Connection, read_connection_file, write_connection_file
from d4p_hpc.mappings.redis.relay import socket_path
from d4p_hpc.results import Layout
from d4p_hpc.supervisor import SAFE_MODULE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from monitor import become_subreaper, cpu_seconds, descendants, scan, stat_fields  # noqa: E402

HERE = Path(__file__).resolve().parent
LIGHT = HERE / "graphs" / "light.py"
KEYS = 100  # light.KEYS: what Tally emits in postprocess
#: graph variable per mapping; dyn_redis refuses the stateful Tally
ATTR = {"dyn_redis": "graph_stateless", "hybrid_redis": "graph"}
FAN_ATTR = {"dyn_redis": "graph_fanout", "hybrid_redis": "graph_fanout_grouped"}
LOCK = "/tmp/heavy.lock"
HEAVY = 16
CLIENT_EVERY = 0.1
SOCKET_EVERY = 0.5
MODES = ("direct", "relay")
RELAY_MODULE = "d4p_hpc.mappings.redis.relay"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OwnRedis:
    """A redis-server configured as the per-job one, for ``workers`` workers; ours to read and stop."""

    def __init__(self, workers: int) -> None:
        self.clients = connections(workers)
        self.password = secrets.token_urlsafe(32)
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="d4p-scale-redis-"))
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "OwnRedis":
        lines = ["bind 127.0.0.1", f"port {self.port}", f"requirepass {self.password}", "protected-mode yes",
                 'save ""', "appendonly no", f'dir "{self.folder}"', f'logfile "{self.folder / "redis.log"}"',
                 "daemonize no", "databases 1", f"maxclients {self.clients}"]
        try:
            self.process = subprocess.Popen(["redis-server", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)
            with self.process.stdin:
                self.process.stdin.write(("\n".join(lines) + "\n").encode())
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError), self.client() as probe:
                    probe.ping()
                    return self
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start: {(self.folder / 'redis.log').read_text()[-500:]}")
                time.sleep(0.05)
        except BaseException:
            self.__exit__()
            raise

    def client(self) -> redis.Redis:
        return redis.Redis("127.0.0.1", self.port, password=self.password, socket_timeout=10)

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(redis.RedisError), self.client() as client:
                client.shutdown(nosave=True)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def counters(client: redis.Redis) -> dict:
    """The cumulative counters the table is made of."""
    info = client.info("everything")
    stats = {name[len("cmdstat_"):]: (value["calls"], value["usec"]) for name, value in info.items()
             if name.startswith("cmdstat_")}
    return {"cpu": info["used_cpu_user"] + info["used_cpu_sys"],
            "cpu_main": info.get("used_cpu_user_main_thread", 0) + info.get("used_cpu_sys_main_thread", 0),
            "commands": info["total_commands_processed"],
            "bytes": info["total_net_input_bytes"] + info["total_net_output_bytes"],
            "calls": stats, "used_memory_peak": info["used_memory_peak"]}


def redis_sockets(port: int) -> set[int]:
    """Inodes of the TCP sockets connected to 127.0.0.1:``port`` (the client ends)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # ESTABLISHED
                    inodes.add(int(fields[9]))
    return inodes


def held(pid: int, inodes: set[int]) -> set[int]:
    """Which of ``inodes`` process ``pid`` holds open."""
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError, ValueError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                    found.add(int(link[8:-1]))
    return found


def relays(connection: Path) -> list[int]:
    """Pids of the relays started for connection file ``connection`` (their command line names both)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if RELAY_MODULE.encode() in args and str(connection).encode() in args:
                    found.append(int(entry))
    return found


def started_at(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot): tells it from a later process or thread
    given the same number (pids wrap at 32,768 here, and a thread's id opens ``/proc/ID`` too)."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), None if it is gone."""
    fields = stat_fields(pid)
    return cpu_seconds(fields) if fields else None


def proc_switches(pid: int) -> tuple[int, int]:
    """Context switches of process ``pid`` so far, summed over its threads, and its thread count."""
    total = threads = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as fh:
                threads += 1
                for line in fh:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
    return total, threads


def socket_count(pid: int) -> int:
    """How many sockets process ``pid`` holds open (of any kind)."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")
    return count


class Watch(threading.Thread):
    """Samples ``connected_clients`` and, less often, which process of the run holds which connections.

    Started before anything of the run: its first ``connected_clients`` (this script's connections)
    is the baseline taken off the peak. The driver's pid is given once it runs (``root``); the
    workers are its descendants, or, in relay mode, the external workers' pids (``workers``, counted
    even with no connection of their own) and the relay's (``relay``).

    A worker forked by the driver inherits the driver's open sockets (redis-py makes new connections
    after a fork and leaves the old descriptors open): those are one connection each, the driver's,
    and are counted apart (``inherited``)."""

    def __init__(self, server: OwnRedis) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.root: int | None = None
        self.workers: dict[int, int | None] | None = None  # external workers: pid -> started_at
        self.relay: int | None = None
        self.relay_started: int | None = None
        self.stopped = threading.Event()
        self.ready = threading.Event()
        self.baseline: int | None = None
        self.clients_peak = 0
        self.driver = 0
        self.own: dict[int, int] = {}  # worker pid -> most connections of its own seen
        self.inherited: dict[int, int] = {}  # worker pid -> most of the driver's sockets seen open
        self.relay_connections = 0
        self.relay_threads = 0
        self.relay_cpu: float | None = None  # the last seen

    def run(self) -> None:
        next_sockets = 0.0
        try:
            with self.server.client() as client:
                self.baseline = client.info("clients")["connected_clients"]
                self.ready.set()
                while not self.stopped.is_set():
                    with contextlib.suppress(redis.RedisError):
                        clients = client.info("clients")["connected_clients"]
                        self.clients_peak = max(self.clients_peak, clients - self.baseline)
                    if time.monotonic() >= next_sockets:
                        next_sockets = time.monotonic() + SOCKET_EVERY
                        self.sockets()
                    self.stopped.wait(CLIENT_EVERY)
        finally:
            self.ready.set()

    def sockets(self) -> None:
        inodes = redis_sockets(self.server.port)
        root = self.root
        driver = held(root, inodes) if root is not None else set()
        self.driver = max(self.driver, len(driver))
        external = self.workers is not None
        pids = list(self.workers) if external else descendants(root, scan()) if root is not None else []
        for pid in pids:
            if external and started_at(pid) != self.workers[pid]:
                continue  # exited: the number may be another process's, or thread's, by now
            mine = held(pid, inodes)
            if mine or external:
                self.own[pid] = max(self.own.get(pid, 0), len(mine - driver))
                self.inherited[pid] = max(self.inherited.get(pid, 0), len(mine & driver))
        if self.relay is not None and started_at(self.relay) == self.relay_started:
            self.relay_connections = max(self.relay_connections, len(held(self.relay, inodes)))
            self.relay_threads = max(self.relay_threads, proc_switches(self.relay)[1])
            cpu = proc_cpu(self.relay)
            if cpu is not None:
                self.relay_cpu = cpu


@contextlib.contextmanager
def heavy_lock(workers: int, always: bool = False):
    """Hold /tmp/heavy.lock (as ``flock /tmp/heavy.lock``) for a measurement of more than 16 workers,
    or for every one (``always``: modes compared side by side, which the load must not tilt)."""
    if workers <= HEAVY and not always:
        yield
        return
    with open(LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"  waiting for {LOCK} ...", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def process_cpu(results: Path) -> dict[int, float]:
    """CPU seconds of every process of the run: the last sample of its time series."""
    cpu = {}
    for path in (results / "timeseries").glob("*.jsonl"):
        last = None
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if "cpu" in record:
                    last = record
        if last is not None:
            cpu[int(path.stem)] = last["cpu"]
    return cpu


def check(metrics: dict, mapping: str, items: int, fan: int = 0) -> str:
    """"ok" when every item went through the graph, else what is wrong."""
    pes = metrics["pes"]
    want = {"Numbers": ("items_out", items // (fan or 1)), "Light": ("items_in", items)}
    if fan:
        want.update(Fan=("items_in", items // fan))
    if mapping == "hybrid_redis":
        want.update(Tally=("items_in", items), Report=("items_in", KEYS))
    else:
        want.update(Tag=("items_in", items), Report=("items_in", items))
    wrong = [f"{pe} {what} {pes[pe][what]} (not {n})" for pe, (what, n) in want.items() if pes[pe][what] != n]
    return "ok" if not wrong else "wrong count: " + ", ".join(wrong)


def settle(procs: list[subprocess.Popen], connection: Path, watch: Watch, deadline: float,
           seen: set[int]) -> str | None:
    """Wait until every external worker holds a socket (to the relay: its only one before a run) and
    one relay is left; None, or what went wrong. ``seen``: every relay process seen meanwhile (one,
    unless more than one starts: before ``b105874`` all but one left at once, on its lock)."""
    while True:
        dead = [p for p in procs if p.poll() is not None]
        found = relays(connection)
        seen.update(found)
        if dead:
            return f"a worker exited ({dead[0].returncode}) before the run"
        if len(found) == 1 and all(socket_count(p.pid) for p in procs):
            watch.relay_started = started_at(found[0])
            watch.relay = found[0]
            return None
        if time.monotonic() > deadline:
            return f"timeout: workers not connected to one relay ({len(found)} relays)"
        time.sleep(0.2)


def reap(pid: int, deadline: float):
    """The exit code and rusage of process ``pid``, once it has exited and is ours to reap (None if
    not by ``deadline``): the relay is a child of the worker that started it until that worker exits,
    then of this subreaper."""
    while True:
        try:
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got == pid:
                return os.waitstatus_to_exitcode(status), usage
        except ChildProcessError:
            if not os.path.exists(f"/proc/{pid}"):
                return None  # reaped by another
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def reap_orphans(keep: set[int]) -> None:
    """Reap the exited processes re-parented to this subreaper (a relay that found another one's
    lock, if any), other than ``keep``."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid in keep:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)


def kill_groups(groups: list[int]) -> None:
    for group in groups:  # nothing of the run may outlive it (the relay is in its starter's group)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


def measure(mapping: str, workers: int, items: int, timeout: float, tmp: Path, mode: str = "direct",
            unit: float | None = None, work_ms: float = 0.0, fan: int = 0) -> dict:
    """One run; returns its row."""
    results = tmp / f"{mapping}-{mode}-{workers}-{unit}"
    d4p = str(Path(sys.executable).parent / "d4p-hpc")
    relay = mode == "relay"
    key = {"mapping": mapping, "mode": mode, "workers": workers, "items": items, "unit_seconds": unit,
           "work_ms": work_ms, "fan": fan}
    deadline = time.monotonic() + timeout
    with OwnRedis(workers) as server, server.client() as client, contextlib.ExitStack() as stack:
        maxclients = int(client.config_get("maxclients")["maxclients"])
        env = {**os.environ, "D4P_HPC_REDIS_PASSWORD": server.password,
               "D4P_HPC_MAX_PROCESSES": str(max(workers, int(os.environ.get("D4P_HPC_MAX_PROCESSES", "0") or 0)))}
        env.pop("D4P_HPC_SAMPLE_SECONDS", None)  # the CPU seconds come from the samples
        env.pop("D4P_HPC_UNIT_SECONDS", None)
        if unit:
            env["D4P_HPC_UNIT_SECONDS"] = str(unit)
        env["LIGHT_WORK_MS"], env["LIGHT_FAN"] = str(work_ms), str(fan)
        command = [d4p, "run", str(LIGHT), "-a", FAN_ATTR[mapping] if fan else ATTR[mapping], "-m", mapping, "-n",
                   str(workers), "-i", str(items // (fan or 1)), "--results", str(results)]
        connection = Layout(results).redis
        if relay:  # as python -m d4p_hpc.mappings.redis.server writes it where a node's limit needs the relays
            results.mkdir(mode=0o700)
            write_connection_file(connection, Connection("127.0.0.1", server.port, server.password, relayed=True))
            env.pop("D4P_HPC_REDIS_PASSWORD")  # in the file
            command += ["--redis-connection", str(connection), "--external-workers"]
            stack.callback(remove_relay_files, connection)
        else:
            command += ["--redis", f"redis://127.0.0.1:{server.port}"]
        watch = Watch(server)
        watch.start()
        watch.ready.wait()

        def stop_watch() -> None:
            watch.stopped.set()
            watch.join()
        stack.callback(stop_watch)
        groups: list[int] = []
        stack.callback(kill_groups, groups)
        procs: list[subprocess.Popen] = []
        if relay:
            log = stack.enter_context(open(tmp / f"{results.name}-workers.log", "w"))
            for _ in range(workers):  # as a job script starts them (launch.py's workers), in sessions of their own
                procs.append(subprocess.Popen([sys.executable, *SAFE_MODULE, REDIS_WORKER, "--connection",
                                               str(connection)], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
                groups.append(procs[-1].pid)
            watch.workers = {p.pid: started_at(p.pid) for p in procs}
            seen: set[int] = set()
            settling = time.monotonic()
            problem = settle(procs, connection, watch, deadline, seen)
            key.update(relays_seen=len(seen), settle_seconds=round(time.monotonic() - settling, 1))
            if problem:
                return {**key, "status": problem, "tail": tail(log.name)}
        before = counters(client)
        relay_before = (proc_cpu(watch.relay), *proc_switches(watch.relay)) if relay else None
        started = time.monotonic()
        run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
        groups.append(run.pid)
        watch.root = run.pid
        try:
            output, _ = run.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_groups(groups)
            run.communicate()
            return {**key, "status": f"timeout ({timeout:.0f} s)"}
        # relay mode: the workers leave after the driver, the relay after its last worker
        for p in procs:
            reaped = reap(p.pid, deadline)
            if reaped is None:
                kill_groups(groups)
                return {**key, "status": f"timeout ({timeout:.0f} s): worker {p.pid} did not exit",
                        "tail": tail(log.name)}
            p.returncode = reaped[0]  # reaped here, by wait4: Popen must not wait for it again
        reaped = reap(watch.relay, min(deadline, time.monotonic() + 30)) if relay and watch.relay else None
        relay_usage = reaped[1] if reaped else None
        whole = time.monotonic() - started
        stop_watch()
        after = counters(client)
        reap_orphans({server.process.pid})
    row = {**key, "whole_command_seconds": round(whole, 2)}
    if run.returncode != 0:  # its results (logs) outlive the temporary folder, to say why
        kept = Path(tempfile.mkdtemp(prefix=f"d4p-scale-failed-{results.name}-"))
        shutil.copytree(results, kept, dirs_exist_ok=True, ignore=shutil.ignore_patterns("redis.json"))
        print(f"    {results.name} failed: its results are kept in {kept}", file=sys.stderr, flush=True)
        return {**row, "status": f"exit {run.returncode}", "tail": output[-2000:], "kept": str(kept)}
    metrics = json.loads((results / "metrics.json").read_text())
    status = check(metrics, mapping, items, fan)
    if relay and status == "ok":
        codes = sorted({u for u in (p.returncode for p in procs)})
        status = "ok" if codes == [0] else f"worker exits {codes}"
    driver_pid = next(p["pid"] for p in metrics["process_list"] if p["process"] == 0)
    cpu = process_cpu(results)
    wall = metrics["wall_seconds"]
    calls = {name: (n - before["calls"].get(name, (0, 0))[0], usec - before["calls"].get(name, (0, 0))[1])
             for name, (n, usec) in after["calls"].items()}
    calls = {name: c for name, c in sorted(calls.items(), key=lambda kv: -kv[1][0]) if c[0]}
    scripts = sum(calls.get(name, (0, 0))[0] for name in ("evalsha", "eval"))
    script_usec = sum(calls.get(name, (0, 0))[1] for name in ("evalsha", "eval"))
    own = sorted(watch.own.values())
    redis_cpu = after["cpu"] - before["cpu"]
    row.update(
        status=status, wall_seconds=wall, items_per_second=items / wall, pe_calls=metrics["items"],
        redis_cpu_seconds=round(redis_cpu, 3), redis_us_per_item=1e6 * redis_cpu / items,
        redis_main_thread_us_per_item=1e6 * (after["cpu_main"] - before["cpu_main"]) / items,
        redis_core_share=redis_cpu / wall,
        commands_per_item=(after["commands"] - before["commands"]) / items,
        script_calls_per_item=scripts / items, items_per_commit=items / scripts if scripts else None,
        redis_us_per_commit=1e6 * redis_cpu / scripts if scripts else None,
        script_us_per_commit=script_usec / scripts if scripts else None,
        bytes_per_item=(after["bytes"] - before["bytes"]) / items,
        calls_per_item={name: round(n / items, 4) for name, (n, _) in calls.items()},
        usec_per_call={name: round(usec / n, 2) for name, (n, usec) in calls.items()},
        redis_used_memory_peak_mb=round(after["used_memory_peak"] / 2 ** 20, 2),
        driver_us_per_item=1e6 * cpu.get(0, float("nan")) / items,
        workers_us_per_item=1e6 * sum(s for p, s in cpu.items() if p) / items,
        clients_peak=watch.clients_peak, maxclients=maxclients, maxclients_wanted=connections(workers),
        driver_connections=watch.driver if watch.root == driver_pid else None,
        worker_connections=[own[0], own[-1]] if own else None, workers_seen_connected=len(own),
        worker_inherited_sockets=max(watch.inherited.values(), default=0))
    if watch.root != driver_pid:  # the driver is another process than the command: its sockets were not seen
        row["note"] = f"driver pid {driver_pid} is not the command's {watch.root}"
    if relay:
        row.update(relay_pid=watch.relay, relay_connections=watch.relay_connections, relay_threads=watch.relay_threads,
                   maxclients_job=connections(workers, 1))
        if relay_usage is not None:
            row.update(relay_us_per_item=1e6 * (relay_usage.ru_utime + relay_usage.ru_stime - relay_before[0]) / items,
                       relay_switches_per_item=(relay_usage.ru_nvcsw + relay_usage.ru_nivcsw - relay_before[1]) / items,
                       relay_cpu_from="wait4")
        elif watch.relay_cpu is not None:  # not reaped here: its CPU as last seen (up to 0.5 s early)
            row.update(relay_us_per_item=1e6 * (watch.relay_cpu - relay_before[0]) / items, relay_cpu_from="/proc")
    return row


def tail(path: str) -> str:
    with contextlib.suppress(OSError):
        return Path(path).read_text(errors="replace")[-2000:]
    return ""


def remove_relay_files(connection: Path) -> None:
    """The relay's socket and lock files (it removes both as it ends: this is for a relay that did not)."""
    with contextlib.suppress(Exception):
        path = socket_path(read_connection_file(connection))
        path.unlink(missing_ok=True)
        path.with_suffix(".lock").unlink(missing_ok=True)


def parse_list(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n]


def parse_floats(text: str) -> list[float | None]:
    return [float(n) if n != "-" else None for n in text.split(",") if n]


def table(rows: list[dict]) -> list[str]:
    out = ["| mapping | mode | workers | items | run s | items/s | Redis CPU µs/item | Redis % of a core "
           "| commits/item (items per commit) | Redis CPU µs/commit (in the script) | Redis commands/item "
           "| bytes/item | driver CPU µs/item | workers CPU µs/item | relay CPU µs/item "
           "| Redis clients peak / maxclients | connections: driver, each worker, relay |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mode = r.get("mode", "direct") + (f", unit {r['unit_seconds']:g} s" if r.get("unit_seconds") else "")
        if r["status"] != "ok":
            out.append(f"| {r['mapping']} | {mode} | {r['workers']} | {r['items']:,} | {r['status']} |" + " - |" * 12)
            continue
        low, high = r["worker_connections"] or ("-", "-")
        per = f"{low}" if low == high else f"{low}-{high}"
        relay = f"{r['relay_us_per_item']:.1f}" if r.get("relay_us_per_item") is not None else "-"
        out.append(
            f"| {r['mapping']} | {mode} | {r['workers']} | {r['items']:,} | {r['wall_seconds']:.1f} "
            f"| {r['items_per_second']:,.0f} | {r['redis_us_per_item']:.1f} | {100 * r['redis_core_share']:.0f}% "
            f"| {r['script_calls_per_item']:.3f} ({r['items_per_commit']:.1f}) "
            f"| {r['redis_us_per_commit']:.0f} ({r['script_us_per_commit']:.0f}) | {r['commands_per_item']:.2f} "
            f"| {r['bytes_per_item']:.0f} | {r['driver_us_per_item']:.1f} | {r['workers_us_per_item']:.0f} "
            f"| {relay} | {r['clients_peak']} / {r['maxclients']} "
            f"| {r['driver_connections']}, {per}, {r.get('relay_connections', '-')} |")
    return out


def projection(rows: list[dict]) -> list[str]:
    out = []
    modes = sorted({r.get("mode", "direct") for r in rows}, key=MODES.index)
    for mapping in ATTR:
        for mode in modes:
            out += _projection(mapping, mode, [r for r in rows if r["mapping"] == mapping and
                                               r.get("mode", "direct") == mode and r["status"] == "ok"],
                               len(modes) > 1)
    if out:
        out.append("")
        out.append("Assumptions: Redis runs single-threaded on a core of its own; its CPU grows linearly with items "
                   "at the cost per item measured at the largest worker count (that is, with commits as full as "
                   "there: the column items per commit); PE work dominates a worker's time; one driver feeds the "
                   "root. Redis's cost is per commit (one Lua script call), so the items per commit decide it.")
    for extra in (paced_model(rows), unit_ratios(rows)):
        if extra:
            out += [""] + extra
    compared = relay_vs_direct(rows)
    if compared:
        out += ["", "Relay / direct, side by side in this invocation (ratios of the two rows at the same worker "
                "count; workers+relay: the workers' CPU plus the relay's, over the forked workers' CPU):", ""]
        out += compared
    return out


def paced_model(rows: list[dict]) -> list[str]:
    """What one Redis core feeds with the units a larger pool gets, from the rows that measured them.

    A pool of W workers fills its entries of quick tasks to max(0.05 s, W x 1.5 ms) of work
    (``d4p_hpc.mappings.dynamic.tasks.unit_seconds``): 15 s at 10,000 workers. The rows run with
    ``--unit-seconds`` measure Redis's cost per item with such units at the worker counts this machine
    holds; one core at that cost feeds 1e6 / (items per second a worker does x µs per item) workers."""
    done = [r for r in rows if r["status"] == "ok" and r.get("mode", "direct") == "direct"]
    out = []
    for mapping in ATTR:
        mine = [r for r in done if r["mapping"] == mapping]
        own = [r for r in mine if not r.get("unit_seconds")]
        longest = max((r for r in mine if r.get("unit_seconds")), default=None,
                      key=lambda r: (r["unit_seconds"], r["workers"]))
        if not own or longest is None:
            continue
        base = max((r for r in own if r["workers"] == longest["workers"]), default=max(own, key=lambda r: r["workers"]),
                   key=lambda r: r["workers"])
        work = f"{longest['work_ms']:g} ms per item" if longest["work_ms"] else "light PEs"
        feeds = {name: {ms: 1e6 / (1000 / ms * r["redis_us_per_item"]) for ms in (1, 10)}
                 for name, r in (("paced", longest), ("own", base))}
        out.append(f"- **{mapping}, units of {longest['unit_seconds']:g} s** (a pool of "
                   f"{longest['unit_seconds'] / COMMIT_SECONDS:,.0f} workers gets them), measured at "
                   f"{longest['workers']} workers, {work}"
                   f"{', fan-out ' + str(longest['fan']) if longest['fan'] else ''}: "
                   f"Redis {longest['redis_us_per_item']:.2f} µs per item ({longest['items_per_commit']:.0f} items "
                   f"per commit), against {base['redis_us_per_item']:.2f} ({base['items_per_commit']:.0f}) with "
                   f"the units of {base['workers']} workers: one Redis core feeds about "
                   f"**{feeds['paced'][1]:,.0f} workers at 1 ms** per item and {feeds['paced'][10]:,.0f} at 10 ms "
                   f"(at the small pool's units: {feeds['own'][1]:,.0f} and {feeds['own'][10]:,.0f}).")
    return ["**With the units a large pool gets**:", ""] + out if out else []


def unit_ratios(rows: list[dict]) -> list[str]:
    """Each row with longer units beside the row of the same worker count with the pool's own."""
    out: list[str] = []
    base = {(r["mapping"], r.get("mode", "direct"), r["workers"]): r for r in rows
            if r["status"] == "ok" and not r.get("unit_seconds")}
    longer = [(r, b) for r in rows if r["status"] == "ok" and r.get("unit_seconds")
              and (b := base.get((r["mapping"], r.get("mode", "direct"), r["workers"])))]
    if longer:
        out += ["Longer units (`D4P_HPC_UNIT_SECONDS`, what a larger pool gets), side by side with the pool's own "
                "at the same worker count, as ratios (longer / own):", ""]
        for r, b in longer:
            out.append(f"- {r['mapping']}, {r['workers']} workers, unit {r['unit_seconds']:g} s: items per commit "
                       f"{r['items_per_commit']:.0f} / {b['items_per_commit']:.0f}, Redis CPU µs/item "
                       f"**{r['redis_us_per_item'] / b['redis_us_per_item']:.2f}**, Redis µs/commit "
                       f"{r['redis_us_per_commit'] / b['redis_us_per_commit']:.2f}, items/s "
                       f"{r['items_per_second'] / b['items_per_second']:.2f}.")
    return out


def relay_vs_direct(rows: list[dict]) -> list[str]:
    out = []
    done = {(r["mapping"], r.get("mode", "direct"), r["workers"]): r for r in rows if r["status"] == "ok"}
    for (mapping, mode, n), r in done.items():
        d = done.get((mapping, "direct", n))
        if mode != "relay" or d is None:
            continue
        line = (f"- **{mapping}, {n} workers**: items/s **{r['items_per_second'] / d['items_per_second']:.2f}**, "
                f"Redis CPU µs/item {r['redis_us_per_item'] / d['redis_us_per_item']:.2f}, driver CPU µs/item "
                f"{r['driver_us_per_item'] / d['driver_us_per_item']:.2f}, workers CPU µs/item "
                f"{r['workers_us_per_item'] / d['workers_us_per_item']:.2f}")
        if r.get("relay_us_per_item") is not None:
            both = (r["workers_us_per_item"] + r["relay_us_per_item"]) / d["workers_us_per_item"]
            line += (f", workers+relay {both:.2f}"
                     f" (the relay: {r['relay_us_per_item']:.1f} µs/item, "
                     f"{r.get('relay_switches_per_item', float('nan')):.2f} context switches/item, "
                     f"{r['relay_threads']} threads)")
        line += (f"; Redis clients peak {r['clients_peak']} vs {d['clients_peak']} (a job's maxclients for one "
                 f"node: {r['maxclients_job']}, vs {d['maxclients']}).")
        out.append(line)
    return out


def _projection(mapping: str, mode: str, done: list[dict], named: bool) -> list[str]:
    if not done:
        return []
    small, large = min(done, key=lambda r: r["workers"]), max(done, key=lambda r: r["workers"])
    cost, driver = large["redis_us_per_item"], large["driver_us_per_item"]
    saturate = 1e6 / cost
    name = f"{mapping} ({mode})" if named else mapping
    line = (f"- **{name}**: at {large['workers']} workers Redis spends {cost:.1f} µs of CPU per item, so one "
            f"Redis core saturates at {saturate:,.0f} items/s. A worker doing 1 ms of PE work per item handles "
            f"at most 1,000 items/s: one Redis core feeds about {saturate / 1000:,.0f} such workers, and "
            f"{saturate / 100:,.0f} at 10 ms per item. The driver (one process, {driver:.1f} µs of CPU per "
            f"item) saturates at {1e6 / driver:,.0f} items/s.")
    if large is not small:
        line += (f" Side by side in this invocation, Redis µs/item at {large['workers']} workers / at "
                 f"{small['workers']}: **{cost / small['redis_us_per_item']:.2f}** (commits/item "
                 f"{large['script_calls_per_item'] / small['script_calls_per_item']:.2f}, Redis µs/commit "
                 f"{large['redis_us_per_commit'] / small['redis_us_per_commit']:.2f}, items/s "
                 f"{large['items_per_second'] / small['items_per_second']:.2f}).")
    return [line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=parse_list, default=None, help="worker counts (default 8,32,128)")
    parser.add_argument("--items", type=int, default=None, help="items fed to the root (-i; default 400,000)")
    parser.add_argument("--mappings", default="dyn_redis,hybrid_redis")
    parser.add_argument("--modes", default="direct", help="direct (workers the run forks), relay (external "
                        "workers through the node's relay), or both: direct,relay (default direct)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds a run may take (default 900)")
    parser.add_argument("--quick", action="store_true", help="4 and 16 workers, 40,000 items, 60 s timeout")
    parser.add_argument("--unit-seconds", type=parse_floats, default=[None], help="D4P_HPC_UNIT_SECONDS values, "
                        "one row each (default: unset, the pool's own: 0.05 s up to 33 workers)")
    parser.add_argument("--work-ms", type=float, default=0.0, help="milliseconds Light sleeps per item (default 0)")
    parser.add_argument("--fan", type=int, default=0, help="graph_fanout (dyn_redis) and graph_fanout_grouped "
                        "(hybrid_redis), each root item becoming FAN items for Light (--items counts those); "
                        "default 0: graph_stateless and graph")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = parser.parse_args()
    workers = args.workers or ([4, 16] if args.quick else [8, 32, 128])
    items = args.items or (40_000 if args.quick else 400_000)
    timeout = args.timeout or (60 if args.quick else 900)
    mappings = [m for m in args.mappings.split(",") if m]
    for m in mappings:
        if m not in ATTR:
            parser.error(f"unknown mapping {m} (one of {', '.join(ATTR)})")
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            parser.error(f"unknown mode {m} (one of {', '.join(MODES)})")
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on PATH")
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    print(f"Redis broker cost: benchmarks/graphs/light.py, -i {items:,}, {os.cpu_count()} cores; "
          f"{started:%Y-%m-%d %H:%M} UTC; load average {load_before[0]:.2f} before", file=sys.stderr, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="d4p-scale-") as tmp:
        if "relay" in modes:
            become_subreaper()  # the relay, orphaned when the worker that started it exits, is reaped here
        for mapping in mappings:
            for n in workers:
                for mode in modes:  # the modes of a worker count one after the other: side by side
                    for unit in args.unit_seconds:
                        print(f"  {mapping} {mode} -n {n} unit {unit} ...", file=sys.stderr, flush=True)
                        with heavy_lock(n, always=len(modes) > 1 or len(args.unit_seconds) > 1):
                            row = measure(mapping, n, items, timeout, Path(tmp), mode, unit, args.work_ms, args.fan)
                            row["load_after"] = round(os.getloadavg()[0], 2)
                        rows.append(row)
                        print("   ", row["status"], f"{row.get('wall_seconds', 0):.1f} s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    print(f"Redis mappings at scale: benchmarks/graphs/light.py (dyn_redis: graph_stateless; hybrid_redis: graph), "
          f"-i {items:,}, one run per row, on {os.cpu_count()} cores; {started:%Y-%m-%d %H:%M} UTC; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; a worker is expected to hold "
          f"{WORKER_CONNECTIONS} connections" + (f", a relay {RELAY_CONNECTIONS}" if "relay" in modes else ""))
    print()
    print("\n".join(table(rows)))
    print()
    print("\n".join(projection(rows)))
    if args.json:
        args.json.write_text(json.dumps({"started": started.isoformat(), "items": items, "cores": os.cpu_count(),
                                         "load_before": load_before, "load_after": load_after, "rows": rows},
                                        indent=1, default=str))


if __name__ == "__main__":
    main()
