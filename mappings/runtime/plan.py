"""From a flattened workflow graph to an execution plan every process agrees on.

The plan is a pure function of the graph and the process count, so every MPI
rank (each loads the graph file itself) computes the same one.

Instance counts (``numprocesses`` is a request, as in dispel4py):

* a root PE (no connected input) and a PE with a ``"global"`` input get one
  instance: roots are fed from the command line, and a global input sends
  everything to one instance, so more would only add empty postprocess calls.
  Under the static mappings (``roots_spread``, with more than one process) a
  root that asks for more instances counts as the PEs below: its calls are
  spread over them once it is found stateless (see
  :mod:`~d4p_hpc.mappings.runtime.spread`);
* if the other PEs ask (``numprocesses``) for more than the ``N - fixed``
  remaining processes, the requests are scaled down in proportion to a share
  of those (of all ``N`` when there are fewer than PEs, as instances share
  processes then anyway), at least one instance each, with a notice: a PE
  that asked for many keeps several, and light PEs share a process with it;
* otherwise explicit requests (> 1) are kept and the PEs left at the default
  share the spare processes, as in dispel4py.

Placement: instances are listed in topological order and cut into at most
``N`` contiguous chunks, one per process, balancing the work requested
(an instance of a PE that asked for k instances and got c weighs k / c). An edge therefore never goes
from a later process to an earlier one, so blocking sends (backpressure)
cannot deadlock even when several PEs share a process.
"""

from __future__ import annotations

import pickle
from fractions import Fraction
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable

from d4p_hpc.errors import GraphError
from d4p_hpc.units import plural
from d4p_hpc.workflow import GROUPING


@dataclass
class PENode:
    """One PE of the plan. ``pe`` is the user's object (a template for instances)."""

    index: int
    key: str
    pe: Any
    inputs: list[str]
    outputs: list[str]
    count: int = 1
    first_gid: int = 0

    @property
    def gids(self) -> range:
        """Global ids of this PE's instances."""
        return range(self.first_gid, self.first_gid + self.count)


@dataclass
class Link:
    """``src.output`` feeds ``dst.input``; ``grouping`` is None, a key list, ``"all"`` or ``"global"``."""

    src: int
    output: str
    dst: int
    input: str
    grouping: Any = None


@dataclass
class Plan:
    """PEs in topological order, their connections, instance counts and placement."""

    pes: list[PENode]
    connections: list[Link]
    processes: int
    notices: list[str] = field(default_factory=list)
    placement: list[int] = field(default_factory=list)
    #: roots get the instances they ask for, to spread their calls over (multi, mpi)
    roots_spread: bool = False

    @property
    def instances(self) -> int:
        """Total number of PE instances."""
        return sum(p.count for p in self.pes)

    def by_key(self, key: str) -> PENode:
        """The PE called ``key`` (its unique display name)."""
        for node in self.pes:
            if node.key == key:
                return node
        raise KeyError(key)

    def roots(self) -> list[PENode]:
        """PEs with no connected input."""
        fed = {c.dst for c in self.connections}
        return [p for p in self.pes if p.index not in fed]

    def longest_chain(self) -> int:
        """The most PEs on one path through the graph (its PEs are in topological order)."""
        longest = {node.index: 1 for node in self.pes}
        for node in self.pes:
            for link in self.outgoing(node.index):
                longest[link.dst] = max(longest[link.dst], longest[node.index] + 1)
        return max(longest.values(), default=0)

    def incoming(self, index: int) -> list[Link]:
        return [c for c in self.connections if c.dst == index]

    def outgoing(self, index: int, output: str | None = None) -> list[Link]:
        return [c for c in self.connections if c.src == index and (output is None or c.output == output)]

    def expected_eos(self, index: int) -> int:
        """End-of-stream markers an instance of PE ``index`` waits for: one per upstream instance and edge."""
        return sum(self.pes[c.src].count for c in self.incoming(index))

    def pe_of(self, gid: int) -> PENode:
        for node in self.pes:
            if gid in node.gids:
                return node
        raise KeyError(gid)

    def local_gids(self, proc: int) -> list[int]:
        return [gid for gid, p in enumerate(self.placement) if p == proc]

    def stateful(self, node: PENode) -> bool:
        """True if the PE keeps state across items (a grouped input, or marked ``stateful``)."""
        if getattr(node.pe, "stateful", False):
            return True
        return any(c.grouping is not None for c in self.incoming(node.index))

    @staticmethod
    def deterministic(node: PENode) -> bool:
        """Whether a root PE's calls may be replayed from its state (see
        :mod:`~d4p_hpc.mappings.runtime.replay`): unless it says ``deterministic = False``."""
        return getattr(node.pe, "deterministic", True) is not False

    def stateful_indices(self) -> set[int]:
        """Indices of the non-root PEs that keep state: the ones the dynamic mappings cannot spread
        over their workers (roots run in the driver anyway)."""
        roots = {node.index for node in self.roots()}
        return {node.index for node in self.pes if node.index not in roots and self.stateful(node)}


def _edges(graph: Any) -> Iterable[tuple[Any, str, Any, str]]:
    for _u, _v, data in graph.graph.edges(data=True):
        src, dst = data["DIRECTION"]
        for output, inp in data["ALL_CONNECTIONS"]:
            yield src, output, dst, inp


def _topological(nodes: list[Any], edges: list[tuple[Any, str, Any, str]]) -> list[Any]:
    order: list[Any] = []
    indeg = {id(n): 0 for n in nodes}
    for _s, _o, d, _i in edges:
        indeg[id(d)] += 1
    ready = [n for n in nodes if indeg[id(n)] == 0]
    while ready:
        n = ready.pop(0)
        order.append(n)
        for s, _o, d, _i in edges:
            if s is n:
                indeg[id(d)] -= 1
                if indeg[id(d)] == 0:
                    ready.append(d)
    if len(order) != len(nodes):
        stuck = sorted(getattr(n, "name", "?") for n in nodes if n not in order)
        raise GraphError(f"the graph has a cycle through {', '.join(stuck)}; d4p-hpc runs acyclic graphs only "
                         "(end-of-stream accounting needs a DAG)")
    return order


def _unique_keys(pes: list[Any]) -> list[str]:
    names = [str(getattr(pe, "name", type(pe).__name__)) for pe in pes]
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        if names.count(name) == 1:
            keys.append(name)
        else:
            seen[name] = seen.get(name, -1) + 1
            keys.append(f"{name}{seen[name]}")
    return keys


def _grouping(pe: Any, inp: str) -> Any:
    grouping = pe.inputconnections[inp].get(GROUPING)
    if grouping in (None, "", []):
        return None
    if isinstance(grouping, (list, tuple)):
        return list(grouping)
    if grouping in ("all", "global"):
        return grouping
    raise GraphError(f"PE {pe.name}: input {inp!r} has grouping {grouping!r}; use a list of indices, "
                     "'all' or 'global'")


def build_plan(graph: Any, processes: int, roots_spread: bool = False) -> Plan:
    """Return the plan of a flattened ``graph`` for ``processes`` processes (ranks, workers);
    ``roots_spread``: a root that asks for several instances may get them (the static mappings)."""
    if processes < 1:
        raise GraphError(f"the process count must be at least 1, got {processes}")
    nodes = [n.get_contained_object() for n in graph.graph.nodes()]
    if not nodes:
        raise GraphError("the graph has no PEs")
    edges = list(_edges(graph))
    for src, output, dst, inp in edges:
        if output not in src.outputconnections:
            raise GraphError(f"PE {src.name} has no output {output!r} (it has: {', '.join(src.outputconnections)})")
        if inp not in dst.inputconnections:
            raise GraphError(f"PE {dst.name} has no input {inp!r} (it has: {', '.join(dst.inputconnections)})")
    order = _topological(nodes, edges)
    index = {id(pe): i for i, pe in enumerate(order)}
    pes = [PENode(i, key, pe, list(pe.inputconnections), list(pe.outputconnections))
           for i, (key, pe) in enumerate(zip(_unique_keys(order), order, strict=True))]
    conns = [Link(index[id(s)], o, index[id(d)], i, _grouping(d, i)) for s, o, d, i in edges]
    plan = Plan(pes, conns, processes, roots_spread=roots_spread and processes > 1)
    _assign_counts(plan)
    _place(plan)
    plan.notices += [f"root PE {node.key} has deterministic = False: a checkpoint waits for each of its process() "
                     "calls to end (one that writes its whole stream gets none until it ends)"
                     for node in plan.roots() if not plan.deterministic(node)]
    return plan


def _share(weights: list[int], total: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder: the parts add up to ``total``)."""
    whole = sum(weights)
    parts = [w * total // whole for w in weights]
    # integer remainders: float ties would be broken by rounding noise, not by PE order
    by_remainder = sorted(range(len(weights)), key=lambda k: -(weights[k] * total % whole))
    for k in by_remainder[: total - sum(parts)]:
        parts[k] += 1
    return parts


def _assign_counts(plan: Plan) -> None:
    asking = [p for p in plan.roots() if plan.roots_spread and _requested(p) > 1]  # for instances to spread over
    fixed = {p.index for p in plan.roots()} - {p.index for p in asking if not plan.stateful(p)}
    fixed |= {c.dst for c in plan.connections if c.grouping == "global"}
    elastic = [p for p in plan.pes if p.index not in fixed]
    spare = max(0, plan.processes - len(fixed))
    wants = [_requested(p) for p in elastic]
    if elastic and sum(wants) > spare:
        # in proportion to the requests, so a heavy PE that asked for many keeps several even
        # when light PEs then have to share a process with it
        # with too few processes for one per PE, instances share processes anyway: share all N
        pool = spare if spare >= len(elastic) else plan.processes
        counts = [max(1, c) for c in _share(wants, pool)]
    elif elastic:
        # as dispel4py: explicit requests are kept, PEs left at the default share the spare processes
        counts = list(wants)
        defaults = [k for k, w in enumerate(wants) if w == 1]
        if defaults:
            for k, extra in zip(defaults, _share([1] * len(defaults), spare - sum(wants)), strict=True):
                counts[k] += extra
    plan.notices += [f"root PE {node.key} asks for {_requested(node)} instances; it gets 1, as it says stateful = True"
                     for node in asking if plan.stateful(node)]
    for node, want, count in zip(elastic, wants, counts if elastic else [], strict=True):
        node.count = count
        if count < want:
            plan.notices.append(f"PE {node.key} asks for {want} instances; it gets {count} "
                                f"({plural(plan.processes, 'process')})")
    gid = 0
    for node in plan.pes:
        node.first_gid = gid
        gid += node.count


def _place(plan: Plan) -> None:
    total = plan.instances
    used = min(plan.processes, total)
    if total <= used:
        plan.placement = list(range(total))
        return
    # cut the instance list where the requested work is balanced: an instance of a PE that asked
    # for k instances weighs k / (instances it got), so the instances of a heavy PE spread first
    weights = [Fraction(_requested(node), node.count) for node in plan.pes for _ in range(node.count)]
    whole, start, placement = sum(weights), Fraction(0), []
    for weight in weights:
        placement.append(min(used - 1, int((start + weight / 2) * used / whole)))  # by its middle
        start += weight
    plan.placement = placement
    plan.notices.append(f"{total} PE instances share {plural(plan.processes, 'process')}")


def _requested(node: PENode) -> int:
    return max(1, int(getattr(node.pe, "numprocesses", 1) or 1))


# --- deterministic group-by hash ---------------------------------------------------------------
# Python's hash() of str is salted per process, so it would send the same key to different
# instances from different ranks. This encoding is stable across processes, hosts and runs, and
# treats values Python considers equal as the same key (1 == 1.0 == True), as a dict would.

_PACK_Q = struct.Struct("<q").pack
_PACK_D = struct.Struct("<d").pack


def _encode(o: Any, out: list[bytes]) -> None:
    t = type(o)
    if t is str:
        out.append(b"s" + o.encode("utf-8", "surrogatepass") + b"\0")
    elif t is int or t is bool:
        out.append(b"i" + (_PACK_Q(o) if -(2 ** 63) <= o < 2 ** 63 else str(o).encode()))
    elif t is float:
        if o.is_integer() and -(2 ** 63) <= o < 2 ** 63:
            out.append(b"i" + _PACK_Q(int(o)))
        else:
            out.append(b"f" + _PACK_D(o))
    elif t is bytes:
        out.append(b"b" + o + b"\0")
    elif o is None:
        out.append(b"n")
    elif t is tuple or t is list:
        out.append(b"(")
        for item in o:
            _encode(item, out)
        out.append(b")")
    elif t is frozenset or t is set:
        parts = []
        for item in o:
            sub: list[bytes] = []
            _encode(item, sub)
            parts.append(b"".join(sub))
        out.append(b"{" + b"".join(sorted(parts)) + b"}")
    elif t is dict:
        out.append(b"d")
        _encode(frozenset(o.items()), out)
    elif hasattr(o, "item") and hasattr(o, "dtype") and getattr(o, "shape", None) == ():
        _encode(o.item(), out)  # numpy scalars hash like the Python number they equal
    else:
        out.append(b"p" + pickle.dumps(o, protocol=5))


def stable_bytes(value: Any) -> bytes:
    """An encoding of ``value`` that is the same in every process and on every host, and the same
    for values Python considers equal."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def stable_hash(key: Any) -> int:
    """A hash of ``key`` that is the same in every process and on every host."""
    return zlib.crc32(stable_bytes(key))


def group_key(value: Any, fields: list) -> tuple:
    """The group-by key of ``value``: its items at ``fields`` (indices, or keys of a dict)."""
    return tuple(value[f] for f in fields)
