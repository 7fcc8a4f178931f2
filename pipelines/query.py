"""The query pipeline, top to bottom: retrieve (a mode from the registry) -> hits -> answer -> grounding.

>>> hits = retrieve_many(store, ["who founded it?"], k=5, mode="hybrid", where=None)
>>> answers = answer_many(store, ["who founded it?"], hits, generator=None)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ragkit.errors import ConfigError
from ragkit.protocols import Generator, Reranker, Retriever, Scored
from ragkit.registry import retrieval_modes
from ragkit.types import Answer, Hit

if TYPE_CHECKING:
    from ragkit.store import IndexStore



def check_mode(mode: str) -> None:
    if mode not in retrieval_modes.names():
        raise ConfigError(f"unknown retrieval mode {mode!r} (valid: {', '.join(retrieval_modes.names())})")


def retriever(store: IndexStore, mode: str) -> Retriever:
    """The open index's retriever for ``mode``, built on first use and kept with the index."""
    check_mode(mode)
    factory = retrieval_modes.get(mode)
    built: Retriever = store.part(f"mode:{mode}", lambda: factory(store))
    return built


def reranker(store: IndexStore, rerank: bool | None = None) -> Reranker | None:
    """The open index's cross-encoder when reranking is on, built on first use and kept with the index; None
    when off. ``rerank`` turns it on or off for one call; None: on when ``retrieval.rerank`` names a model."""
    if rerank is not None and not isinstance(rerank, bool):
        raise ConfigError(f"rerank must be True, False or None (got {rerank!r}); the model is retrieval.rerank")
    model = store.settings.retrieval.rerank
    if rerank is False or (rerank is None and model is None):
        return None
    if model is None:
        raise ConfigError(
            "rerank=True: no cross-encoder is configured; set retrieval.rerank to a local model directory or an "
            "installed package that carries one ([retrieval] rerank = ... in ragkit.toml, or --rerank MODEL)"
        )
    from ragkit.connectors.rerankers import CrossEncoderReranker

    device = store.settings.embedder.device
    built: Reranker = store.part(f"reranker:{model}", lambda: CrossEncoderReranker(model, device=device))
    return built


def retrieve_many(
    store: IndexStore,
    queries: Sequence[str],
    k: int,
    mode: str,
    where: Mapping[str, Any] | None,
    rerank: bool | None = None,
) -> list[list[Hit]]:
    """The top ``k`` hits of each query in ``mode``.

    With reranking on (``rerank``, else whether ``retrieval.rerank`` is set) the mode retrieves
    ``max(k, retrieval.rerank_candidates)`` hits and the cross-encoder keeps the best ``k`` of them.
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1 (got {k})")
    cross_encoder = reranker(store, rerank)
    if not queries:
        return []
    depth = k if cross_encoder is None else max(k, store.settings.retrieval.rerank_candidates)
    hits = to_hits(store, retriever(store, mode).search(list(queries), depth, where), mode)
    return hits if cross_encoder is None else cross_encoder.rerank_many(list(queries), hits, k)


def search_by_vector(
    store: IndexStore, vectors: np.ndarray, k: int, where: Mapping[str, Any] | None
) -> list[list[Hit]]:
    """Dense hits for query vectors the caller embedded (the LangChain adapter's ``*_by_vector``)."""
    from ragkit.pipelines.retrievers import DenseRetriever

    if k < 1:
        raise ConfigError(f"k must be at least 1 (got {k})")
    dense: DenseRetriever = store.part("dense-vectors", lambda: DenseRetriever(store))
    return to_hits(store, dense.search_vectors(vectors, k, where), "dense")


def to_hits(store: IndexStore, found: Sequence[Sequence[Scored]], mode: str) -> list[list[Hit]]:
    """Ranked chunk ids become hits with their chunk and source; chunks deleted meanwhile are left out."""
    wanted = list({cid for row in found for cid, _, _ in row})
    chunks = store.catalog.chunks_by_ids(wanted)
    sources = store.catalog.document_sources({c.doc_id for c in chunks.values()})
    results = []
    for row in found:
        hits = []
        for cid, score, explain in row:
            chunk = chunks.get(cid)
            if chunk is None or chunk.doc_id not in sources:  # deleted between search and lookups
                continue
            hits.append(Hit(chunk, score, mode, sources[chunk.doc_id], explain))
        results.append(hits)
    return results


def resolve_generator(store: IndexStore, generator: Generator | str | None = None) -> Generator:
    """A generator instance from a name (or the configured one); model-backed ones degrade to extractive."""
    from ragkit.connectors.generators import from_settings

    if generator is None or isinstance(generator, str):
        settings = store.settings.generator
        if generator is not None:
            settings = store.settings.merged(generator={"name": generator}).generator
        return from_settings(settings)
    return generator


def ground_answers(store: IndexStore, answers: Sequence[Answer], hits: Sequence[Sequence[Hit]]) -> list[Answer]:
    """Each answer checked against its hits with the index's embedder (``ragkit.grounding``), as configured.

    The embedder is asked for only when some sentence is not quoted word for word from a passage, so grounding
    an extractive answer never loads it, and a model generator's answer uses the one retrieval loaded.
    """
    settings = store.settings.grounding
    if not settings.enabled:
        return list(answers)
    from ragkit.grounding import ground_many

    def embed(texts: Sequence[str]) -> np.ndarray:
        return store.embedder.embed_documents(texts)

    return ground_many(answers, hits, embed, threshold=settings.threshold, min_overlap=settings.min_overlap)


def answer_many(
    store: IndexStore, questions: Sequence[str], hits: Sequence[Sequence[Hit]], generator: Generator | str | None
) -> list[Answer]:
    """One answer per question from its hits, grounded (see :func:`ground_answers`)."""
    resolved = resolve_generator(store, generator)
    generate_many = getattr(resolved, "generate_many", None)
    if generate_many is not None:
        answers = list(generate_many(list(questions), list(hits)))
    else:
        answers = [resolved.generate(q, h) for q, h in zip(questions, hits, strict=False)]
    return ground_answers(store, answers, hits)
