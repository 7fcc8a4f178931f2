"""Explaining a graph hit: why the ``graph``, ``multihop`` or ``graph_hybrid`` mode retrieved it.

The graph modes themselves are ``ragkit.pipelines.retrievers`` (``PageRankRetriever``, ``MultiHopRetriever``,
``GraphHybridRetriever``) over the engines of ``ragkit.graph.retrieve``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def describe(explain: Mapping[str, Any]) -> str:
    """One line saying why a graph hit was retrieved: its path, or the entities that seeded the walk.

    >>> describe({"mode": "multihop", "path": [
    ...     {"entity": "Lothair II", "relation": "linked from question", "chunk": None, "phrase": "Lothair II"},
    ...     {"entity": "Ermengarde of Tours", "relation": "mentions", "chunk": "lothair-ii#0"},
    ...     {"entity": "Ermengarde of Tours", "relation": "about", "chunk": "ermengarde#0"}]})
    'question "Lothair II" -> Lothair II -> [lothair-ii#0] -mentions-> Ermengarde of Tours -> [ermengarde#0]'
    >>> describe({"mode": "graph_hybrid", "kept_path": True, "path_rank": 1, "path": [
    ...     {"entity": "Ermengarde of Tours", "relation": "about", "chunk": "ermengarde#0"}]})
    'best path #2: [ermengarde#0]'
    >>> describe({"mode": "graph_hybrid", "path": [], "seed_entities": ["Lothair II"],
    ...           "residual": {"words": ["spouse"], "bm25": 3.21, "moved": 2}})
    "PageRank from Lothair II; the question's words no kept hit has (spouse): BM25 3.21, up 2"
    """
    if explain.get("mode") == "auto":
        return _describe_auto(explain)
    line = _describe_graph(explain)
    residual = explain.get("residual")
    if residual and (residual.get("bm25") or residual.get("moved")):
        moved = int(residual.get("moved", 0))
        where = f", up {moved}" if moved > 0 else f", down {-moved}" if moved < 0 else ""
        words = ", ".join(map(str, residual.get("words", [])))
        line += f"; the question's words no kept hit has ({words}): BM25 {float(residual.get('bm25', 0)):.2f}{where}"
    return line


def _describe_graph(explain: Mapping[str, Any]) -> str:
    path = explain.get("path")
    if path:
        parts: list[str] = []
        shown: str | None = None  # the chunk the line has just named
        for step in path:
            relation, entity, chunk = step.get("relation"), step.get("entity"), step.get("chunk")
            if relation == "linked from question":
                phrase = step.get("phrase", entity)
                parts += [f'question "{phrase}"', str(entity)]
            elif relation == "dense hit":
                parts.append(f"dense hit #{int(step.get('dense_rank', -1)) + 1} [{chunk}]")
            elif relation in ("about", "mentioned in"):
                if chunk is not None and chunk != shown:
                    parts.append(f"[{chunk}]")
            else:  # a hop from the previous entity: through the chunk that mentions both, or a relation
                hop = f"-{relation}-> {entity}" if entity else f"-{relation}->"
                parts.append(f"[{chunk}] {hop}" if chunk is not None and chunk != shown else hop)
            shown = chunk if chunk is not None else shown
        line = " -> ".join(parts).replace(" -> -", " -")
        if explain.get("kept_path"):  # graph_hybrid placed it first, as one of the multi-hop score's best
            return f"best path #{int(explain.get('path_rank', 0)) + 1}: {line}"
        return line
    if explain.get("kept_path"):
        return f"best path #{int(explain.get('path_rank', 0)) + 1}"
    if explain.get("kept_dense"):
        return f"dense hit #{int(explain.get('dense_rank', 0)) + 1}"
    if explain.get("dense_only"):
        return "dense hit outside the graph"
    seeds = explain.get("seed_entities") or []
    via = explain.get("via_entities") or []
    text = f"PageRank from {', '.join(map(str, seeds)) or 'the top dense hits'}"
    return text + (f" via {', '.join(map(str, via))}" if via else "")


_ROUTES = {
    "question": "a question, so graph_hybrid",
    "statement": "a statement, so BM25 fused with PageRank",
    "hybrid": "hybrid (the index has no graph)",
}


def _describe_auto(explain: Mapping[str, Any]) -> str:
    """The ``auto`` mode's route, then the signals that ranked the hit.

    >>> _describe_auto({"mode": "auto", "route": "statement", "bm25_rank": 0,
    ...                 "graph": {"mode": "graph", "seed_entities": ["vitamin D"]}})
    'a statement, so BM25 fused with PageRank: BM25 #1; PageRank from vitamin D'
    """
    route = str(explain.get("route", ""))
    signals = []
    if route == "statement":
        rank = explain.get("bm25_rank")
        signals.append(f"BM25 #{int(rank) + 1}" if rank is not None else "not in BM25's top hits")
    graph = explain.get("graph")
    if graph:
        signals.append(describe(graph))
    elif route == "statement":
        signals.append("not in PageRank's top hits")
    text = _ROUTES.get(route, route)
    return f"{text}: {'; '.join(signals)}" if signals else text
