"""What the graph retrieval tests share: a small titled corpus extracted with the real spaCy pipeline into an
in-memory GraphStore, and an exact dense search over its MiniLM vectors."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ragkit.graph.extract import SpacyExtractor
from ragkit.graph.settings import GraphSettings
from ragkit.graph.store import GraphStore
from ragkit.types import Chunk

DenseSearch = Callable[[str, int], list[tuple[str, float]]]


def titled_chunks(passages: Sequence[tuple[str, str, str]]) -> list[Chunk]:
    """One chunk per ``(id, title, text)`` passage; the id is also its document id."""
    return [Chunk(pid, pid, text, 0, len(text), {"title": title}) for pid, title, text in passages]


def graph_and_dense(chunks: Sequence[Chunk], embedder: Any) -> tuple[GraphStore, DenseSearch]:
    """The chunks' graph (spaCy, one process) and a dense search ``(query, k) -> [(chunk id, cosine)]``."""
    store = GraphStore(sqlite3.connect(":memory:"))
    with SpacyExtractor(GraphSettings(n_process=1)) as extractor:
        store.add(extractor.extract(list(chunks)))
    vectors = embedder.embed_documents([c.embed_text for c in chunks])
    ids = [c.id for c in chunks]

    def dense(query: str, k: int) -> list[tuple[str, float]]:
        scores = vectors @ embedder.embed_query(query)
        return [(ids[i], float(scores[i])) for i in np.argsort(-scores)[:k]]

    return store, dense
