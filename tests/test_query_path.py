"""The lean query path gives what the general one gives: BM25 query stems, a flat shard's merged order, the hit
look-up in one statement."""

from __future__ import annotations

import bm25s
import numpy as np
import Stemmer

from ragkit import Document, Index, Settings
from ragkit.bm25 import BM25Index
from ragkit.connectors.vectors.faiss import FaissShardedIndex
from ragkit.fusion import merge_topk
from ragkit.pipelines.query import to_hits
from ragkit.pipelines.retrievers import DenseRetriever

QUERIES = [
    "If Gallu is a demon Lilu is what?",
    "",
    "the a of and",
    "!!! ???",
    "ÜBER naïve café 東京 2024 A1 co-op don't",
    "The THE tHe running runs runner ran",
    "x y z",
]


def test_bm25_query_tokens_are_bm25s_tokenize():
    index = BM25Index(None, [], 0)
    expected = bm25s.tokenize(
        QUERIES, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False, return_ids=False
    )
    assert index._tokens(QUERIES) == [list(tokens) for tokens in expected]


def test_flat_single_shard_search_equals_the_merged_result(tmp_path):
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors[10] = vectors[20] = vectors[30]  # ties: ordered by id, as merge_topk orders them
    ids = rng.permutation(10_000)[:300].astype(np.int64)
    store = FaissShardedIndex(tmp_path / "v", dim=16, shards=1, kind="flat")
    store.add(ids, vectors, [{"doc_id": f"d{i}"} for i in range(300)])
    queries = np.vstack([vectors[30], rng.standard_normal(16).astype(np.float32)])
    for nq in (1, 2):
        for k in (1, 5, 300, 400):
            scores, found = store.search(queries[:nq], k)
            shard = store._shards[0]
            merged = merge_topk([shard._flat_search(queries[:nq], k)], k)
            np.testing.assert_array_equal(found, merged[1])
            np.testing.assert_array_equal(scores, merged[0])
    tied = store.search(vectors[30][None, :], 3)[1][0]
    assert list(tied) == sorted(ids[[10, 20, 30]].tolist())
    store.add(np.array([99_999], dtype=np.int64), vectors[30][None, :], [{"doc_id": "new"}])  # views are renewed
    assert 99_999 in store.search(vectors[30][None, :], 4)[1][0]
    store.delete(np.array([99_999], dtype=np.int64))
    assert 99_999 not in store.search(vectors[30][None, :], 4)[1][0]


def test_hits_carry_chunk_and_source_from_one_lookup(tmp_path, hashing):
    settings = Settings().merged(chunking={"strategy": "none"}, graph={"enabled": False})
    with Index.create(tmp_path / "idx", settings, embedder=hashing) as index:
        index.add_documents([
            Document(id="a", text="volcano lava ash", source="a.txt", title="Volcano"),
            Document(id="b", text="sourdough bread starter", source="b.txt"),
        ])
        found = index.catalog.chunks_with_sources(
            [c.id for batch in index.catalog.iter_chunks() for c in batch] + ["missing"]
        )
        assert sorted((chunk.doc_id, source, chunk.meta.get("title")) for chunk, source in found.values()) == [
            ("a", "a.txt", "Volcano"), ("b", "b.txt", None)
        ]
        hits = index.retrieve("volcano lava", k=2, mode="hybrid")
        assert hits[0].chunk.doc_id == "a" and hits[0].source == "a.txt" and hits[0].chunk.meta["title"] == "Volcano"
        assert index.catalog.chunks_with_sources([]) == {}


def _statements(index: Index) -> list[str]:
    """Every statement the index's catalog reads from now on (its read-only connection's trace)."""
    seen: list[str] = []
    index.catalog.connection.set_trace_callback(seen.append)
    return seen


def test_a_dense_query_reads_the_catalog_once_and_still_sees_other_writers(tmp_path, hashing):
    settings = Settings().merged(chunking={"strategy": "none"}, graph={"enabled": False})
    docs = [Document(id=f"d{i}", text=f"note {i} about rivers and {word}", source=f"{i}.txt")
            for i, word in enumerate(["ferries", "bridges", "otters", "locks"])]
    with Index.create(tmp_path / "idx", settings, embedder=hashing) as writer:
        writer.add_documents(docs)
    with Index.open(tmp_path / "idx", embedder=hashing) as reader, Index.open(
        tmp_path / "idx", embedder=hashing
    ) as other:
        first = reader.retrieve("rivers and otters", k=3, mode="dense")
        seen = _statements(reader)
        again = reader.retrieve("rivers and otters", k=3, mode="dense")
        assert len(seen) == 1, seen  # chunks, sources and the generation in one statement
        assert [(h.chunk.id, h.score, h.source) for h in again] == [(h.chunk.id, h.score, h.source) for h in first]
        general = to_hits(reader.store, DenseRetriever(reader.store).search(["rivers and otters"], 3), "dense")[0]
        assert general == first  # the ranking as chunk ids, then hits looked up by chunk id
        assert first[0].chunk.doc_id == "d2" and first[0].retriever == "dense"

        other.add_documents([Document(id="new", text="otters otters rivers and otters", source="new.txt")])
        assert reader.retrieve("rivers and otters", k=1, mode="dense")[0].chunk.doc_id == "new"  # caught up
        other.delete("new")
        other.delete("d2")
        after = reader.retrieve("rivers and otters", k=4, mode="dense")
        assert {h.chunk.doc_id for h in after} == {"d0", "d1", "d3"}
        vectors = reader.embedder.embed_queries(["rivers and otters"])
        assert [h.chunk.id for h in reader.search_by_vector(vectors, k=4)[0]] == [h.chunk.id for h in after]
