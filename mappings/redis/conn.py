"""How to reach a Redis server: the 0600 connection file, ``--redis URL``, and clients.

The per-job Redis started by :mod:`d4p_hpc.mappings.redis.server` is described
by a JSON connection file (``{"host", "port", "password"}``) in the results
directory; workers on any node need nothing else. This module writes and reads
it. ``--redis URL`` names an existing server instead.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from d4p_hpc import settings
from d4p_hpc.errors import RedisError, UsageError

#: Password for ``--redis URL`` when the URL carries none (keeps it out of ``ps``).
PASSWORD_ENV = "D4P_HPC_REDIS_PASSWORD"
#: Seconds a reply may take beyond the claim idle time before a client gives up on Redis
REPLY_SLACK = 10.0


def import_redis():
    """Import redis-py, or say how to install it.

    Returns
    -------
    module
        The ``redis`` package.
    """
    try:
        import redis
    except ImportError:
        raise RedisError("the Redis mappings need the redis Python package: "
                         "pip install 'd4p-hpc[redis]'") from None
    return redis


@dataclass(frozen=True)
class Connection:
    """Address and credentials of one Redis server.

    Parameters
    ----------
    host, port
        Where the server listens, as seen from any node of the job.
    password
        ``requirepass`` of the server, or None for a server without one.
    db
        Database number (only for ``--redis URL``; the per-job Redis uses 0).
    username
        ACL user name, or None for the default user.
    source
        Where these details came from, for error messages.
    relayed
        Whether the workers share one relay per node (:mod:`d4p_hpc.mappings.redis.relay`):
        the per-job Redis says so where its node cannot hold each worker's own connections.
    """

    host: str
    port: int
    password: str | None = field(default=None, repr=False)
    db: int = 0
    username: str | None = None
    source: str = field(default="", compare=False)
    relayed: bool = False
    #: whether the client :func:`connect` checked is the one to use rather than a new one with retries
    #: (a relay's: the relay ends when its last client closes)
    keep_probe: ClassVar[bool] = False

    def as_dict(self) -> dict:
        """The fields written to a connection file."""
        return {"host": self.host, "port": self.port, "password": self.password, "relayed": self.relayed}

    def display(self) -> str:
        """``host:port`` for messages; never shows the password."""
        return f"{self.host}:{self.port}"

    def client(self, no_retry: bool = False, pool_size: int | None = None, **options):
        """A new ``redis.Redis`` client (not yet connected).

        Parameters
        ----------
        no_retry
            Fail at the first error instead of redis-py's retries with backoff,
            which only delay a wrong password or a dead server by seconds.
        pool_size
            At most this many connections, shared by the client's threads (each waits for a free one).
        **options
            Passed to ``redis.Redis``, overriding the defaults.
        """
        redis = import_redis()
        # a reply may take as long as the longest blocking read (half the claim idle time); redis-py 8's
        # default of 5 s cut the 5 s reads of idle workers, which reconnected every 5 s and gave up (and
        # left the run) after a few: the timeout is for a Redis that stopped answering, not for a wait
        kwargs = dict(host=self.host, port=self.port, db=self.db, password=self.password,
                      username=self.username, socket_connect_timeout=10, socket_keepalive=True,
                      socket_timeout=settings.claim_idle() + REPLY_SLACK)
        if no_retry:
            from redis.backoff import NoBackoff
            from redis.retry import Retry
            kwargs["retry"] = Retry(NoBackoff(), 0)
        kwargs.update(options)
        if pool_size:
            retry = kwargs.pop("retry", None)
            return redis.Redis(connection_pool=redis.BlockingConnectionPool(max_connections=pool_size, timeout=None,
                                                                            **kwargs), retry=retry)
        return redis.Redis(**kwargs)


def read_connection_file(path: str | os.PathLike) -> Connection:
    """Read a connection file written by the per-job Redis supervisor.

    Parameters
    ----------
    path
        The ``redis.json`` file.

    Raises
    ------
    RedisError
        The file is missing or malformed.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return Connection(host=str(data["host"]), port=int(data["port"]), password=data.get("password"),
                          source=str(path), relayed=data.get("relayed") is True)
    except FileNotFoundError:
        raise RedisError(f"Redis connection file {path} does not exist: start the per-job Redis "
                         f"first (python -m d4p_hpc.mappings.redis.server --results DIR)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RedisError(f"Redis connection file {path} is unreadable or malformed ({exc}): "
                         f"it must be the JSON {{host, port, password}} the supervisor writes") from None


def write_connection_file(path: Path, conn: Connection) -> None:
    """Create ``path`` holding ``conn`` as JSON, mode 0600 from the first byte, never overwriting.

    The content goes to a private temporary name first and is then hard-linked
    into place, so readers polling for ``path`` never see a partial file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(conn.as_dict(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            if not _abandoned(path):
                raise
            # its Redis was killed with everything it started (SIGKILL of the job): its janitor too
            path.unlink(missing_ok=True)
            os.link(tmp, path)
    except FileExistsError:
        raise RedisError(f"{path} already exists: another Redis serves this results directory; "
                         f"use a new --results directory or delete the stale file") from None
    finally:
        tmp.unlink(missing_ok=True)


def _abandoned(path: Path) -> bool:
    """Whether connection file ``path`` names a Redis that is gone: its address refuses connections.
    Anything else (a file that cannot be read, no answer in time, a listener) counts as in use."""
    try:
        data = json.loads(path.read_text())
        address = (str(data["host"]), int(data["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False
    try:
        socket.create_connection(address, timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def parse_url(url: str) -> Connection:
    """Parse ``--redis URL``: ``redis://[[user]:password@]host[:port][/db]`` or ``host[:port]``.

    A URL without a password takes it from ``$D4P_HPC_REDIS_PASSWORD``, so that
    it need not appear on a command line.

    Raises
    ------
    UsageError
        The URL cannot be parsed.
    """
    text = url if "://" in url else f"redis://{url}"
    parts = urlsplit(text)
    try:
        if parts.scheme != "redis":
            raise ValueError(f"scheme {parts.scheme!r} is not supported (only redis://)")
        if not parts.hostname:
            raise ValueError("no host")
        path = parts.path.strip("/")
        db = int(path) if path else 0
        port = parts.port or 6379
    except ValueError as exc:
        raise UsageError(f"bad --redis URL {url!r} ({exc}): use redis://[:PASSWORD@]HOST[:PORT][/DB]") from None
    password = unquote(parts.password) if parts.password is not None else os.environ.get(PASSWORD_ENV)
    username = unquote(parts.username) if parts.username else None
    return Connection(host=parts.hostname, port=port, password=password or None, db=db,
                      username=username, source="--redis")


def connect(conn: Connection, **options):
    """Return a client to ``conn`` after checking it answers PING.

    Parameters
    ----------
    conn
        The server to reach.
    **options
        Passed to :meth:`Connection.client`.

    Raises
    ------
    RedisError
        One line saying whether the server is unreachable or refused the password.
    """
    redis = import_redis()
    where = f"Redis at {conn.display()}" + (f" (from {conn.source})" if conn.source else "")
    probe = conn.client(**options, no_retry=True)
    try:
        probe.ping()
    except redis.AuthenticationError as exc:
        probe.close()
        why = "needs a password and none was given" if conn.password is None else f"refused the password ({exc})"
        raise RedisError(f"{where} {why}: use the connection file or password of that server") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        probe.close()
        raise RedisError(f"cannot reach {where} from {socket.gethostname()} ({exc}): is its "
                         f"redis-server still running, and is {conn.host} reachable from here?") from None
    if conn.keep_probe:
        return probe
    probe.close()
    return conn.client(**options)
