"""The catalog: an SQLite database that is the source of truth of an index.

Documents (source, content hash, metadata) and chunks (text, character offsets, vector id) are written in
transactions; vector shards, the BM25 index and the graph matrices are derived from it. Every write bumps a
``generation`` counter, which derived stores record when they are saved, so a reader can tell when one of them
is behind (an interrupted run) and bring it up to date from here.
"""

from __future__ import annotations

import json
import json.scanner
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ragkit.errors import IndexClosedError, IndexFormatError, sqlite_damage
from ragkit.sqlitedb import connect
from ragkit.types import Chunk, Document, vector_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    title TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    meta TEXT NOT NULL,
    tags TEXT NOT NULL,
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_source ON documents(source);
CREATE TABLE IF NOT EXISTS chunks (
    id TEXT PRIMARY KEY,
    doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL,
    text TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    meta TEXT NOT NULL,
    vector_id INTEGER NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# json.loads's own C scanner (typeshed types make_scanner's argument as the scanner class itself)
_scan_json = json.scanner.make_scanner(cast(Any, json.JSONDecoder()))
_CHUNK_COLUMNS = "c.id, c.doc_id, c.text, c.start, c.end, c.meta, d.title"


@dataclass(frozen=True)
class DocumentSummary:
    """A document as :meth:`Catalog.list_documents` describes it: everything but its text."""

    id: str
    source: str
    title: str
    meta: dict[str, Any]
    tags: dict[str, Any]
    chunks: int
    indexed_at: float


class Catalog:
    """Documents and chunks of one index, in ``catalog.sqlite`` (WAL mode, one writer, many readers)."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        if not create and not path.exists():
            raise IndexFormatError(f"{path}: catalog is missing")
        self._lock = threading.RLock()
        self._closed = False
        self._writer: sqlite3.Connection | None = None
        try:
            if create:
                self._write_connection().executescript(SCHEMA)
            self._conn = connect(path, read_only=True)  # every read goes through this one: it cannot write
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            raise IndexFormatError(f"{path}: not a readable ragkit catalog ({exc})") from None

    def _write_connection(self) -> sqlite3.Connection:
        """The read-write connection, opened by the first write (readers never open one)."""
        if self._writer is None:
            self._writer = connect(self.path, read_only=False)
            self._writer.execute("PRAGMA synchronous=NORMAL")
            self._writer.execute("PRAGMA foreign_keys=ON")
        return self._writer

    def _check_schema(self) -> None:
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = {"documents", "chunks", "state"} - tables
        if missing:
            raise IndexFormatError(f"{self.path}: catalog lacks tables {sorted(missing)}")

    @property
    def connection(self) -> sqlite3.Connection:
        """The read-only connection, for stores that keep their tables in the catalog (the knowledge graph)."""
        self._check_open()
        return self._conn

    @property
    def write_connection(self) -> sqlite3.Connection:
        """The read-write connection, for a writer's stores (the knowledge graph's tables), under the writer lock."""
        self._check_open()
        with self._lock, self._damaged():
            return self._write_connection()

    def _check_open(self) -> None:
        if self._closed:
            raise IndexClosedError(f"{self.path.parent}: the index was closed; open it again with Index.open")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything inside commits together and bumps the generation, or nothing does."""
        self._check_open()
        with self._lock, self._damaged():
            conn = self._write_connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute(
                    "INSERT INTO state(key, value) VALUES('generation', '1') ON CONFLICT(key) "
                    "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _damaged(self) -> AbstractContextManager[None]:
        return sqlite_damage(self.path, "catalog is damaged or was modified")

    def _json(self, text: Any, what: str, key: str) -> dict[str, Any]:
        """A JSON object stored in the catalog (``what`` of ``key``, e.g. metadata of chunk ``c1``); anything
        else is an IndexFormatError naming the catalog."""
        try:
            value, end = _scan_json(text, 0)  # json.loads's own C scanner without its Python layers: 2x faster
        except (StopIteration, ValueError, TypeError):
            end = -1
        if end < 0 or end != len(text):  # not JSON, or space or more after it: json.loads accepts it or says why
            try:
                value = json.loads(text)
            except (ValueError, TypeError) as exc:
                raise IndexFormatError(f"{self.path}: {what} {key!r} is not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise IndexFormatError(f"{self.path}: {what} {key!r} is not a JSON object")
        return value

    def _chunk(self, row: Sequence[Any]) -> Chunk:
        meta = self._json(row[5], "metadata of chunk", row[0])
        if row[6]:
            meta["title"] = row[6]
        return Chunk(id=row[0], doc_id=row[1], text=row[2], start=row[3], end=row[4], meta=meta)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    # -- reads -------------------------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._check_open()
        with self._lock, self._damaged():
            return self._conn.execute(sql, params).fetchall()

    @property
    def generation(self) -> int:
        rows = self._query("SELECT value FROM state WHERE key = 'generation'")
        return self._generation(rows[0][0] if rows else None)

    def _generation(self, value: Any) -> int:
        try:
            return int(value) if value is not None else 0
        except (ValueError, TypeError):
            raise IndexFormatError(f"{self.path}: generation {value!r} is not a number") from None

    def content_hashes(self, doc_ids: Iterable[str]) -> dict[str, str]:
        result: dict[str, str] = {}
        for batch in _batches(list(doc_ids)):
            marks = ",".join("?" * len(batch))
            result.update(self._query(f"SELECT id, content_hash FROM documents WHERE id IN ({marks})", batch))
        return result

    def documents_of_sources(self, sources: Iterable[str]) -> list[str]:
        ids: list[str] = []
        for batch in _batches(list(sources)):
            marks = ",".join("?" * len(batch))
            ids += [r[0] for r in self._query(f"SELECT id FROM documents WHERE source IN ({marks})", batch)]
        return ids

    def has_document(self, doc_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM documents WHERE id = ?", (doc_id,)))

    def sources(self) -> dict[str, list[str]]:
        """Every source with the ids of the documents it produced."""
        result: dict[str, list[str]] = {}
        for doc_id, source in self._query("SELECT id, source FROM documents ORDER BY id"):
            result.setdefault(source, []).append(doc_id)
        return result

    def document_titles(self, doc_ids: Iterable[str]) -> dict[str, str]:
        result: dict[str, str] = {}
        for batch in _batches(list(doc_ids)):
            marks = ",".join("?" * len(batch))
            result.update(self._query(f"SELECT id, title FROM documents WHERE id IN ({marks})", batch))
        return result

    def document_sources(self, doc_ids: Iterable[str]) -> dict[str, str]:
        result: dict[str, str] = {}
        for batch in _batches(list(doc_ids)):
            marks = ",".join("?" * len(batch))
            result.update(self._query(f"SELECT id, source FROM documents WHERE id IN ({marks})", batch))
        return result

    def chunks_by_ids(self, chunk_ids: Sequence[str]) -> dict[str, Chunk]:
        result: dict[str, Chunk] = {}
        for batch in _batches(list(chunk_ids)):
            marks = ",".join("?" * len(batch))
            rows = self._query(
                f"SELECT {_CHUNK_COLUMNS} FROM chunks c JOIN documents d ON d.id = c.doc_id "
                f"WHERE c.id IN ({marks})",
                batch,
            )
            result.update((row[0], self._chunk(row)) for row in rows)
        return result

    def chunks_with_sources(self, chunk_ids: Sequence[str]) -> dict[str, tuple[Chunk, str]]:
        """The chunks with these ids and their documents' sources, in one statement (the query path's look-up;
        chunks of deleted documents are left out)."""
        result: dict[str, tuple[Chunk, str]] = {}
        for batch in _batches(list(chunk_ids)):
            marks = ",".join("?" * len(batch))
            rows = self._query(
                f"SELECT {_CHUNK_COLUMNS}, d.source FROM chunks c JOIN documents d ON d.id = c.doc_id "
                f"WHERE c.id IN ({marks})",
                batch,
            )
            result.update((row[0], (self._chunk(row), row[7])) for row in rows)
        return result

    def chunks_of_vectors(self, vector_ids: Sequence[int]) -> tuple[int | None, dict[int, tuple[Chunk, str]]]:
        """The chunks stored under these vector ids with their documents' sources (dense hits), and the catalog
        generation they were read at, read together: one statement is one snapshot. The generation is None when
        the ids took several statements (over 900) and a write came between them."""
        result: dict[int, tuple[Chunk, str]] = {}
        generations: set[int] = set()
        for batch in _batches([int(v) for v in vector_ids]):
            marks = ",".join("?" * len(batch))
            rows = self._query(
                f"SELECT {_CHUNK_COLUMNS}, d.source, c.vector_id, "
                "(SELECT value FROM state WHERE key = 'generation') "
                f"FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.vector_id IN ({marks})",
                batch,
            )
            result.update((row[8], (self._chunk(row), row[7])) for row in rows)
            generations.update(self._generation(row[9]) for row in rows[:1])
            if not rows:  # none of them is left: the generation alone, read after (a write since moves it on)
                generations.add(self.generation)
        if not vector_ids:
            generations.add(self.generation)
        return (generations.pop() if len(generations) == 1 else None), result

    def iter_chunks(self, batch_size: int = 5000) -> Iterator[list[Chunk]]:
        """All chunks in a stable order (by vector id), in batches; used to rebuild derived stores."""
        last = -1
        while True:
            rows = self._query(
                f"SELECT {_CHUNK_COLUMNS}, c.vector_id FROM chunks c JOIN documents d ON d.id = c.doc_id "
                "WHERE c.vector_id > ? ORDER BY c.vector_id LIMIT ?",
                (last, batch_size),
            )
            if not rows:
                return
            last = rows[-1][7]
            yield [self._chunk(row) for row in rows]

    def chunk_ids_of_vectors(self, vector_ids: Sequence[int]) -> dict[int, str]:
        result: dict[int, str] = {}
        for batch in _batches([int(v) for v in vector_ids]):
            marks = ",".join("?" * len(batch))
            result.update(self._query(f"SELECT vector_id, id FROM chunks WHERE vector_id IN ({marks})", batch))
        return result

    def chunk_ids_where(self, where: Mapping[str, Any]) -> set[str]:
        """Ids of chunks whose document matches every ``key == value`` (doc_id, source, or a user tag)."""
        clauses, params = [], []
        for key, value in where.items():
            if key in ("doc_id", "source"):
                clauses.append("d.id = ?" if key == "doc_id" else "d.source = ?")
            else:
                clauses.append("json_extract(d.tags, ?) = ?")
                params.append(f'$."{key}"')
            params.append(value)
        sql = "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE " + " AND ".join(clauses)
        return {r[0] for r in self._query(sql, params)}

    def vector_ids(self) -> set[int]:
        return {r[0] for r in self._query("SELECT vector_id FROM chunks")}

    def vector_tags(self, vector_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Per-vector metadata that backends store for filtering: doc id, source and the user's tags."""
        result: dict[int, dict[str, Any]] = {}
        for batch in _batches([int(v) for v in vector_ids]):
            marks = ",".join("?" * len(batch))
            rows = self._query(
                "SELECT c.vector_id, d.id, d.source, d.tags FROM chunks c JOIN documents d ON d.id = c.doc_id "
                f"WHERE c.vector_id IN ({marks})",
                batch,
            )
            for vid, doc_id, source, tags in rows:
                tag_map = self._json(tags, "tags of document", doc_id)
                result[vid] = {**tag_map, "doc_id": doc_id, "source": source}
        return result

    def counts(self) -> dict[str, int]:
        documents = self._query("SELECT COUNT(*) FROM documents")[0][0]
        chunks = self._query("SELECT COUNT(*) FROM chunks")[0][0]
        return {"documents": documents, "chunks": chunks}

    def list_documents(
        self,
        *,
        tags: Mapping[str, Any] | None = None,
        ids: Sequence[str] | None = None,
        after: str | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> list[DocumentSummary]:
        """Documents in id order without their text: those whose tags hold every ``key == value`` of ``tags``
        (a tenant's), among ``ids`` when given. Paged by ``after`` (the last id of the previous page, which
        stays correct while documents come and go) and/or ``offset``."""
        clauses, params = self._tag_clauses(tags)
        if ids is not None:
            if not ids:
                return []
            clauses.append(f"d.id IN ({','.join('?' * len(ids))})")
            params += list(ids)
        if after is not None:
            clauses.append("d.id > ?")
            params.append(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(
            "SELECT d.id, d.source, d.title, d.meta, d.tags, d.indexed_at, "
            f"(SELECT COUNT(*) FROM chunks c WHERE c.doc_id = d.id) FROM documents d {where} "
            "ORDER BY d.id LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return [
            DocumentSummary(
                id=doc_id, source=source, title=title, meta=self._json(meta, "metadata of document", doc_id),
                tags=self._json(tags_text, "tags of document", doc_id), chunks=chunks, indexed_at=indexed_at,
            )
            for doc_id, source, title, meta, tags_text, indexed_at, chunks in rows
        ]

    def count_documents(self, tags: Mapping[str, Any] | None = None) -> dict[str, int]:
        """:meth:`counts` of the documents whose tags hold every ``key == value`` of ``tags``."""
        clauses, params = self._tag_clauses(tags)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        documents, chunks = self._query(
            f"SELECT COUNT(*), COALESCE(SUM((SELECT COUNT(*) FROM chunks c WHERE c.doc_id = d.id)), 0) "
            f"FROM documents d {where}",
            params,
        )[0]
        return {"documents": documents, "chunks": chunks}

    @staticmethod
    def _tag_clauses(tags: Mapping[str, Any] | None) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for key, value in (tags or {}).items():
            clauses.append("json_extract(d.tags, ?) = ?")
            params += [f'$."{key}"', value]
        return clauses, params

    def get_state(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM state WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def documents(self, doc_ids: Iterable[str]) -> dict[str, Document]:
        """The stored documents with these ids (unknown ids are left out), by id.

        ``meta`` is the metadata the document was indexed with; ``text`` is rebuilt from its chunks, each placed
        at its offsets: overlaps are kept once, a gap between chunks becomes one space, and the whitespace
        chunkers strip from the ends is lost (a document without chunks has the text ``""``).
        """
        result: dict[str, Document] = {}
        for batch in _batches(list(dict.fromkeys(doc_ids))):
            marks = ",".join("?" * len(batch))
            rows = self._query(  # one statement, so the chunks are those of the document row read
                "SELECT d.id, d.source, d.title, d.meta, c.text, c.start, c.end FROM documents d "
                f"LEFT JOIN chunks c ON c.doc_id = d.id WHERE d.id IN ({marks}) ORDER BY d.id, c.start, c.end",
                batch,
            )
            spans: dict[str, list[tuple[str, int, int]]] = {}
            heads: dict[str, tuple[str, str, str]] = {}
            for doc_id, source, title, meta, text, start, end in rows:
                heads.setdefault(doc_id, (source, title, meta))
                if text is not None:
                    spans.setdefault(doc_id, []).append((text, start, end))
            for doc_id, (source, title, meta) in heads.items():
                result[doc_id] = Document(
                    id=doc_id,
                    text=self._joined_chunks(spans.get(doc_id, [])),
                    source=source,
                    title=title,
                    meta=self._json(meta, "metadata of document", doc_id),
                )
        return result

    @staticmethod
    def _joined_chunks(spans: Sequence[tuple[str, int, int]]) -> str:
        """Chunk texts ``(text, start, end)``, sorted by offsets, laid back over the document they came from."""
        if len(spans) == 1:
            return spans[0][0]
        pieces: list[str] = []
        covered = 0  # the document offset the pieces reach so far
        for text, start, end in spans:
            if not pieces:
                pieces.append(text)
            elif start >= covered:
                pieces.append((" " if start > covered else "") + text)
            elif end > covered:
                pieces.append(text[covered - start :])  # the part past what the previous chunks hold
            else:
                continue  # inside text already placed
            covered = max(covered, end)
        return "".join(pieces)

    # -- writes (inside ``transaction()``) ---------------------------------------------------------------

    def put_document(
        self,
        conn: sqlite3.Connection,
        doc: Document,
        chunks: Sequence[Chunk],
        tags: Mapping[str, Any],
        *,
        content_hash: str | None = None,
    ) -> list[int]:
        """Insert or replace a document and its chunks; returns the vector ids of the chunks it replaced.

        ``content_hash``: what a later run compares to tell whether the document changed (default: its text's)."""
        old = [r[0] for r in conn.execute("SELECT vector_id FROM chunks WHERE doc_id = ?", (doc.id,))]
        conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc.id,))
        conn.execute(
            "INSERT OR REPLACE INTO documents(id, source, title, content_hash, meta, tags, indexed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                doc.id, doc.source, doc.title, content_hash or doc.content_hash,
                _dumps(doc.meta), _dumps(tags), time.time(),
            ),
        )
        conn.executemany(
            "INSERT INTO chunks(id, doc_id, ord, text, start, end, meta, vector_id) VALUES (?,?,?,?,?,?,?,?)",
            [
                (c.id, c.doc_id, i, c.text, c.start, c.end, _dumps(_stored_meta(c.meta)), vector_id(c.id))
                for i, c in enumerate(chunks)
            ],
        )
        return old

    def delete_documents(self, conn: sqlite3.Connection, doc_ids: Sequence[str]) -> list[int]:
        """Delete documents and their chunks; returns the vector ids that must leave the vector index."""
        removed: list[int] = []
        for batch in _batches(list(doc_ids)):
            marks = ",".join("?" * len(batch))
            removed += [r[0] for r in conn.execute(f"SELECT vector_id FROM chunks WHERE doc_id IN ({marks})", batch)]
            conn.execute(f"DELETE FROM chunks WHERE doc_id IN ({marks})", batch)
            conn.execute(f"DELETE FROM documents WHERE id IN ({marks})", batch)
        return removed

    def set_state(self, conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute(
            "INSERT INTO state(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def _stored_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    # The title lives on the document row; storing it per chunk would repeat it.
    return {k: v for k, v in meta.items() if k != "title"}


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), ensure_ascii=False, sort_keys=True, default=str)


def _batches(items: list[Any], size: int = 900) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
