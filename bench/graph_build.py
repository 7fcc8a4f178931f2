"""Graph extraction throughput: ragkit's SpacyExtractor next to spaCy's own ``nlp.pipe`` with the same pipes.

    .venv/bin/python bench/graph_build.py [DATASET_DIR ...] [--processes 1 2] [--limit N]

Words are whitespace-separated words of the chunk texts. The target is >= 14k words/s on 2 cores with 2
processes. ragkit's figure is printed twice: with its worker processes running (a second pass of the same
extractor; the index pipeline starts them before it embeds the first batch) and from a cold start (spawning
the workers and loading spaCy in them included, as spaCy's own ``nlp.pipe(n_process=n)`` figure is). The
machine may be shared: run twice if the figures look low.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import time
from pathlib import Path

from ragkit.graph.extract import SpacyExtractor, load_pipeline
from ragkit.graph.settings import GraphSettings
from ragkit.graph.store import GraphStore
from ragkit.types import Chunk

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGET_WORDS_PER_S = 14_000  # issue "Knowledge graph": 2 cores, 2 processes


def load_chunks(dirs: list[Path], limit: int) -> list[Chunk]:
    chunks = []
    for directory in dirs:
        with open(directory / "corpus.jsonl", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                text = row["text"]
                chunks.append(Chunk(f"{directory.name}:{row['_id']}", f"{directory.name}:{row['_id']}", text, 0,
                                    len(text), {"title": row.get("title", "")}))
    return chunks[:limit] if limit else chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", type=Path,
                        default=[DATA / "musique-train100", DATA / "hotpotqa-train100"])
    parser.add_argument("--processes", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=GraphSettings().batch_size)
    parser.add_argument("--limit", type=int, default=0, help="at most this many chunks")
    parser.add_argument("--skip-spacy", action="store_true", help="do not time spaCy's own nlp.pipe")
    args = parser.parse_args()
    chunks = load_chunks(args.datasets, args.limit)
    texts = [c.text for c in chunks]
    words = sum(len(t.split()) for t in texts)
    nlp = load_pipeline()
    print(f"{len(chunks)} chunks, {words} words; pipes {nlp.pipe_names}; {os.cpu_count()} CPUs")
    list(nlp.pipe(texts[:64]))  # warm-up
    for n in args.processes:
        if not args.skip_spacy:
            start = time.perf_counter()
            for _doc in nlp.pipe(texts, batch_size=args.batch_size, n_process=n):
                pass
            spacy_rate = words / (time.perf_counter() - start)
            print(f"spaCy nlp.pipe       n_process={n}: {spacy_rate:8.0f} words/s")
        settings = GraphSettings(n_process=n, batch_size=args.batch_size)
        start = time.perf_counter()
        with SpacyExtractor(settings) as extractor:
            extractions = list(extractor.extract(chunks))
            cold = time.perf_counter() - start
            start = time.perf_counter()
            again = list(extractor.extract(chunks))  # the same extractor: its workers are up
            warm = time.perf_counter() - start
        same = "same" if again == extractions else "DIFFERENT"
        print(f"ragkit extraction    n_process={n}: {words / warm:8.0f} words/s  ({warm:.1f} s, workers running; "
              f"target >= {TARGET_WORDS_PER_S:,} with 2)")
        print(f"                     n_process={n}: {words / cold:8.0f} words/s  ({cold:.1f} s, incl. start-up; "
              f"{same} extractions)")
        conn = sqlite3.connect(":memory:")
        start = time.perf_counter()
        store = GraphStore(conn)
        store.add(extractions)
        conn.commit()
        print(f"  GraphStore.add: {time.perf_counter() - start:.1f} s; {store.stats()}")


if __name__ == "__main__":
    main()
