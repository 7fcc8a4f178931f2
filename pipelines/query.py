"""The query pipeline: dense, keyword and hybrid retrieval over an index, then answer generation and grounding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ragkit.errors import ConfigError
from ragkit.fusion import reciprocal_rank_fusion
from ragkit.protocols import Generator
from ragkit.types import RETRIEVAL_MODES, Answer, Hit

if TYPE_CHECKING:
    from ragkit.index import Index

GRAPH_MODES = ("graph", "multihop", "graph_hybrid")
Ranked = list[tuple[str, float]]  # (chunk id, score), best first


def check_mode(mode: str) -> None:
    if mode not in RETRIEVAL_MODES:
        raise ConfigError(f"unknown retrieval mode {mode!r} (valid: {', '.join(RETRIEVAL_MODES)})")


def dense_ranked(index: Index, queries: Sequence[str], k: int, where: Mapping[str, Any] | None) -> list[Ranked]:
    """Exact (or the backend's approximate) inner-product search of the query embeddings."""
    embedder = index.embedder
    embed_queries = getattr(embedder, "embed_queries", None)
    vectors = embed_queries(queries) if embed_queries else np.stack([embedder.embed_query(q) for q in queries])
    scores, ids = index.vectors.search(np.asarray(vectors, dtype=np.float32), k, where)
    found = index.catalog.chunk_ids_of_vectors(ids[ids >= 0].tolist())
    return [
        [(found[v], float(s)) for s, v in zip(row_scores, row_ids, strict=False) if v >= 0 and v in found]
        for row_scores, row_ids in zip(scores, ids, strict=False)
    ]


def bm25_ranked(index: Index, queries: Sequence[str], k: int, where: Mapping[str, Any] | None) -> list[Ranked]:
    bm25 = index.bm25
    mask = None
    if where:
        allowed = index.catalog.chunk_ids_where(where)
        mask = np.fromiter((cid in allowed for cid in bm25.chunk_ids), dtype=np.float32, count=len(bm25))
    return bm25.search(queries, k, mask)


def hybrid_ranked(
    index: Index, queries: Sequence[str], k: int, where: Mapping[str, Any] | None
) -> list[Ranked]:
    """Reciprocal rank fusion of the dense and BM25 rankings, each taken ``candidates`` deep."""
    depth = max(k, index.settings.retrieval.candidates)
    dense = dense_ranked(index, queries, depth, where)
    keyword = bm25_ranked(index, queries, depth, where)
    constant = index.settings.retrieval.rrf_constant
    return [
        [(str(cid), score) for cid, score in reciprocal_rank_fusion(
            [[c for c, _ in d], [c for c, _ in b]], k, constant=constant
        )]
        for d, b in zip(dense, keyword, strict=False)
    ]


def retrieve_many(
    index: Index, queries: list[str], k: int, mode: str, where: Mapping[str, Any] | None
) -> list[list[Hit]]:
    check_mode(mode)
    if k < 1:
        raise ConfigError(f"k must be at least 1 (got {k})")
    if not queries:
        return []
    explains: list[list[Mapping[str, Any] | None]] | None = None
    if mode == "dense":
        ranked = dense_ranked(index, queries, k, where)
    elif mode == "bm25":
        ranked = bm25_ranked(index, queries, k, where)
    elif mode == "hybrid":
        ranked = hybrid_ranked(index, queries, k, where)
    else:
        from ragkit.pipelines.graph_query import graph_ranked

        ranked, explains = graph_ranked(index, queries, k, mode, where)
    return _to_hits(index, ranked, mode, explains)


def _to_hits(
    index: Index, ranked: list[Ranked], mode: str, explains: list[list[Mapping[str, Any] | None]] | None
) -> list[list[Hit]]:
    wanted = list({cid for row in ranked for cid, _ in row})
    chunks = index.catalog.chunks_by_ids(wanted)
    sources = index.catalog.document_sources({c.doc_id for c in chunks.values()})
    results = []
    for row_number, row in enumerate(ranked):
        hits = []
        for position, (cid, score) in enumerate(row):
            chunk = chunks.get(cid)
            if chunk is None or chunk.doc_id not in sources:  # deleted between search and lookups
                continue
            explain = explains[row_number][position] if explains else None
            hits.append(Hit(chunk, score, mode, sources[chunk.doc_id], explain))
        results.append(hits)
    return results


def resolve_generator(index: Index, generator: Generator | str | None = None) -> Generator:
    """A generator instance from a name (or the configured one); model-backed ones degrade to extractive."""
    from ragkit.connectors.generators import from_settings

    if generator is None or isinstance(generator, str):
        settings = index.settings.generator
        if generator is not None:
            settings = index.settings.merged(generator={"name": generator}).generator
        return from_settings(settings)
    return generator


def ground_answers(index: Index, answers: Sequence[Answer], hits: Sequence[Sequence[Hit]]) -> list[Answer]:
    """Each answer checked against its hits with the index's embedder (``ragkit.grounding``), as configured.

    The embedder is asked for only when some sentence is not quoted word for word from a passage, so grounding
    an extractive answer never loads it, and a model generator's answer uses the one retrieval loaded.
    """
    settings = index.settings.grounding
    if not settings.enabled:
        return list(answers)
    from ragkit.grounding import ground_many

    def embed(texts: Sequence[str]) -> np.ndarray:
        return index.embedder.embed_documents(texts)

    return ground_many(answers, hits, embed, threshold=settings.threshold, min_overlap=settings.min_overlap)


def answer_many(
    index: Index, questions: list[str], hits: list[list[Hit]], generator: Generator | str | None
) -> list[Answer]:
    """One answer per question from its hits, grounded (see :func:`ground_answers`)."""
    resolved = resolve_generator(index, generator)
    generate_many = getattr(resolved, "generate_many", None)
    if generate_many is not None:
        answers = list(generate_many(questions, hits))
    else:
        answers = [resolved.generate(q, h) for q, h in zip(questions, hits, strict=False)]
    return ground_answers(index, answers, hits)
