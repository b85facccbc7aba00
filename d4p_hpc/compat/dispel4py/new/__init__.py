"""``dispel4py.new`` of d4p-hpc's stand-in: only ``monitoring`` (the mappings are d4p-hpc's own)."""

from dispel4py import _missing

#: modules of stream-d4py 2.9.1's ``dispel4py.new`` that the stand-in leaves out: its mappings and their helpers
_OMITTED = ("aggregate", "dyn_redis_config", "dynamic_redis", "logger", "mappings", "mpi_process", "multi_process",
           "new_dynamic", "new_dynamic_auto", "new_dynamic_redis", "new_dynamic_redis_auto", "new_hybrid_redis",
           "processor", "simple_process", "spark_process", "zmq_multi")


def __getattr__(name: str):
    # `from dispel4py.new import processor` reads an attribute: Python would hide the finder's error
    if name in _OMITTED:
        raise _missing(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
