"""The index pipeline: load -> chunk -> embed -> (extract graph) -> write, incrementally and transactionally.

Order of writes, chosen so an interrupted run always leaves a readable index:
1. embeddings go to the on-disk cache as they are computed (a rerun never embeds them again);
2. each batch of documents commits to the catalog in one transaction (chunks, graph, generation bump);
3. vectors are applied and saved, then ``vectors.json`` records the catalog generation they match;
4. the BM25 index is rebuilt from the catalog and saved under the same generation.
A reader that finds a derived store behind the catalog brings it up to date from the catalog and the cache.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragkit.bm25 import BM25Index
from ragkit.types import Chunk, Document, LoadError, sha1_hex

if TYPE_CHECKING:
    from ragkit.index import Index, Progress

BATCH_CHUNKS = 512


@dataclass
class IndexReport:
    """What one ``Index.add`` run did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: int = 0
    chunks: int = 0
    embedded: int = 0
    seconds: float = 0.0
    errors: list[LoadError] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added, "updated": self.updated, "unchanged": self.unchanged, "removed": self.removed,
            "failed": self.failed, "chunks": self.chunks, "embedded": self.embedded,
            "seconds": round(self.seconds, 3),
            "errors": [{"source": e.source, "reason": e.reason} for e in self.errors],
        }


def _document_hash(doc: Document, tags: Mapping[str, Any]) -> str:
    return sha1_hex(doc.content_hash + repr(sorted(tags.items())))


def _make_chunker(index: Index) -> Any:
    from ragkit.chunking import make_chunker

    settings = index.manifest.chunking
    strategy = settings.get("strategy", "auto")
    if strategy == "none":
        return WholeDocumentChunker()
    max_tokens = settings.get("max_tokens") or max(8, index.manifest.max_tokens - 2)
    return make_chunker(strategy, index.embedder, max_tokens, settings.get("overlap", 32))


class WholeDocumentChunker:
    """One chunk per document (the embedder truncates it): BEIR's way of indexing a passage corpus."""

    def split(self, doc: Document) -> list[Chunk]:
        from ragkit.types import chunk_id

        start = len(doc.text) - len(doc.text.lstrip())
        end = len(doc.text.rstrip())
        if end <= start:
            return []
        meta = {"title": doc.title, "ord": 0} if doc.title else {"ord": 0}
        text = doc.text[start:end]
        return [Chunk(chunk_id(doc.id, start, end, text), doc.id, text, start, end, meta)]


def _scope(sources: Sequence[str]) -> list[Path]:
    return [Path(s).resolve() for s in sources]


def _in_scope(source: str, scope: Sequence[Path]) -> bool:
    path = Path(source)
    return any(path == root or root in path.parents for root in scope)


def add_sources(
    index: Index, sources: Sequence[str], *, tags: Mapping[str, Any], sync: bool, progress: Progress | None
) -> IndexReport:
    """Load files, directories and row files, then index what changed (see :func:`add_items`)."""
    from ragkit.connectors.loaders import RowFields, load_sources

    loaders = index.settings.loaders
    fields = RowFields(id=loaders.id_field, title=loaders.title_field, text=loaders.text_field)
    items = load_sources(sources, include=loaders.include, exclude=loaders.exclude, fields=fields)
    return add_items(index, items, tags=tags, sync_scope=sources if sync else None, progress=progress)


def add_items(
    index: Index,
    items: Iterable[Document | LoadError],
    *,
    tags: Mapping[str, Any],
    sync_scope: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> IndexReport:
    """Index documents (and count load errors); only new or changed documents are chunked and embedded.

    ``sync_scope``: paths whose documents not seen in ``items`` are removed (their files are gone).
    """
    started = time.perf_counter()
    report = IndexReport()
    with index.writer_lock():
        vectors = index.vectors  # reconciles an interrupted earlier run first
        changed: list[tuple[Document, str]] = []
        seen: set[str] = set()
        failed_sources: set[str] = set()
        pending: list[Document] = []

        def triage(batch: list[Document]) -> None:
            known = index.catalog.content_hashes(d.id for d in batch)
            for doc in batch:
                digest = _document_hash(doc, tags)
                if known.get(doc.id) == digest:
                    report.unchanged += 1
                else:
                    changed.append((doc, digest))
                    if doc.id in known:
                        report.updated += 1
                    else:
                        report.added += 1

        for item in items:
            if isinstance(item, LoadError):
                report.failed += 1
                report.errors.append(item)
                failed_sources.add(item.source.rsplit(":", 1)[0] if ":" in item.source else item.source)
                failed_sources.add(item.source)
                continue
            if item.id in seen:
                report.failed += 1
                report.errors.append(LoadError(item.source, f"duplicate document id {item.id!r}; kept the first"))
                continue
            seen.add(item.id)
            pending.append(item)
            if progress:
                progress("load", len(seen), 0)
            if len(pending) >= 1000:
                triage(pending)
                pending = []
        triage(pending)

        _write_changed(index, vectors, changed, tags, report, progress)
        if sync_scope is not None:
            report.removed = _sync_removed(index, vectors, sync_scope, seen, failed_sources)
        _finish(index, vectors)
    report.seconds = time.perf_counter() - started
    return report


def _write_changed(
    index: Index,
    vectors: Any,
    changed: list[tuple[Document, str]],
    tags: Mapping[str, Any],
    report: IndexReport,
    progress: Progress | None,
) -> None:
    if not changed:
        return
    chunker = _make_chunker(index)
    chunked = [(doc, digest, chunker.split(doc)) for doc, digest in changed]
    total = sum(len(chunks) for _, _, chunks in chunked)
    report.chunks = total
    done = 0
    graph = _graph_writer(index, min(total, BATCH_CHUNKS))
    batches: list[list[tuple[Document, str, list[Chunk]]]] = [[]]
    size = 0
    for entry in chunked:
        if size >= BATCH_CHUNKS:
            batches.append([])
            size = 0
        batches[-1].append(entry)
        size += len(entry[2])
    try:
        for batch in batches:
            report.embedded += _write_batch(index, vectors, batch, tags, graph)
            done += sum(len(chunks) for _, _, chunks in batch)
            if progress:
                progress("embed", done, total)
                if graph is not None:
                    progress("graph", done, total)
    finally:
        if graph is not None:
            graph.close()


def _write_batch(
    index: Index, vectors: Any, batch: list[tuple[Document, str, list[Chunk]]], tags: Mapping[str, Any], graph: Any
) -> int:
    from ragkit.types import vector_id

    chunks = [c for _, _, cs in batch for c in cs]
    embeddings, computed = index.embed([c.embed_text for c in chunks])
    extractions = graph.extract(chunks) if graph is not None else None
    removed: list[int] = []
    with index.catalog.transaction() as conn:
        for doc, digest, doc_chunks in batch:
            stored = Document(id=doc.id, text=doc.text, source=doc.source, title=doc.title, meta=doc.meta)
            removed += index.catalog.put_document(conn, stored, doc_chunks, tags)
            conn.execute("UPDATE documents SET content_hash = ? WHERE id = ?", (digest, doc.id))
        if graph is not None:
            graph.replace(conn, [doc.id for doc, _, _ in batch], extractions)
            # entity names are embedded now, once, so that a question's first graph search does not pay for it
            graph.store.embed_names(index.manifest.embedder, lambda names: index.embed(names)[0])
    ids = np.array([vector_id(c.id) for c in chunks], dtype=np.int64)
    stale = np.setdiff1d(np.array(removed, dtype=np.int64), ids)
    vectors.delete(stale)
    doc_sources = {doc.id: doc.source for doc, _, _ in batch}
    vectors.add(ids, embeddings, [{**tags, "doc_id": c.doc_id, "source": doc_sources[c.doc_id]} for c in chunks])
    return computed


def _graph_writer(index: Index, expected_chunks: int) -> Any:
    if not index.manifest.graph:
        return None
    from ragkit.pipelines.graph_indexing import GraphWriter

    return GraphWriter(index, expected_chunks)


def _sync_removed(
    index: Index, vectors: Any, sources: Sequence[str], seen: set[str], failed_sources: set[str]
) -> int:
    """Remove documents under the given sources that this run did not see (their files are gone)."""
    scope = _scope(sources)
    gone = [
        doc_id
        for source, doc_ids in index.catalog.sources().items()
        if _in_scope(source, scope) and source not in failed_sources
        for doc_id in doc_ids
        if doc_id not in seen
    ]
    if gone:
        _delete_ids(index, vectors, gone)
    return len(gone)


def _delete_ids(index: Index, vectors: Any, doc_ids: list[str]) -> None:
    graph = None
    if index.manifest.graph:
        from ragkit.graph.store import GraphStore

        graph = GraphStore(index.catalog.connection)
    with index.catalog.transaction() as conn:
        removed = index.catalog.delete_documents(conn, doc_ids)
        if graph is not None:
            graph.delete_documents(doc_ids)
    vectors.delete(np.array(removed, dtype=np.int64))


def _finish(index: Index, vectors: Any) -> None:
    """Persist derived stores and record the catalog generation they now match."""
    generation = index.catalog.generation
    vectors.save()
    index.mark_vectors_saved(generation)
    if BM25Index.saved_generation(index.path) != generation:
        BM25Index.build((c for batch in index.catalog.iter_chunks() for c in batch), generation).save(index.path)


def delete_documents(index: Index, doc_id_or_source: str) -> list[str]:
    with index.writer_lock():
        vectors = index.vectors
        if index.catalog.has_document(doc_id_or_source):
            doc_ids = [doc_id_or_source]
        else:
            candidates = {doc_id_or_source, str(Path(doc_id_or_source).resolve())}
            doc_ids = index.catalog.documents_of_sources(candidates)
            if not doc_ids:
                scope = _scope([doc_id_or_source])
                doc_ids = [
                    d for source, ids in index.catalog.sources().items() if _in_scope(source, scope) for d in ids
                ]
        if doc_ids:
            _delete_ids(index, vectors, doc_ids)
        _finish(index, vectors)
    return doc_ids


def reconcile_vectors(index: Index, save: bool) -> tuple[int, int]:
    """Make the vector store hold exactly the catalog's chunks (after an interrupted run); returns (added, removed)."""
    vectors = index._vectors
    assert vectors is not None
    generation = index.catalog.generation
    wanted = index.catalog.vector_ids()
    stored = set(vectors.ids().tolist())
    extra = np.array(sorted(stored - wanted), dtype=np.int64)
    missing = sorted(wanted - stored)
    vectors.delete(extra)
    for start in range(0, len(missing), 4096):
        batch = missing[start : start + 4096]
        chunks = index.catalog.chunks_by_vector_ids(batch)
        tags = index.catalog.vector_tags(batch)
        ordered = [chunks[v] for v in batch]
        embeddings, _ = index.embed([c.embed_text for c in ordered])
        vectors.add(np.array(batch, dtype=np.int64), embeddings, [tags[v] for v in batch])
    if save:
        vectors.save()
        index.mark_vectors_saved(generation)
    return len(missing), len(extra)


def iter_all_chunks(index: Index) -> Iterable[Chunk]:
    for batch in index.catalog.iter_chunks():
        yield from batch
