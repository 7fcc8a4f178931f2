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

    def count_tokens(self, text: str) -> int: ...


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


@runtime_checkable
class Retriever(Protocol):
    def retrieve(self, query: str, k: int = 10, where: Mapping[str, Any] | None = None) -> list[Hit]: ...


@runtime_checkable
class Generator(Protocol):
    name: str

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer: ...

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]: ...
