"""The retrieval modes, as objects: each takes a batch of queries and returns ranked chunk ids.

Every mode implements ``ragkit.protocols.Retriever`` and registers by name in ``ragkit.registry.retrieval_modes``
exactly as a third-party mode would (an entry point in the ``ragkit.retrieval_modes`` group naming a class
that is built with the open index's ``IndexStore``)::

    class TitleRetriever:
        name = "title"

        def __init__(self, store: IndexStore) -> None:
            self.store = store

        def search(self, queries, k, where=None):
            return [[(chunk_id, score, None), ...] for query in queries]

A class may say ``needs_graph = True`` when it searches the knowledge graph (``ragkit eval`` then builds one).

``dense`` searches the query embeddings in the vector backend, ``bm25`` the keyword index, ``hybrid`` fuses
both with reciprocal rank fusion; ``graph`` (Personalized PageRank), ``multihop`` (best path) and
``graph_hybrid`` (their fusion with dense search) walk the knowledge graph from the question's entities and
its dense hits.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ragkit.errors import ConfigError
from ragkit.fusion import reciprocal_rank_fusion
from ragkit.protocols import Scored
from ragkit.types import Chunk, Hit

if TYPE_CHECKING:
    from ragkit.bm25 import BM25Index
    from ragkit.graph import retrieve
    from ragkit.store import IndexStore

Where = Mapping[str, Any] | None
FILTER_DEPTH = 4  # graph modes with a ``where`` filter look this many times deeper before dropping other chunks


class DenseRetriever:
    """Exact (or the backend's approximate) inner-product search of the query embeddings."""

    name = "dense"
    needs_graph = False

    def __init__(self, store: IndexStore) -> None:
        self.store = store

    def search(self, queries: Sequence[str], k: int, where: Where = None) -> list[list[Scored]]:
        return self.search_vectors(self.store.embed_queries(queries), k, where)

    def search_vectors(self, vectors: np.ndarray, k: int, where: Where = None) -> list[list[Scored]]:
        scores, ids = self.store.vectors().search(np.asarray(vectors, dtype=np.float32), k, where)
        found = self.store.catalog.chunk_ids_of_vectors(ids[ids >= 0].tolist())
        return [
            [(found[v], float(s), None) for s, v in zip(row_scores, row_ids, strict=False) if v >= 0 and v in found]
            for row_scores, row_ids in zip(scores, ids, strict=False)
        ]

    def search_hits(self, queries: Sequence[str], k: int, where: Where = None) -> list[list[Hit]]:
        """:meth:`search`'s ranking as hits, their chunks read along with it (see :meth:`hits_of_vectors`)."""
        return self.hits_of_vectors(self.store.embed_queries(queries), k, where)

    def hits_of_vectors(self, vectors: np.ndarray, k: int, where: Where = None) -> list[list[Hit]]:
        """Dense hits in one catalog read: the chunks of the vectors found, their sources and the catalog's
        generation come from one statement. The search runs on the vectors as last checked; when that
        generation shows a write since, they are brought up to date and the search runs again. A query thus
        reads the catalog once instead of three times (generation, chunk ids, chunks)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        checked = self.store.vectors_as_checked()
        if checked is not None:
            index, generation = checked
            scores, ids = index.search(vectors, k, where)
            read, chunks = self.store.catalog.chunks_of_vectors(ids[ids >= 0].tolist())
            if read == generation:
                return _hits(scores, ids, chunks, self.name)
        scores, ids = self.store.vectors().search(vectors, k, where)
        return _hits(scores, ids, self.store.catalog.chunks_of_vectors(ids[ids >= 0].tolist())[1], self.name)


def _hits(
    scores: np.ndarray, ids: np.ndarray, chunks: Mapping[int, tuple[Chunk, str]], mode: str
) -> list[list[Hit]]:
    """Hits of a vector search's ``(scores, ids)`` rows; vectors whose chunk is gone are left out."""
    return [
        [
            Hit(found[0], score, mode, found[1])
            for score, vid in zip(row_scores.tolist(), row_ids.tolist(), strict=False)
            if (found := chunks.get(vid)) is not None
        ]
        for row_scores, row_ids in zip(scores, ids, strict=False)
    ]


class BM25Retriever:
    """BM25 over the chunks' text (title included), Lucene's scoring, English stemming and stopwords."""

    name = "bm25"
    needs_graph = False

    def __init__(self, store: IndexStore) -> None:
        self.store = store

    def search(self, queries: Sequence[str], k: int, where: Where = None) -> list[list[Scored]]:
        bm25 = self.store.bm25()
        mask = None
        if where:
            allowed = self.store.catalog.chunk_ids_where(where)
            mask = np.fromiter((cid in allowed for cid in bm25.chunk_ids), dtype=np.float32, count=len(bm25))
        return [[(cid, score, None) for cid, score in row] for row in bm25.search(queries, k, mask)]


class HybridRetriever:
    """Reciprocal rank fusion of the dense and BM25 rankings, each taken ``retrieval.candidates`` deep."""

    name = "hybrid"
    needs_graph = False

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self.dense = DenseRetriever(store)
        self.keyword = BM25Retriever(store)

    def search(self, queries: Sequence[str], k: int, where: Where = None) -> list[list[Scored]]:
        settings = self.store.settings.retrieval
        depth = max(k, settings.candidates)
        dense = self.dense.search(queries, depth, where)
        keyword = self.keyword.search(queries, depth, where)
        return [
            [
                (str(cid), score, None)
                for cid, score in reciprocal_rank_fusion(
                    [[c for c, _, _ in d], [c for c, _, _ in b]], k, constant=settings.rrf_constant
                )
            ]
            for d, b in zip(dense, keyword, strict=False)
        ]


# -- graph modes ------------------------------------------------------------------------------------------


class GraphSearch:
    """The graph engines of one open index (``ragkit.graph.retrieve``), sharing one compiled graph.

    Dense candidates for every question of a batch come from one embedding batch. A ``where`` filter applies to
    the dense seeds and to the results: the walk may pass through entities of other documents, but only chunks
    that match the filter are returned.
    """

    def __init__(self, store: IndexStore) -> None:
        from ragkit.graph.retrieve import GraphRetriever, HybridGraphRetriever, MultiHopRetriever

        if not store.manifest.graph:
            raise ConfigError(
                f"{store.path}: this index was built without a knowledge graph (--no-graph); "
                "graph, multihop and graph_hybrid modes need one: rebuild it without --no-graph"
            )
        self.store = store
        graph = store.graph()
        self.settings = graph.options
        self.dense = DenseRetriever(store)
        self._local = threading.local()  # the dense candidates of the batch this thread is answering
        first = GraphRetriever(
            graph.store, store.embedder, self._dense_lookup, self.settings,
            embedder_name=store.manifest.embedder, matrices=graph,
        )
        self.engines: dict[str, retrieve.GraphRetriever | retrieve.MultiHopRetriever] = {"graph": first}
        for mode, kind in (("multihop", MultiHopRetriever), ("graph_hybrid", HybridGraphRetriever)):
            self.engines[mode] = kind(
                graph.store, store.embedder, self._dense_lookup, self.settings,
                embedder_name=store.manifest.embedder, shared=first,
            )

    def _dense_lookup(self, query: str, k: int) -> list[tuple[str, float]]:
        return self._local.dense.get(query, [])[:k]

    def _texts(self, chunk_ids: Sequence[str]) -> dict[str, str]:
        return {cid: chunk.text for cid, chunk in self.store.catalog.chunks_by_ids(chunk_ids).items()}

    def search(self, mode: str, queries: Sequence[str], k: int, where: Where) -> list[list[Scored]]:
        engine = self.engines[mode]
        depth = max(self.settings.dense_candidates, k)
        found_dense = self.dense.search(queries, depth, where)
        dense = {q: [(cid, score) for cid, score, _ in row] for q, row in zip(queries, found_dense, strict=True)}
        self._local.dense = dense
        allowed = self.store.catalog.chunk_ids_where(where) if where else None
        residual = mode == "graph_hybrid" and self.settings.fusion_residual_weight > 0
        pool = max(k, self.settings.fusion_residual_depth) if residual else k
        results: list[list[Scored]] = []
        try:
            for query in queries:
                found = engine.retrieve_chunks(query, pool * FILTER_DEPTH if allowed is not None else pool)
                if allowed is not None:
                    found = [hit for hit in found if hit[0] in allowed][:pool]
                    if len(found) < k:  # pad with the filtered dense hits the graph did not reach
                        taken = {cid for cid, _, _ in found}
                        floor = min((score for _, score, _ in found), default=0.0)
                        pad = [cid for cid, _ in dense[query] if cid not in taken][: k - len(found)]
                        found += [
                            (cid, floor - 1e-6 * (i + 1), {"mode": mode, "dense_only": True})
                            for i, cid in enumerate(pad)
                        ]
                ranked: Sequence[Scored] = found
                if residual:
                    ranked = order_by_unmatched_words(
                        query, found, self.store.bm25(), self._texts, self.settings.fusion_residual_weight,
                        self.settings.fusion_residual_depth,
                    )
                results.append([(cid, score, explain) for cid, score, explain in ranked[:k]])
        finally:
            self._local.dense = {}
        return results


def order_by_unmatched_words(
    query: str,
    found: Sequence[Scored],
    bm25: BM25Index,
    texts: Callable[[Sequence[str]], Mapping[str, str]],
    weight: float,
    depth: int,
) -> list[Scored]:
    """``graph_hybrid``'s hits below the kept ones, moved by the question's words that no kept hit contains.

    The kept hits (the best paths' and the top dense hits: ``kept_path`` / ``kept_dense``) answer what the question
    says about its own entities; the words they lack say what the next hop must be about (the relation asked for:
    "spouse", "founded", "capital"). Among the passages the graph reaches from a bridge by equally short paths,
    the one holding those words completes the chain. Each hit below the kept ones, down to the ``depth``-th of
    ``found``, gains ``weight`` times the mean score gap between them per standard deviation of its BM25 score for
    those words (``texts`` gives the kept hits' texts by chunk id), so a weight of 1 moves a hit one standard
    deviation above the rest about one place up. Hits past ``depth`` keep their places, so a ranking's top does
    not depend on how many hits were asked for. Each moved hit's explanation says so under ``residual``: the
    words, its BM25 score for them and the places it moved (up is positive). Measured in docs/benchmarks.md
    ("The question's unmatched words").
    """
    kept = [hit for hit in found if hit[2] and (hit[2].get("kept_path") or hit[2].get("kept_dense"))]
    rest, after = found[len(kept) : depth], list(found[depth:])
    if len(rest) < 2 or list(found[: len(kept)]) != kept:
        return list(found)
    covered: set[str] = set()
    for text in texts([cid for cid, _, _ in kept]).values():
        covered.update(bm25.stems(text))
    unmatched = {stem: word for word, stem in reversed(bm25.terms(query)) if stem not in covered}
    if not unmatched:
        return list(found)
    stems = list(reversed(unmatched))  # in the question's order
    matched = bm25.score_chunks(stems, [cid for cid, _, _ in rest])
    spread = float(matched.std())
    if spread == 0.0:
        return list(found)
    scores = np.array([score for _, score, _ in rest], dtype=np.float64)
    gap = float(scores[0] - scores[-1]) / (len(rest) - 1)
    moved = scores + weight * gap * (matched - matched.mean()) / spread
    if kept:  # the kept hits stay on top
        moved = np.minimum(moved, min(score for _, score, _ in kept) - 1e-6)
    order = np.lexsort((np.arange(len(rest)), -moved))
    placed = moved[order]
    if after:  # and the hits past the window below
        placed = np.maximum(placed, after[0][1] + 1e-6 * np.arange(len(rest), 0, -1))
    words = [unmatched[stem] for stem in stems]
    reordered: list[Scored] = []
    for place, (i, score) in enumerate(zip(order.tolist(), placed.tolist(), strict=True)):
        cid, _, explain = rest[i]
        why = {**(explain or {}), "residual": {"words": words, "bm25": round(float(matched[i]), 4), "moved": i - place}}
        reordered.append((cid, float(score), why))
    return kept + reordered + after


class _GraphMode:
    name = "graph"
    needs_graph = True  # ``ragkit eval`` builds its index with a knowledge graph for these modes

    def __init__(self, store: IndexStore) -> None:
        self.graph: GraphSearch = store.part("graph-search", lambda: GraphSearch(store))

    def search(self, queries: Sequence[str], k: int, where: Where = None) -> list[list[Scored]]:
        return self.graph.search(self.name, queries, k, where)


class PageRankRetriever(_GraphMode):
    """``graph``: Personalized PageRank from the question's entities and its dense hits."""

    name = "graph"


class MultiHopRetriever(_GraphMode):
    """``multihop``: the best path from the question's entities, hop by hop through the chunks that link them."""

    name = "multihop"


class GraphHybridRetriever(_GraphMode):
    """``graph_hybrid``: the multi-hop paths fused with dense search."""

    name = "graph_hybrid"


# -- the default mode ---------------------------------------------------------------------------------------

_QUESTION = re.compile(
    r"^\W*(who|whom|whose|what|which|when|where|why|how|is|are|was|were|do|does|did|can|could|should|would|will"
    r"|has|have|had|in (?:what|which))\b",
    re.IGNORECASE,
)


def is_question(text: str) -> bool:
    """A question (a wh-word or an inverted auxiliary first, or a question mark last), not a statement or keywords.

    >>> is_question("Who directed the film that won?"), is_question("Vitamin D deficiency raises fracture risk.")
    (True, False)
    """
    return bool(_QUESTION.search(text)) or text.rstrip().endswith("?")


class AutoRetriever:
    """``auto``, the default mode: the best of the other modes for the kind of query, decided per query.

    - A **question** asks for a fact about named things, and the evidence is often split across passages that
      share an entity (the second hop): it goes to ``graph_hybrid`` (the best paths and the top dense hits, then
      the rest by path and PageRank mass, moved by the question's words that no kept hit contains).
    - A **statement or keywords** (a claim to verify, a search) is matched best by its own words: BM25, fused by
      reciprocal rank with ``graph`` (Personalized PageRank seeded by the dense hits and the linked entities),
      which brings the semantic neighbours.
    - An index without a knowledge graph answers everything with ``hybrid``.

    Each hit's ``explain`` says which route and signals ranked it: ``route``, ``bm25_rank`` (0-based; None when
    BM25 did not rank it), and the graph's own explanation (the path, the seeds, the dense rank) under ``graph``.
    Measured on the shared sets in docs/benchmarks.md (`bench/mode_study.py` compares the candidates).
    """

    name = "auto"
    needs_graph = True  # uses the graph when the index has one; ``ragkit eval`` builds one for it

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self.hybrid = HybridRetriever(store)
        self.keyword = BM25Retriever(store)
        self.graph: GraphSearch | None = (
            store.part("graph-search", lambda: GraphSearch(store)) if store.manifest.graph else None
        )

    def search(self, queries: Sequence[str], k: int, where: Where = None) -> list[list[Scored]]:
        if self.graph is None:
            return [
                [(cid, score, {"mode": self.name, "route": "hybrid"}) for cid, score, _ in row]
                for row in self.hybrid.search(queries, k, where)
            ]
        results: list[list[Scored]] = [[] for _ in queries]
        questions = [i for i, query in enumerate(queries) if is_question(query)]
        statements = [i for i in range(len(queries)) if i not in set(questions)]
        if questions:
            found = self.graph.search("graph_hybrid", [queries[i] for i in questions], k, where)
            for i, row in zip(questions, found, strict=True):
                results[i] = [(cid, score, self._explain("question", None, explain)) for cid, score, explain in row]
        if statements:
            texts = [queries[i] for i in statements]
            for i, row in zip(statements, self._statements(texts, k, where), strict=True):
                results[i] = row
        return results

    def _statements(self, queries: list[str], k: int, where: Where) -> list[list[Scored]]:
        """BM25 and PageRank, each ``retrieval.candidates`` deep, fused by reciprocal rank."""
        settings = self.store.settings.retrieval
        assert self.graph is not None
        depth = max(k, settings.candidates)
        keyword = self.keyword.search(queries, depth, where)
        graph = self.graph.search("graph", queries, depth, where)
        fused_rows: list[list[Scored]] = []
        for bm25_row, graph_row in zip(keyword, graph, strict=True):
            bm25_rank = {cid: rank for rank, (cid, _, _) in enumerate(bm25_row)}
            graph_explain = {cid: explain for cid, _, explain in graph_row}
            fused = reciprocal_rank_fusion(
                [[c for c, _, _ in bm25_row], [c for c, _, _ in graph_row]], k, constant=settings.rrf_constant
            )
            fused_rows.append([
                (str(cid), score, self._explain("statement", bm25_rank.get(str(cid)), graph_explain.get(str(cid))))
                for cid, score in fused
            ])
        return fused_rows

    def _explain(self, route: str, bm25_rank: int | None, graph: Mapping[str, Any] | None) -> dict[str, Any]:
        explain: dict[str, Any] = {"mode": self.name, "route": route}
        if route == "statement":
            explain["bm25_rank"] = bm25_rank
        if graph is not None:
            explain["graph"] = dict(graph)
        return explain
