"""The pluggable parts of ragkit, as structural protocols: any class with these methods fits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ragkit.types import Answer, Chunk, Document, Hit


@runtime_checkable
class Chunker(Protocol):
    def split(self, doc: Document) -> list[Chunk]: ...


@runtime_checkable
class Embedder(Protocol):
    """Turns text into L2-normalized float32 vectors of dimension ``dim``."""

    name: str
    dim: int
    max_tokens: int

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """One batch of query vectors, shape ``(len(texts), dim)``."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token the embedder sees, for chunking on token boundaries."""
        ...


@runtime_checkable
class VectorIndex(Protocol):
    """A store of int64-keyed vectors with per-vector metadata for filtering.

    ``add`` upserts (an existing id is replaced). ``search`` returns ``(scores, ids)`` of shape ``(nq, k)``,
    best first, padded with ``-inf`` / ``-1`` when fewer than ``k`` vectors match. ``where`` is an equality
    filter on metadata applied inside the backend before the top-k is taken.
    """

    dim: int

    def add(self, ids: np.ndarray, vectors: np.ndarray, meta: Sequence[Mapping[str, Any]]) -> None: ...

    def delete(self, ids: np.ndarray) -> None: ...

    def search(
        self, queries: np.ndarray, k: int, where: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def ids(self) -> np.ndarray: ...

    def save(self) -> None: ...

    def __len__(self) -> int: ...


Scored = tuple[str, float, Mapping[str, Any] | None]
"""One ranked chunk: its id, its score, and why it was retrieved (a graph path, seeds) or None."""


@runtime_checkable
class Retriever(Protocol):
    """A retrieval mode over one open index, built with its ``ragkit.store.IndexStore``.

    ``search`` answers a batch of queries at once (one embedding batch) with up to ``k`` chunks per query, best
    first. ``where`` is an equality filter on ``doc_id``, ``source`` or a document tag.

    Optional: ``search_hits(queries, k, where)`` returns the ``Hit`` lists themselves, for a mode that reads its
    chunks along with its ranking (``dense``: one catalog read per query instead of two).
    """

    name: str

    def search(
        self, queries: Sequence[str], k: int, where: Mapping[str, Any] | None = None
    ) -> list[list[Scored]]: ...


@runtime_checkable
class Generator(Protocol):
    """Answers a question from its hits: ``generate`` the whole Answer, or ``stream`` its text as it is written.

    Optional methods: ``generate_many(questions, hit_lists)`` answers a batch; ``answer_from_stream(question,
    hits, text)`` builds the Answer for the text ``stream`` wrote, as ``generate`` would (without it, ``[n]`` in
    that text is ``hits[n - 1]``: ``ragkit.connectors.generators.prompt.streamed_answer``).
    """

    name: str

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer: ...

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]: ...


@runtime_checkable
class Reranker(Protocol):
    """Re-scores a retrieval mode's hits against their query (a cross-encoder: ``ragkit.connectors.rerankers``).

    Returns the best ``k`` of ``hits`` by the reranker's score, best first (ties keep the mode's order), each with
    ``score`` set to that score, ``retriever`` to ``"<mode>+rerank"``, and ``explain`` holding what the mode said
    plus ``rerank_score`` and ``first_stage_rank`` (1 = the mode's best). ``rerank_many`` scores a batch at once.
    """

    name: str

    def rerank(self, query: str, hits: Sequence[Hit], k: int) -> list[Hit]: ...

    def rerank_many(self, queries: Sequence[str], hits: Sequence[Sequence[Hit]], k: int) -> list[list[Hit]]: ...
