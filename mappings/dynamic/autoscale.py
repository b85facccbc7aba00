"""The pool-size policy of dyn_auto_multi and dyn_auto_redis.

Every :data:`TICK` seconds the driver looks at the backlog (tasks queued and
not yet finished) and the mean cost of a task measured so far, and sizes the
pool so that it would drain the backlog in about :data:`DRAIN_SECONDS`::

    wanted = ceil(backlog * mean_task_seconds / DRAIN_SECONDS), within [1, maximum]
             and never more workers than queued tasks

Before any task has finished the cost is unknown and ``wanted`` is one worker
per :data:`~d4p_hpc.mappings.dynamic.tasks.ENTRY_TASKS` queued tasks. The pool grows
at once (work is waiting) and shrinks by one worker per :data:`SHRINK_AFTER`
seconds of lower demand (so a short lull does not stop and restart workers).
Workers outside the pool park: they finish their unit and take no more work
until they are needed again or the run ends, waiting on their control queue or
stream meanwhile (a Redis worker reads the pool twice a second, see
:mod:`d4p_hpc.mappings.redis.broker`).
"""

from __future__ import annotations

import math

from d4p_hpc.mappings.dynamic.tasks import ENTRY_TASKS

TICK = 0.25
DRAIN_SECONDS = 1.0
SHRINK_AFTER = 1.0


class Autoscaler:
    """Pool size over time, by the policy above.

    Parameters
    ----------
    maximum
        Largest pool (``-n``).
    t0
        Start time of the run, for the timeline.
    """

    def __init__(self, maximum: int, t0: float) -> None:
        self.maximum = maximum
        self.size = 1
        self.t0 = t0
        self.timeline: list[list[float]] = [[0.0, 1]]
        self._lower_since: float | None = None

    def wanted(self, backlog: int, tasks_done: int, busy_seconds: float) -> int:
        """Pool size the backlog calls for, before hysteresis."""
        if backlog <= 0:
            return 1
        if tasks_done and busy_seconds > 0:
            need = math.ceil(backlog * (busy_seconds / tasks_done) / DRAIN_SECONDS)
        else:
            need = math.ceil(backlog / ENTRY_TASKS)
        return max(1, min(self.maximum, need, backlog))

    def update(self, now: float, backlog: int, tasks_done: int, busy_seconds: float) -> int:
        """Apply one tick; return the pool size and record any change in :attr:`timeline`."""
        want = self.wanted(backlog, tasks_done, busy_seconds)
        size = self.size
        if want > size:
            size, self._lower_since = want, None
        elif want < size:
            if self._lower_since is None:
                self._lower_since = now
            elif now - self._lower_since >= SHRINK_AFTER:
                size, self._lower_since = size - 1, now
        else:
            self._lower_since = None
        if size != self.size:
            self.size = size
            self.timeline.append([round(now - self.t0, 3), size])
        return size

    def metrics(self, now: float) -> dict:
        """``pool_size`` timeline ``[[seconds since start, workers], ...]`` and the policy's name."""
        return {"pool_size": self.timeline + [[round(now - self.t0, 3), self.size]],
                "pool_max": self.maximum, "autoscale_policy": "drain-backlog-in-1s"}
