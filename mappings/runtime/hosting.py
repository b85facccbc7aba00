"""Hosting one PE object in a process: an :class:`Instance` with its counters and the
:class:`Route` of each of its connections, the writer and the logger the mappings install on it,
copying a PE for another instance or a worker (naming what cannot be copied), and showing the
process's supervisor which PE ended it without a word."""

from __future__ import annotations

import copy
import faulthandler
import os
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, Protocol

from d4p_hpc.mappings.checkpoint.pe_state import capture
from d4p_hpc.mappings.runtime.plan import PENode, group_key, stable_hash
from d4p_hpc.mappings.runtime.process import PEFailed
from d4p_hpc.mappings.runtime.replay import Call


class Instance:
    """One PE instance in this process, with its counters."""

    __slots__ = ("gid", "node", "index", "pe", "routes", "eos_left", "done",
                 "items_in", "items_out", "busy", "blocked_seconds", "call", "replay", "long_calls")

    def __init__(self, gid: int, node: PENode, pe: Any, eos: int) -> None:
        self.gid = gid
        self.node = node
        self.index = gid - node.first_gid
        self.pe = pe
        self.routes: dict[str, list[Route]] = {}
        self.eos_left = eos
        self.done = False
        self.items_in = 0
        self.items_out = 0
        #: seconds in its own calls, without those spent waiting for room downstream (blocked)
        self.busy = 0.0
        self.blocked_seconds = 0.0
        #: a root: its call under way, when recorded; the call to replay first (resumed inside one);
        #: whether its last call was long (see :mod:`~d4p_hpc.mappings.runtime.replay`)
        self.call: Call | None = None
        self.replay: dict | None = None
        self.long_calls = True

    def stats(self, proc: int) -> dict:
        return {"pe": self.node.key, "instance": self.index, "process": proc, "items_in": self.items_in,
                "items_out": self.items_out, "busy_seconds": round(self.busy, 6),
                "blocked_seconds": round(self.blocked_seconds, 6)}

    def saved_state(self) -> bytes:
        """The state a checkpoint keeps of this instance: for a root inside a recorded call, the one
        it began with (the call is replayed on resume)."""
        call = self.call
        return call.state if call is not None and call.state is not None else capture(self.node.key, self.pe)


def calls_under_way(instances: Iterable[Instance]) -> dict[int, dict]:
    """The recorded root calls among ``instances``, for a checkpoint's part (``replay.PART_FIELD``)."""
    return {inst.gid: inst.call.record() for inst in instances if inst.call is not None}


class Route:
    """Picks the destination instances of one item on one connection, from one sender instance."""

    __slots__ = ("input", "gids", "mode", "fields", "next")

    def __init__(self, input_name: str, gids: range, grouping: Any, sender: int) -> None:
        self.input = input_name
        self.gids = tuple(gids)
        self.fields: list = grouping if isinstance(grouping, list) else []  # the group-by fields (mode "key")
        if grouping == "all":
            self.mode = "all"
        elif grouping == "global" or len(self.gids) == 1:
            self.mode = "one"
        elif isinstance(grouping, list):
            self.mode = "key"
        else:
            self.mode = "shuffle"
        # senders start at different instances, so several senders do not all hit instance 0 first
        self.next = sender % len(self.gids)

    def targets(self, data: Any) -> tuple:
        mode = self.mode
        if mode == "one":
            return self.gids[:1]
        if mode == "all":
            return self.gids
        if mode == "key":
            return (self.gids[stable_hash(group_key(data, self.fields)) % len(self.gids)],)
        i = self.next
        self.next = (i + 1) % len(self.gids)
        return (self.gids[i],)


class Router(Protocol):
    """What routes the items an instance writes (the process's runtime)."""

    #: the instance whose call is under way (the innermost)
    owner: Instance | None

    def emit(self, inst: Instance, output: str, data: Any) -> None:
        """Route one item written by ``inst`` to ``output``."""


class Writer:
    """What ``write`` on a PE's output calls: the runtime routes the item."""

    __slots__ = ("runtime", "inst", "output")

    def __init__(self, runtime: Router, inst: Instance, output: str) -> None:
        self.runtime = runtime
        self.inst = inst
        self.output = output

    def write(self, data: Any) -> None:
        self.runtime.emit(self.inst, self.output, data)


#: this process's runtime (a process has one): where a PE that ends the process is found
runtime_here: Router | None = None


def show_calls(cell: Any) -> None:
    """Have a PE that ends this process without a word show itself to the supervisor: one that
    calls ``os._exit`` puts its PE index in ``cell`` (a shared ``multiprocessing.RawValue("i")``,
    -1: none) first, and a crash in native code writes the Python stack to the process's log.

    (Only a forked process of a run, or an mpi rank, calls this: ``cell`` is anything with a
    ``value`` to set. Keeping it up to date at every PE call instead would cost each call about a
    third of what the runtime costs it.)"""
    leave = os._exit

    def exit_showing(status: int) -> NoReturn:
        owner = runtime_here.owner if runtime_here is not None else None
        cell.value = -1 if owner is None else owner.node.index
        leave(status)

    os._exit = exit_showing
    faulthandler.enable(2)  # (a descriptor: sys.stderr may be a notebook's; the run sends 2 to its log)


def pe_copy(node: PENode, copy_pe: Callable[[Any], Any], why: str, also: str = "") -> Any:
    """A copy of ``node``'s PE object; if it cannot be made, one line naming the attribute that
    cannot be copied (``why``: what the copy is for; ``also``: another way out)."""
    try:
        return copy_pe(node.pe)
    except Exception as exc:
        culprit = next((k for k, v in vars(node.pe).items() if not _copyable(v)), None)
        kind = type(getattr(node.pe, culprit)) if culprit else None
        what = f"its attribute {culprit!r} holds a {kind.__module__}.{kind.__qualname__}, which" if kind else "it"
        raise PEFailed(node.key, f"PE {node.key} cannot be copied {why}: {what} cannot be copied "
                                 f"({type(exc).__name__}: {exc}); create it in the PE's preprocess(), which "
                                 f"every copy runs, not in __init__{also}") from None


def _copyable(value: Any) -> bool:
    try:
        copy.deepcopy(value)
        return True
    except Exception:
        return False


def make_logger(pe: Any, label: str) -> Callable[[str], None]:
    """The ``pe.log`` mappings install: a line tagged with PE id and process."""
    def log(msg: str) -> None:
        print(f"{pe.id} ({label}): {msg}")
    return log
