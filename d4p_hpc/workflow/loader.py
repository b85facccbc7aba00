"""Load a graph file and its inputs as dispel4py's processor does, with clear errors.

A graph source is a ``.py`` path or an importable module name. The graph is
``--attr NAME`` or else the only workflow graph at module level (composite PEs,
which have input/output mappings, do not count). Inputs are ``-i N``
iterations for every root PE, or a JSON object (``-d``/``-f``) mapping a PE
name or id to a list of inputs (each passed to ``process``) or a count.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from d4p_hpc import settings
from d4p_hpc.compat import ensure_dispel4py
from d4p_hpc.errors import GraphError, InputsError


#: the sources being imported by :func:`_import` (see :func:`loading`)
_LOADING: list[str] = []


def _is_graph(obj: Any) -> bool:
    return (not isinstance(obj, type) and hasattr(obj, "objToNode") and hasattr(obj, "flatten")
            and hasattr(obj, "graph"))


def _is_composite(obj: Any) -> bool:
    return hasattr(obj, "inputmappings") or hasattr(obj, "outputmappings")


def _add_helper_dirs(graph_dir: Path) -> None:
    """Let a graph's helper modules import from its own and from the working directory.

    They go last on ``sys.path``, so a helper named like a standard or installed module
    (``inspect.py``, ``queue.py``, a ``d4p_hpc/`` folder) never shadows it; the in-job
    commands start without the working directory on the path (``supervisor.SAFE_MODULE``).
    """
    for folder in (str(graph_dir), os.getcwd()):
        if folder not in sys.path:
            sys.path.append(folder)


def _import(source: str) -> Any:
    path = Path(source)
    try:
        if path.suffix == ".py" or path.exists():
            if path.is_dir():
                raise GraphError(f"{source} is a directory; give the graph's .py file")
            if not path.is_file():
                raise GraphError(f"graph file {source} is not a regular file; give the graph's .py file"
                                 if path.exists() else f"graph file {source} does not exist")
            _add_helper_dirs(path.resolve().parent)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:  # a suffix no loader takes (.txt, .json)
                raise GraphError(f"{source} is not a Python file; give the graph's .py file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            _LOADING.append(source)
            spec.loader.exec_module(module)
            return module
        _add_helper_dirs(Path.cwd())
        _LOADING.append(source)
        return importlib.import_module(source)
    except GraphError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name == source:
            raise GraphError(f"no graph file or module named {source}") from None
        raise GraphError(f"loading {source} failed: {exc}") from None
    except BaseException as exc:
        if isinstance(exc, SyntaxError):  # its traceback ends in importlib, not in the user's file
            where = f"{exc.filename}:{exc.lineno}"
            exc = SyntaxError(exc.msg)
        else:
            frames = traceback.extract_tb(exc.__traceback__)
            # an error of d4p-hpc's own (a graph file calling d4p_hpc.submit) is told at the user's line
            ours = str(Path(__file__).resolve().parents[1])
            frame = next((f for f in reversed(frames) if not f.filename.startswith(ours)), frames[-1])
            where = f"{frame.filename}:{frame.lineno}"
        raise GraphError(f"loading {source} failed at {where}: {type(exc).__name__}: {exc}") from None
    finally:
        if _LOADING and _LOADING[-1] == source:
            _LOADING.pop()


def loading() -> str | None:
    """The graph file or module being imported now, if any: a graph file that submits itself (a
    script whose ``d4p_hpc.submit(...)`` is not under ``if __name__ == "__main__":``) is stopped
    there, not run again on every node that loads it."""
    return _LOADING[-1] if _LOADING else None


def load_graph(source: str, attr: str | None = None) -> Any:
    """Import ``source`` and return its flattened workflow graph."""
    ensure_dispel4py()
    module = _import(source)
    if attr is not None:
        if not hasattr(module, attr):
            raise GraphError(f"{source} has no attribute {attr!r}; graphs in it: {_names(module) or 'none'}")
        graph = getattr(module, attr)
        if not _is_graph(graph):
            raise GraphError(f"{source}: {attr!r} is a {type(graph).__name__}, not a WorkflowGraph")
    else:
        names = _names(module)
        if not names:
            raise GraphError(f"{source} defines no WorkflowGraph at module level")
        if len(names) > 1:
            raise GraphError(f"{source} defines several graphs ({', '.join(names)}); choose one with --attr NAME")
        graph = getattr(module, names[0])
    graph.flatten()
    return graph


def _names(module: Any) -> list[str]:
    return sorted(n for n, v in vars(module).items()
                  if not n.startswith("__") and _is_graph(v) and not _is_composite(v))


def parse_inputs(iterations: int | None, data: str | None, file: str | None) -> int | dict:
    """The inputs the user gave: an iteration count, or a dict from ``-d``/``-f``."""
    if sum(x is not None for x in (iterations, data, file)) > 1:
        raise InputsError("give only one of -i/--iterations, -d/--data and -f/--file")
    if file is not None:
        try:
            with open(file) as fh:
                text = fh.read()
        except OSError as exc:
            raise InputsError(f"cannot read inputs file {file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise InputsError(f"inputs file {file} is not text: give a JSON file (UTF-8)") from None
        raw = _json(text, f"inputs file {file}")
    elif data is not None:
        raw = _json(data, "-d/--data")
    else:
        return 1 if iterations is None else iterations
    if not isinstance(raw, dict):
        raise InputsError('inputs must be a JSON object like {"PEName": [{"input": 1}, ...]} or {"PEName": 10}')
    for name, value in raw.items():
        if not (isinstance(value, list) or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)):
            raise InputsError(f"inputs for {name!r} must be a list of inputs or a count >= 0, got {value!r:.60}")
        if isinstance(value, int) and value > settings.MAX_COUNT:
            raise InputsError(f"inputs for {name!r}: {value:,} is more than the limit, {settings.MAX_COUNT:,}")
    return raw


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputsError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def resolve_feeds(plan: Any, raw: int | dict) -> dict[int, int | list]:
    """Map the user's inputs to root PE indices of ``plan``; every name must be a root PE."""
    roots = plan.roots()
    if isinstance(raw, int):
        return {root.index: raw for root in roots}
    feeds: dict[int, int | list] = {}
    for name, value in raw.items():
        matches = [p for p in plan.pes if name in (p.key, getattr(p.pe, "name", None), getattr(p.pe, "id", None))]
        if not matches:
            known = ", ".join(p.key for p in plan.pes)
            raise InputsError(f"inputs name PE {name!r}, which is not in the graph (PEs: {known})")
        if len(matches) > 1:
            raise InputsError(f"{name!r} names several PEs ({', '.join(p.key for p in matches)}); use their keys")
        node = matches[0]
        if node not in roots:
            raise InputsError(f"PE {node.key} has connected inputs; only root PEs take inputs "
                              f"({', '.join(r.key for r in roots)})")
        feeds[node.index] = value
    return feeds


def default_results(source: str, mapping: str, root: Path) -> Path:
    """``<root>/<graph>-<mapping>-<time>``: a new directory per run, never an old one."""
    import datetime

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    stem = Path(source).stem if source.endswith(".py") else source.rsplit(".", 1)[-1]
    return root / f"{stem}-{mapping}-{stamp}"
