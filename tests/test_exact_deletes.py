"""Exact deletes: indexing A and B, then deleting B, leaves the same index as indexing A alone, in every
backend.

Compared: documents and chunks; vectors as sets of ids (and dense rankings, scores included); BM25 rankings
with scores; the knowledge graph (entities with their display names and labels, mentions, relations and the
chunks that support them). A and B share entities and a relation, so a delete must keep what A still
supports and drop only what B alone supported.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from ragkit import Index, Settings

A = {
    "engine.txt": "Ada Lovelace worked with Charles Babbage in London on the Analytical Engine. "
    "Ada Lovelace wrote the first published algorithm for the Analytical Engine.",
    "enigma.txt": "Alan Turing broke the Enigma code at Bletchley Park. Alan Turing later worked in "
    "Manchester "
    "with Max Newman on early computers.",
    "cobol.md": "# COBOL\n\nGrace Hopper led the team that created COBOL at Remington Rand. "
    "Grace Hopper popularised the word debugging.",
}
B = {
    "babbage.txt": "Charles Babbage designed the Difference Engine in London. Charles Babbage met "
    "Ada Lovelace "
    "at a party in London, and Isambard Brunel admired the engine.",  # shares entities and a relation with A
    "curie.txt": "Marie Curie discovered polonium in Paris with Pierre Curie. "
    "Marie Curie won two Nobel Prizes.",
}
QUERIES = [
    "Who worked with Charles Babbage in London?",
    "Analytical Engine algorithm",
    "polonium Paris",
    "Alan Turing Enigma",
    "COBOL debugging",
]
BACKENDS = [("faiss", 1), ("faiss", 3), ("milvus", 1), ("chroma", 1)]


def settings(backend: str, shards: int) -> Settings:
    return Settings().merged(
        embedder={"model": "hashing-64"},
        chunking={"max_tokens": 24, "overlap": 4},
        vectors={"backend": backend, "shards": shards},
        graph={"options": {"n_process": 1}},
    )


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    for folder, files in (("a", A), ("b", B)):
        (root / folder).mkdir(parents=True)
        for name, text in files.items():
            (root / folder / name).write_text(text)
    return root


def snapshot(index: Index) -> dict[str, Any]:
    q = index.catalog.connection.execute
    key = dict(q("SELECT id, key FROM graph_entities"))
    chunks = {c.id: c for batch in index.catalog.iter_chunks() for c in batch}
    total = len(chunks) + 5  # rank everything: tie order between equal scores is then irrelevant

    def ranking(mode: str, query: str) -> list[tuple[float, str]]:
        return sorted((round(h.score, 4), h.chunk.id) for h in index.retrieve(query, k=total, mode=mode))

    vector_ids = index.vectors.ids().tolist()
    assert len(vector_ids) == len(set(vector_ids))
    return {
        "documents": sorted(q("SELECT id, source, title, content_hash, meta, tags FROM documents")),
        "chunks": sorted((c.id, c.doc_id, c.start, c.end, c.text) for c in chunks.values()),
        "vectors": sorted(vector_ids),
        "catalog_vectors": sorted(index.catalog.vector_ids()),
        "bm25_ids": sorted(index.bm25.chunk_ids),
        "bm25": [ranking("bm25", query) for query in QUERIES],
        "dense": [ranking("dense", query) for query in QUERIES],
        "entities": sorted(q("SELECT key, name, label FROM graph_entities")),
        "mentions": sorted(
            (key[eid], *rest)
            for eid, *rest in q(
                "SELECT entity_id, chunk_id, doc_id, surface, alias_key, label, kind, start, end "
                "FROM graph_mentions"
            )
        ),
        "relations": sorted(
            (key[s], key[t], label, kind)
            for s, t, label, kind in q("SELECT source, target, label, kind FROM graph_relations")
        ),
        "relation_mentions": sorted(
            (key[s], key[t], *rest)
            for s, t, *rest in q(
                "SELECT source, target, label, kind, chunk_id, doc_id FROM graph_relation_mentions"
            )
        ),
        "graph_stats": index.graph_stats(),
    }


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    for part in want:
        assert got[part] == want[part], f"{part} differs after the delete"


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "shards"), BACKENDS, ids=[f"{b}-{s}" for b, s in BACKENDS])
def test_delete_equals_never_added(tmp_path, corpus, backend, shards):
    with Index.create(tmp_path / "a-only", settings(backend, shards)) as alone:
        alone.add([corpus / "a"])
        want = snapshot(alone)
    assert want["entities"] and want["relations"] and want["mentions"]

    with Index.create(tmp_path / "a-and-b", settings(backend, shards)) as both:
        both.add([corpus / "a"])
        both.add([corpus / "b"])
        with_b = snapshot(both)
        # B really changed every part compared, and shares entities and a relation with A
        assert [part for part in want if with_b[part] == want[part]] == []
        a_docs = {d[0] for d in want["documents"]}
        shared = {m[0] for m in want["mentions"]} & {m[0] for m in with_b["mentions"] if m[2] not in a_docs}
        assert shared, "B should mention some of A's entities"
        edges = {}
        for *edge, _, doc in with_b["relation_mentions"]:
            edges.setdefault(tuple(edge), set()).add(doc in a_docs)
        assert any(len(sides) == 2 for sides in edges.values()), "B should support one of A's relations"
        removed = both.delete(str(corpus / "b"))
        assert len(removed) == len(B)
        got = snapshot(both)
    assert_same(got, want)

    # and after reopening (what was saved on disk is the same too)
    with Index.open(tmp_path / "a-and-b") as reopened:
        assert_same(snapshot(reopened), want)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["doc-id", "sync", "changed-file"])
def test_other_ways_of_removing_b(tmp_path, corpus, how):
    """Deleting by document id, by ``--sync`` after the files are gone, and replacing a file's text with A's
    version: each equals never having had B."""
    with Index.create(tmp_path / "a-only", settings("faiss", 2)) as alone:
        alone.add([corpus / "a"])
        want = snapshot(alone)
    if how == "changed-file":
        # engine.txt first says B's text, then A's: the old version's chunks, vectors and graph facts must go
        engine = corpus / "a" / "engine.txt"
        engine.write_text(B["babbage.txt"] + " " + B["curie.txt"])
        with Index.create(tmp_path / "both", settings("faiss", 2)) as index:
            index.add([corpus / "a"])
            engine.write_text(A["engine.txt"])
            report = index.add([corpus / "a"])
            assert report.updated == 1
            assert_same(snapshot(index), want)
        return
    for name in B:  # B's files inside A's folder
        shutil.copy(corpus / "b" / name, corpus / "a" / name)
    with Index.create(tmp_path / "both", settings("faiss", 2)) as index:
        index.add([corpus / "a"])
        if how == "doc-id":
            sources = index.catalog.sources()
            for name in B:
                (doc_id,) = sources[str((corpus / "a" / name).resolve())]
                assert index.delete(doc_id) == [doc_id]
        else:
            for name in B:
                (corpus / "a" / name).unlink()
            assert index.add([corpus / "a"], sync=True).removed == len(B)
        assert_same(snapshot(index), want)


def test_delete_then_readd_equals_adding_once(tmp_path, corpus):
    """Deleting leaves nothing behind that changes a later add (no graph: the vector and keyword stores)."""
    plain = Settings().merged(
        embedder={"model": "hashing-64"},
        chunking={"max_tokens": 24, "overlap": 4},
        graph={"enabled": False},
        vectors={"shards": 2},
    )
    with Index.create(tmp_path / "once", plain) as once:
        once.add([corpus / "a", corpus / "b"])
        want = snapshot_plain(once)
    with Index.create(tmp_path / "twice", plain) as twice:
        twice.add([corpus / "a", corpus / "b"])
        twice.delete(str(corpus / "b"))
        twice.delete(str(corpus / "a" / "enigma.txt"))
        twice.add([corpus / "a", corpus / "b"])
        assert snapshot_plain(twice) == want


def snapshot_plain(index: Index) -> dict[str, Any]:
    chunks = {c.id: c for batch in index.catalog.iter_chunks() for c in batch}
    total = len(chunks) + 5
    return {
        "chunks": sorted((c.id, c.doc_id, c.start, c.end, c.text) for c in chunks.values()),
        "vectors": sorted(index.vectors.ids().tolist()),
        "bm25": [
            sorted((round(h.score, 4), h.chunk.id) for h in index.retrieve(q, k=total, mode="bm25"))
            for q in QUERIES
        ],
        "dense": [
            sorted((round(h.score, 4), h.chunk.id) for h in index.retrieve(q, k=total, mode="dense"))
            for q in QUERIES
        ],
    }
