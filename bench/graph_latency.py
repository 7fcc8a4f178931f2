"""Query latency of the graph modes on a large synthetic graph (default 100k chunks).

    .venv/bin/python bench/graph_latency.py [--chunks 100000] [--queries 200] [--modes graph multihop graph_hybrid]
                                            [--dense flat|hnsw] [--db FILE] [--stages]

Extracting 100k real passages would take hours on 2 cores, so the graph is synthetic with the shape measured on
MuSiQue: per chunk one title entity, ~8 named-entity and ~12 noun-phrase mentions drawn from vocabularies with a
Zipf head and a long tail, ~14 parsed relations and ~10 co-occurrences among them. Everything at query time is
real: the spaCy parse of the question, MiniLM embeddings of the question and its named phrases (ragkit's
embedder), an exact dense search over 100k 384-d vectors (a flat FAISS index, ragkit's default vector store),
entity linking against entity-name vectors, and the walk.
Questions name entities of the graph ("When did Talvor Menske's mother die?"). ``--stages`` also prints, per
mode, the p50 of each stage of a query: embedding it, the vector search, its spaCy parse, PageRank.
"""

from __future__ import annotations

import argparse
import functools
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ragkit.connectors.embedders.sentence_transformers import SentenceTransformerEmbedder
from ragkit.connectors.vectors.faiss import FaissShardedIndex
from ragkit.graph import retrieve
from ragkit.graph.model import ChunkExtraction, EntityMention, RelationMention
from ragkit.graph.retrieve import GraphRetriever, HybridGraphRetriever, MultiHopRetriever
from ragkit.graph.settings import GraphSettings
from ragkit.graph.store import GraphStore

SYLLABLES = "ka lo mer vin tal or sk dra bel qu en ri sto va nel gar mo thi ul pe ras dun fen wo ly".split()
TARGET_P50_MS = 50.0  # issue "Knowledge graph": graph-mode p50 on an index of 100k chunks
PHRASE_WORDS = (
    "river county album song film band station journal treaty league church school party team mother "
    "president author painter city country province language university company label studio army"
).split()
QUESTIONS = [
    "When did {}'s mother die?",
    "Which country was {} born in?",
    "Who founded the company that published {}?",
    "What is the capital of the province where {} is located?",
]


def entity_name(index: int, words: int = 2) -> str:
    """A unique pronounceable name per index ("Kalomer Talsk"), its syllables the index's digits."""
    parts = []
    for _ in range(words):
        syllables = []
        for _ in range(3):
            index, digit = divmod(index, len(SYLLABLES))
            syllables.append(SYLLABLES[digit])
        parts.append("".join(syllables).capitalize())
    return " ".join(parts)


def phrase_name(index: int) -> str:
    return f"{entity_name(index // len(PHRASE_WORDS), 1).lower()} {PHRASE_WORDS[index % len(PHRASE_WORDS)]}"


def draw(rng: np.random.Generator, shape: tuple[int, int], vocabulary: int) -> np.ndarray:
    """Entity indices: 15% from a Zipf head (hubs such as "United States"), the rest from a long tail 30 times
    the number of chunks; as on MuSiQue, most entities end up in one chunk and the largest hub in ~25% of them."""
    head = (rng.zipf(1.3, size=shape) - 1) % vocabulary
    tail = rng.integers(0, vocabulary, size=shape)
    return np.where(rng.uniform(size=shape) < 0.15, head, tail)


def build(store: GraphStore, n_chunks: int, rng: np.random.Generator) -> None:
    """Adds ``n_chunks`` synthetic chunk extractions."""
    named_draw = draw(rng, (n_chunks, 8), 30 * n_chunks)
    phrase_draw = draw(rng, (n_chunks, 12), 30 * n_chunks)
    batch: list[ChunkExtraction] = []
    for c in range(n_chunks):
        title = entity_name(c * 7919 % (30 * n_chunks))
        mentions = [EntityMention(title.lower(), title, "TITLE", "title")]
        for i in named_draw[c]:
            surface = entity_name(int(i))
            mentions.append(EntityMention(surface.lower(), surface, "PERSON", "entity", 0, 1, 0))
        for i in phrase_draw[c]:
            surface = phrase_name(int(i))
            mentions.append(EntityMention(surface, surface, "NOUN", "noun_phrase", 0, 1, 0))
        keys = list(dict.fromkeys(m.key for m in mentions))
        pairs = rng.integers(0, len(keys), size=(24, 2))
        relations = [
            RelationMention(keys[a], keys[b], "was" if j < 14 else "co-occurs with", "svo" if j < 14 else "cooccur")
            for j, (a, b) in enumerate(pairs)
            if a != b
        ]
        batch.append(ChunkExtraction(f"c{c}", f"d{c}", tuple(mentions), tuple(dict.fromkeys(relations))))
        if len(batch) == 5000:
            store.add(batch)
            batch = []
    store.add(batch)


def timed(record: dict[str, list[float]], stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, adding the seconds of each call to ``record[stage]``."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            record.setdefault(stage, []).append(time.perf_counter() - start)

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--modes", nargs="*", default=["graph", "multihop", "graph_hybrid"])
    parser.add_argument("--dense", choices=["flat", "hnsw"], default="flat",
                        help="FAISS index of the dense search that seeds the walk (flat: ragkit's default)")
    parser.add_argument("--db", default=":memory:", help="SQLite file for the synthetic graph (reused if present)")
    parser.add_argument("--stages", action="store_true", help="also print each stage's p50 per mode")
    args = parser.parse_args()
    embedder = SentenceTransformerEmbedder(device="cpu")  # ragkit's default embedder, as an index uses it
    rng = np.random.default_rng(0)
    conn = sqlite3.connect(args.db)
    store = GraphStore(conn)
    start = time.perf_counter()
    if store.stats()["chunks"] != args.chunks:
        store.delete_documents([f"d{c}" for c in range(args.chunks)])
        build(store, args.chunks, rng)
        conn.commit()
    print(f"synthetic graph: {store.stats()} in {time.perf_counter() - start:.0f} s")

    def random_vectors(names: list[str]) -> np.ndarray:  # entity-name vectors: random, embedding 1M names is slow
        vectors = rng.standard_normal((len(names), 384)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    start = time.perf_counter()
    store.embed_names(embedder.name, random_vectors)
    conn.commit()
    doc_vectors = random_vectors([""] * args.chunks)
    chunk_ids = [f"c{i}" for i in range(args.chunks)]
    print(f"name and chunk vectors stored in {time.perf_counter() - start:.0f} s")

    store_dir = Path(tempfile.mkdtemp(prefix="ragkit-latency-"))  # ragkit's FAISS store, defaults of each kind
    vector_store = FaissShardedIndex(store_dir, doc_vectors.shape[1], shards=1, kind=args.dense)
    vector_store.add(np.arange(args.chunks, dtype=np.int64), doc_vectors, [{}] * args.chunks)

    stages: dict[str, list[float]] = {}
    embed, search = embedder.embed_query, vector_store.search
    if args.stages:
        embed, search = timed(stages, "embed", embed), timed(stages, "vector search", search)
        retrieve.query_phrases = timed(stages, "spaCy parse", retrieve.query_phrases)
        retrieve.sparse_personalized_pagerank = timed(stages, "PageRank", retrieve.sparse_personalized_pagerank)

    def dense(query: str, k: int) -> list[tuple[str, float]]:
        scores, rows = search(embed(query)[None, :], k)
        return [(chunk_ids[i], float(s)) for i, s in zip(rows[0], scores[0], strict=True) if i >= 0]

    titles = [entity_name(c * 7919 % (30 * args.chunks)) for c in rng.integers(0, args.chunks, size=args.queries)]
    questions = [QUESTIONS[i % len(QUESTIONS)].format(title) for i, title in enumerate(titles)]
    settings = GraphSettings()
    kinds = {"graph": GraphRetriever, "multihop": MultiHopRetriever, "graph_hybrid": HybridGraphRetriever}
    dense_label = f"dense search (embed + {args.dense} 100k)"
    timings: dict[str, list[float]] = {dense_label: []}
    for question in questions[:50]:
        start = time.perf_counter()
        dense(question, settings.dense_candidates)
        timings[dense_label].append(time.perf_counter() - start)
    first = None
    for mode in args.modes:
        retriever = kinds[mode](store, embedder, dense, settings)
        if first is not None:  # as in an index: the modes share one compiled graph and what derives from it
            retriever._cache, retriever._derived, retriever._lock, retriever._nlp = (
                first._cache, first._derived, first._lock, first.nlp
            )
        first = first or retriever
        start = time.perf_counter()
        retriever.retrieve_chunks(questions[0], 5)
        print(f"{mode}: first query (compiles matrices, loads vectors) {time.perf_counter() - start:.1f} s")
        timings[mode] = []
        stages.clear()
        for question in questions:
            start = time.perf_counter()
            retriever.retrieve_chunks(question, 5)
            timings[mode].append(time.perf_counter() - start)
        if args.stages:
            parts = ", ".join(f"{stage} {1000 * statistics.median(v):.1f}" for stage, v in stages.items())
            print(f"{mode} stages, p50 ms: {parts}")
    for what, values in timings.items():
        values_ms = sorted(1000 * v for v in values)
        p90, p99 = (values_ms[int(q * (len(values_ms) - 1))] for q in (0.9, 0.99))
        p50 = statistics.median(values_ms)
        target = "" if what.startswith("dense") else f"   (target p50 <= {TARGET_P50_MS:.0f} ms)"
        print(f"{what:36s} p50 {p50:6.1f} ms   p90 {p90:6.1f} ms   p99 {p99:6.1f} ms{target}")


if __name__ == "__main__":
    main()
