"""GraphStore: exact deletes, idempotent adds, the networkx view and the caller-owned transaction."""

from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np
import pytest

from ragkit.graph.model import ChunkExtraction, EntityMention, RelationMention
from ragkit.graph.normalize import normalize_name
from ragkit.graph.store import GraphStore


def m(surface: str, label: str = "PERSON", kind: str = "entity", key: str | None = None) -> EntityMention:
    return EntityMention(key or normalize_name(surface), surface, label, kind, 0, len(surface), 0)  # type: ignore[arg-type]


def r(source: str, target: str, label: str = "met", kind: str = "svo") -> RelationMention:
    return RelationMention(source, target, label, kind)  # type: ignore[arg-type]


DOC_A = [
    ChunkExtraction(
        "a1", "A", (m("Sherlock Holmes", "TITLE", "title"), m("London", "GPE"), m("John Watson")),
        (r("john watson", "london", "lives in"), r("john watson", "london", "co-occurs with", "cooccur")),
    ),
    ChunkExtraction("a2", "A", (m("Sherlock Holmes", "TITLE", "title"), m("Holmes", key="sherlock holmes")), ()),
]
DOC_B = [
    ChunkExtraction(
        "b1", "B",
        (
            m("London", "GPE"),
            m("LONDON", "GPE"),
            m("John Watson"),
            m("Baker Street", "FAC"),
            m("detective", "NOUN", "noun_phrase"),
        ),
        (
            r("john watson", "london", "lives in"),
            r("john watson", "baker street", "lives at"),
            r("detective", "london", "in", "prep"),
        ),
    ),
    ChunkExtraction(
        "b2", "B", (m("LONDON", "GPE"), m("Scotland Yard", "ORG")), (r("scotland yard", "london", "in", "prep"),)
    ),
]


def dump(store: GraphStore) -> dict[str, Any]:
    q = store.conn.execute
    return {
        "entities": sorted(q("SELECT key, name, label FROM graph_entities")),
        "relations": sorted(
            q(
                "SELECT s.key, t.key, r.label, r.kind FROM graph_relations r JOIN graph_entities s ON s.id = r.source "
                "JOIN graph_entities t ON t.id = r.target"
            )
        ),
        "mentions": sorted(
            q(
                "SELECT e.key, m.chunk_id, m.doc_id, m.surface, m.alias_key, m.label, m.kind, m.start, m.end "
                "FROM graph_mentions m JOIN graph_entities e ON e.id = m.entity_id"
            )
        ),
        "relation_mentions": sorted(
            q(
                "SELECT s.key, t.key, r.label, r.kind, r.chunk_id, r.doc_id FROM graph_relation_mentions r "
                "JOIN graph_entities s ON s.id = r.source JOIN graph_entities t ON t.id = r.target"
            )
        ),
        "vectors": sorted(k for (k,) in q("SELECT key FROM graph_name_vectors")),
    }


def fake_embed(names: list[str]) -> np.ndarray:
    return np.ones((len(names), 4), dtype=np.float32)


@pytest.fixture
def alone() -> GraphStore:
    store = GraphStore(sqlite3.connect(":memory:"))
    store.add(DOC_A)
    store.embed_names("fake", fake_embed)
    return store


def test_delete_is_exact(alone: GraphStore) -> None:
    both = GraphStore(sqlite3.connect(":memory:"))
    both.add(DOC_A)
    both.add(DOC_B)
    both.embed_names("fake", fake_embed)
    assert both.stats()["entities"] > alone.stats()["entities"]
    assert dict(both.to_networkx().nodes)["london"]["name"] == "LONDON"  # B's more frequent surface wins ...
    both.delete_documents(["B"])
    assert dump(both) == dump(alone)
    assert dict(both.to_networkx().nodes)["london"]["name"] == "London"  # ... and is gone with B
    assert both.stats() == alone.stats()


def test_delete_then_readd_and_order_independence(alone: GraphStore) -> None:
    reordered = GraphStore(sqlite3.connect(":memory:"))
    reordered.add(DOC_B)
    reordered.add(DOC_A)
    reordered.embed_names("fake", fake_embed)
    reordered.delete_documents(["B"])
    assert dump(reordered) == dump(alone)
    reordered.delete_documents(["A"])
    assert all(not rows for rows in dump(reordered).values())  # nothing left, not even name vectors


def test_add_replaces_a_chunk(alone: GraphStore) -> None:
    before = dump(alone)
    generation = alone.generation
    alone.add(DOC_A)  # same chunks again: replaced, not duplicated
    assert dump(alone) == before
    assert alone.generation > generation
    changed = ChunkExtraction("a2", "A", (m("Sherlock Holmes", "TITLE", "title"), m("Irene Adler")), ())
    alone.add([changed])
    keys = {row[0] for row in dump(alone)["entities"]}
    assert "irene adler" in keys


def test_relations_need_both_ends_in_the_chunk() -> None:
    store = GraphStore(sqlite3.connect(":memory:"))
    store.add([ChunkExtraction("x", "X", (m("London", "GPE"),), (r("london", "paris", "near"),))])
    assert store.stats()["relations"] == 0


def test_networkx_view(alone: GraphStore) -> None:
    graph = alone.to_networkx()
    holmes = graph.nodes["sherlock holmes"]
    assert holmes["name"] == "Sherlock Holmes"  # the title's surface is the display name
    assert holmes["aliases"] == ["Holmes"]
    assert holmes["chunks"] == ["a1", "a2"] and holmes["documents"] == ["A"]
    edges = graph.get_edge_data("john watson", "london")
    assert edges["svo:lives in"] == {"label": "lives in", "kind": "svo", "chunks": ["a1"], "weight": 1}
    assert "cooccur:co-occurs with" in edges


def test_store_leaves_the_transaction_to_the_caller(tmp_path: Any) -> None:
    path = tmp_path / "catalog.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE documents (id TEXT)")
    conn.execute("INSERT INTO documents VALUES ('A')")  # opens a transaction
    store = GraphStore(conn)  # creating the tables must not commit it
    store.add(DOC_A)
    assert conn.in_transaction
    conn.rollback()
    reopened = sqlite3.connect(path)
    assert reopened.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'graph_entities'").fetchone()[0] == 0
    assert GraphStore(reopened).stats()["entities"] == 0


# The display name and label as they were computed before the counts existed: from every mention of the entity.
REFERENCE_NAMES = """
SELECT e.key,
    (SELECT surface FROM graph_mentions m WHERE m.entity_id = e.id GROUP BY surface
     ORDER BY MAX(kind IN ('title', 'heading')) DESC, COUNT(*) DESC, LENGTH(surface) DESC, surface LIMIT 1),
    (SELECT label FROM graph_mentions m WHERE m.entity_id = e.id GROUP BY label
     ORDER BY label IN ('TITLE', 'HEADING', 'NOUN'), COUNT(*) DESC, label LIMIT 1)
FROM graph_entities e
"""


def names_agree_with_mentions(store: GraphStore) -> None:
    from ragkit.testing import _COUNT_CHECKS

    q = store.conn.execute
    assert sorted(q("SELECT key, name, label FROM graph_entities")) == sorted(q(REFERENCE_NAMES))
    for what, sql in _COUNT_CHECKS:
        assert q(sql).fetchone()[0] == 0, what


def test_display_names_follow_every_write() -> None:
    """Names and labels come from per-entity counts kept with each add and delete; they equal what all the
    mentions say, through a random run of adds, replacements and deletes."""
    import random

    rng = random.Random(5)
    surfaces = ["London", "LONDON", "london", "Londres", "Sherlock Holmes", "Holmes", "Baker Street", "Watson"]
    store = GraphStore(sqlite3.connect(":memory:"))
    for _ in range(120):
        doc = f"D{rng.randrange(12)}"
        if rng.random() < 0.3:
            store.delete_documents([doc])
        else:
            chunk = f"{doc}-{rng.randrange(3)}"
            mentions = tuple(
                m(surface, rng.choice(["GPE", "PERSON", "TITLE", "NOUN"]), rng.choice(["entity", "title", "heading"]),
                  key=normalize_name(surface)[:5])
                for surface in rng.sample(surfaces, rng.randint(1, 5))
            )
            store.add([ChunkExtraction(chunk, doc, mentions, ())])
        names_agree_with_mentions(store)
    assert store.stats()["entities"]


def test_an_older_graph_gets_its_counts(alone: GraphStore) -> None:
    alone.add(DOC_B)
    conn = alone.conn
    before = dump(alone)
    conn.execute("DROP TABLE graph_entity_surfaces")  # as an index written before the counts existed
    conn.execute("DROP TABLE graph_entity_labels")
    reopened = GraphStore(conn)
    assert dump(reopened) == before
    names_agree_with_mentions(reopened)
    reopened.delete_documents(["B"])
    assert dict(reopened.to_networkx().nodes)["london"]["name"] == "London"
    names_agree_with_mentions(reopened)


def test_embed_names_of_some_keys_looks_only_at_them() -> None:
    store = GraphStore(sqlite3.connect(":memory:"))
    store.add(DOC_A + DOC_B)
    asked: list[list[str]] = []

    def embed(names: list[str]) -> np.ndarray:
        asked.append(names)
        return fake_embed(names)

    assert store.embed_names("fake", embed, keys=["london", "detective", "nobody"]) == 1  # a noun phrase: no
    assert asked == [["london"]]
    assert store.embed_names("fake", embed, keys=["london"]) == 0  # stored once
    rest = store.embed_names("fake", embed)  # the whole graph: every other named entity
    assert rest == len(asked[-1]) and "london" not in asked[-1] and "john watson" in asked[-1]
