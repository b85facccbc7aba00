"""A node's relay (mappings/redis/relay.py): one set of Redis connections for all the workers of a node.

What is proven, each time with a real redis-server, real workers (``python -m
d4p_hpc.mappings.redis.worker --connection FILE``, as a job starts them), a real driver
(``d4p-hpc run ... --external-workers``) and the real relay the first worker starts:

* the workers of one host share ONE relay: while they run, exactly one relay process exists, it
  holds between 1 and :data:`~d4p_hpc.mappings.RELAY_CONNECTIONS` connections to Redis (its TCP
  sockets, read in /proc, are clients Redis lists), the workers hold none of their own, the run
  completes with simple's outputs, and the relay ends with its last worker, its socket and lock removed;
* a relay folder that is not the user's own and closed to others (open to others, or a symlink)
  fails each worker at once, before it connects to Redis, with one ``Error: worker on HOST:`` line
  naming the folder and the fix (TMPDIR); no relay starts, nothing is written in the folder;
* another program listening at the relay's socket, not knowing the key derived from the Redis
  password, fails the worker with one line saying so; the handshake fails before the impostor
  could receive anything (its ``accept`` raises), and no relay starts;
* the relay ignores the scheduler's stop signals while workers are connected: SIGTERM and SIGINT
  leave the same relay serving (work is committed through it after them) until the run completes,
  and it ends by itself once the last worker has gone;
* a relay SIGKILLed mid-run: every worker ends (exit 1) saying it lost the relay. In a job (a
  launcher the driver watches, emulated here by a shell starting the workers, as the job
  script's ``d4p_fork``) the run ends FAILED at once saying every worker is gone. With workers
  started by hand (no launcher), the driver keeps the run going with no live worker: new
  workers start a new relay in place of the dead one's socket and complete the run exactly once.

Every test gives its workers a TMPDIR of its own, short enough for a Unix socket path, so that no
two tests (nor other runs on this machine) share a relay; processes are found by a tag in their
environment (the relay inherits its worker's).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener
from pathlib import Path

import pytest

from d4p_hpc.mappings import RELAY_CONNECTIONS, connections
from d4p_hpc.mappings.redis.conn import read_connection_file
from d4p_hpc.mappings.redis.keys import Keys
from d4p_hpc.mappings.redis.relay import socket_path
from helpers.dynamic import (SLOW_GRAPH, limited, needs_redis, python_module, tagged_env, tagged_pids, wait_file,
                             write_graph)
from helpers.runs import alive, d4p_hpc_cmd, outputs, processes_mentioning, read_json, run_simple, wait_for

redis = pytest.importorskip("redis")
pytestmark = needs_redis

RELAY_MODULE = "d4p_hpc.mappings.redis.relay"
HOST = socket.gethostname()


class Node:
    """One host of a job: its per-job Redis (the server supervisor), workers, a driver, and a TMPDIR
    of their own (under /tmp: a Unix socket path takes about 100 characters)."""

    def __init__(self, tmp_path: Path, monkeypatch) -> None:
        self.base = tmp_path
        self.tag = uuid.uuid4().hex
        self.tmpdir = Path(tempfile.mkdtemp(prefix="d4p-relay-", dir="/tmp"))
        self.env = {**tagged_env(self.tag), "TMPDIR": str(self.tmpdir)}
        for name in ("D4P_WORKERS_PID", "D4P_WORKERS_LOG", "D4P_HPC_CLAIM_IDLE", "SLOW_DELAY"):
            self.env.pop(name, None)
        self.results = tmp_path / "results"
        self.connection = self.results / "redis.json"
        self.started: list[subprocess.Popen] = []
        # a node whose hard limit (256 files) cannot hold the workers' own connections (1,000 asked):
        # the Redis takes the relays' budget and tells the workers to share a relay
        self.server = self.spawn("server", python_module("d4p_hpc.mappings.redis.server", "--results",
                                                         str(self.results), "--clients", "1000", "--relay-clients",
                                                         str(connections(8, 1))), preexec_fn=limited(256))
        self.conn = wait_file(self.connection, self.server)
        assert self.conn["relayed"] is True, self.conn
        # where the workers' relay listens, computed here as they compute it under their TMPDIR
        monkeypatch.setattr(tempfile, "tempdir", str(self.tmpdir))
        self.socket = socket_path(read_connection_file(self.connection))
        assert self.socket.is_relative_to(self.tmpdir), self.socket  # (not the shared /tmp fallback)
        self.folder = self.socket.parent
        self.redis = redis.Redis(host=self.conn["host"], port=self.conn["port"], password=self.conn["password"])
        self.workers: list[subprocess.Popen] = []

    def spawn(self, name: str, argv: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
        """``argv`` in a session of its own, its stdout and stderr in files named for ``name``."""
        with open(self.base / f"{name}.out", "w") as out, open(self.base / f"{name}.err", "w") as err:
            proc = subprocess.Popen(argv, env={**self.env, **(env or {})}, start_new_session=True, stdout=out,
                                    stderr=err, **kwargs)
        self.started.append(proc)
        return proc

    def stderr(self, name: str) -> str:
        return (self.base / f"{name}.err").read_text(errors="replace")

    def worker_argv(self) -> list[str]:
        return python_module("d4p_hpc.mappings.redis.worker", "--connection", str(self.connection))

    def start_workers(self, n: int, **env: str) -> list[subprocess.Popen]:
        first = len(self.workers)
        self.workers += [self.spawn(f"worker{first + k}", self.worker_argv(), env) for k in range(n)]
        return self.workers[first:]

    def relays(self) -> set[int]:
        """Live relay processes of this node's Redis."""
        return {pid for pid, argv in processes_mentioning(str(self.connection)).items() if RELAY_MODULE in argv}

    def the_relay(self, workers: int) -> int:
        """The pid of the one relay, once ``workers`` workers hold a connection to it (each holds
        one while it waits for a run) and no second relay, started at the same moment, is left."""
        wait_for(lambda: relay_clients(self.socket) >= workers, 120)
        return next(iter(wait_for(lambda: (found := self.relays()) and len(found) == 1 and found, 60)))

    def driver(self, graph: Path, inputs: int, env: dict | None = None) -> subprocess.Popen:
        return self.spawn("driver", [*d4p_hpc_cmd(), "run", str(graph), "-m", "dyn_redis", "-n", "4",
                                     "--redis-connection", str(self.connection), "--external-workers",
                                     "--results", str(self.results), "-i", str(inputs)], env)

    def keys(self) -> Keys:
        run = wait_for(lambda: self.redis.get("d4p:run"), 60)
        return Keys(json.loads(run)["id"])

    def tasks_done(self, keys: Keys) -> int:
        return int(self.redis.hget(keys.work, "tasks") or 0)

    def stop_redis(self) -> None:
        """Stop the per-job Redis, as a job's end does, then check that none of our processes is left
        (a relay with no worker ends within :data:`~d4p_hpc.mappings.redis.relay.FIRST_CLIENT`)."""
        self.redis.close()
        self.server.send_signal(signal.SIGTERM)
        assert self.server.wait(60) == 0, self.stderr("server")
        wait_for(lambda: not tagged_pids(self.tag), 45)
        assert not self.connection.exists()

    def close(self) -> None:
        self.redis.close()
        for pid in tagged_pids(self.tag):  # (only ours inherit the tag)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.started:
            proc.wait(30)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@pytest.fixture
def node(tmp_path, monkeypatch):
    made = Node(tmp_path, monkeypatch)
    yield made
    made.close()


@pytest.fixture
def graph(tmp_path):
    """Numbers -> Slow (sleeps $SLOW_DELAY s per item) -> Tag."""
    return write_graph(tmp_path, SLOW_GRAPH)


def simple_outputs(graph: Path, inputs: int, results: Path, monkeypatch) -> dict:
    monkeypatch.setenv("SLOW_DELAY", "0")
    assert run_simple(graph, inputs, results)["state"] == "COMPLETED"
    return outputs(results)


def relay_clients(path: Path) -> int:
    """Connections the relay listening at ``path`` has accepted and holds: /proc/net/unix lists an
    accepted socket under its listener's path, connected (state 03)."""
    count = 0
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and fields[7] == str(path) and fields[5] == "03":
            count += 1
    return count


def redis_ports(pid: int, port: int) -> set[int]:
    """Local ports of the established TCP connections of process ``pid`` to ``port`` (Redis's)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and inode in inodes and int(remote.rsplit(":", 1)[1], 16) == port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def ignored_signals(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            mask = int(line.split()[1], 16)
            return {n for n in range(1, 65) if mask >> (n - 1) & 1}
    raise AssertionError(f"no SigIgn in /proc/{pid}/status")


def ended(node: Node, proc: subprocess.Popen, name: str, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name} still running after {timeout} s:\n{node.stderr(name)}") from None


def one_error_line(node: Node, name: str) -> str:
    err = node.stderr(name)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: worker on {HOST}: "), err
    return lines[0]


def test_the_workers_of_a_host_share_one_relay_which_alone_holds_redis_connections(node, graph, tmp_path,
                                                                                       monkeypatch):
    workers = node.start_workers(4, SLOW_DELAY="0.1")
    relay = node.the_relay(4)
    me = int(node.redis.client_id())
    driver = node.driver(graph, 80)
    keys = node.keys()
    samples = []
    while True:
        relays = node.relays()
        held = redis_ports(relay, node.conn["port"])
        listed = {int(c["addr"].rsplit(":", 1)[1]) for c in node.redis.client_list() if int(c["id"]) != me}
        own = {w.pid: redis_ports(w.pid, node.conn["port"]) for w in workers}
        if node.redis.get(keys.state) != b"RUNNING":  # (at its end the workers leave, and the relay)
            break
        samples.append((relays, held, listed, own))
        time.sleep(0.05)
    assert ended(node, driver, "driver") == 0, node.stderr("driver")
    assert samples
    for relays, held, _listed, own in samples:
        assert relays == {relay}, samples  # one relay, the same, all along
        assert 1 <= len(held) <= RELAY_CONNECTIONS, samples
        assert not any(own.values()), own  # no worker has a connection of its own
    assert any(held and held <= listed for _, held, listed, _ in samples), samples  # Redis's clients indeed
    assert outputs(node.results) == simple_outputs(graph, 80, tmp_path / "simple", monkeypatch)
    metrics = read_json(node.results / "metrics.json")
    assert {p["pid"] for p in metrics["process_list"] if p["process"]} == {w.pid for w in workers}
    for k, worker in enumerate(workers):
        assert ended(node, worker, f"worker{k}", 60) == 0, node.stderr(f"worker{k}")
    wait_for(lambda: not alive(relay), 30)  # gone with its last worker
    assert list(node.folder.iterdir()) == []  # its socket and its lock removed
    node.stop_redis()


@pytest.mark.parametrize("folder", ["open to others", "a symlink to a folder of ours"])
def test_a_relay_folder_not_closed_to_others_fails_the_worker_at_once_saying_so(node, folder):
    if folder == "open to others":
        node.folder.mkdir(mode=0o755)
        node.folder.chmod(0o755)  # (whatever the umask)
        inside, why = node.folder, f"is not a folder of yours closed to others (owner uid {os.geteuid()}, mode 0755)"
    else:
        inside = node.tmpdir / "ours"
        inside.mkdir(mode=0o700)
        node.folder.symlink_to(inside)
        why = "is a symbolic link, not a folder of yours closed to others"
    connections = node.redis.info("stats")["total_connections_received"]
    worker, = node.start_workers(1)
    assert ended(node, worker, "worker0", 60) == 1
    assert one_error_line(node, "worker0") == (
        f"Error: worker on {HOST}: the workers' relay cannot listen in {node.folder}, which {why}: remove it, or "
        "set TMPDIR to a folder of your own on the nodes")
    # refused before it connected to Redis (its own connections would not fit the job's budget)
    assert node.redis.info("stats")["total_connections_received"] == connections  # (this client's, kept)
    assert node.relays() == set()
    assert list(inside.iterdir()) == []  # no socket, no lock
    assert node.folder.is_symlink() == (folder != "open to others")
    node.stop_redis()


def test_another_program_at_the_relays_socket_fails_the_worker_before_anything_is_unpickled(node):
    node.folder.mkdir(mode=0o700)
    impostor = Listener(str(node.socket), family="AF_UNIX", authkey=b"not the key of this Redis")
    accepted: list = []

    def accept() -> None:
        try:
            accepted.append(impostor.accept())
        except Exception as exc:  # noqa: BLE001 (what the impostor got, checked below)
            accepted.append(exc)
    listening = threading.Thread(target=accept, daemon=True)
    listening.start()
    try:
        worker, = node.start_workers(1)
        assert ended(node, worker, "worker0", 60) == 1
        listening.join(30)
    finally:
        impostor.close()
    assert one_error_line(node, "worker0") == (
        f"Error: worker on {HOST}: the relay at {node.socket} does not know this Redis's key: another program "
        "listens there; stop it, or set TMPDIR to another folder of yours")
    # the challenge failed both ways: the impostor never had a connection to receive a request from
    assert len(accepted) == 1 and isinstance(accepted[0], AuthenticationError), accepted
    assert node.relays() == set()
    assert list(node.folder.iterdir()) == []  # (the impostor's socket removed by its close) no relay's lock
    node.stop_redis()


def test_the_relay_outlives_stop_signals_while_workers_are_connected_and_ends_after_the_last(node, graph, tmp_path,
                                                                                            monkeypatch):
    workers = node.start_workers(4, SLOW_DELAY="0.1")
    relay = node.the_relay(4)
    driver = node.driver(graph, 160)
    keys = node.keys()
    wait_for(lambda: node.tasks_done(keys) > 0, 120)  # (the first units committed: the others under way)
    assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP} <= ignored_signals(relay)
    for signum in (signal.SIGTERM, signal.SIGINT):
        os.kill(relay, signum)
    done = node.tasks_done(keys)
    assert done < 160  # the rest is committed after the signals (through the relay: no worker has a connection)
    seen = []  # the relay alive, and the only one, until the run's end
    while True:
        serving = alive(relay) and node.relays() == {relay}
        if node.redis.get(keys.state) != b"RUNNING":  # (at its end the workers leave, and the relay)
            break
        seen.append(serving)
        time.sleep(0.1)
    assert ended(node, driver, "driver") == 0, node.stderr("driver")
    assert seen and all(seen), seen
    assert outputs(node.results) == simple_outputs(graph, 160, tmp_path / "simple", monkeypatch)
    for k, worker in enumerate(workers):
        assert ended(node, worker, f"worker{k}", 60) == 0, node.stderr(f"worker{k}")
    wait_for(lambda: not alive(relay), 30)
    assert not node.socket.exists()
    node.stop_redis()


def test_a_silent_connection_to_the_relay_keeps_no_worker_out(node, graph, tmp_path, monkeypatch):
    """An outside attack found one connection that never sends its part of the key handshake kept
    every later worker out (the relay did the handshake in its accept loop). Now each connection
    has its own: a worker that comes after a silent one joins, and the run completes."""
    first = node.start_workers(1)
    relay = node.the_relay(1)
    with socket.socket(socket.AF_UNIX) as silent:
        silent.connect(str(node.socket))  # ... and says nothing
        wait_for(lambda: relay_clients(node.socket) >= 2, 30)
        later = node.start_workers(1)
        wait_for(lambda: relay_clients(node.socket) >= 3, 60)  # joined while the silent one waits
        driver = node.driver(graph, 80)
        assert ended(node, driver, "driver") == 0, node.stderr("driver")
    assert outputs(node.results) == simple_outputs(graph, 80, tmp_path / "simple", monkeypatch)
    metrics = read_json(node.results / "metrics.json")  # the later worker took part
    assert {p["pid"] for p in metrics["process_list"] if p["process"]} == {w.pid for w in first + later}
    for k, worker in enumerate(first + later):
        assert ended(node, worker, f"worker{k}", 60) == 0, node.stderr(f"worker{k}")
    wait_for(lambda: not alive(relay), 30)
    node.stop_redis()


def lost_the_relay(node: Node, procs) -> None:
    """Each worker's log says it lost the relay (the worker's stdout and stderr go to its run log)."""
    for proc in procs:
        log = (node.results / "logs" / f"{proc:05d}.log").read_text(errors="replace")
        assert f"lost the relay at {node.socket}" in log, log


def test_a_relay_killed_in_a_job_ends_its_workers_and_the_run_fails_saying_every_worker_is_gone(node, graph):
    """The job script starts the workers with a launcher whose pid and stderr the driver watches."""
    env = {"D4P_HPC_CLAIM_IDLE": "2"}
    log = node.base / "launcher.err"
    worker = shlex.join(node.worker_argv())
    launcher = node.spawn("launcher", ["sh", "-c", f"{worker} & {worker} & {worker} & {worker} & wait"],
                          {**env, "SLOW_DELAY": "0.1"})
    relay = node.the_relay(4)
    driver = node.driver(graph, 200, {**env, "D4P_WORKERS_PID": str(launcher.pid), "D4P_WORKERS_LOG": str(log)})
    keys = node.keys()
    wait_for(lambda: node.tasks_done(keys) > 0, 120)
    os.kill(relay, signal.SIGKILL)
    assert ended(node, launcher, "launcher") == 0
    assert ended(node, driver, "driver") == 1, node.stderr("driver")
    record = read_json(node.results / "run.json")
    assert record["state"] == "FAILED", record
    why = (f"every worker is gone: their launcher (pid {launcher.pid}) ended while the run was going; "
           f"nothing on stderr (see {log})")
    assert record["error"]["traceback"] == why, record
    assert f"the run failed:\n{why}\n" in node.stderr("driver")
    lost_the_relay(node, range(1, 5))
    node.stop_redis()


def test_a_relay_killed_under_workers_started_by_hand_ends_them_and_new_workers_finish_the_run(node, graph, tmp_path,
                                                                                              monkeypatch):
    """Without a launcher to watch, the driver waits for workers: it does not fail the run when every
    worker is gone (their heartbeats expired). Workers started again complete it, exactly once."""
    env = {"D4P_HPC_CLAIM_IDLE": "2"}
    first = node.start_workers(4, SLOW_DELAY="0.1", **env)
    relay = node.the_relay(4)
    driver = node.driver(graph, 200, env)
    keys = node.keys()
    wait_for(lambda: node.tasks_done(keys) > 0, 120)
    os.kill(relay, signal.SIGKILL)
    for k, worker in enumerate(first):
        assert ended(node, worker, f"worker{k}", 60) == 1, node.stderr(f"worker{k}")
    lost_the_relay(node, range(1, 5))
    assert node.socket.exists()  # the killed relay's, left behind
    wait_for(lambda: not any(node.redis.exists(keys.alive(p)) for p in range(1, 5)), 30)
    assert driver.poll() is None and read_json(node.results / "run.json")["state"] == "RUNNING"
    again = node.start_workers(2, SLOW_DELAY="0.01", **env)
    assert ended(node, driver, "driver") == 0, node.stderr("driver")
    assert outputs(node.results) == simple_outputs(graph, 200, tmp_path / "simple", monkeypatch)
    for k, worker in enumerate(again, start=4):
        assert ended(node, worker, f"worker{k}", 60) == 0, node.stderr(f"worker{k}")
    wait_for(lambda: not node.relays(), 30)  # the new relay, gone with its workers
    assert not node.socket.exists()  # the dead one's socket replaced, then removed
    node.stop_redis()
