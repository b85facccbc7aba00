"""``hybrid_redis``: stateless PEs run as tasks on any worker, stateful PEs as fixed instances.

A stateful PE (an input grouped by a key list, ``"global"`` or ``"all"``, or
``pe.stateful = True``) gets the instance count of the plan, as under the mpi
mapping. Each instance has its own Redis stream and is hosted by one worker,
which claims it when it joins. Items reach an instance through the core's
routes, i.e. the same deterministic group-by hash as the mpi mapping, so
every key meets one instance and its state is exact. When every PE upstream
of a stateful PE has finished, an end-of-stream entry is appended to each
instance's stream; the instance runs ``postprocess`` once, after all its
items, and only then is the PE finished (see :mod:`d4p_hpc.mappings.redis.keys`).
A worker that hosts an instance cannot be replaced (its state is gone): if
it dies the run fails, saying which instance was lost.

The driver and workers are those of :mod:`d4p_hpc.mappings.redis.dyn_redis`.
"""

from d4p_hpc.mappings.redis.dyn_redis import run, validate

__all__ = ["run", "validate"]
