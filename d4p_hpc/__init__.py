"""d4p-hpc: run dispel4py stream workflows on HPC batch clusters and locally."""

from pathlib import Path as _Path

__version__ = "0.1.0"

# In a source checkout ``mappings/`` and ``templates/`` sit beside this folder (the layout the
# project keeps); an install puts them inside it as ``d4p_hpc.mappings``/``d4p_hpc.templates``.
# ``python -m d4p_hpc`` run in the checkout's root imports this folder rather than the installed
# package, so the checkout's own subpackages must be found from here too.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "mappings").is_dir() and (_checkout / "mappings" / "__init__.py").is_file():
    __path__.append(str(_checkout))
del _Path, _checkout
