"""A private per-job ``redis-server``: started, supervised and always stopped by us.

The server listens on a free port of one address, requires a random password,
keeps nothing on disk, and is described by a 0600 connection file (written and
read by :mod:`d4p_hpc.mappings.redis.conn`). It is stopped when the context manager exits,
on an exception, Ctrl-C or SIGTERM, and, as a last resort on Linux, by the
kernel when the process that started it dies (``PR_SET_PDEATHSIG``, SIGKILL).

``redis-server`` itself ignores SIGTERM and SIGINT (it starts with them blocked): only we stop
it, with SHUTDOWN, then SIGKILL. A cancelled job's stop signal reaches every process on the
job's first node (Slurm: on every node; PBS without TM support: maybe none elsewhere), Redis
too where the scheduler tracks processes by cgroup, yet the run's driver needs Redis after it:
it tells the workers of other nodes to stop, waits for their last commit, collects their
metrics and cuts results that count twice. So the supervisor, stopped by a signal, keeps Redis
up until that is done (the driver forgets the run: no run is announced any more), nobody else
is connected, or :data:`RELEASE_TIMEOUT` has passed (:meth:`RedisServer.release`).

Supervisor entry point for job scripts::

    python -m d4p_hpc.mappings.redis.server --results DIR --bind 0.0.0.0 [--advertise HOST]
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click

from d4p_hpc import settings, supervisor
from d4p_hpc.errors import Command
from d4p_hpc.errors import RedisError
from d4p_hpc.results import Layout, make_private_dir
from d4p_hpc.mappings.runtime.process import die_with_parent
from d4p_hpc.mappings import REDIS_RESERVED_FDS
from d4p_hpc.mappings.redis.conn import Connection, import_redis, write_connection_file

#: Environment variable naming the ``redis-server`` binary when none is given.
BINARY_ENV = "D4P_HPC_REDIS_SERVER"
START_TIMEOUT = 20.0
#: how long Redis has, once asked to SHUTDOWN, before SIGKILL (it holds nothing on disk)
SHUTDOWN_WAIT = 2.0
#: how long the supervisor, stopped by a signal, keeps Redis for the run's final accounting: well
#: within the grace before the scheduler's SIGKILL (the driver waits less for its workers:
#: dyn_redis.CANCEL_WAIT)
RELEASE_TIMEOUT = supervisor.GRACE_SECONDS / 2
#: what redis-server starts with blocked: it acts on them by shutting down at once, but a
#: scheduler's cancel must leave it to us (see the module docstring)
_BLOCKED = {signal.SIGTERM, signal.SIGINT}
# not the walltime signal: the run needs its Redis to stop cleanly then
_STOP_SIGNALS = supervisor.CANCELS


def find_binary(binary: str | None = None) -> str:
    """Resolve the ``redis-server`` executable: argument, ``$D4P_HPC_REDIS_SERVER``, then PATH."""
    name = binary or os.environ.get(BINARY_ENV) or "redis-server"
    found = shutil.which(name)
    if not found:
        raise RedisError(f"redis-server not found ({name}): install it (Debian: apt-get install "
                         f"redis-server) or give its path with --redis-server PATH or ${BINARY_ENV}")
    return found


def resolve_bind(bind: str) -> str:
    """Turn ``bind`` (an IP address, a host name, or a network interface such as ``ib0``) into an IP."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(bind))
    if bind in {name for _, name in socket.if_nameindex()}:
        return _interface_ipv4(bind)
    try:
        return socket.gethostbyname(bind)
    except OSError:
        raise RedisError(f"cannot bind Redis to {bind!r}: not an IP address, interface or "
                         f"resolvable host name (try --bind 0.0.0.0)") from None


def _interface_ipv4(name: str) -> str:
    import fcntl
    import struct
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
        except OSError:
            raise RedisError(f"network interface {name} has no IPv4 address to bind Redis to") from None
    return socket.inet_ntoa(packed[20:24])


def _quote(path: Path) -> str:
    """``path`` as a double-quoted redis.conf string (paths may hold spaces)."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _redis_child(parent: int) -> None:  # pragma: no cover - runs in the child, seen by its effect
    """In the forked child, before exec: block the stop signals (the mask survives exec, and
    redis-server does not unblock them) and die with ``parent`` by SIGKILL, which no mask stops."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    die_with_parent(parent, signal.SIGKILL)


def _free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _remove_when_gone(path: Path) -> int:
    """Fork a janitor that deletes ``path`` once this process is gone, however it ends.

    Returns the write end of a pipe that only this process (and what it forks later) holds:
    the janitor reads it until end-of-file, which comes when every holder has exited, even by
    SIGKILL. It runs in its own session so that a kill of this process group spares it, holds
    no other file open, and leaves at once after the unlink. A password in a connection file
    must not outlive the Redis it opens.
    """
    # held open by the janitor, so that its inode cannot be reused by a file written after this
    # one is deleted (CI saw a stopped Redis's janitor delete the next file, its inode number reused)
    made = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # pragma: no cover - the child, seen by its effect
        try:
            os.setsid()
            low, high = sorted((made, read_end))
            os.closerange(3, low)
            os.closerange(low + 1, high)
            os.closerange(high + 1, 65536)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            while os.read(read_end, 64):
                pass
            with contextlib.suppress(OSError):
                # only the file it was made for: by now a new Redis of the same results directory
                # (a resume right after a stop) may have written its own
                now, was = os.stat(path), os.fstat(made)
                if (now.st_dev, now.st_ino) == (was.st_dev, was.st_ino):
                    path.unlink()
        finally:
            os._exit(0)
    os.close(made)
    os.close(read_end)
    os.set_inheritable(write_end, False)
    return write_end


class RedisServer:
    """Context manager running one private ``redis-server``.

    Parameters
    ----------
    results
        Results directory for the connection file (``redis.json``) and the
        server log (``logs/redis-server.log``); None keeps both private.
    bind
        Address, host name or interface to listen on: loopback for local runs,
        ``0.0.0.0`` in jobs.
    advertise
        Host name written to the connection file, which other nodes use;
        default: the bind address, or this host's name when bound to all.
    binary
        ``redis-server`` executable; see :func:`find_binary`.
    port
        Fixed port; default a free one.
    clients
        The clients the run needs (:func:`~d4p_hpc.mappings.connections`): Redis's
        ``maxclients``, which Redis lowers to fit its open-files limit; then it does not start
        (:class:`~d4p_hpc.errors.RedisError` naming the limit). Default: Redis's own (10,000).
    relay_clients
        The clients the run needs if its workers share one relay per node: where this node's
        open-files hard limit cannot hold ``clients``, they do (the connection file says so), and
        Redis takes these. The relay costs throughput (``benchmarks/README.md``), so it is used only
        where each worker's own connections do not fit.

    Notes
    -----
    Start it from the main thread (or one that lives as long as Redis should):
    on Linux the kernel stops Redis when the starting thread ends.
    """

    def __init__(self, results: str | os.PathLike | None = None, bind: str = "127.0.0.1",
                 advertise: str | None = None, binary: str | None = None, port: int | None = None,
                 clients: int | None = None, relay_clients: int | None = None):
        self.results = Path(results) if results is not None else None
        #: whether the workers share a relay per node: each one's connections would not fit here
        self.relayed = bool(clients and relay_clients and clients + REDIS_RESERVED_FDS > settings.host_nofile_limit())
        self.clients = relay_clients if self.relayed else clients
        self.bind = bind
        self.advertise = advertise
        self.binary = binary
        self.port = port
        self.connection: Connection | None = None
        #: the same server, as this host reaches it (loopback when bound to every address)
        self.local: Connection | None = None
        self.connection_file: Path | None = None
        self.log_file: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._private: Path | None = None
        self._janitor: int | None = None
        self._saved_handlers: dict = {}

    @property
    def pid(self) -> int | None:
        """Process id of the running ``redis-server``."""
        return self._proc.pid if self._proc else None

    def __enter__(self) -> Connection:
        self._install_signal_handlers()
        try:
            return self.start()
        except BaseException:
            self._restore_signal_handlers()
            raise

    def __exit__(self, *exc_info) -> None:
        try:
            self.stop()
        finally:
            self._restore_signal_handlers()

    def start(self) -> Connection:
        """Start Redis, wait until it answers PING, write the connection file.

        Returns
        -------
        Connection
            How to reach it (host is the advertised name).

        Raises
        ------
        RedisError
            No binary, port in use, or Redis did not come up.
        """
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Connection:
        binary = find_binary(self.binary)
        address = resolve_bind(self.bind)
        private = self._private = Path(tempfile.mkdtemp(prefix="d4p-redis-"))  # mkdtemp makes it 0700
        layout = Layout(self.results) if self.results is not None else None
        if layout is not None:
            make_private_dir(layout.directory)  # the run may not have made it yet: private from the start
            make_private_dir(layout.logs)
        log_file = self.log_file = (layout.logs if layout else private) / "redis-server.log"
        # created here, so that Redis appends to a private file rather than making a world-readable one
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        password = secrets.token_urlsafe(32)
        for attempt in range(3):
            port = self.port or _free_port(address)
            error = self._launch(binary, address, port, password, private, log_file)
            if error is None:
                break
            # another process can grab a free port between our check and Redis' bind: try another
            if self.port or "in use" not in str(error) or attempt == 2:
                raise error
        self.connection = Connection(host=self._advertised(address), port=port, password=password,
                                     source="per-job redis-server", relayed=self.relayed)
        if layout is not None:
            write_connection_file(layout.redis, self.connection)
            self.connection_file = layout.redis
            self._janitor = _remove_when_gone(self.connection_file)
        return self.connection

    def _advertised(self, address: str) -> str:
        if self.advertise:
            return self.advertise
        return socket.gethostname() if ipaddress.ip_address(address).is_unspecified else address

    def _launch(self, binary: str, address: str, port: int, password: str, private: Path,
                log_file: Path) -> RedisError | None:
        # the config, password included, goes on Redis' standard input (``redis-server -``): never on
        # the command line (ps shows it), never on disk, and never through a path, which Redis reads
        # as a glob (a PBS subjob's TMPDIR is /var/tmp/pbs.12[0].server: its [0] would match no file,
        # and Redis would start on its defaults, without a password)
        lines = [f"bind {address}", f"port {port}", f"requirepass {password}", "protected-mode yes",
                 'save ""', "appendonly no", f"dir {_quote(private)}", f"logfile {_quote(log_file)}",
                 "daemonize no", "databases 1", *([f"maxclients {self.clients}"] if self.clients else [])]
        # a file, not a pipe, for what Redis says before its log is open: a full pipe would block it
        with open(private / "stderr", "wb") as err:
            # own session: a terminal's Ctrl-C reaches us, and we stop Redis after the run has used it
            proc = self._proc = subprocess.Popen([binary, "-"], stdin=subprocess.PIPE,
                                                 stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                                 preexec_fn=functools.partial(_redis_child, os.getpid()))
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it exited at once: _wait_ready says why
            with proc.stdin:
                proc.stdin.write(("\n".join(lines) + "\n").encode())
        local = "127.0.0.1" if address == "0.0.0.0" else "::1" if address == "::" else address
        self.local = Connection(local, port, password)
        error = self._wait_ready(self.local, port, proc, private, log_file) or self._too_few_clients()
        if error is not None:
            self._terminate()
            return error
        # Redis writes nothing into its dir (no saves, no CONFIG REWRITE); its log is reopened for
        # every line, so the dir stays while the log is in it
        if self.results is not None:
            shutil.rmtree(private, ignore_errors=True)
        return None

    def _wait_ready(self, conn: Connection, port: int, proc: subprocess.Popen, private: Path,
                    log_file: Path) -> RedisError | None:
        redis = import_redis()
        # this loop retries, and must notice soon that Redis exited
        client = conn.client(no_retry=True, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return self._start_failure(port, proc, private, log_file)
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    if client.ping():
                        return None
                time.sleep(0.05)
        finally:
            client.close()
        return RedisError(f"redis-server did not answer PING within {START_TIMEOUT:.0f} s; "
                          f"see {log_file}")

    def _too_few_clients(self) -> RedisError | None:
        """Why Redis cannot take the run's clients: it lowered ``maxclients`` to fit its open-files
        limit, which it raises itself up to the hard limit, inherited from us (None if it can)."""
        if not self.clients or self.local is None:
            return None
        client = self.local.client(no_retry=True, socket_timeout=5, socket_connect_timeout=5)
        try:
            accepted = int(client.config_get("maxclients")["maxclients"])
        finally:
            client.close()
        if accepted >= self.clients:
            return None
        hard = settings.host_nofile_limit()
        return RedisError(f"the per-job Redis on {socket.gethostname()} can accept {accepted:,} clients, as the "
                          f"open-files hard limit there is {hard:,} (ulimit -Hn); the run needs {self.clients:,} "
                          f"(the workers' relays, or a run's own workers, and the rest): run fewer workers (a job: on "
                          f"fewer nodes), or ask for a hard limit of at least {self.clients + REDIS_RESERVED_FDS:,} "
                          f"where Redis runs (a job's first node)")

    def _start_failure(self, port: int, proc: subprocess.Popen, private: Path, log_file: Path) -> RedisError:
        stderr = (private / "stderr").read_text(errors="replace")
        with contextlib.suppress(OSError):
            stderr += log_file.read_text(errors="replace")
        if "Address already in use" in stderr:
            return RedisError(f"port {port} on {self.bind} is in use: leave the port out to "
                              f"pick a free one, or stop what listens there")
        last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "no output")
        return RedisError(f"redis-server exited with code {proc.returncode} at start: "
                          f"{last.strip()} (log: {log_file})")

    def wait(self, until: Callable[[], bool] = lambda: False) -> int | None:
        """Block until Redis exits by itself, and return its exit code; or until ``until()`` is true
        after a signal's handler ran, and return None.

        Not ``Popen.wait()``: Python runs a handler between two bytecodes, so a stop signal landing
        just before ``waitpid()`` blocks would be acted on only once Redis exits, which it does not
        by itself (a cancel then waits for the scheduler's SIGKILL). The signal's wakeup byte, written
        by the C handler into a pipe that ``select`` also watches, cannot be missed that way.
        Main thread only (as are signal handlers)."""
        proc = self._proc
        if proc is None:
            raise RedisError("redis-server is not running: start it first")
        wake_read, wake_write = os.pipe()
        for fd in (wake_read, wake_write):
            os.set_blocking(fd, False)
        pidfd = os.pidfd_open(proc.pid)
        previous = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        try:
            while proc.poll() is None:
                if until():
                    return None
                select.select([pidfd, wake_read], [], [])
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 512)  # (a call: the handler of what woke us has run after it)
            return proc.returncode
        finally:
            signal.set_wakeup_fd(previous)
            for fd in (pidfd, wake_read, wake_write):
                os.close(fd)

    def release(self, timeout: float = RELEASE_TIMEOUT) -> None:
        """Wait, after a stop signal, until the run using this Redis is done with it: no run is
        announced (its driver forgets the run once its final accounting is done, or none began),
        nobody but us is connected (the driver is gone, and every worker), Redis ended, or
        ``timeout`` seconds have passed. Polls every 50 ms; returns at once if Redis does not answer."""
        if self._proc is None or self.local is None:
            return
        from d4p_hpc.mappings.redis.keys import ANNOUNCE

        redis = import_redis()
        client = self.local.client(no_retry=True, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and self._proc.poll() is None:
                announced, clients = client.pipeline(transaction=False).exists(ANNOUNCE).info("clients").execute()
                if not announced or clients["connected_clients"] <= 1:
                    return
                time.sleep(0.05)
        except redis.RedisError:
            pass  # it does not answer: there is nothing to keep it for
        finally:
            client.close()

    def stop(self) -> None:
        """Stop Redis (SHUTDOWN, then SIGKILL), remove the connection file and private dir. Idempotent."""
        with supervisor.deferred():  # a second signal must not cut the cleanup short
            self._terminate()
            if self.connection_file is not None:
                self.connection_file.unlink(missing_ok=True)
                self.connection_file = None
            if self._janitor is not None:
                os.close(self._janitor)
                self._janitor = None
            if self._private is not None:
                shutil.rmtree(self._private, ignore_errors=True)
                self._private = None

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            self._shutdown_now()
            # it ignores SIGTERM (blocked): SIGKILL is the way out if it could not be asked
            supervisor.stop([proc], SHUTDOWN_WAIT, signum=None)

    def _shutdown_now(self) -> None:
        """Ask Redis to stop at once, keeping nothing."""
        if self.local is None:
            return
        client = self.local.client(no_retry=True, socket_timeout=1, socket_connect_timeout=1)
        try:
            client.shutdown(nosave=True)
        except import_redis().RedisError:
            pass  # the connection closing is the answer; otherwise SIGTERM stops it
        finally:
            client.close()

    def _restore_signal_handlers(self) -> None:
        # only where ours is still in place: a run that began since has its own (or ignores stops, having
        # ended): the saved default would let a late signal kill it before it records its end
        for signum, handler in self._saved_handlers.items():
            if signal.getsignal(signum) is _exit_on_signal:
                signal.signal(signum, handler)
        self._saved_handlers = {}

    def _install_signal_handlers(self) -> None:
        """Turn SIGTERM into SystemExit(143) while running, unless the caller handles it already."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._saved_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _exit_on_signal)


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


#: the stop signal the supervisor got, once it got one
_stopped: list[int] = []


def _request_stop(signum, frame):
    """Note the stop; the main flow acts on it. Not an exception raised here: a signal landing in
    code that swallows exceptions (logging's at-fork hook, as the janitor is forked) would lose the
    stop, and the supervisor would keep Redis for ever (found by an outside test)."""
    # one-shot: a job's supervisor often gets two (the scheduler's and the job script's at its end)
    for other in (*_STOP_SIGNALS, signal.SIGHUP):
        signal.signal(other, _ignore)
    _stopped.append(signum)


def _ignore(signum, frame):
    """Not SIG_IGN: Python reports a signal already pending when its handler became SIG_IGN."""


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--results", required=True, type=click.Path(file_okay=False),
              help="Results directory for redis.json and logs/.")
@click.option("--bind", default="127.0.0.1", show_default=True, help="IP, host name or interface (0.0.0.0 in jobs).")
@click.option("--advertise", help="Host name other nodes use [default: this host's name].")
@click.option("--redis-server", "binary", help=f"redis-server binary [default: ${BINARY_ENV}, else from PATH].")
@click.option("--port", type=click.IntRange(1, 65535), help="Fixed port [default: a free one].")
@click.option("--clients", type=click.IntRange(1, 2**31), help="Clients the run needs (maxclients) [default: "
              "Redis's, 10000].")
@click.option("--relay-clients", type=click.IntRange(1, 2**31), help="Clients it needs if its workers share a "
              "relay per node, which they do where --clients cannot fit [default: they never do].")
def main(results: str, bind: str, advertise: str | None, binary: str | None, port: int | None,
         clients: int | None, relay_clients: int | None) -> None:
    """Run a private per-job redis-server until SIGTERM, SIGINT or SIGHUP, then stop it once the
    run using it is done with it (at most RELEASE_TIMEOUT seconds later).

    Exits 0 after a requested stop; 1, with one ``Error:`` line, if Redis could not start or
    died by itself.
    """
    server = RedisServer(results, bind=bind, advertise=advertise, binary=binary, port=port, clients=clients,
                         relay_clients=relay_clients)
    for signum in (*_STOP_SIGNALS, signal.SIGHUP):
        signal.signal(signum, _request_stop)
    with server as conn:
        if _stopped:  # while it was starting: nobody has used it
            return
        click.echo(f"d4p-hpc: redis-server {server.pid} ready at {conn.display()}, connection file "
                   f"{server.connection_file}", err=True)
        code = server.wait(until=lambda: bool(_stopped))
        if code is None:
            server.release()
            return
        raise RedisError(f"redis-server exited by itself with code {code}; see {server.log_file}")


if __name__ == "__main__":
    main(prog_name="python -m d4p_hpc.mappings.redis.server")
