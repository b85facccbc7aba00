"""The mapping runtimes, by name. Importing this package is cheap: a mapping's module
(and mpi4py or redis with it) is imported only when that mapping runs."""

from __future__ import annotations

import importlib
from types import ModuleType

from d4p_hpc.errors import UnknownMappingError

# name -> (module, how a job launches it: "single" process, "mpi" ranks, or "redis" workers)
MAPPINGS: dict[str, tuple[str, str]] = {
    "simple": ("simple", "single"),
    "multi": ("multi", "single"),
    "mpi": ("mpi", "mpi"),
    "dyn_multi": ("dyn_multi", "single"),
    "dyn_auto_multi": ("dyn_multi", "single"),
    "dyn_redis": ("dyn_redis", "redis"),
    "dyn_auto_redis": ("dyn_redis", "redis"),
    "hybrid_redis": ("hybrid_redis", "redis"),
}


def check(name: str) -> str:
    """Return ``name`` if it is a mapping, else raise an error listing the mappings."""
    if name not in MAPPINGS:
        raise UnknownMappingError(f"unknown mapping {name!r}; choose one of: {', '.join(MAPPINGS)}")
    return name


def launch_kind(name: str) -> str:
    """How a job script launches mapping ``name``: "single", "mpi" or "redis"."""
    return MAPPINGS[check(name)][1]


def load(name: str) -> ModuleType:
    """Import and return the module that runs mapping ``name``."""
    return importlib.import_module(f"d4p_hpc.mappings.{MAPPINGS[check(name)][0]}")
