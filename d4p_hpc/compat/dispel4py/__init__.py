"""d4p-hpc's stand-in for the dispel4py package (see :mod:`d4p_hpc.compat`).

It provides the modules graph files import: ``core``, ``base``,
``workflow_graph``, ``utils`` and ``new.monitoring``. dispel4py's own
mappings (``new.processor``, ``new.simple_process``, ...), its examples, its
provenance and IPython modules are left out on purpose: importing one fails
with an error that names it and says to install stream-d4py.
"""

import sys

_PROVIDED = ("dispel4py.core", "dispel4py.base", "dispel4py.workflow_graph", "dispel4py.utils",
            "dispel4py.new.monitoring")
#: modules of stream-d4py 2.9.1 that the stand-in leaves out
_OMITTED = ("examples", "provenance", "visualisation")


def _missing(fullname: str) -> ModuleNotFoundError:
    """The error for a ``dispel4py`` module the stand-in does not provide."""
    return ModuleNotFoundError(
        f"{fullname} is not part of d4p-hpc's dispel4py stand-in (it has {', '.join(_PROVIDED)}); "
        "install stream-d4py (pip install stream-d4py) and d4p-hpc uses it instead", name=fullname)


def __getattr__(name: str):
    # `from dispel4py import provenance` reads an attribute: Python would hide the finder's error
    if name in _OMITTED:
        raise _missing(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _NotInStandIn:
    """Last on ``sys.meta_path``: reached only for a ``dispel4py.*`` module the stand-in lacks."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("dispel4py."):
            raise _missing(fullname)  # a one-line reason instead of a bare "No module named ..."
        return None

    def invalidate_caches(self):
        pass


if not any(isinstance(f, _NotInStandIn) for f in sys.meta_path):
    sys.meta_path.append(_NotInStandIn())
