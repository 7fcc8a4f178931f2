"""Graph retrieval modes of an index: ``graph`` (Personalized PageRank), ``multihop`` (best path) and
``graph_hybrid`` (their fusion with dense search).

The three retrievers of one index share the compiled matrices and everything derived from them, so switching
mode costs nothing; all are recompiled when the catalog's graph changes. Dense candidates for every question
of a batch come from one embedding batch. A ``where`` filter applies to the dense seeds and to the results:
the walk may pass through entities of other documents, but only chunks that match the filter are returned.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ragkit.errors import ConfigError
from ragkit.graph.retrieve import GraphRetriever, HybridGraphRetriever, MultiHopRetriever
from ragkit.graph.store import GraphStore
from ragkit.pipelines.graph_indexing import graph_settings

if TYPE_CHECKING:
    from ragkit.index import Index
    from ragkit.pipelines.query import Ranked

RETRIEVERS = {"graph": GraphRetriever, "multihop": MultiHopRetriever, "graph_hybrid": HybridGraphRetriever}
FILTER_DEPTH = 4  # with a ``where`` filter, look this many times deeper before dropping other chunks


class GraphSearch:
    """The graph retrievers of one open index (built lazily by :func:`graph_search`)."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.settings = graph_settings(index)
        self.store = GraphStore(index.catalog.connection)
        self._local = threading.local()  # the dense candidates of the batch this thread is answering
        first: GraphRetriever | None = None
        self.retrievers: dict[str, Any] = {}
        for mode, kind in RETRIEVERS.items():
            retriever = kind(
                self.store, index.embedder, self._dense_lookup, self.settings,
                embedder_name=index.manifest.embedder,
            )
            if first is None:
                first = retriever
            else:  # one compiled graph and one set of derived matrices for all three modes
                retriever._cache, retriever._derived = first._cache, first._derived
                retriever._lock = first._lock
            self.retrievers[mode] = retriever
        self._first = first

    def _dense_lookup(self, query: str, k: int) -> Ranked:
        return self._local.dense.get(query, [])[:k]

    def ranked(
        self, queries: Sequence[str], k: int, mode: str, where: Mapping[str, Any] | None
    ) -> tuple[list[Ranked], list[list[Mapping[str, Any] | None]]]:
        from ragkit.pipelines.query import dense_ranked

        retriever = self.retrievers[mode]
        if retriever._nlp is None and self._first is not None:
            retriever._nlp = self._first.nlp
        depth = max(self.settings.dense_candidates, k)
        dense = dict(zip(queries, dense_ranked(self.index, queries, depth, where), strict=True))
        self._local.dense = dense
        allowed = self.index.catalog.chunk_ids_where(where) if where else None
        ranked: list[Ranked] = []
        explains: list[list[Mapping[str, Any] | None]] = []
        for query in queries:
            found = retriever.retrieve_chunks(query, k * FILTER_DEPTH if allowed is not None else k)
            if allowed is not None:
                found = [hit for hit in found if hit[0] in allowed]
                if len(found) < k:  # pad with the filtered dense hits the graph did not reach
                    taken = {cid for cid, _, _ in found}
                    floor = min((score for _, score, _ in found), default=0.0)
                    pad = [cid for cid, _ in dense[query] if cid not in taken][: k - len(found)]
                    found += [
                        (cid, floor - 1e-6 * (i + 1), {"mode": mode, "dense_only": True}) for i, cid in enumerate(pad)
                    ]
            ranked.append([(cid, score) for cid, score, _ in found[:k]])
            explains.append([explain for _, _, explain in found[:k]])
        self._local.dense = {}
        return ranked, explains


def graph_search(index: Index) -> GraphSearch:
    """The index's graph retrievers, created on first use and kept with the open index."""
    if not index.manifest.graph:
        raise ConfigError(
            f"{index.path}: this index was built without a knowledge graph (--no-graph); "
            "graph, multihop and graph_hybrid modes need one: rebuild it without --no-graph"
        )
    with index._lock:
        search = getattr(index, "_graph_search", None)
        if search is None:
            search = GraphSearch(index)
            index._graph_search = search
        return search


def graph_ranked(
    index: Index, queries: Sequence[str], k: int, mode: str, where: Mapping[str, Any] | None
) -> tuple[list[Ranked], list[list[Mapping[str, Any] | None]]]:
    """Rankings and per-hit explanations (path, seed entities) of ``queries`` in graph ``mode``."""
    return graph_search(index).ranked(queries, k, mode, where)


def describe(explain: Mapping[str, Any]) -> str:
    """One line saying why a graph hit was retrieved: its path, or the entities that seeded the walk.

    >>> describe({"mode": "multihop", "path": [
    ...     {"entity": "Lothair II", "relation": "linked from question", "chunk": None, "phrase": "Lothair II"},
    ...     {"entity": "Ermengarde of Tours", "relation": "mentions", "chunk": "lothair-ii#0"},
    ...     {"entity": "Ermengarde of Tours", "relation": "about", "chunk": "ermengarde#0"}]})
    'question "Lothair II" -> Lothair II -> [lothair-ii#0] -mentions-> Ermengarde of Tours -> [ermengarde#0]'
    """
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
        return " -> ".join(parts).replace(" -> -", " -")
    if explain.get("kept_dense"):
        return f"dense hit #{int(explain.get('dense_rank', 0)) + 1}"
    if explain.get("dense_only"):
        return "dense hit outside the graph"
    seeds = explain.get("seed_entities") or []
    via = explain.get("via_entities") or []
    text = f"PageRank from {', '.join(map(str, seeds)) or 'the top dense hits'}"
    return text + (f" via {', '.join(map(str, via))}" if via else "")
