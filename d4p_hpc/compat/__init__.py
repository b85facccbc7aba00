"""Let graph files written for dispel4py import it when only d4p-hpc is installed.

``dispel4py/`` beside this file is a package whose modules re-export
:mod:`d4p_hpc.workflow`. :func:`ensure_dispel4py` puts this folder on
``sys.path`` only if the real dispel4py cannot be imported, so a real
installation always wins and its PE and graph objects run on our mappings.
The path stays for the life of the process: PE code may import dispel4py
lazily, inside ``process``.
"""

from __future__ import annotations

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def ensure_dispel4py() -> bool:
    """Make ``import dispel4py.base`` work; return True if the shim (not the real package) is used."""
    if _HERE in sys.path:
        return True
    if importlib.util.find_spec("dispel4py") is not None:
        return False
    sys.path.append(_HERE)
    return True
