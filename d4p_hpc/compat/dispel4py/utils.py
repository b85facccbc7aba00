"""``dispel4py.utils``: loading graphs by module or file, and object size and hash helpers, as in dispel4py."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import sys
import traceback
from collections import deque
from itertools import chain
from typing import Any

from d4p_hpc.workflow import WorkflowGraph


def findWorkflowGraph(mod: Any, attr: str | None) -> Any:  # noqa: N802 - dispel4py's names
    """The graph ``mod.attr``, or else the last top-level graph of ``mod`` that is not a composite PE (or None)."""
    if attr is not None:
        return getattr(mod, attr)
    graph = None
    for name in dir(mod):
        value = getattr(mod, name)
        if isinstance(value, WorkflowGraph) and not hasattr(value, "inputmappings") \
                and not hasattr(value, "outputmappings"):
            graph = value
    return graph


def loadGraphFromFile(module_name: str, path: str, attr: str | None = None) -> Any:  # noqa: N802
    """Execute the file ``path`` as module ``module_name`` and find its graph."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise OSError(f"not a Python file: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return findWorkflowGraph(module, attr)


def loadGraph(module_name: str, attr: str | None = None) -> Any:  # noqa: N802
    """Import module ``module_name`` and find its graph."""
    return findWorkflowGraph(importlib.import_module(module_name), attr)


def load_graph(graph_source: str, attr: str | None = None) -> Any:
    """The graph of a module name or a file; prints why and returns None if neither loads."""
    errors = ""
    try:
        return loadGraph(graph_source, attr)
    except ImportError:
        errors += f'No module "{graph_source}"\n'
    except Exception:
        errors += f"Error loading graph module:\n{traceback.format_exc()}"
    try:
        return loadGraphFromFile(os.path.splitext(os.path.basename(graph_source))[0], graph_source, attr)
    except OSError:
        errors += f'No file "{graph_source}"\n'
    except Exception:
        errors += f"Error loading graph from file:\n{traceback.format_exc()}"
    print(f'Failed to load graph from "{graph_source}":\n{errors}')
    return None


def dict_handler(d: dict) -> Any:
    """Keys and values of ``d``, one after the other (a ``total_size`` handler)."""
    return chain.from_iterable(d.items())


def total_size(o: Any, handlers: dict | None = None, verbose: bool = False) -> int:
    """Approximate memory footprint in bytes of ``o`` and everything its containers hold.

    Tuples, lists, deques, dicts, sets and frozensets are walked; ``handlers``
    maps other container types to a function returning their contents.
    """
    all_handlers = {tuple: iter, list: iter, deque: iter, dict: dict_handler, set: iter, frozenset: iter}
    all_handlers.update(handlers or {})
    seen: set[int] = set()
    default_size = sys.getsizeof(0)

    def sizeof(obj: Any) -> int:
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        size = sys.getsizeof(obj, default_size)
        for typ, handler in all_handlers.items():
            if isinstance(obj, typ):
                size += sum(map(sizeof, handler(obj)))
                break
        return size

    return sizeof(o)


def make_hash(o: Any) -> int:
    """A hash of nested dicts, lists, tuples and sets of hashable values (Python's ``hash``, per process)."""
    if isinstance(o, (set, tuple, list)):
        return hash(tuple(make_hash(e) for e in o))
    if not isinstance(o, dict):
        return hash(o)
    new_o = copy.deepcopy(o)
    for k, v in new_o.items():
        new_o[k] = make_hash(v)
    return hash(tuple(frozenset(sorted(new_o.items()))))
