"""tests/mpi runs only under ``mpiexec -n N python -m pytest --with-mpi tests/mpi`` (pytest-mpi).

Without ``--with-mpi`` (the plain pytest phase) the folder is not collected at
all, so it shows neither as passed nor as skipped there. The folder is a
package (``__init__.py``) so that this conftest is imported as
``mpi.conftest`` and never replaces ``tests/conftest.py`` as ``conftest``.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # the helpers package


def pytest_ignore_collect(collection_path, config):
    here = Path(__file__).resolve().parent
    if config.getoption("--with-mpi", default=False):
        return None
    path = Path(collection_path).resolve()
    if path != here and here in path.parents and path.name.startswith("test_"):
        return True
    return None
