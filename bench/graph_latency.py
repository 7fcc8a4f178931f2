"""Query latency of the graph modes on a large synthetic graph (default 100k chunks).

    .venv/bin/python bench/graph_latency.py [--chunks 100000] [--queries 200]
                                            [--modes graph multihop graph_hybrid auto] [--dense flat|hnsw]
                                            [--db FILE] [--stages] [--residual-weight W]

Extracting 100k real passages would take hours on 2 cores, so the graph is synthetic with the shape measured on
MuSiQue: per chunk one title entity, ~8 named-entity and ~12 noun-phrase mentions drawn from vocabularies with a
Zipf head and a long tail, ~14 parsed relations and ~10 co-occurrences among them. Everything at query time is
real: the spaCy parse of the question, MiniLM embeddings of the question and its named phrases (ragkit's
embedder), an exact dense search over 100k 384-d vectors (a flat FAISS index, ragkit's default vector store),
entity linking against entity-name vectors, and the walk.
Questions name entities of the graph ("When did Talvor Menske's mother die?"). ``--stages`` also prints, per
mode, the p50 of each stage of a query: embedding it, the vector search, its spaCy parse, PageRank.

``auto`` (the default mode) is ragkit's own ``AutoRetriever`` (routing by ``is_question``, BM25 through
``BM25Retriever``, the reciprocal rank fusion and the explanations), over a stand-in for the parts of an
``IndexStore`` it reads: the settings, a BM25 index that ``ragkit.bm25`` builds once from synthetic chunk texts
(each chunk's title, entity names and noun phrases, read back from the graph), and the graph search. Its queries
are the questions plus as many statements and keyword queries about the same entities ("Talvor Menske
discography"); it prints the p50 of each route beside the mode's.
"""

from __future__ import annotations

import argparse
import functools
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ragkit.bm25 import BM25Index
from ragkit.config import Settings
from ragkit.connectors.embedders import make_embedder
from ragkit.connectors.vectors.faiss import FaissShardedIndex
from ragkit.graph import retrieve
from ragkit.graph.model import ChunkExtraction, EntityMention, RelationMention
from ragkit.graph.retrieve import GraphRetriever, HybridGraphRetriever, MultiHopRetriever
from ragkit.graph.settings import GraphSettings
from ragkit.graph.store import GraphStore
from ragkit.pipelines.retrievers import AutoRetriever, is_question, order_by_unmatched_words
from ragkit.protocols import Embedder, Scored
from ragkit.types import Chunk

if TYPE_CHECKING:
    from ragkit.store import IndexStore

SYLLABLES = "ka lo mer vin tal or sk dra bel qu en ri sto va nel gar mo thi ul pe ras dun fen wo ly".split()
TARGET_P50_MS = 50.0  # graph-mode p50 on 100k chunks (issue "Knowledge graph"); the default mode's (issue 15)
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
STATEMENTS = [  # auto's other route: claims and keyword searches; the common words have long BM25 posting lists
    "{} discography",
    "{} founded in the 1990s",
    "{} album recorded with the band",
    "river and county history around {}",
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


DenseSearch = Callable[[str, int], list[tuple[str, float]]]


def synthetic_chunks(conn: sqlite3.Connection, chunk_ids: list[str]) -> list[Chunk]:
    """The chunks as an index would hold them for BM25: the title entity as the document title, the text the
    chunk's entity names and noun phrases in the order they were mentioned (read back from the graph, so a
    cached graph gives the same texts as a fresh one)."""
    titles: dict[str, str] = {}
    words: dict[str, list[str]] = {}
    documents: dict[str, str] = {}
    for chunk_id, doc_id, kind, surface in conn.execute(
        "SELECT chunk_id, doc_id, kind, surface FROM graph_mentions ORDER BY rowid"
    ):
        documents[chunk_id] = doc_id
        if kind == "title":
            titles[chunk_id] = surface
        else:
            words.setdefault(chunk_id, []).append(surface)
    chunks = []
    for chunk_id in chunk_ids:
        text = ", ".join(words.get(chunk_id, [])) + "."
        chunks.append(Chunk(chunk_id, documents.get(chunk_id, chunk_id), text, 0, len(text),
                            {"title": titles.get(chunk_id, "")}))
    return chunks


class GraphSearchMirror:
    """``GraphSearch.search`` (pipelines/retrievers.py) without its ``where`` filter, over the bench's graph.

    ``GraphSearch`` builds its engines from an ``IndexStore``; this one builds the same two that ``auto`` uses
    (``graph`` and ``graph_hybrid``) over the synthetic graph, sharing its compiled matrices with ``shared``. As
    there, one dense search per batch of queries, ``dense_candidates`` deep, feeds the engines' walks.
    """

    def __init__(
        self, store: GraphStore, embedder: Embedder, dense: DenseSearch, settings: GraphSettings,
        shared: GraphRetriever | MultiHopRetriever | None,
        keyword: BM25Index | None = None, texts: Mapping[str, str] | None = None,
    ) -> None:
        self.dense, self.settings = dense, settings
        self.keyword, self.texts = keyword, texts or {}  # BM25 and chunk texts: graph_hybrid's unmatched words
        self._batch: dict[str, list[tuple[str, float]]] = {}
        pagerank = GraphRetriever(store, embedder, self._lookup, settings, shared=shared)
        hybrid = HybridGraphRetriever(store, embedder, self._lookup, settings, shared=shared or pagerank)
        self.engines: dict[str, GraphRetriever | MultiHopRetriever] = {"graph": pagerank, "graph_hybrid": hybrid}

    def _lookup(self, query: str, k: int) -> list[tuple[str, float]]:
        return self._batch.get(query, [])[:k]

    def search(self, mode: str, queries: list[str], k: int, where: Any = None) -> list[list[Scored]]:
        if where:
            raise ValueError("the bench's graph search has no where filter")
        engine = self.engines[mode]
        depth = max(self.settings.dense_candidates, k)
        self._batch = {query: self.dense(query, depth) for query in queries}
        residual = mode == "graph_hybrid" and self.settings.fusion_residual_weight > 0 and self.keyword is not None
        pool = max(k, self.settings.fusion_residual_depth) if residual else k
        try:
            results = []
            for query in queries:
                found = engine.retrieve_chunks(query, pool)
                if residual:
                    assert self.keyword is not None
                    found = order_by_unmatched_words(
                        query, found, self.keyword, self._texts, self.settings.fusion_residual_weight,
                        self.settings.fusion_residual_depth,
                    )
                results.append(found[:k])
            return results
        finally:
            self._batch = {}

    def _texts(self, chunk_ids: Sequence[str]) -> dict[str, str]:
        return {cid: self.texts[cid] for cid in chunk_ids if cid in self.texts}


class AutoStore:
    """The parts of an ``IndexStore`` that ``AutoRetriever`` reads (``settings``, ``manifest.graph``, ``bm25()``
    and ``part("graph-search", ...)``), over the bench's graph: an index of 100k real chunks would take hours of
    spaCy extraction on 2 cores, so the product's retriever runs on a stand-in of its store."""

    def __init__(self, keyword: BM25Index, graph: GraphSearchMirror) -> None:
        self.settings = Settings()  # ragkit's defaults: retrieval.candidates 50, rrf_constant 60
        self.manifest = SimpleNamespace(graph=True)
        self.keyword, self.graph = keyword, graph

    def bm25(self) -> BM25Index:
        return self.keyword

    def part(self, key: str, build: Callable[[], Any]) -> Any:
        if key != "graph-search":
            raise KeyError(f"the bench's stand-in store has no part {key!r}")
        return self.graph


def auto_top5(auto: AutoRetriever, query: str) -> list[Scored]:
    return auto.search([query], 5)[0]


def engine_top5(engine: GraphRetriever | MultiHopRetriever, query: str) -> list[Scored]:
    return [(cid, score, explain) for cid, score, explain in engine.retrieve_chunks(query, 5)]


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p90 and p99 in ms of durations in seconds."""
    values_ms = sorted(1000 * v for v in values)
    p90, p99 = (values_ms[int(q * (len(values_ms) - 1))] for q in (0.9, 0.99))
    return statistics.median(values_ms), p90, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--modes", nargs="*", default=["graph", "multihop", "graph_hybrid"],
                        choices=["graph", "multihop", "graph_hybrid", "auto"])
    parser.add_argument("--dense", choices=["flat", "hnsw"], default="flat",
                        help="FAISS index of the dense search that seeds the walk (flat: ragkit's default)")
    parser.add_argument("--db", default=":memory:", help="SQLite file for the synthetic graph (reused if present)")
    parser.add_argument("--stages", action="store_true", help="also print each stage's p50 per mode")
    parser.add_argument("--residual-weight", type=float, default=GraphSettings().fusion_residual_weight,
                        help="graph_hybrid's unmatched-words weight in auto's question route (0: the step off)")
    args = parser.parse_args()
    defaults = Settings().embedder  # ragkit's default embedder on this CPU, as a new index gets it (ONNX Runtime)
    embedder = make_embedder(defaults.model, device="cpu", backend=defaults.backend, precision=defaults.precision)
    print(f"embedder: {embedder.name}")
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

    picked = rng.integers(0, args.chunks, size=args.queries)  # the chunk whose title entity each query names
    titles = [entity_name(int(c) * 7919 % (30 * args.chunks)) for c in picked]
    questions = [QUESTIONS[i % len(QUESTIONS)].format(title) for i, title in enumerate(titles)]
    settings = GraphSettings(fusion_residual_weight=args.residual_weight)
    kinds: dict[str, type[GraphRetriever] | type[MultiHopRetriever]] = {
        "graph": GraphRetriever, "multihop": MultiHopRetriever, "graph_hybrid": HybridGraphRetriever
    }
    dense_label = f"dense search (embed + {args.dense} {args.chunks // 1000}k)"
    timings: dict[str, list[float]] = {dense_label: []}
    for question in questions[:50]:
        start = time.perf_counter()
        dense(question, settings.dense_candidates)
        timings[dense_label].append(time.perf_counter() - start)

    # auto: the questions and as many statements about the same entities, interleaved so that both routes see the
    # same machine; BM25 as an index builds it (once, from the chunks), timed alone as dense search is above
    statements = [STATEMENTS[i % len(STATEMENTS)].format(title) for i, title in enumerate(titles)]
    auto_queries = [query for pair in zip(questions, statements, strict=True) for query in pair]
    wanted: dict[str, str] = {}  # query -> the chunk titled with the entity it names
    for c, question, statement in zip(picked, questions, statements, strict=True):
        wanted[question] = wanted[statement] = f"c{c}"
    keyword_index = None
    chunk_texts: dict[str, str] = {}
    if "auto" in args.modes:
        start = time.perf_counter()
        chunks = synthetic_chunks(conn, chunk_ids)
        chunk_texts = {chunk.id: chunk.text for chunk in chunks}
        keyword_index = BM25Index.build(chunks, generation=0)
        print(f"BM25 index of {len(keyword_index)} synthetic chunk texts built in {time.perf_counter() - start:.0f} s")
        bm25_label = f"BM25 search alone ({len(keyword_index) // 1000}k chunks)"
        timings[bm25_label] = []
        for statement in statements[:50]:
            start = time.perf_counter()
            keyword_index.search([statement], Settings().retrieval.candidates)
            timings[bm25_label].append(time.perf_counter() - start)

    first: GraphRetriever | MultiHopRetriever | None = None
    routes: dict[str, list[float]] = {}
    for mode in args.modes:
        queries = questions
        if mode == "auto":
            assert keyword_index is not None
            graph_search = GraphSearchMirror(
                store, embedder, dense, settings, shared=first, keyword=keyword_index, texts=chunk_texts
            )
            first = first or graph_search.engines["graph"]
            # the product's retriever on a stand-in of the store it reads (see AutoStore)
            auto = AutoRetriever(cast("IndexStore", AutoStore(keyword_index, graph_search)))
            run: Callable[[str], list[Scored]] = functools.partial(auto_top5, auto)
            queries = auto_queries
        else:
            # as in an index: the modes share one compiled graph and what derives from it
            engine = kinds[mode](store, embedder, dense, settings, shared=first)
            first = first or engine
            run = functools.partial(engine_top5, engine)
        start = time.perf_counter()
        for query in dict.fromkeys(queries[:2]):  # auto: a question and a statement, one per route
            run(query)
        print(f"{mode}: first queries (compile matrices, load vectors) {time.perf_counter() - start:.1f} s")
        timings[mode] = []
        stages.clear()
        asked: dict[str, int] = {}
        found: dict[str, int] = {}  # queries whose top 5 holds the chunk titled with the entity they name
        for query in queries:
            start = time.perf_counter()
            hits = run(query)
            elapsed = time.perf_counter() - start
            timings[mode].append(elapsed)
            route = "questions" if is_question(query) else "statements"
            if mode == "auto":
                explained = {str((explain or {}).get("route")) for _, _, explain in hits}
                if explained - {route[:-1]}:
                    raise AssertionError(f"auto sent {query!r} ({route}) to {explained}")
                routes.setdefault(route, []).append(elapsed)
            asked[route] = asked.get(route, 0) + 1
            found[route] = found.get(route, 0) + any(cid == wanted[query] for cid, _, _ in hits)
        shares = ", ".join(f"{found[route]}/{n} {route}" for route, n in asked.items())
        print(f"{mode}: the named entity's own chunk in the top 5 for {shares}")
        if args.stages:
            parts = ", ".join(f"{stage} {1000 * statistics.median(v):.1f}" for stage, v in stages.items())
            print(f"{mode} stages, p50 ms: {parts}")
    route_labels = {"questions": "  auto: questions -> graph_hybrid", "statements": "  auto: statements -> BM25+graph"}
    for what, values in [*timings.items(), *((route_labels[r], v) for r, v in routes.items())]:
        p50, p90, p99 = percentiles(values)
        target = f"   (target p50 <= {TARGET_P50_MS:.0f} ms)" if what in args.modes else ""
        print(f"{what:36s} p50 {p50:6.1f} ms   p90 {p90:6.1f} ms   p99 {p99:6.1f} ms   n {len(values):3d}{target}")


if __name__ == "__main__":
    main()
