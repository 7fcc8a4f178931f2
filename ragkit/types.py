"""Plain data that flows through ragkit: documents, chunks, hits and answers, and the small helpers on them.

Every type here is a frozen dataclass: cheap to build, safe to share between threads, and easy to compare in
tests. Nothing in this module imports a model or a backend.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

RetrievalMode = Literal["dense", "bm25", "hybrid", "graph", "multihop", "graph_hybrid"]
RETRIEVAL_MODES: tuple[str, ...] = ("dense", "bm25", "hybrid", "graph", "multihop", "graph_hybrid")


def sha1_hex(text: str) -> str:
    """Hex SHA-1 of a string's UTF-8 bytes; the content hash used across the catalog and caches."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Document:
    """One unit of source material: a file, a page, or one row of a JSONL/CSV file.

    ``id`` is stable for the same source (a hash of the file path, or the row's own id field), so re-indexing
    finds the document again; ``content_hash`` tells whether it changed.
    """

    id: str
    text: str
    source: str
    title: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return sha1_hex(self.title + "\x00" + self.text)


@dataclass(frozen=True)
class Chunk:
    """A span of a document's text, ``text == document.text[start:end]`` (before any title prefix).

    ``embed_text`` is what the embedder and BM25 see: the chunk text, prefixed with the document title when
    there is one (BEIR's ``title + " " + text`` convention).
    """

    id: str
    doc_id: str
    text: str
    start: int
    end: int
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def embed_text(self) -> str:
        title = self.meta.get("title", "")
        return f"{title} {self.text}" if title else self.text


def batch_bounds(lengths: Sequence[int], batch_size: int, max_chars: int) -> list[tuple[int, int]]:
    """Consecutive batches ``[start, end)`` of texts with these lengths: at most ``batch_size`` texts and at most
    ``max_chars`` characters each (a longer text is a batch of its own)."""
    bounds = []
    start = chars = 0
    for i, length in enumerate(lengths):
        if i > start and (i - start == batch_size or chars + length > max_chars):
            bounds.append((start, i))
            start, chars = i, 0
        chars += length
    if start < len(lengths):
        bounds.append((start, len(lengths)))
    return bounds


def chunk_id(doc_id: str, start: int, end: int, text: str) -> str:
    """Stable chunk id: the same document span with the same text always gets the same id."""
    return sha1_hex(f"{doc_id}\x00{start}\x00{end}\x00{text}")[:20]


def vector_id(chunk_id_: str) -> int:
    """The int64 id a vector backend stores for a chunk: 60 bits of its id, so never negative."""
    return int(chunk_id_[:15], 16)


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk with its score and where it came from.

    ``explain`` carries the reason a retriever chose it (for graph modes: the seed entities or the path).
    """

    chunk: Chunk
    score: float
    retriever: str
    source: str = ""
    explain: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Answer:
    """A generated answer. ``citations[i]`` is the hit that ``[i+1]`` in ``text`` refers to.

    ``unsupported``: the sentences of ``text`` that no retrieved passage supports (see ``ragkit.grounding``).
    """

    text: str
    citations: tuple[Hit, ...]
    generator: str
    degraded: bool = False
    reason: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    unsupported: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadError:
    """A document, file or row that could not be indexed; reported, never fatal to the run.

    ``stage`` names the step that failed: ``load``, ``chunk``, ``embed``, ``graph`` or ``write``. Paths that
    are deliberately not read (a pipe, a device, a symbolic link out of the indexed folder) are ``load``.
    """

    source: str
    reason: str
    stage: str = "load"

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"
