"""The node's relay: one set of Redis connections for all the workers of a node.

Without it every worker holds :data:`~d4p_hpc.mappings.WORKER_CONNECTIONS` connections, and a
Redis takes no more clients than its open-files limit (minus 32) allows: 1,024 descriptors, the
common ``ulimit -n`` of compute nodes, end a job near 330 workers, whatever its node count. With
it a job needs :data:`~d4p_hpc.mappings.RELAY_CONNECTIONS` per node, however many workers a node
runs (the anchors that reach thousands of workers, Parsl's manager and HyperQueue's worker, put
one agent on each node the same way). It is one Python process per node and costs throughput
(``benchmarks/README.md``, "Scale"): a job uses it only where its connections would not fit.

How it works. Where the job's Redis says so (its connection file's ``relayed``: its node cannot hold
each worker's own connections, :class:`~d4p_hpc.mappings.redis.server.RedisServer`), a worker
(``python -m d4p_hpc.mappings.redis.worker --connection FILE``) talks to Redis through
:class:`RelayClient`, which has the ``redis.Redis`` methods workers call and forwards each call, or a
pipeline whole, over a Unix socket to the relay of its node; the relay makes the call with its own
client and sends back the reply, or the exception as redis-py raised it. A worker that finds no
relay takes the node's relay lock (a file beside the socket) and starts one (``python -m
d4p_hpc.mappings.redis.relay``), handing it the lock; the node's other workers wait while the lock
is held, so a node starting 128 workers starts one relay. The relay serves until its last worker
has gone (scheduler signals do not end it: a worker stopped by one still commits its last unit
through it), or :data:`FIRST_CLIENT` seconds pass without any; it removes its socket and lock as
it ends.

Blocking reads, which would hold a connection each, are made without blocking: the relay reads
what is there, and if nothing is, its one watcher connection blocks (``XREAD``) on every stream a
worker waits on, from the last entry the worker's read saw, and an entry wakes the worker that has
waited longest (:class:`_Watcher`); a worker waits no longer than its own ``block``. So idle
workers hold no connection, and what they see is what their own blocking read would have returned.

Who may connect: the socket lies in a folder only the user can enter (``$TMPDIR/d4p-hpc-UID``,
0700, checked), named for the Redis and the node, and both ends prove they know a key derived from
the Redis password (``multiprocessing.connection``'s challenge) before anything is unpickled. A
folder that fails the check (another user's, or open to others) fails the worker, saying so: its
own connections would not fit the Redis's budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import pickle
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection as Pipe, answer_challenge, deliver_challenge
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import click

from d4p_hpc.errors import Command, RedisError
from d4p_hpc.mappings.redis.conn import REPLY_SLACK, Connection, import_redis, read_connection_file
from d4p_hpc import settings
from d4p_hpc.mappings import RELAY_CONNECTIONS
from d4p_hpc.supervisor import SAFE_MODULE

#: Connections the relay holds for commands (a pool: one slow commit does not hold up the others),
#: beside its watcher's one
EXECUTORS = RELAY_CONNECTIONS - 1
#: Seconds a new relay waits for its first worker (its starter connects as soon as it listens)
FIRST_CLIENT = 30.0
#: Seconds either end of a new relay connection waits for the other's part of the key handshake
HANDSHAKE = 30.0
#: Seconds a worker waits for a relay that is starting or serving (32 emulated nodes starting 128
#: workers on 2 cores took over 30 s to start theirs)
RELAY_WAIT = 600.0
#: Seconds the watcher waits before it reads again after Redis failed it
RESTART = 3.0
#: Signals a scheduler stops a job with: the relay outlives them until its workers have gone
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
#: Longest socket path a Unix socket takes (108 bytes on Linux, with room to spare)
MAX_PATH = 100


def _name(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def socket_path(conn: Connection) -> Path:
    """Where the relay of ``conn`` on this node listens."""
    base = Path(tempfile.gettempdir())
    node = socket.gethostname().split(".")[0][:32]
    name = f"relay-{_name(f'{conn.host}:{conn.port}:{conn.password}')}-{node}.sock"
    if len(str(base / f"d4p-hpc-{os.geteuid()}" / name)) > MAX_PATH:
        base = Path("/tmp")
    return base / f"d4p-hpc-{os.geteuid()}" / name


def _authkey(conn: Connection) -> bytes:
    return hashlib.sha256(b"d4p-hpc relay\0" + (conn.password or "").encode()).digest()


def private_folder(path: Path) -> str | None:
    """Make ``path`` (0700); None if it is the user's own and closed to others, else why not."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return f"{path}, which is a symbolic link, not a folder of yours closed to others"
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return (f"{path}, which is not a folder of yours closed to others (owner uid {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):04o})")
    return None


def through_relay(conn: Connection) -> Connection:
    """``conn`` through this node's relay.

    Raises
    ------
    RedisError
        The relay's folder is not the user's own and closed to others: connecting each worker
        directly instead would exceed the connections the job's Redis was given.
    """
    path = socket_path(conn)
    why = private_folder(path.parent)
    if why is not None:
        raise RedisError(f"the workers' relay cannot listen in {why}: remove it, or set TMPDIR to a folder of "
                         f"your own on the nodes")
    return Relayed(**{f.name: getattr(conn, f.name) for f in dataclasses.fields(conn)}, relay=path)


@dataclass(frozen=True)
class Relayed(Connection):
    """A :class:`~d4p_hpc.mappings.redis.conn.Connection` whose clients go through the relay at ``relay``."""

    relay: Path = Path()
    keep_probe: ClassVar[bool] = True

    def client(self, no_retry: bool = False, pool_size: int | None = None, **options) -> RelayClient:
        return RelayClient(self)


# --- the workers' side ---------------------------------------------------------------------------
class RelayClient:
    """A ``redis.Redis`` for the calls workers make, served by the node's relay."""

    def __init__(self, conn: Relayed) -> None:
        self.conn = conn
        self._pipe: Pipe | None = None
        self._lock = threading.Lock()
        #: how long an answer may take besides a blocking read's own wait: a relay silent that long is lost
        self._patience = settings.claim_idle() + REPLY_SLACK

    def _connect(self) -> Pipe:
        redis = import_redis()
        address, key = str(self.conn.relay), _authkey(self.conn)
        deadline = time.monotonic() + RELAY_WAIT
        while True:
            try:
                return _handshake(address, key, client=True)
            except (AuthenticationError, TimeoutError, BlockingIOError) as exc:
                why = "does not know this Redis's key" if isinstance(exc, AuthenticationError) else \
                    f"did not answer as a relay within {HANDSHAKE:.0f} s"
                raise RedisError(f"the relay at {address} {why}: another program listens there; stop it, or set "
                                 "TMPDIR to another folder of yours") from None
            except (FileNotFoundError, ConnectionRefusedError, EOFError, ConnectionResetError) as exc:
                now = time.monotonic()
                if now > deadline:
                    raise redis.ConnectionError(f"no relay answers at {address} ({exc})") from None
                # a node starting many workers at once may take long to start its relay: the worker that
                # takes the node's lock starts it, the others wait while it is held
                _start_relay(self.conn)
            time.sleep(0.2)

    def _call(self, request: tuple, wait: float = 0.0):
        redis = import_redis()
        with self._lock:
            try:
                if self._pipe is None:
                    self._pipe = self._connect()
                self._pipe.send(request)
                if not self._pipe.poll(wait + self._patience):
                    raise redis.TimeoutError(f"the relay at {self.conn.relay} gave no answer")
                ok, value = self._pipe.recv()
            except (OSError, EOFError) as exc:
                self._drop()
                raise redis.ConnectionError(f"lost the relay at {self.conn.relay} ({str(exc) or 'closed'})") from None
        if not ok:
            raise value
        return value

    def _drop(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.close()
            self._pipe = None

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            return self._call(("call", name, args, kwargs), (kwargs.get("block") or 0) / 1000)
        return call

    def pipeline(self, transaction: bool = True) -> _Pipeline:
        return _Pipeline(self, transaction)

    def register_script(self, text: str) -> _Script:
        return _Script(self, text)

    def close(self) -> None:
        with self._lock:
            self._drop()


class _Pipeline:
    def __init__(self, client: RelayClient, transaction: bool) -> None:
        self._client, self._transaction = client, transaction
        self._calls: list[tuple] = []

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def queue(*args, **kwargs):
            self._calls.append((name, args, kwargs))
            return self
        return queue

    def execute(self) -> list:
        calls, self._calls = self._calls, []
        return self._client._call(("pipeline", self._transaction, calls))


class _Script:
    def __init__(self, client: RelayClient, text: str) -> None:
        self._client, self._text = client, text

    def __call__(self, keys=(), args=()):
        return self._client._call(("script", self._text, list(keys), list(args)))


def _handshake(where: str | socket.socket, key: bytes, client: bool) -> Pipe:
    """A connection to the relay at ``where`` (a worker), or from the worker just accepted (the relay),
    once both ends have shown they know ``key``; a peer that stays silent is given up after
    :data:`HANDSHAKE` seconds (TimeoutError), one that says something else fails it
    (AuthenticationError), so a stranger neither blocks the relay nor hangs a worker."""
    sock = where if isinstance(where, socket.socket) else socket.socket(socket.AF_UNIX)
    try:
        if not isinstance(where, socket.socket):
            sock.settimeout(HANDSHAKE)
            sock.connect(where)
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(HANDSHAKE), 0))
        pipe = Pipe(sock.detach())
    except BaseException:
        sock.close()
        raise
    try:
        first, second = (answer_challenge, deliver_challenge) if client else (deliver_challenge, answer_challenge)
        first(pipe, key)
        second(pipe, key)
    except BlockingIOError:
        pipe.close()
        raise TimeoutError("no answer") from None
    except (OSError, EOFError, AuthenticationError, ValueError) as exc:
        pipe.close()
        if isinstance(exc, (EOFError, ConnectionResetError)):
            raise  # a relay ending as the worker came
        raise AuthenticationError(str(exc)) from None
    # the handshake done, calls wait as long as they take (a blocking read: its own deadline)
    socket.socket(fileno=os.dup(pipe.fileno())).setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                                          struct.pack("ll", 0, 0))
    return pipe


def _start_relay(conn: Relayed) -> None:
    """Start this node's relay unless one holds its lock (it serves, or is starting): the relay is
    handed the lock taken here, and outlives its starter (any worker of the node may end first)."""
    with open(conn.relay.with_suffix(".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        subprocess.Popen([sys.executable, *SAFE_MODULE, "d4p_hpc.mappings.redis.relay", "--connection",
                          os.path.abspath(conn.source), "--lock-fd", str(lock.fileno())],
                         stdin=subprocess.DEVNULL, pass_fds=(lock.fileno(),), cwd=os.sep)


# --- the relay -----------------------------------------------------------------------------------
def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def _id(entry_id) -> tuple[int, int]:
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


class _Watcher:
    """One blocking ``XREAD`` for every read the relay's workers wait on.

    An entry wakes one waiting worker per stream, the one waiting longest, and the stream is not
    watched again until that worker has read (:meth:`read_done`): if its read left the stream
    drained, the others' reads would find nothing, so they now wait for what comes after; if not,
    the next one is woken. Waking them all would cost each entry one read per idle worker.
    """

    def __init__(self, conn: Connection, commands) -> None:
        self.conn = conn
        self.commands = commands
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.waiting: dict[int, tuple[dict, threading.Event]] = {}
        self.woken: dict[int, str] = {}  # a woken waiter -> the stream it was woken for
        self.busy: set[str] = set()  # streams whose woken waiter has not read yet
        self.generation = self.seen = self.tokens = 0
        self.blocked: int | None = None  # the watcher's client id while it may block
        self.watching: dict = {}  # stream -> the entry its read returns what comes after
        self.block = int(settings.claim_idle() * 1000)
        threading.Thread(target=self._run, name="d4p-relay-watcher", daemon=True).start()

    def wait(self, after: dict, timeout: float) -> set[str]:
        """Return when one of the streams in ``after`` has an entry past its id, or after ``timeout``;
        return the stream this waiter was woken for (its to :meth:`read_done`), if any."""
        event = threading.Event()
        after = {_text(key): entry for key, entry in after.items()}
        with self.lock:
            self.tokens += 1
            token = self.tokens
            self.waiting[token] = (after, event)
            # what the watcher watches already (the same streams, from no later entry) wakes this one too:
            # idle workers' reads and heartbeats do not make it look again, each time, for nothing
            covered = all(key in self.watching and _id(self.watching[key]) <= _id(entry)
                          for key, entry in after.items())
            generation = self._changed(not covered)
        self._look_again(generation, event)
        event.wait(timeout)
        with self.lock:
            self.waiting.pop(token, None)
            stream = self.woken.pop(token, None)
        return {stream} if stream else set()

    def read_done(self, held: set[str], drained: dict) -> None:
        """A waiter has read: ``drained`` streams (name -> last entry) had nothing more for it, and the
        streams it ``held`` may be watched again."""
        with self.lock:
            for key, last in drained.items():
                for after, _ in self.waiting.values():
                    if key in after and _id(after[key]) < _id(last):
                        after[key] = last
            released = held & self.busy
            self.busy -= released
            generation = self._changed(bool(released))
        if released:
            self._look_again(generation)

    def _changed(self, changed: bool) -> int:
        """(Lock held.) Note that the watcher must look again; return the generation it must reach."""
        if changed:
            self.generation += 1
            self.changed.notify()
        return self.generation

    def _look_again(self, generation: int, event: threading.Event | None = None) -> None:
        """Make sure the watcher reads with what was noted: unblock its read if it was blocked already."""
        while event is None or not event.is_set():
            with self.lock:
                if self.seen >= generation:
                    return
                blocked = self.blocked
            if blocked is not None and self.commands.client_unblock(blocked):
                return
            time.sleep(0.001)

    def _watched(self) -> dict:
        """(Lock held.) stream -> the earliest entry a waiter waits after, of the streams nobody reads now."""
        ids: dict = {}
        for after, _ in self.waiting.values():
            for key, entry in after.items():
                if key not in self.busy and (key not in ids or _id(entry) < _id(ids[key])):
                    ids[key] = entry
        return ids

    def _run(self) -> None:
        redis = import_redis()
        # one connection, made when first needed: a Redis this node cannot reach is the workers' to report
        client = self.conn.client(pool_size=1)
        me = None
        while True:
            with self.lock:
                while not self._watched():
                    self.seen = self.generation
                    self.changed.wait()
            try:
                if me is None:
                    me = client.client_id()
                with self.lock:
                    ids = self._watched()
                    self.seen, self.blocked, self.watching = self.generation, me, ids
                got = client.xread(ids, count=1, block=self.block) if ids else None
            except redis.RedisError:
                # Redis unreachable or gone: every waiting worker reads again, which tells it so
                me, got = None, None
                with self.lock:
                    self.blocked, self.watching = None, {}
                    for _, event in self.waiting.values():
                        event.set()
                    self.waiting.clear()
                    self.busy.clear()
                time.sleep(RESTART)
                continue
            with self.lock:
                self.blocked, self.watching = None, {}
                for stream in {_text(stream) for stream, _ in got or []} - self.busy:
                    first = min((t for t, (after, _) in self.waiting.items() if stream in after), default=None)
                    if first is not None:
                        self.waiting.pop(first)[1].set()
                        self.woken[first] = stream
                        self.busy.add(stream)


class Relay:
    """Serve the workers of this node over ``path`` with the connections of ``conn``."""

    def __init__(self, conn: Connection, path: Path) -> None:
        self.conn, self.path = conn, path
        self.commands = conn.client(pool_size=EXECUTORS)
        self.scripts: dict[str, Any] = {}
        self.watcher = _Watcher(conn, self.commands)
        self.clients = 0
        self.served = threading.Event()
        self.lock = threading.Lock()

    def serve(self) -> None:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        listener.listen(1024)  # a node's workers all connect at its start: room for them all
        threading.Thread(target=self._first_client, daemon=True).start()
        key = _authkey(self.conn)
        while True:
            try:
                sock, _ = listener.accept()
            except OSError as exc:  # out of descriptors, say: the workers connected go on
                print(f"relay on {socket.gethostname()}: cannot accept a worker ({exc})", flush=True)
                time.sleep(1)
                continue
            with self.lock:
                self.clients += 1
            self.served.set()
            threading.Thread(target=self._handle, args=(sock, key), daemon=True).start()

    def _first_client(self) -> None:
        if not self.served.wait(FIRST_CLIENT):
            self._end()

    def _end(self) -> None:
        # both names go, the lock's while it is held: a worker that opened it just now takes a lock
        # on a file nobody else will find, and its relay serves it (the budget has room for that)
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".lock").unlink(missing_ok=True)
        os._exit(0)

    def _handle(self, sock: socket.socket, key: bytes) -> None:
        pipe = None
        try:
            pipe = _handshake(sock, key, client=False)
            while True:
                request = pipe.recv()
                try:
                    reply = (True, self._do(*request))
                except Exception as exc:  # the caller's, as redis-py raised it
                    reply = (False, exc)
                try:
                    pipe.send(reply)
                except (TypeError, AttributeError, pickle.PicklingError) as exc:  # an exception that does not pickle
                    pipe.send((False, import_redis().RedisError(f"{reply[1]!r} ({exc})")))
        except (OSError, EOFError, TimeoutError, AuthenticationError) as exc:
            if pipe is None:  # a peer that did not know the key, or said nothing
                print(f"relay on {socket.gethostname()}: refused a connection ({exc})", flush=True)
        finally:
            if pipe is not None:
                pipe.close()
            with self.lock:
                self.clients -= 1
                if not self.clients:  # the node's last worker has gone
                    self._end()

    def _do(self, kind: str, *rest):
        if kind == "pipeline":
            transaction, calls = rest
            pipe = self.commands.pipeline(transaction=transaction)
            for name, args, kwargs in calls:
                getattr(pipe, name)(*args, **kwargs)
            return pipe.execute()
        if kind == "script":
            text, keys, args = rest
            if text not in self.scripts:
                self.scripts[text] = self.commands.register_script(text)
            return self.scripts[text](keys=keys, args=args)
        name, args, kwargs = rest
        if name in ("xread", "xreadgroup") and kwargs.get("block"):
            return self._blocking_read(name, args, dict(kwargs))
        return getattr(self.commands, name)(*args, **kwargs)

    def _blocking_read(self, name: str, args: tuple, kwargs: dict):
        """What the blocking read would return, with no connection held while it waits."""
        deadline = time.monotonic() + kwargs.pop("block") / 1000
        held: set[str] = set()
        while True:
            drained: dict = {}
            try:
                if name == "xread":
                    streams: dict = kwargs["streams"] if "streams" in kwargs else args[0]
                    got = self.commands.xread(*args, **kwargs)
                    after = dict(streams)
                else:
                    streams = kwargs["streams"] if "streams" in kwargs else args[2]
                    # the last entries and the read in one step: whatever comes after them is news
                    pipe = self.commands.pipeline(transaction=True)
                    for key in streams:
                        pipe.xrevrange(key, count=1)
                    pipe.xreadgroup(*args, **kwargs)
                    *lasts, got = pipe.execute()
                    after = {_text(key): last[0][0] if last else "0-0"
                             for key, last in zip(streams, lasts, strict=True)}
                    count = kwargs.get("count")
                    read = {_text(stream): len(entries) for stream, entries in got or []}
                    drained = {key: last for key, last in after.items() if not count or read.get(key, 0) < count}
            finally:
                self.watcher.read_done(held, drained)
            left = deadline - time.monotonic()
            if got or left <= 0:
                return got
            held = self.watcher.wait(after, left)


def run_relay(connection: str, lock: int) -> None:
    """Be this node's relay for the Redis of ``connection``, holding the node's relay lock ``lock``
    (a descriptor the starting worker locked: the lock is this process's now)."""
    conn = read_connection_file(connection)
    path = socket_path(conn)
    if private_folder(path.parent) is not None:
        return  # its workers say why
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already (inherited): this only checks it
    except BlockingIOError:
        return
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    path.unlink(missing_ok=True)  # a relay killed before it could remove it
    Relay(conn, path).serve()


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--connection", type=click.Path(dir_okay=False), required=True,
              help="Connection file written by python -m d4p_hpc.mappings.redis.server.")
@click.option("--lock-fd", type=int, required=True, help="Descriptor of the node's relay lock, locked.")
def main(connection: str, lock_fd: int) -> None:
    """Relay the Redis calls of this node's workers (started by the first of them)."""
    run_relay(connection, lock_fd)


if __name__ == "__main__":
    main(prog_name="python -m d4p_hpc.mappings.redis.relay")
