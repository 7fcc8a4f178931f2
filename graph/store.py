"""The knowledge graph's tables, in the same SQLite database as the catalog.

``graph_entities`` (one row per key), ``graph_mentions`` (entity x chunk, with the surface form and kind),
``graph_relations`` (distinct ``source -label-> target`` edges) and ``graph_relation_mentions`` (which chunk
supports which edge). An entity or relation lives exactly as long as some mention supports it, so deleting a
document removes its mentions and then whatever no other document supports; the result equals never having
added the document. ``graph_name_vectors`` caches entity-name embeddings per embedder for search.

The store never commits: the caller owns the transaction (the index writes catalog and graph together).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragkit.graph.model import ChunkExtraction
from ragkit.graph.normalize import normalize_name

SCHEMA = """
CREATE TABLE IF NOT EXISTS graph_entities (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    label TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS graph_mentions (
    entity_id INTEGER NOT NULL,
    chunk_id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    surface TEXT NOT NULL,
    alias_key TEXT NOT NULL,
    label TEXT NOT NULL,
    kind TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS graph_mentions_entity ON graph_mentions(entity_id);
CREATE INDEX IF NOT EXISTS graph_mentions_doc ON graph_mentions(doc_id);
CREATE INDEX IF NOT EXISTS graph_mentions_chunk ON graph_mentions(chunk_id);
CREATE TABLE IF NOT EXISTS graph_relations (
    id INTEGER PRIMARY KEY,
    source INTEGER NOT NULL,
    target INTEGER NOT NULL,
    label TEXT NOT NULL,
    kind TEXT NOT NULL,
    UNIQUE (source, target, label, kind)
);
CREATE TABLE IF NOT EXISTS graph_relation_mentions (
    source INTEGER NOT NULL,
    target INTEGER NOT NULL,
    label TEXT NOT NULL,
    kind TEXT NOT NULL,
    chunk_id TEXT NOT NULL,
    doc_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS graph_relation_mentions_edge ON graph_relation_mentions(source, target, label, kind);
CREATE INDEX IF NOT EXISTS graph_relation_mentions_doc ON graph_relation_mentions(doc_id);
CREATE INDEX IF NOT EXISTS graph_relation_mentions_chunk ON graph_relation_mentions(chunk_id);
CREATE TABLE IF NOT EXISTS graph_name_vectors (
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (key, model)
);
CREATE TABLE IF NOT EXISTS graph_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Per entity, its mentions counted by surface form and by label, kept with every add and delete: an entity's display
# name and label (_REFRESH) come from these few rows instead of all its mentions, which grow with the corpus (a
# frequent entity is touched by almost every batch: refreshing from the mentions made indexing quadratic).
COUNTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS graph_entity_surfaces (
    entity_id INTEGER NOT NULL,
    surface TEXT NOT NULL,
    mentions INTEGER NOT NULL,
    titled INTEGER NOT NULL,
    PRIMARY KEY (entity_id, surface)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS graph_entity_labels (
    entity_id INTEGER NOT NULL,
    label TEXT NOT NULL,
    mentions INTEGER NOT NULL,
    PRIMARY KEY (entity_id, label)
) WITHOUT ROWID;
"""
_TITLED_KINDS = ("title", "heading")
# An index written before the counts existed gets them from its mentions, once, when a writer opens its graph.
_BACKFILL = (
    "INSERT INTO graph_entity_surfaces SELECT entity_id, surface, COUNT(*), SUM(kind IN ('title', 'heading')) "
    "FROM graph_mentions GROUP BY entity_id, surface",
    "INSERT INTO graph_entity_labels SELECT entity_id, label, COUNT(*) FROM graph_mentions GROUP BY entity_id, label",
)

_BATCH = 500  # SQL variables per IN (...) list

# The display name of an entity: a title/heading surface first, then the most frequent, longest, first in order.
_REFRESH = """
UPDATE graph_entities SET
    name = (SELECT surface FROM graph_entity_surfaces s WHERE s.entity_id = graph_entities.id
            ORDER BY titled > 0 DESC, mentions DESC, LENGTH(surface) DESC, surface LIMIT 1),
    label = (SELECT label FROM graph_entity_labels l WHERE l.entity_id = graph_entities.id
             ORDER BY label IN ('TITLE', 'HEADING', 'NOUN'), mentions DESC, label LIMIT 1)
WHERE id IN (SELECT id FROM temp.graph_touched)
"""


@dataclass(frozen=True)
class GraphSnapshot:
    """The whole graph as arrays, read in one pass for compiling search matrices.

    Entities are rows ``0..n-1`` in ``keys`` order; ``mention_*`` and ``relation_*`` index into them.
    """

    generation: int
    keys: np.ndarray  # str, entity keys
    names: np.ndarray  # str, display names
    labels: np.ndarray  # str
    mention_entity: np.ndarray  # int64 row into keys
    mention_chunk: np.ndarray  # str chunk ids
    mention_kind: np.ndarray  # str
    relation_source: np.ndarray  # int64
    relation_target: np.ndarray  # int64
    relation_kind: np.ndarray  # str
    relation_support: np.ndarray  # int64, number of chunks stating the relation
    alias_keys: np.ndarray  # str, normalized surface forms that differ from their entity's key
    alias_entity: np.ndarray  # int64


class GraphStore:
    """Entities, relations and mentions of one index, stored beside the catalog's tables.

    Example::

        store = GraphStore(sqlite3.connect(":memory:"))
        store.add(SpacyExtractor().extract(chunks))
        graph = store.to_networkx()
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        if conn.in_transaction:
            _create_in_transaction(conn)  # executescript() would commit the caller's open transaction
            _create_counts(conn)
        else:
            conn.executescript(SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            try:
                _create_counts(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @classmethod
    def reader(cls, conn: sqlite3.Connection) -> GraphStore:
        """A store that only reads ``conn`` (a read-only connection): an empty in-memory graph when no writer has
        created the tables yet, so opening and querying never write."""
        store = cls.__new__(cls)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "graph_entities" in tables:
            store.conn = conn
        else:
            store.conn = sqlite3.connect(":memory:", check_same_thread=False)
            store.conn.executescript(SCHEMA)
        return store

    @property
    def generation(self) -> int:
        """Bumped by every add or delete, so derived matrices know when to rebuild."""
        row = self.conn.execute("SELECT value FROM graph_state WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def _bump(self) -> None:
        self.conn.execute(
            "INSERT INTO graph_state(key, value) VALUES ('generation', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    def add(self, extractions: Iterable[ChunkExtraction]) -> None:
        """Stores extractions. A chunk already in the graph is replaced, so adding twice equals adding once."""
        batch = list(extractions)
        if not batch:
            return
        old_entities, old_edges = self._remove_rows("chunk_id", [ex.chunk_id for ex in batch])
        conn = self.conn
        first_surface: dict[str, tuple[str, str]] = {}
        for ex in batch:
            for m in ex.mentions:
                first_surface.setdefault(m.key, (m.surface, m.label))
        conn.executemany(
            "INSERT OR IGNORE INTO graph_entities(key, name, label) VALUES (?, ?, ?)",
            [(key, surface, label) for key, (surface, label) in first_surface.items()],
        )
        ids = self._entity_ids(list(first_surface))
        mention_rows = []
        relation_rows = []
        for ex in batch:
            keys = set()
            for m in ex.mentions:
                keys.add(m.key)
                alias = normalize_name(m.surface)
                mention_rows.append(
                    (ids[m.key], ex.chunk_id, ex.doc_id, m.surface, alias, m.label, m.kind, m.start, m.end)
                )
            for r in ex.relations:
                if r.source in keys and r.target in keys and r.source != r.target:
                    relation_rows.append((ids[r.source], ids[r.target], r.label, r.kind, ex.chunk_id, ex.doc_id))
        conn.executemany("INSERT INTO graph_mentions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", mention_rows)
        self._count(((row[0], row[3], row[5], row[6]) for row in mention_rows), +1)
        conn.executemany("INSERT INTO graph_relation_mentions VALUES (?, ?, ?, ?, ?, ?)", relation_rows)
        conn.executemany(
            "INSERT OR IGNORE INTO graph_relations(source, target, label, kind) VALUES (?, ?, ?, ?)",
            sorted({row[:4] for row in relation_rows}),
        )
        survivors = self._drop_orphans(old_entities - set(ids.values()), old_edges)
        self._refresh(list(set(ids.values()) | survivors))
        self._bump()

    def delete_documents(self, doc_ids: Sequence[str]) -> None:
        """Removes the documents' mentions, then every entity and relation no remaining mention supports."""
        if doc_ids:
            entities, edges = self._remove_rows("doc_id", list(doc_ids))
            self._refresh(list(self._drop_orphans(entities, edges)))
            self._bump()

    def _remove_rows(self, column: str, values: list[str]) -> tuple[set[int], set[tuple[Any, ...]]]:
        """Deletes the mention rows of some chunks or documents; returns the entities and edges they touched."""
        conn = self.conn
        touched: set[int] = set()
        edges: set[tuple[Any, ...]] = set()
        for i in range(0, len(values), _BATCH):
            part = values[i : i + _BATCH]
            marks = ",".join("?" * len(part))
            removed = conn.execute(
                f"SELECT entity_id, surface, label, kind FROM graph_mentions WHERE {column} IN ({marks})", part
            ).fetchall()
            touched.update(r[0] for r in removed)
            self._count(removed, -1)
            edges.update(
                conn.execute(
                    f"SELECT source, target, label, kind FROM graph_relation_mentions WHERE {column} IN ({marks})", part
                )
            )
            conn.execute(f"DELETE FROM graph_mentions WHERE {column} IN ({marks})", part)
            conn.execute(f"DELETE FROM graph_relation_mentions WHERE {column} IN ({marks})", part)
        return touched, edges

    def _count(self, mentions: Iterable[tuple[int, str, str, str]], sign: int) -> None:
        """Adds (``sign`` +1) or takes away (-1) mentions, as ``(entity id, surface, label, kind)``, from the
        display-name counts; a count that reaches zero is deleted."""
        surfaces: dict[tuple[int, str], list[int]] = {}
        labels: dict[tuple[int, str], int] = {}
        for entity_id, surface, label, kind in mentions:
            counts = surfaces.setdefault((entity_id, surface), [0, 0])
            counts[0] += sign
            counts[1] += sign if kind in _TITLED_KINDS else 0
            labels[(entity_id, label)] = labels.get((entity_id, label), 0) + sign
        conn = self.conn
        conn.executemany(
            "INSERT INTO graph_entity_surfaces VALUES (?, ?, ?, ?) ON CONFLICT (entity_id, surface) DO UPDATE SET "
            "mentions = mentions + excluded.mentions, titled = titled + excluded.titled",
            [(eid, surface, n, titled) for (eid, surface), (n, titled) in surfaces.items()],
        )
        conn.executemany(
            "INSERT INTO graph_entity_labels VALUES (?, ?, ?) ON CONFLICT (entity_id, label) DO UPDATE SET "
            "mentions = mentions + excluded.mentions",
            [(eid, label, n) for (eid, label), n in labels.items()],
        )
        if sign < 0:
            conn.executemany(
                "DELETE FROM graph_entity_surfaces WHERE entity_id = ? AND surface = ? AND mentions <= 0", surfaces
            )
            conn.executemany(
                "DELETE FROM graph_entity_labels WHERE entity_id = ? AND label = ? AND mentions <= 0", labels
            )

    def _drop_orphans(self, touched: set[int], edges: set[tuple[Any, ...]]) -> set[int]:
        """Deletes the touched relations and entities that no mention supports; returns the surviving entities."""
        conn = self.conn
        conn.executemany(
            "DELETE FROM graph_relations WHERE source = ?1 AND target = ?2 AND label = ?3 AND kind = ?4 AND NOT EXISTS "
            "(SELECT 1 FROM graph_relation_mentions r WHERE r.source = ?1 AND r.target = ?2 AND r.label = ?3 "
            "AND r.kind = ?4)",
            sorted(edges),
        )
        orphans = [
            (eid,)
            for eid in touched
            if conn.execute("SELECT 1 FROM graph_mentions WHERE entity_id = ? LIMIT 1", (eid,)).fetchone() is None
        ]
        conn.executemany(
            "DELETE FROM graph_name_vectors WHERE key = (SELECT key FROM graph_entities WHERE id = ?)", orphans
        )
        conn.executemany("DELETE FROM graph_entities WHERE id = ?", orphans)
        return touched - {o[0] for o in orphans}

    def _entity_ids(self, keys: list[str]) -> dict[str, int]:
        ids: dict[str, int] = {}
        for i in range(0, len(keys), _BATCH):
            part = keys[i : i + _BATCH]
            marks = ",".join("?" * len(part))
            ids.update(self.conn.execute(f"SELECT key, id FROM graph_entities WHERE key IN ({marks})", part))
        return ids

    def _refresh(self, entity_ids: list[int]) -> None:
        if not entity_ids:
            return
        conn = self.conn
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS graph_touched (id INTEGER PRIMARY KEY)")
        conn.execute("DELETE FROM temp.graph_touched")
        conn.executemany("INSERT OR IGNORE INTO temp.graph_touched VALUES (?)", [(i,) for i in entity_ids])
        conn.execute(_REFRESH)
        conn.execute("DELETE FROM temp.graph_touched")

    # --- reading ---

    def stats(self) -> dict[str, int]:
        """Counts of entities, relations, mentions, relation mentions, chunks and documents in the graph."""
        q = self.conn.execute
        return {
            "entities": q("SELECT COUNT(*) FROM graph_entities").fetchone()[0],
            "relations": q("SELECT COUNT(*) FROM graph_relations").fetchone()[0],
            "mentions": q("SELECT COUNT(*) FROM graph_mentions").fetchone()[0],
            "relation_mentions": q("SELECT COUNT(*) FROM graph_relation_mentions").fetchone()[0],
            "chunks": q("SELECT COUNT(DISTINCT chunk_id) FROM graph_mentions").fetchone()[0],
            "documents": q("SELECT COUNT(DISTINCT doc_id) FROM graph_mentions").fetchone()[0],
        }

    def snapshot(self) -> GraphSnapshot:
        """The graph as arrays (see GraphSnapshot), for ``matrices.compile_matrices``."""
        q = self.conn.execute
        generation = self.generation
        entities = q("SELECT id, key, name, label FROM graph_entities ORDER BY key").fetchall()
        row_of = {eid: row for row, (eid, *_rest) in enumerate(entities)}
        mentions = q("SELECT entity_id, chunk_id, kind FROM graph_mentions").fetchall()
        relations = q(
            "SELECT source, target, kind, COUNT(DISTINCT chunk_id) FROM graph_relation_mentions "
            "GROUP BY source, target, kind"
        ).fetchall()
        aliases = q(
            "SELECT DISTINCT m.alias_key, m.entity_id FROM graph_mentions m JOIN graph_entities e "
            "ON e.id = m.entity_id WHERE m.alias_key != e.key AND m.alias_key != ''"
        ).fetchall()

        def column(rows: list[tuple[Any, ...]], i: int, dtype: Any, mapped: bool = False) -> np.ndarray:
            values = [row_of[r[i]] if mapped else r[i] for r in rows]
            return np.asarray(values, dtype=dtype) if values else np.zeros(0, dtype=dtype)

        return GraphSnapshot(
            generation=generation,
            keys=column(entities, 1, object),
            names=column(entities, 2, object),
            labels=column(entities, 3, object),
            mention_entity=column(mentions, 0, np.int64, mapped=True),
            mention_chunk=column(mentions, 1, object),
            mention_kind=column(mentions, 2, object),
            relation_source=column(relations, 0, np.int64, mapped=True),
            relation_target=column(relations, 1, np.int64, mapped=True),
            relation_kind=column(relations, 2, object),
            relation_support=column(relations, 3, np.int64),
            alias_keys=column(aliases, 0, object),
            alias_entity=column(aliases, 1, np.int64, mapped=True),
        )

    def name_vectors(self, model: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached name embeddings of ``keys`` for embedder ``model`` (those that are cached)."""
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(keys), _BATCH):
            part = list(keys[i : i + _BATCH])
            marks = ",".join("?" * len(part))
            for key, blob in self.conn.execute(
                f"SELECT key, vector FROM graph_name_vectors WHERE model = ? AND key IN ({marks})", [model, *part]
            ):
                out[key] = np.frombuffer(blob, dtype=np.float32)
        return out

    def embed_names(
        self,
        model: str,
        embed: Callable[[list[str]], np.ndarray],
        batch_size: int = 1024,
        keys: Iterable[str] | None = None,
    ) -> int:
        """Embeds and caches the names of named entities, titles and headings that have no vector for ``model``
        yet (common-noun phrases are linked by name only); returns how many were embedded. ``keys``: look only
        at these entities (those a batch just wrote as named entities, titles or headings) instead of the whole
        graph, which grows with the corpus.

        Call it while indexing (inside the write transaction) so that the first query does not pay for it.
        """
        # the vector is looked for first: the mentions of an entity that has one are not read (a frequent phrase
        # has thousands, and a batch touches it again and again)
        query = (
            "SELECT e.key FROM graph_entities e "
            "WHERE NOT EXISTS (SELECT 1 FROM graph_name_vectors v WHERE v.key = e.key AND v.model = ?) "
            "AND EXISTS (SELECT 1 FROM graph_mentions m WHERE m.entity_id = e.id AND m.kind != 'noun_phrase')"
        )
        if keys is None:
            missing = [r[0] for r in self.conn.execute(query, (model,))]
        else:
            wanted, missing = sorted(set(keys)), []
            for i in range(0, len(wanted), _BATCH):
                part = wanted[i : i + _BATCH]
                marks = ",".join("?" * len(part))
                missing += [r[0] for r in self.conn.execute(f"{query} AND e.key IN ({marks})", (model, *part))]
        for i in range(0, len(missing), batch_size):
            part = missing[i : i + batch_size]
            vectors = np.asarray(embed(part), dtype=np.float32)
            self.conn.executemany(
                "INSERT OR REPLACE INTO graph_name_vectors(key, model, vector) VALUES (?, ?, ?)",
                [(key, model, vec.tobytes()) for key, vec in zip(part, vectors, strict=False)],
            )
        return len(missing)

    def relation_label(self, key_a: str, key_b: str, chunk_id: str | None = None) -> str | None:
        """The label of a relation between two entities (either direction), parsed ones before co-occurrence,
        the most supported first; limited to one chunk when ``chunk_id`` is given."""
        ids = self._entity_ids([key_a, key_b])
        if key_a not in ids or key_b not in ids:
            return None
        a, b = ids[key_a], ids[key_b]
        sql = (
            "SELECT label, kind, COUNT(*) AS n FROM graph_relation_mentions "
            "WHERE ((source = ?1 AND target = ?2) OR (source = ?2 AND target = ?1))"
        )
        params: list[Any] = [a, b]
        if chunk_id is not None:
            sql += " AND chunk_id = ?3"
            params.append(chunk_id)
        sql += " GROUP BY label, kind ORDER BY kind = 'cooccur', n DESC, label LIMIT 1"
        row = self.conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def to_networkx(self) -> Any:
        """The graph as a ``networkx.MultiDiGraph``: one node per entity key, one edge per relation.

        Node attributes: ``name``, ``label``, ``aliases`` (other surface forms), ``chunks``, ``documents``.
        Edge attributes (edge key = ``kind:label``): ``label``, ``kind`` (svo/prep/appos/cooccur), ``chunks``,
        ``weight`` (number of chunks that state it).
        """
        import networkx as nx

        q = self.conn.execute
        graph = nx.MultiDiGraph()
        key_of: dict[int, str] = {}
        for eid, key, name, label in q("SELECT id, key, name, label FROM graph_entities ORDER BY key"):
            key_of[eid] = key
            graph.add_node(key, name=name, label=label, aliases=[], chunks=[], documents=[])
        for eid, chunk, doc in q("SELECT DISTINCT entity_id, chunk_id, doc_id FROM graph_mentions ORDER BY 2, 3"):
            node = graph.nodes[key_of[eid]]
            if not node["chunks"] or node["chunks"][-1] != chunk:
                node["chunks"].append(chunk)
            if doc not in node["documents"][-1:]:
                node["documents"].append(doc)
        for node in graph.nodes.values():
            node["documents"] = sorted(set(node["documents"]))
        for eid, surface in q("SELECT DISTINCT entity_id, surface FROM graph_mentions ORDER BY surface"):
            node = graph.nodes[key_of[eid]]
            if surface != node["name"]:
                node["aliases"].append(surface)
        edges: dict[tuple[int, int, str, str], list[str]] = {}
        for source, target, label, kind, chunk in q(
            "SELECT DISTINCT source, target, label, kind, chunk_id FROM graph_relation_mentions ORDER BY 1, 2, 3, 4, 5"
        ):
            edges.setdefault((source, target, label, kind), []).append(chunk)
        for (source, target, label, kind), chunks in edges.items():
            graph.add_edge(
                key_of[source], key_of[target], key=f"{kind}:{label}", label=label, kind=kind, chunks=chunks,
                weight=len(chunks),
            )
        return graph


def _create_in_transaction(conn: sqlite3.Connection, schema: str = SCHEMA) -> None:
    for statement in schema.split(";"):
        if statement.strip():
            conn.execute(statement)


def _create_counts(conn: sqlite3.Connection) -> None:
    """The display-name counts, inside the caller's transaction; filled from the mentions where they are new."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    _create_in_transaction(conn, COUNTS_SCHEMA)
    for table, backfill in zip(("graph_entity_surfaces", "graph_entity_labels"), _BACKFILL, strict=True):
        if table not in tables:
            conn.execute(backfill)
