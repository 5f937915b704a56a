"""A layered (Sugiyama-style) layout of a directed graph, left to right, in pure Python.

Enough to draw lineage DAGs of thousands of nodes without Graphviz: cycles (a task that
writes back the bytes it read) are broken by ignoring DFS back edges, each node goes to the
layer after its longest path from a source, and nodes are ordered within layers by a few
sweeps of the barycenter heuristic, which keeps most edges short and uncrossed.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["NODE_HEIGHT", "NODE_WIDTH", "layout"]

NODE_WIDTH, NODE_HEIGHT = 230, 34
LAYER_GAP, ROW_GAP = 90, 14
_SWEEPS = 4


def _acyclic(ids: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The edges less the back edges of an iterative depth-first search."""
    out: dict[str, list[str]] = {node: [] for node in ids}
    for src, dst in edges:
        if src != dst:
            out[src].append(dst)
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    back: set[tuple[str, str]] = set()
    for start in ids:
        if start in state:
            continue
        stack = [(start, iter(out[start]))]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                back.add((node, child))
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(out[child])))
    return [(s, d) for s, d in edges if s != d and (s, d) not in back]


def layout(ids: Sequence[str], edges: Sequence[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """{node: (x, y)} of each node's top-left corner."""
    dag = _acyclic(ids, edges)
    preds: dict[str, list[str]] = {node: [] for node in ids}
    succs: dict[str, list[str]] = {node: [] for node in ids}
    for src, dst in dag:
        preds[dst].append(src)
        succs[src].append(dst)
    # Longest path layering in topological order (Kahn).
    indegree = {node: len(preds[node]) for node in ids}
    ready = [node for node in ids if indegree[node] == 0]
    layer = dict.fromkeys(ids, 0)
    order: list[str] = []
    while ready:
        node = ready.pop()
        order.append(node)
        for nxt in succs[node]:
            layer[nxt] = max(layer[nxt], layer[node] + 1)
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    layers: list[list[str]] = [[] for _ in range(max(layer.values(), default=0) + 1)]
    for node in ids:  # first-mention order as the starting order
        layers[layer[node]].append(node)
    position = {node: i for row in layers for i, node in enumerate(row)}
    for sweep in range(_SWEEPS):
        downward = sweep % 2 == 0
        sequence = layers[1:] if downward else list(reversed(layers[:-1]))
        for row in sequence:
            neighbours = preds if downward else succs

            def centre(node: str, neighbours: dict[str, list[str]] = neighbours) -> float:
                linked = neighbours[node]
                return sum(position[n] for n in linked) / len(linked) if linked else position[node]

            row.sort(key=centre)
            for i, node in enumerate(row):
                position[node] = i
    tallest = max((len(row) for row in layers), default=0)
    coordinates = {}
    for index, row in enumerate(layers):
        offset = (tallest - len(row)) * (NODE_HEIGHT + ROW_GAP) // 2  # centre short layers
        for i, node in enumerate(row):
            coordinates[node] = (index * (NODE_WIDTH + LAYER_GAP), offset + i * (NODE_HEIGHT + ROW_GAP))
    return coordinates
