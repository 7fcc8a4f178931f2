"""The index pipeline, top to bottom: load -> chunk -> embed -> extract (graph) -> commit, incrementally.

Everything runs inside ``IndexStore.writer()`` (``ragkit.store``), in this order of writes, chosen so an
interrupted run always leaves a readable index:
1. embeddings go to the on-disk cache as they are computed (a rerun never embeds them again);
2. each batch of documents commits to the catalog in one transaction (chunks, graph facts, generation bump),
   then the same change is applied to the writer's copy of the vectors;
3. when the run ends, the writer saves the derived states: vectors (then ``vectors.json`` records the catalog
   generation they match), then BM25, rebuilt from the catalog.
A reader that finds a derived state behind the catalog brings its own copy up to date in memory; the next
writer (or ``ragkit repair``) saves it.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragkit.errors import ConfigError, RagkitError
from ragkit.protocols import Chunker
from ragkit.types import Chunk, Document, LoadError, batch_bounds, sha1_hex

if TYPE_CHECKING:
    from ragkit.chunking import PreparedTokenOffsets
    from ragkit.pipelines.graph_indexing import GraphWriter
    from ragkit.store import IndexStore, IndexWriter

Progress = Callable[[str, int, int], None]

BATCH_CHUNKS = 512  # chunks per embed -> extract -> commit batch
TRIAGE_DOCUMENTS = 1000  # documents looked up in the catalog at once
TRIAGE_CHARS = 32 * 2**20  # ... or fewer, when they are long
PREPARE_DOCUMENTS = 256  # documents tokenized in one call before they are chunked
PREPARE_CHARS = 2**20  # ... or fewer, when they are long
STAGE_FAILURE_DOCUMENTS = 8  # a stage failing this many documents of a batch alike is itself broken


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
            "errors": [{"source": e.source, "reason": e.reason, "stage": e.stage} for e in self.errors],
        }


def _document_hash(doc: Document, tags: Mapping[str, Any]) -> str:
    return sha1_hex(doc.content_hash + repr(sorted(tags.items())))


def _make_chunker(store: IndexStore, tokens: Any = None) -> Chunker:
    """The index's chunker, counting tokens with ``tokens`` (default: the embedder)."""
    from ragkit.chunking import DEFAULT_MAX_CHARS, make_chunker

    settings = store.manifest.chunking
    strategy = settings.get("strategy", "auto")
    if strategy == "none":
        return WholeDocumentChunker()
    max_tokens = settings.get("max_tokens") or max(8, store.manifest.max_tokens - 2)
    max_chars = settings.get("max_chars") or DEFAULT_MAX_CHARS  # an index made before the setting existed
    return make_chunker(strategy, tokens or store.embedder, max_tokens, settings.get("overlap", 32), max_chars)


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
    """The folders and files given as sources, written as the loaders write sources (``path_source``)."""
    from ragkit.connectors.loaders import path_source

    return [Path(path_source(Path(s).resolve())) for s in sources]


def _in_scope(source: str, scope: Sequence[Path]) -> bool:
    path = Path(source)
    return any(path == root or root in path.parents for root in scope)


def add_sources(
    store: IndexStore, sources: Sequence[str], *, tags: Mapping[str, Any], sync: bool, progress: Progress | None
) -> IndexReport:
    """Load files, directories and row files, then index what changed (see :func:`add_items`; a row file that
    loads without an error replaces its earlier documents)."""
    from ragkit.connectors.loaders import load_sources

    loaders = store.settings.loaders
    items = load_sources(
        sources,
        include=loaders.include,
        exclude=loaders.exclude,
        fields=loaders.row_fields(),
        follow_symlinks=loaders.follow_symlinks,
    )
    return add_items(
        store, items, tags=tags, sync_scope=sources if sync else None, progress=progress, replace_row_files=True
    )


def add_items(
    store: IndexStore,
    items: Iterable[Document | LoadError],
    *,
    tags: Mapping[str, Any],
    sync_scope: Sequence[str] | None = None,
    progress: Progress | None = None,
    replace_row_files: bool = False,
    atomic: bool = False,
) -> IndexReport:
    """Index documents (and count load errors); only new or changed documents are chunked and embedded.

    Documents stream through: they are triaged against the catalog in groups and written in batches of about
    ``BATCH_CHUNKS`` chunks as they arrive, so memory holds one group and one batch, whatever the corpus size.
    A document that fails a stage is reported (source, stage, reason) and left out; the others are indexed.

    ``sync_scope``: paths whose documents not seen in ``items`` are removed (their files are gone).

    ``replace_row_files``: a row file (documents with ``meta["row"]``, such as a CSV's) is a unit. When all its
    rows came through without an error, the documents of that source that ``items`` did not hold are removed:
    they are its rows under earlier ids (another ``id_field``) or rows deleted from it. A file with a bad row
    keeps them all (its good rows are still indexed); ``--sync`` is not needed.

    ``atomic``: every document of the run commits in one catalog transaction at the end (batches are still
    embedded as they fill, and a document failing a stage is still left out), so a crash leaves all of them or
    none (``ragkit serve`` upload jobs). Memory then holds the whole run's chunks and vectors; a write failure
    fails the run instead of being retried document by document.
    """
    started = time.perf_counter()
    report = IndexReport()
    check_tags(tags)
    with store.writer() as index_writer:  # catches up with an interrupted earlier run first
        writer = _BatchWriter(index_writer, tags, report, progress, atomic=atomic)
        seen: set[str] = set()
        failed_sources: set[str] = set()
        row_sources: set[str] = set()  # the row files this run loaded documents from
        bad_rows: set[str] = set()  # ... and those with a document left out (a duplicate id, unstorable text)
        pending: list[Document] = []
        pending_chars = 0
        try:
            for item in items:
                if isinstance(item, LoadError):
                    report.failed += 1
                    report.errors.append(item)
                    failed_sources.add(item.source.rsplit(":", 1)[0] if ":" in item.source else item.source)
                    failed_sources.add(item.source)
                    continue
                if "row" in item.meta:
                    row_sources.add(item.source)
                if item.id in seen:
                    report.failed += 1
                    report.errors.append(
                        LoadError(item.source, f"duplicate document id {item.id!r}; kept the first")
                    )
                    bad_rows.add(item.source)
                    continue
                seen.add(item.id)  # also when it cannot be stored: --sync keeps what an earlier run indexed
                problem = _unstorable(item)
                if problem:
                    report.failed += 1
                    report.errors.append(LoadError(item.source, problem))
                    bad_rows.add(item.source)
                    continue
                pending.append(item)
                pending_chars += len(item.text)
                if progress:
                    progress("load", len(seen), 0)
                if len(pending) >= TRIAGE_DOCUMENTS or pending_chars >= TRIAGE_CHARS:
                    _triage(store, pending, tags, report, writer)
                    pending, pending_chars = [], 0
            _triage(store, pending, tags, report, writer)
            writer.flush(final=True)
        finally:
            writer.close()
        failed_sources.update(writer.failed_sources)
        if replace_row_files:
            report.removed += _replaced_rows(index_writer, row_sources - failed_sources - bad_rows, seen)
        if sync_scope is not None:
            report.removed += _sync_removed(index_writer, sync_scope, seen, failed_sources)
    report.seconds = time.perf_counter() - started
    return report


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable(doc: Document) -> str:
    """Why ``doc`` cannot be indexed as it is, or ``""``: SQLite stores neither lone surrogates (half of a
    UTF-16 pair, which a JSON string or a decoded file name can carry) nor reads NUL characters back from JSON
    (a ``doc_id`` or ``where`` filter would miss the document or match another one)."""
    for what, value in (("id", doc.id), ("title", doc.title), ("text", doc.text)):
        found = _UNSTORABLE.search(value)
        if found is None or (what == "text" and found.group() == "\x00"):
            continue
        char = found.group()
        kind = "a NUL character" if char == "\x00" else f"a lone surrogate (U+{ord(char):04X})"
        return f"document {what} holds {kind} at position {found.start()}; it is not valid text"
    return ""


def check_tags(tags: Mapping[str, Any]) -> None:
    """Tags are matched by ``where`` filters through SQLite's JSON functions, which stop at a NUL character."""
    for key, value in tags.items():
        for part in (key, value if isinstance(value, str) else ""):
            if _UNSTORABLE.search(part):
                raise ConfigError(f"tag {key!r}: NUL characters and lone surrogates cannot be stored or matched")


def _triage(
    store: IndexStore, batch: list[Document], tags: Mapping[str, Any], report: IndexReport, writer: _BatchWriter
) -> None:
    """Counts unchanged documents and hands new and changed ones to the writer, tokenized in groups."""
    known = store.catalog.content_hashes(d.id for d in batch)
    changed: list[tuple[Document, str]] = []
    for doc in batch:
        digest = _document_hash(doc, tags)
        if known.get(doc.id) == digest:
            report.unchanged += 1
            continue
        if doc.id in known:
            report.updated += 1
        else:
            report.added += 1
        changed.append((doc, digest))
    for start, end in batch_bounds([len(doc.text) for doc, _ in changed], PREPARE_DOCUMENTS, PREPARE_CHARS):
        writer.prepare([doc for doc, _ in changed[start:end]])
        for doc, digest in changed[start:end]:
            writer.add(doc, digest)


def _systemic(exc: BaseException) -> bool:
    """Failures of the machine or the index, not of one document: they stop the run rather than skip a file."""
    return isinstance(exc, (ImportError, MemoryError, OSError, RagkitError, sqlite3.OperationalError)) or not (
        isinstance(exc, Exception)
    )


@dataclass
class _Entry:
    """A changed document on its way through the stages; ``results`` holds each stage's output per chunk."""

    doc: Document
    digest: str
    chunks: list[Chunk]
    results: dict[str, list[Any]] = field(default_factory=dict)


class _BatchWriter:
    """Chunks changed documents as they arrive and writes them in batches of about ``BATCH_CHUNKS`` chunks.

    Each batch goes through embed -> extract -> commit. With the graph's worker processes, batches overlap: a
    batch's extraction starts before it is embedded and is collected at the next flush, after the next batch
    was chunked and embedded, just before the batch's transaction (batches still commit in order).

    When a stage fails on a batch, it runs again document by
    document, so only the documents that fail it are left out (reported with the stage). When every document
    of a batch of at least ``STAGE_FAILURE_DOCUMENTS`` fails with one and the same error, the stage itself is
    broken and the run stops, as it does for failures of the machine or of the index (``_systemic``).
    """

    def __init__(
        self,
        writer: IndexWriter,
        tags: Mapping[str, Any],
        report: IndexReport,
        progress: Progress | None,
        *,
        atomic: bool = False,
    ) -> None:
        self.writer, self.store = writer, writer.store
        self.tags, self.report, self.progress = tags, report, progress
        self.atomic = atomic  # hold every batch's entries back until the final flush, then one transaction
        self._staged: list[_Entry] = []
        self.failed_sources: set[str] = set()
        self._chunker: Chunker | None = None
        self._prepared: PreparedTokenOffsets | None = None  # the chunker's tokens, tokenized ahead in groups
        self._graph: GraphWriter | None = None
        self._pending: list[_Entry] = []  # chunked, waiting for the batch to fill
        self._pending_chunks = 0
        self._held: list[_Entry] = []  # embedded, its extraction started: written at the next flush
        self._chunked = 0
        self._written = 0

    def prepare(self, docs: Sequence[Document]) -> None:
        """Tokenizes the documents about to be added in one call, when the embedder can (its Rust tokenizer uses
        every core; one document at a time, chunking was the slowest stage of a GPU index run)."""
        self._ensure_chunker()
        if self._prepared is not None:
            self._prepared.prepare(docs)

    def _ensure_chunker(self) -> Chunker:
        if self._chunker is None:
            from ragkit.chunking import PreparedTokenOffsets

            embedder = self.store.embedder
            batched = callable(getattr(embedder, "token_offsets_batch", None))
            prepared = PreparedTokenOffsets(embedder) if batched else None
            self._chunker = _make_chunker(self.store, prepared)
            # one chunk per document counts no tokens: tokenizing ahead would be wasted (about 1% of an index run)
            self._prepared = None if isinstance(self._chunker, WholeDocumentChunker) else prepared
        return self._chunker

    def add(self, doc: Document, digest: str) -> None:
        chunker = self._ensure_chunker()
        entry = _Entry(doc, digest, [])
        try:
            entry.chunks = chunker.split(doc)
        except Exception as exc:
            if _systemic(exc):
                raise
            self._fail(entry, "chunk", exc)
            return
        self._pending.append(entry)
        self._pending_chunks += len(entry.chunks)
        self._chunked += len(entry.chunks)
        self.report.chunks += len(entry.chunks)
        if self._pending_chunks >= BATCH_CHUNKS:
            self.flush()

    def flush(self, *, final: bool = False) -> None:
        """Embeds the pending documents and writes them, or, when the graph's worker processes extract them, holds
        them until the next flush: the workers extract a batch while this process embeds it, writes the batch
        before it and chunks the next. ``final`` writes everything still held."""
        batch, self._pending, self._pending_chunks = self._pending, [], 0
        ahead = False  # the batch's extraction runs in the workers from now
        if batch:
            if self._graph is None and self.store.manifest.graph:
                from ragkit.pipelines.graph_indexing import GraphWriter

                self._graph = GraphWriter(self.writer, sum(len(e.chunks) for e in batch))
            ahead = self._graph is not None and self._graph.start([c for e in batch for c in e.chunks])
            computed = 0

            def embed(chunks: list[Chunk]) -> list[Any]:
                nonlocal computed
                vectors, fresh = self.store.embed([c.embed_text for c in chunks])
                computed += fresh
                return list(vectors)

            batch = self._stage("embed", batch, embed)
            self.report.embedded += computed
        held, self._held = self._held, batch if ahead else []
        if held:
            self._finish(held)
        if batch and not ahead:
            self._finish(batch)
        if final:
            held, self._held = self._held, []
            if held:
                self._finish(held)
            if self._staged:
                staged, self._staged = self._staged, []
                self._write(staged)

    def _finish(self, batch: list[_Entry]) -> None:
        """The embedded batch's graph extraction (started by ``flush``), then its transaction."""
        if self._graph is not None:
            batch = self._stage("graph", batch, self._graph.extract)
        if self.atomic:
            self._staged += batch  # counted as written: embedded and extracted, committed at the final flush
        else:
            batch = self._isolated("write", batch, self._write)
        self._written += sum(len(e.chunks) for e in batch)
        if self.progress:
            self.progress("embed", self._written, self._chunked)
            if self._graph is not None:
                self.progress("graph", self._written, self._chunked)

    def close(self) -> None:
        if self._graph is not None:
            self._graph.close()

    def _stage(self, stage: str, batch: list[_Entry], compute: Callable[[list[Chunk]], Sequence[Any]]) -> list[_Entry]:
        """Runs ``compute`` (one result per chunk) over the batch's chunks; each entry keeps its results."""

        def run(entries: list[_Entry]) -> None:
            results = list(compute([c for e in entries for c in e.chunks]))
            offset = 0
            for entry in entries:
                entry.results[stage] = results[offset : offset + len(entry.chunks)]
                offset += len(entry.chunks)

        return self._isolated(stage, batch, run)

    def _isolated(self, stage: str, batch: list[_Entry], run: Callable[[list[_Entry]], None]) -> list[_Entry]:
        """``run(batch)``; if it fails, ``run([entry])`` for each entry. Returns the entries it succeeded for."""
        if not batch:
            return batch
        try:
            run(batch)
            return batch
        except Exception as exc:
            if _systemic(exc):
                raise
            if len(batch) == 1:
                self._fail(batch[0], stage, exc)
                return []
            first = exc
        kept = []
        errors: list[Exception] = []
        for entry in batch:
            try:
                run([entry])
            except Exception as exc:
                if _systemic(exc):
                    raise
                self._fail(entry, stage, exc)
                errors.append(exc)
                continue
            kept.append(entry)
        if not kept and len(batch) >= STAGE_FAILURE_DOCUMENTS and len({str(e) for e in errors}) == 1:
            raise first  # every document, with one and the same error: the stage is broken, not the documents
        return kept

    def _fail(self, entry: _Entry, stage: str, exc: BaseException) -> None:
        doc = entry.doc
        source = doc.source
        if "row" in doc.meta:  # as a row's LoadError names it
            source = f"{doc.source}:{doc.meta['row']}"
        elif "part" in doc.meta:  # a part of a large text file
            source = f"{doc.source} (part {doc.meta['part']} at character {doc.meta.get('offset', 0)})"
        verb = {"chunk": "chunk", "embed": "embed", "graph": "extract entities from", "write": "write"}[stage]
        self.report.failed += 1
        self.report.errors.append(LoadError(source, f"could not {verb} it ({type(exc).__name__}: {exc})", stage))
        self.failed_sources.add(doc.source)
        # it was counted as added or updated when it was triaged; it is neither now
        if self.store.catalog.content_hashes([doc.id]):
            self.report.updated -= 1
        else:
            self.report.added -= 1

    def _write(self, batch: list[_Entry]) -> None:
        """One catalog transaction for the batch's documents, chunks and graph facts; then their vectors."""
        from ragkit.types import vector_id

        store, catalog, graph = self.store, self.writer.catalog, self._graph
        removed: list[int] = []
        with catalog.transaction() as conn:
            for entry in batch:
                doc = entry.doc
                stored = Document(id=doc.id, text=doc.text, source=doc.source, title=doc.title, meta=doc.meta)
                removed += catalog.put_document(conn, stored, entry.chunks, self.tags, content_hash=entry.digest)
            if graph is not None:
                extractions = [x for e in batch for x in e.results["graph"]]
                graph.replace(conn, [e.doc.id for e in batch], extractions)
                # entity names are embedded now, once, so that a question's first graph search does not pay for it
                graph.store.embed_names(
                    store.manifest.embedder,
                    lambda names: store.embed(names)[0],
                    keys={m.key for x in extractions for m in x.mentions if m.kind != "noun_phrase"},
                )
        chunks = [c for e in batch for c in e.chunks]
        ids = np.array([vector_id(c.id) for c in chunks], dtype=np.int64)
        stale = np.setdiff1d(np.array(removed, dtype=np.int64), ids)
        vectors = self.writer.vectors
        vectors.delete(stale)
        sources = {e.doc.id: e.doc.source for e in batch}
        rows = np.array([v for e in batch for v in e.results["embed"]], dtype=np.float32)
        rows = rows.reshape(len(chunks), store.manifest.dimension)
        vectors.add(ids, rows, [{**self.tags, "doc_id": c.doc_id, "source": sources[c.doc_id]} for c in chunks])


def _sync_removed(writer: IndexWriter, sources: Sequence[str], seen: set[str], failed_sources: set[str]) -> int:
    """Remove documents under the given sources that this run did not see (their files are gone)."""
    scope = _scope(sources)
    gone = [
        doc_id
        for source, doc_ids in writer.catalog.sources().items()
        if _in_scope(source, scope) and source not in failed_sources
        for doc_id in doc_ids
        if doc_id not in seen
    ]
    writer.delete_documents(gone)
    return len(gone)


def _replaced_rows(writer: IndexWriter, sources: set[str], seen: set[str]) -> int:
    """Remove the documents of fully loaded row files that this run did not see (rows under old ids)."""
    gone = [doc_id for doc_id in writer.catalog.documents_of_sources(sorted(sources)) if doc_id not in seen]
    writer.delete_documents(gone)
    return len(gone)


def delete_documents(store: IndexStore, doc_id_or_source: str) -> list[str]:
    """Delete a document by id, or every document a file or folder produced; returns the ids removed."""
    from ragkit.connectors.loaders import path_source

    with store.writer() as writer:
        catalog = writer.catalog
        target = path_source(doc_id_or_source)  # a file name that is not UTF-8 is stored escaped
        if catalog.has_document(target):
            doc_ids = [target]
        else:
            candidates = {target}
            try:
                candidates.add(path_source(Path(doc_id_or_source).resolve()))
            except (OSError, ValueError):  # not a path at all (a NUL character)
                pass
            doc_ids = catalog.documents_of_sources(candidates)
            if not doc_ids and not _UNSTORABLE.search(doc_id_or_source):
                scope = _scope([doc_id_or_source])
                doc_ids = [d for source, ids in catalog.sources().items() if _in_scope(source, scope) for d in ids]
        writer.delete_documents(doc_ids)
    return doc_ids
