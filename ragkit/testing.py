"""Helpers for testing code built on ragkit: a hashing embedder, a scripted generator and an index checker.

The fakes are for unit tests of orchestration (fast, deterministic, no model); quality tests use real models.
:func:`check_index_consistency` tells whether the stores of an index (catalog, vectors, BM25, knowledge graph)
agree with one another, after any sequence of writes.
"""

from __future__ import annotations

import re
import sqlite3
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ragkit.errors import IndexFormatError
from ragkit.types import Answer, Chunk, Hit, vector_id

if TYPE_CHECKING:
    from ragkit.index import Index

__all__ = [
    "HashingEmbedder",
    "ScriptedGenerator",
    "VectorIndexConformance",  # noqa: F822 - lazily imported by __getattr__ (it needs pytest)
    "assert_index_consistent",
    "check_index_consistency",
]

_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Bag-of-words feature hashing into ``dim`` dimensions, L2-normalized. Texts sharing words are close.

    >>> HashingEmbedder(64).embed_documents(["red apple", "green apple"]).shape
    (2, 64)
    """

    def __init__(self, dim: int = 64, max_tokens: int = 128) -> None:
        self.dim = dim
        self.max_tokens = max_tokens
        self.name = f"hashing-{dim}"

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _TOKEN.finditer(text)]

    def count_tokens(self, text: str) -> int:
        return len(_TOKEN.findall(text))

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in _TOKEN.findall(text.lower()):
                h = zlib.crc32(token.encode("utf-8"))
                out[row, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
            if not norm:
                out[row, 0] = 1.0
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_documents(texts)


class ScriptedGenerator:
    """Answers with the given texts in turn (cycling), citing every hit; records the questions it saw."""

    name = "scripted"

    def __init__(self, answers: Sequence[str] = ("scripted answer [1]",), fail: Exception | None = None) -> None:
        self.answers = list(answers)
        self.fail = fail
        self.questions: list[str] = []

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:
        if self.fail is not None:
            raise self.fail
        self.questions.append(question)
        text = self.answers[(len(self.questions) - 1) % len(self.answers)]
        return Answer(text=text, citations=tuple(hits), generator=self.name)

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
        yield from re.findall(r"\S+\s*", self.generate(question, hits).text)

    def answer_from_stream(self, question: str, hits: Sequence[Hit], text: str) -> Answer:
        """What :meth:`generate` returns for ``text``: the text as it is, citing every hit."""
        return Answer(text=text, citations=tuple(hits), generator=self.name)

    def generate_many(self, questions: Sequence[str], hits: Sequence[Sequence[Hit]]) -> list[Answer]:
        return [self.generate(q, h) for q, h in zip(questions, hits, strict=False)]


def check_index_consistency(index: Index, *, check_filters: bool = True) -> list[str]:
    """The ways in which the stores of an open index disagree with its catalog; empty when they all agree.

    Checked, without writing anything (a derived store that is behind is reported, not rebuilt):

    * the vector store and the BM25 index were saved at the catalog's generation;
    * the vector store holds exactly ``vector_id(chunk.id)`` of every catalog chunk, each once, and (with
      ``check_filters``, one filtered search per document) the ``doc_id`` it filters on is the chunk's document;
    * the saved BM25 index covers exactly the catalog's chunks, each once;
    * with a knowledge graph: every mention and relation mention names a catalog chunk of the same document,
      every entity and relation is supported by a mention and every mention's entity exists, every relation
      mention's entities are mentioned in its chunk, and every chunk of a titled document mentions the title.

    Example::

        with Index.open("my-index") as index:  # no model is loaded: nothing is embedded
            assert check_index_consistency(index) == []
    """
    problems: list[str] = []
    chunks = [chunk for batch in index.catalog.iter_chunks() for chunk in batch]
    chunk_ids = {chunk.id for chunk in chunks}
    generation = index.catalog.generation
    wanted = {vector_id(chunk.id) for chunk in chunks}
    if len(wanted) < len(chunks):
        problems.append(f"catalog: {len(chunks) - len(wanted)} chunk ids share a vector id with another")
    if index.catalog.vector_ids() != wanted:
        problems.append("catalog: the vector_id column is not vector_id(chunk id) for every chunk")
    problems += _vector_problems(index, chunks, wanted, generation, check_filters)
    problems += _bm25_problems(index, chunk_ids, generation)
    if index.manifest.graph:
        problems += _graph_problems(index.catalog.connection, chunks)
    return problems


def assert_index_consistent(index: Index, *, check_filters: bool = True) -> None:
    """Raises AssertionError listing every problem :func:`check_index_consistency` finds."""
    problems = check_index_consistency(index, check_filters=check_filters)
    if problems:
        raise AssertionError(f"{index.path}: index is inconsistent:\n" + "\n".join(f"- {p}" for p in problems))


def _sample(values: Iterable[object], limit: int = 5) -> str:
    """A few of ``values``, for a message: ``'a', 'b' and 3 more``."""
    items = sorted(values, key=repr)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(repr(v) for v in items[:limit]) + more


def _vector_problems(
    index: Index, chunks: list[Chunk], wanted: set[int], generation: int, check_filters: bool
) -> list[str]:
    saved = index.store.saved_generations()["vectors"] or 0
    if saved != generation:
        # reading index.vectors now would bring them up to date, hiding what is on disk
        return [f"vectors: saved at generation {saved}, the catalog is at {generation}"]
    if generation == 0 and not chunks:
        return []  # a new index: nothing written, and opening the vector store would create it
    try:
        vectors = index.vectors  # a FAISS store checks that its sidecar describes its shards
    except IndexFormatError as exc:
        return [f"vectors: {exc}"]
    stored = np.asarray(vectors.ids(), dtype=np.int64).tolist()
    problems = []
    if len(stored) != len(set(stored)):
        problems.append(f"vectors: {len(stored) - len(set(stored))} ids are stored more than once")
    if len(vectors) != len(stored):
        problems.append(f"vectors: len() is {len(vectors)}, ids() lists {len(stored)}")
    missing, extra = wanted - set(stored), set(stored) - wanted
    if missing:
        problems.append(f"vectors: {len(missing)} catalog chunks have no vector (ids {_sample(missing)})")
    if extra:
        problems.append(f"vectors: {len(extra)} vectors belong to no catalog chunk (ids {_sample(extra)})")
    if check_filters and not missing and not extra and chunks:
        by_doc: dict[str, set[int]] = {}
        for chunk in chunks:
            by_doc.setdefault(chunk.doc_id, set()).add(vector_id(chunk.id))
        query = np.zeros((1, vectors.dim), dtype=np.float32)
        query[0, 0] = 1.0  # any unit vector: the filter, not the ranking, is under test
        for doc_id, ids in sorted(by_doc.items()):
            _, found = vectors.search(query, len(ids) + 1, where={"doc_id": doc_id})
            got = {int(i) for i in found[0] if i >= 0}
            if got != ids:
                problems.append(
                    f"vectors: a doc_id filter on {doc_id!r} finds {len(got)} vectors, the document has "
                    f"{len(ids)} chunks"
                )
    return problems


def _bm25_problems(index: Index, chunk_ids: set[str], generation: int) -> list[str]:
    from ragkit.bm25 import BM25Index  # imports bm25s: only when an index is checked

    try:
        saved = BM25Index.load(index.path)  # the saved copy: index.bm25 would rebuild one that is behind
    except IndexFormatError as exc:
        return [f"bm25: {exc}"]
    if saved is None:
        return [] if generation == 0 and not chunk_ids else [f"bm25: none saved, the catalog is at {generation}"]
    problems = []
    if saved.generation != generation:
        problems.append(f"bm25: saved at generation {saved.generation}, the catalog is at {generation}")
    if len(saved.chunk_ids) != len(set(saved.chunk_ids)):
        problems.append(f"bm25: {len(saved.chunk_ids) - len(set(saved.chunk_ids))} chunks are indexed twice")
    missing, extra = chunk_ids - set(saved.chunk_ids), set(saved.chunk_ids) - chunk_ids
    if missing:
        problems.append(f"bm25: {len(missing)} catalog chunks are not indexed ({_sample(missing)})")
    if extra:
        problems.append(f"bm25: {len(extra)} indexed chunks are not in the catalog ({_sample(extra)})")
    return problems


# The graph's tables are read directly (read-only SELECTs), here only: GraphStore's readers assume the very
# invariants checked here (a mention of an unknown entity is a KeyError in snapshot() and to_networkx()), and
# constructing a GraphStore would create its tables in an index that has none yet.
_GRAPH_CHECKS = (
    ("mentions of entities that do not exist",
     "SELECT COUNT(*) FROM graph_mentions m LEFT JOIN graph_entities e ON e.id = m.entity_id WHERE e.id IS NULL"),
    ("entities without any mention",
     "SELECT COUNT(*) FROM graph_entities e WHERE NOT EXISTS "
     "(SELECT 1 FROM graph_mentions m WHERE m.entity_id = e.id)"),
    ("relations that no chunk states",
     "SELECT COUNT(*) FROM graph_relations r WHERE NOT EXISTS (SELECT 1 FROM graph_relation_mentions s "
     "WHERE s.source = r.source AND s.target = r.target AND s.label = r.label AND s.kind = r.kind)"),
    ("relation mentions of relations that do not exist",
     "SELECT COUNT(*) FROM graph_relation_mentions s WHERE NOT EXISTS (SELECT 1 FROM graph_relations r "
     "WHERE s.source = r.source AND s.target = r.target AND s.label = r.label AND s.kind = r.kind)"),
    ("relation mentions whose entities are not mentioned in their chunk",
     "SELECT COUNT(*) FROM graph_relation_mentions s WHERE NOT EXISTS (SELECT 1 FROM graph_mentions m "
     "WHERE m.entity_id = s.source AND m.chunk_id = s.chunk_id) OR NOT EXISTS (SELECT 1 FROM graph_mentions m "
     "WHERE m.entity_id = s.target AND m.chunk_id = s.chunk_id)"),
    ("cached name vectors of entities that do not exist",
     "SELECT COUNT(*) FROM graph_name_vectors v WHERE NOT EXISTS (SELECT 1 FROM graph_entities e "
     "WHERE e.key = v.key)"),
)
_GRAPH_TABLES = {"graph_entities", "graph_mentions", "graph_relations", "graph_relation_mentions",
                 "graph_name_vectors"}
# The display-name counts (written since 2026-12-06; an older index has none until a writer opens its graph) equal
# the mentions they count.
_COUNT_CHECKS = (
    ("surface counts that differ from the mentions",
     "SELECT COUNT(*) FROM (SELECT entity_id, surface, mentions, titled FROM graph_entity_surfaces EXCEPT "
     "SELECT entity_id, surface, COUNT(*), SUM(kind IN ('title', 'heading')) FROM graph_mentions "
     "GROUP BY entity_id, surface)"),
    ("mention surfaces without a count",
     "SELECT COUNT(*) FROM (SELECT DISTINCT entity_id, surface FROM graph_mentions EXCEPT "
     "SELECT entity_id, surface FROM graph_entity_surfaces)"),
    ("label counts that differ from the mentions",
     "SELECT COUNT(*) FROM (SELECT entity_id, label, mentions FROM graph_entity_labels EXCEPT "
     "SELECT entity_id, label, COUNT(*) FROM graph_mentions GROUP BY entity_id, label)"),
    ("mention labels without a count",
     "SELECT COUNT(*) FROM (SELECT DISTINCT entity_id, label FROM graph_mentions EXCEPT "
     "SELECT entity_id, label FROM graph_entity_labels)"),
)


def _graph_problems(conn: sqlite3.Connection, chunks: list[Chunk]) -> list[str]:
    from ragkit.graph.normalize import normalize_name

    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    titled = {chunk.id for chunk in chunks if normalize_name(str(chunk.meta.get("title") or ""))}
    if not _GRAPH_TABLES <= tables:
        # no graph written yet: right only while no chunk had to mention its document's title
        return [f"graph: {len(titled)} chunks of titled documents, and no graph tables"] if titled else []
    counted = {"graph_entity_surfaces", "graph_entity_labels"} <= tables
    problems = [
        f"graph: {count} {what}"
        for what, sql in (*_GRAPH_CHECKS, *(_COUNT_CHECKS if counted else ()))
        if (count := conn.execute(sql).fetchone()[0])
    ]
    doc_of = {chunk.id: chunk.doc_id for chunk in chunks}
    for table in ("graph_mentions", "graph_relation_mentions"):
        rows = conn.execute(f"SELECT DISTINCT chunk_id, doc_id FROM {table}").fetchall()
        dangling = {chunk for chunk, _ in rows if chunk not in doc_of}
        if dangling:
            problems.append(f"graph: {table} names {len(dangling)} chunks not in the catalog ({_sample(dangling)})")
        moved = {chunk for chunk, doc in rows if chunk in doc_of and doc_of[chunk] != doc}
        if moved:
            problems.append(f"graph: {table} gives {len(moved)} chunks another document ({_sample(moved)})")
    with_title = {
        row[0] for row in conn.execute("SELECT DISTINCT chunk_id FROM graph_mentions WHERE kind = 'title'")
    }
    unlinked = titled - with_title
    if unlinked:
        problems.append(
            f"graph: {len(unlinked)} chunks of titled documents do not mention the title ({_sample(unlinked)})"
        )
    return problems


def __getattr__(name: str) -> type:
    """``VectorIndexConformance`` (the pytest suite every VectorIndex backend passes, from ``ragkit.conformance``),
    imported when asked for: pytest is a dev dependency, and importing ragkit.testing must not need it."""
    if name == "VectorIndexConformance":
        from ragkit.conformance import VectorIndexConformance

        return VectorIndexConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
