"""``dispel4py.new.monitoring``: wrappers that time a PE's work and log the averages.

``ProcessTimingPE(pe)`` is used in place of ``pe`` in the graph: it times every
``process`` call and, at the end, logs the average time per call through the
PE's ``log``. As in dispel4py, the wrapper becomes an instance of a class named
like the PE's, combining the wrapper and the PE's class, and shares the PE's
attributes (``__dict__``), so ids, connections and the writers a mapping sets
reach the wrapped PE too. Unlike dispel4py's, it survives being copied (the
mappings copy a PE per instance): a copy wraps a copy of the PE and shares
its attributes again. The wrapped PE's own ``_postprocess`` still runs after
the average is logged, and a PE that processed nothing logs no average
instead of dividing by zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Timer:
    """``with Timer() as t: ...`` leaves the elapsed wall time in ``t.secs``."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose

    def __enter__(self) -> Timer:
        self.start = time.time()
        return self

    def __exit__(self, *args: Any) -> None:
        self.end = time.time()
        self.secs = self.end - self.start


_COMBINED: dict[tuple[type, type], type] = {}


def _combined(wrapper: type, base: type) -> type:
    # one class per (wrapper, PE class), so copies of a wrapped PE share their type
    # (a dict, not functools.cache: mypy does not take a class for the Hashable the cache asks)
    combined = _COMBINED.get((wrapper, base))
    if combined is None:
        combined = _COMBINED.setdefault((wrapper, base),
                                        type(base.__name__, (wrapper, base), {"_wrapper_class": wrapper}))
    return combined


def _rewrap(wrapper: type, base: type[object], state: dict) -> MonitoringWrapper:
    pe = base.__new__(base)
    pe.__dict__.update(state)
    obj: MonitoringWrapper = object.__new__(_combined(wrapper, base))
    obj.__dict__ = pe.__dict__
    obj.baseObject = pe
    return obj


class MonitoringWrapper:
    """Base of the wrappers: becomes a combined instance sharing ``baseObject``'s attributes."""

    # set on the combined class (_combined); ``log`` comes from the wrapped PE's class, its other base
    _wrapper_class: type
    log: Callable[[str], None]

    def __init__(self, baseObject: Any) -> None:  # noqa: N803 - dispel4py's name
        self.__class__ = _combined(type(self), type(baseObject))
        self.__dict__ = baseObject.__dict__
        self.baseObject = baseObject

    def __reduce__(self) -> tuple:
        # the combined class has no importable name, and a plain copy would split the shared __dict__
        state = {k: v for k, v in self.__dict__.items() if k != "baseObject"}
        return _rewrap, (self._wrapper_class, type(self.baseObject), state)


class ReadTimingWrapper(MonitoringWrapper):
    """Times the gaps between ``_read`` calls of a wrapped reader; logs the average at ``_terminate``."""

    def __init__(self, baseObject: Any) -> None:  # noqa: N803
        MonitoringWrapper.__init__(self, baseObject)
        self.readtime: float | None = None
        self.readrate: list[float] = []

    def _read(self) -> Any:
        now = time.time()
        if self.readtime:
            self.readrate.append(now - self.readtime)
        self.readtime = now
        return self.baseObject._read()

    def _terminate(self) -> None:
        if self.readrate:
            self.log(f"Average read rate : {sum(self.readrate) / float(len(self.readrate))}")
        self.baseObject._terminate()


class ProcessTimingPE(MonitoringWrapper):
    """Times each ``process`` call of the wrapped PE; logs the average at the end."""

    def __init__(self, baseObject: Any) -> None:  # noqa: N803
        MonitoringWrapper.__init__(self, baseObject)
        self.times_total: float = 0
        self.times_count = 0

    def process(self, inputs: dict[str, Any]) -> Any:
        with Timer() as t:
            result = self.baseObject.process(inputs)
        self.times_total += t.secs
        self.times_count += 1
        return result

    def _postprocess(self) -> None:
        if self.times_count:
            self.log(f"Average processing time: {self.times_total / self.times_count}")
        self.baseObject._postprocess()
