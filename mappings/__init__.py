"""The mapping runtimes, by name, and the contract each one keeps.

Importing this package is cheap: a mapping's module (and mpi4py or redis with it) is
imported only when that mapping runs, so the submission side reads :data:`MAPPINGS` freely.

The contract. A mapping is a :class:`Mapping` here plus a module in this package with

``run(ctx) -> dict``
    Run the prepared :class:`~d4p_hpc.mappings.runtime.runner.RunContext` and return the final run
    record (``state``, ``exit_code``, ...), the one ``run.json`` holds. It owns every process it
    starts: forked children, MPI ranks (``mpi`` outside an MPI world starts ``mpiexec`` itself),
    Redis workers; none outlives it (:mod:`d4p_hpc.supervisor`).

and, optionally,

``validate(plan, name)``
    Refuse a plan the mapping cannot run (stateful PEs under dyn_*), before anything runs.
``processes(requested) -> int | None``
    The process count the plan is built for, when it is not ``-n`` (mpi inside an MPI world:
    the world's size); None: no opinion.
``exit(code)``
    Leave the process after the run (mpi: without MPI_Finalize, which could hang after a failure).

Nothing else is looked up on a module: the CLI and the job scripts know a mapping only
through this table and those four names.

What a mapping needs where it runs (mpi4py and an MPI launcher; redis-py and ``redis-server``)
is declared here too, as :class:`Need` s in its table entry, and :meth:`Mapping.check` looks for
them without importing them: ``d4p-hpc run`` (and ``--check``) before anything starts, and so
``submit``/``render``, which run ``d4p-hpc run --check`` in the job's own environment
(:mod:`d4p_hpc.submission.precheck`). The program that starts a job's ranks or workers is the
launch plan's (``srun`` on Slurm): that check is told it with :data:`LAUNCHER_ENV`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from d4p_hpc.errors import UnknownMappingError, UsageError
from d4p_hpc.supervisor import inside_mpi_world

#: set by a job's check script (``templates/common/check.sh.j2``) to the program its launch plan
#: starts the ranks or workers with (empty: it forks them, or starts none); unset, a run needs
#: what it starts itself: ``mpiexec`` (mpi outside an MPI world), nothing else
LAUNCHER_ENV = "D4P_HPC_CHECK_LAUNCHER"


class MissingNeedError(UsageError):
    """A mapping needs a Python package or a program that is not there."""


@dataclass(frozen=True)
class Need:
    """Something a mapping needs where it runs: a Python package or a program, and how to get it.

    Attributes
    ----------
    what
        How messages name it.
    install
        What to do when it is missing.
    module
        The package the run's interpreter must find (looked up, not imported: importing mpi4py
        initialises MPI).
    programs
        Or: the programs, one of which must be on PATH.
    option, env
        The run option, then the environment variable, that name the program instead.
    unless
        Run options that make it unneeded (``--redis URL``: no redis-server of our own).
    launcher
        It is the program that starts the ranks or workers: a job's check names it (:data:`LAUNCHER_ENV`).
    """

    what: str
    install: str
    module: str | None = None
    programs: tuple[str, ...] = ()
    option: str | None = None
    env: str | None = None
    unless: tuple[str, ...] = ()
    launcher: bool = False

    def missing(self, options: dict[str, Any]) -> str | None:
        """Why it is not there (None: it is), given the run's options."""
        if any(options.get(name) for name in self.unless):
            return None
        if self.module is not None:
            try:
                found = importlib.util.find_spec(self.module) is not None
            except (ImportError, ValueError):  # a broken install
                found = False
            return None if found else f"which {sys.executable} cannot import"
        given = (options.get(self.option) if self.option else None) or (os.environ.get(self.env) if self.env else None)
        if given:
            return None if shutil.which(given) else f"and {given} is not found"
        return None if any(shutil.which(p) for p in self.programs) else "which is not on PATH"

    def for_run(self, chosen: str | None) -> Need | None:
        """This need as the run at hand has it (None: not needed): a launcher is the one ``chosen``
        (empty: none; None: the run starts its own, if it has :attr:`programs`)."""
        if not self.launcher:
            return self
        if chosen is None:
            return self if self.programs else None
        return Need(chosen, LAUNCHERS.get(chosen, f"install {chosen}, or choose another --launcher"),
                    programs=(chosen,), launcher=True) if chosen else None


MPI4PY = Need("mpi4py", "pip install 'd4p-hpc[mpi]' (or pip install mpi4py; it builds against an MPI library: "
                        "apt install libopenmpi-dev, or load your cluster's MPI module first)", module="mpi4py")
MPI_LAUNCHER = Need("an MPI launcher (mpiexec or mpirun)",
                    "apt install openmpi-bin, or load your cluster's MPI module", programs=("mpiexec", "mpirun"),
                    launcher=True)
#: the Redis mappings' workers: forked by the run itself, unless a job starts them (srun, mpiexec)
WORKER_LAUNCHER = Need("a launcher", "", launcher=True)
REDIS_PY = Need("redis-py", "pip install 'd4p-hpc[redis]' (or pip install redis)", module="redis")
REDIS_BINARY = Need("redis-server", "apt install redis-server or conda install redis, or give its path with "
                                    "--redis-server PATH or $D4P_HPC_REDIS_SERVER", programs=("redis-server",),
                    option="redis_server", env="D4P_HPC_REDIS_SERVER", unless=("redis_url", "redis_connection"))
#: how to get each program a job may start its ranks or workers with
LAUNCHERS = {"srun": "it comes with Slurm: submit from a login node of the cluster, or choose --launcher mpiexec",
             "mpiexec": MPI_LAUNCHER.install}


@dataclass(frozen=True)
class Mapping:
    """What the rest of d4p-hpc knows about a mapping."""

    name: str
    module: str
    #: how a job script launches it: "single" process, "mpi" ranks, or "redis" (Redis and workers)
    launch: str
    #: whether ``-n`` counts processes it starts on this host (not simple's one)
    forks: bool = True
    #: how its checkpoints keep PE states: by "instance" (placed instances), or by "worker" (the
    #: copies each worker of a dynamic mapping has); states move only between mappings of one kind
    states: str = "worker"
    #: what it needs where it runs (see :meth:`check`)
    needs: tuple[Need, ...] = ()
    #: a root gets the instances it asks for, its calls spread over them once it is found stateless
    #: (:mod:`~d4p_hpc.mappings.runtime.spread`); the dynamic mappings spread them over the workers
    roots_spread: bool = False

    def load(self) -> ModuleType:
        """Import the module that runs it (mpi4py or redis come with it)."""
        return importlib.import_module(f"d4p_hpc.mappings.{self.module}")

    def processes(self, requested: int | None) -> int:
        """The process count the run's plan is built for."""
        hook = getattr(self.load(), "processes", None)
        chosen = hook(requested) if hook is not None else None
        if chosen is not None:
            return chosen
        return (requested or os.cpu_count() or 1) if self.forks else 1

    def check(self, options: dict[str, Any]) -> None:
        """Raise :class:`MissingNeedError` naming the first of its :attr:`needs` missing here, and how to get it.

        ``options`` are the run's (``redis_url``, ``redis_server``, ...). A launcher is needed only
        outside an MPI world (inside one, it has started this process), and in a job's check it is
        the one :data:`LAUNCHER_ENV` names.
        """
        chosen = "" if inside_mpi_world() else os.environ.get(LAUNCHER_ENV)
        for need in self.needs:
            here = need.for_run(chosen)
            why = here.missing(options) if here is not None else None
            if here is not None and why is not None:
                role = f" to start its {'ranks' if self.launch == 'mpi' else 'workers'}" if here.launcher else ""
                raise MissingNeedError(f"the {self.name} mapping needs {here.what}{role}, {why}: {here.install}")

    def validate(self, plan: Any) -> None:
        hook = getattr(self.load(), "validate", None)
        if hook is not None:
            hook(plan, self.name)

    def run(self, ctx: Any) -> dict:
        return self.load().run(ctx)

    def exit(self, code: int) -> None:
        getattr(self.load(), "exit", sys.exit)(code)


# The in-job entry points of the Redis mappings, which job scripts start by module name.
REDIS_SERVER = "d4p_hpc.mappings.redis.server"
REDIS_WORKER = "d4p_hpc.mappings.redis.worker"

#: The Redis connections a worker holds: its main loop's blocking read, its heartbeat's blocking read
#: of the run's end, and one for its other commands (counted: tests/runs/test_redis_connections.py)
WORKER_CONNECTIONS = 3
#: ... unless a job's first node cannot hold that: then each node's workers share a relay
#: (:mod:`d4p_hpc.mappings.redis.relay`), which holds this many, however many workers the node runs:
#: a pool of 4 for commands and its watcher's one blocking read
RELAY_CONNECTIONS = 5
#: ... and the rest of a run: the driver's two, the supervisor's, and room for a user looking in
#: (``redis-cli``) and for a worker reconnecting before Redis has seen its old connection close
OTHER_CONNECTIONS = 16
#: file descriptors Redis keeps for itself beyond its clients (redis.conf: "maxclients")
REDIS_RESERVED_FDS = 32


def connections(workers: int, nodes: int | None = None) -> int:
    """The Redis clients a run of ``workers`` workers needs: the per-job Redis's ``maxclients``.
    ``nodes``: a job's, whose workers share one relay per node; None: each worker connects itself."""
    held = RELAY_CONNECTIONS * min(nodes, workers) if nodes is not None else WORKER_CONNECTIONS * workers
    return held + OTHER_CONNECTIONS


def files_needed(workers: int, nodes: int | None = None) -> int:
    """The open-files hard limit the per-job Redis of ``workers`` workers needs where it runs."""
    return connections(workers, nodes) + REDIS_RESERVED_FDS


def budget(workers: int, nodes: int | None = None) -> str:
    """How :func:`files_needed` comes, for a message."""
    held = f"{RELAY_CONNECTIONS} per node's relay" if nodes is not None else f"{WORKER_CONNECTIONS} per worker"
    return (f"{connections(workers, nodes):,} connections to its Redis ({held}, {OTHER_CONNECTIONS} for the rest), "
            f"so an open-files hard limit of at least {files_needed(workers, nodes):,}")


MAPPINGS: dict[str, Mapping] = {m.name: m for m in (
    Mapping("simple", "static.simple", "single", forks=False, states="instance"),
    Mapping("multi", "static.multi", "single", states="instance", roots_spread=True),
    Mapping("mpi", "static.mpi", "mpi", states="instance", needs=(MPI4PY, MPI_LAUNCHER), roots_spread=True),
    Mapping("dyn_multi", "dynamic.dyn_multi", "single"),
    Mapping("dyn_auto_multi", "dynamic.dyn_multi", "single"),
    *(Mapping(name, module, "redis", needs=(REDIS_PY, REDIS_BINARY, WORKER_LAUNCHER)) for name, module in (
        ("dyn_redis", "redis.dyn_redis"), ("dyn_auto_redis", "redis.dyn_redis"),
        ("hybrid_redis", "redis.hybrid_redis"))),
)}


def get(name: str) -> Mapping:
    """The mapping called ``name``; an error listing the mappings if there is none."""
    try:
        return MAPPINGS[name]
    except KeyError:
        raise UnknownMappingError(f"unknown mapping {name!r}; choose one of: {', '.join(MAPPINGS)}") from None
