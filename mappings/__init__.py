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
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from d4p_hpc.errors import UnknownMappingError


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

MAPPINGS: dict[str, Mapping] = {m.name: m for m in (
    Mapping("simple", "static.simple", "single", forks=False, states="instance"),
    Mapping("multi", "static.multi", "single", states="instance"),
    Mapping("mpi", "static.mpi", "mpi", states="instance"),
    Mapping("dyn_multi", "dynamic.dyn_multi", "single"),
    Mapping("dyn_auto_multi", "dynamic.dyn_multi", "single"),
    Mapping("dyn_redis", "redis.dyn_redis", "redis"),
    Mapping("dyn_auto_redis", "redis.dyn_redis", "redis"),
    Mapping("hybrid_redis", "redis.hybrid_redis", "redis"),
)}


def get(name: str) -> Mapping:
    """The mapping called ``name``; an error listing the mappings if there is none."""
    try:
        return MAPPINGS[name]
    except KeyError:
        raise UnknownMappingError(f"unknown mapping {name!r}; choose one of: {', '.join(MAPPINGS)}") from None
