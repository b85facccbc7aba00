"""The small part of ``networkx.Graph`` (undirected, insertion-ordered) that dispel4py code uses
on ``WorkflowGraph.graph``: with it, graphs written for dispel4py run without networkx, and the
mappings read our graphs and real dispel4py graphs the same way."""

from __future__ import annotations

from typing import Any


class NetGraph:
    """The subset of ``networkx.Graph`` (undirected, insertion-ordered) dispel4py uses."""

    def __init__(self) -> None:
        self._adj: dict[Any, dict[Any, dict]] = {}

    def add_node(self, node: Any, **_: Any) -> None:
        self._adj.setdefault(node, {})

    def add_nodes_from(self, nodes: Any) -> None:
        for node in nodes:
            self.add_node(node[0] if isinstance(node, tuple) else node)

    def add_edge(self, u: Any, v: Any, **data: Any) -> None:
        self.add_node(u)
        self.add_node(v)
        attrs = self._adj[u].get(v, {})
        attrs.update(data)
        self._adj[u][v] = attrs
        self._adj[v][u] = attrs

    def add_edges_from(self, edges: Any) -> None:
        for u, v, *rest in edges:
            self.add_edge(u, v, **(rest[0] if rest else {}))

    def has_edge(self, u: Any, v: Any) -> bool:
        return v in self._adj.get(u, {})

    def remove_nodes_from(self, nodes: Any) -> None:
        for node in list(nodes):
            for other in self._adj.pop(node, {}):
                self._adj[other].pop(node, None)

    def nodes(self, data: bool = False) -> list:
        return [(n, {}) for n in self._adj] if data else list(self._adj)

    def edges(self, nbunch: Any = None, data: bool = False) -> list:
        seen: set[int] = set()
        out = []
        sources = self._adj if nbunch is None else [nbunch]
        for u in sources:
            for v, attrs in self._adj[u].items():
                if id(attrs) in seen:
                    continue
                seen.add(id(attrs))
                out.append((u, v, attrs) if data else (u, v))
        return out

    def __getitem__(self, node: Any) -> dict:
        return self._adj[node]

    def __contains__(self, node: Any) -> bool:
        return node in self._adj

    def __iter__(self):
        return iter(self._adj)
