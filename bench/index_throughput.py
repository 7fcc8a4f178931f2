"""Indexing throughput: end-to-end chunks/s against the embedder's own forward rate, and unchanged re-indexing.

    python bench/index_throughput.py [CORPUS] [--limit N] [--graph]

CORPUS defaults to ../shared/data/scifact/corpus.jsonl. Targets (issue "Foundation"): end-to-end rate >= 0.9 x
the embedder's forward rate on the same chunks, and re-indexing unchanged >= 20x faster than the first run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ragkit import Index, Settings  # noqa: E402
from ragkit.connectors.embedders import SentenceTransformerEmbedder  # noqa: E402

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact" / "corpus.jsonl"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--limit", type=int, default=0, help="index only the first N rows (0: all)")
    parser.add_argument("--graph", action="store_true", help="include knowledge-graph extraction")
    args = parser.parse_args()
    if not args.corpus.exists():
        print(f"corpus not found: {args.corpus} (pass a file or folder)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as scratch:
        source = args.corpus
        if args.limit:
            source = Path(scratch) / "corpus.jsonl"
            with args.corpus.open() as src, source.open("w") as dst:
                for number, line in enumerate(src):
                    if number >= args.limit:
                        break
                    dst.write(line)
        embedder = SentenceTransformerEmbedder()
        embedder.embed_documents(["warm up the model"] * 64)  # the first batches after load are slow

        settings = Settings().merged(graph={"enabled": args.graph})
        index = Index.create(Path(scratch) / "index", settings, embedder=embedder)
        started = time.perf_counter()
        first = index.add([source])
        first_s = time.perf_counter() - started
        chunks = [c.embed_text for batch in index.catalog.iter_chunks() for c in batch]

        started = time.perf_counter()
        embedder.embed_documents(chunks)
        forward_s = time.perf_counter() - started

        started = time.perf_counter()
        again = index.add([source])
        again_s = time.perf_counter() - started
        assert again.unchanged == first.added and again.embedded == 0

    end_to_end = len(chunks) / first_s
    forward = len(chunks) / forward_s
    figures = {
        "corpus": str(args.corpus), "documents": first.added, "chunks": len(chunks), "graph": args.graph,
        "first_run_s": round(first_s, 2), "end_to_end_chunks_per_s": round(end_to_end, 1),
        "embedder_forward_chunks_per_s": round(forward, 1), "ratio": round(end_to_end / forward, 3),
        "ratio_target": 0.9, "reindex_unchanged_s": round(again_s, 3),
        "reindex_speedup": round(first_s / again_s, 1), "reindex_speedup_target": 20,
    }
    print(f"documents {first.added}, chunks {len(chunks)} (graph {'on' if args.graph else 'off'})")
    print(f"end to end        {end_to_end:9.1f} chunks/s  ({first_s:.1f} s)")
    print(f"embedder forward  {forward:9.1f} chunks/s  ({forward_s:.1f} s)")
    print(f"ratio             {end_to_end / forward:9.3f}       (target >= 0.9)")
    print(f"re-index unchanged {again_s:8.2f} s       {first_s / again_s:.1f}x faster (target >= 20x)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
