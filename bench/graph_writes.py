"""What writing the knowledge graph costs as it grows: ms per chunk at each size, for a corpus far larger than
spaCy could annotate here.

    .venv/bin/python bench/graph_writes.py [--chunks 1000] [--rounds 30] [--batch 512]

Annotates ``--chunks`` passages of 40-120 words of docs/*.md prose once (spaCy, in this process: the same
extractions ``ragkit index`` writes), then writes them ``--rounds`` times into one graph store on disk (SQLite,
WAL, as an index's catalog), each round under new chunk and document ids, ``--batch`` chunks per transaction as
the index pipeline commits them: each batch first deletes what its documents said (none here), then adds their
extractions, as ``GraphWriter.replace`` does. Every round's entities are the first round's, so frequent entities
gather mentions as a large corpus's do. Prints the cost per chunk of the last batch at each size and the total,
and the ratio of the last size's cost to the first's: flat (≈1) means a write does not grow with the graph.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def passages(n: int) -> list[str]:
    words = " ".join(p.read_text() for p in sorted(DOCS.glob("*.md"))).split()
    rng = random.Random(0)
    out = []
    for _ in range(n):
        size = rng.randint(40, 120)
        at = rng.randrange(0, len(words) - size)
        out.append(" ".join(words[at : at + size]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=1000, help="passages annotated once")
    parser.add_argument("--rounds", type=int, default=30, help="times they are written, under new ids")
    parser.add_argument("--batch", type=int, default=512, help="chunks per transaction")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ragkit.graph.extract import SpacyExtractor
    from ragkit.graph.settings import GraphSettings
    from ragkit.graph.store import GraphStore
    from ragkit.types import Chunk

    texts = passages(args.chunks)
    chunks = [Chunk(id=f"c{i}", doc_id=f"d{i}", text=t, start=0, end=len(t)) for i, t in enumerate(texts)]
    extractor = SpacyExtractor(GraphSettings())
    began = time.perf_counter()
    extractions = list(extractor.extract(chunks))
    extractor.close()
    print(f"# bench/graph_writes.py {' '.join(sys.argv[1:])}\n# {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{args.chunks} passages annotated in {time.perf_counter() - began:.1f} s, "
          f"{sum(len(e.mentions) for e in extractions)} mentions", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        conn = sqlite3.connect(Path(folder) / "graph.sqlite", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        store = GraphStore(conn)
        written, total, first, rows = 0, 0.0, None, []
        print("| chunks in the graph | ms per chunk (last batch) | total s |\n|---|---|---|")
        for round_ in range(args.rounds):
            renamed = [dataclasses.replace(e, chunk_id=f"{e.chunk_id}-{round_}", doc_id=f"{e.doc_id}-{round_}")
                       for e in extractions]
            for start in range(0, len(renamed), args.batch):
                part = renamed[start : start + args.batch]
                began = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                store.delete_documents([e.doc_id for e in part])
                store.add(part)
                conn.execute("COMMIT")
                spent = time.perf_counter() - began
                total += spent
                written += len(part)
                per_chunk = spent / len(part) * 1000.0
            first = per_chunk if first is None else first
            if round_ in (0, args.rounds - 1) or (round_ + 1) % max(1, args.rounds // 6) == 0:
                print(f"| {written:,} | {per_chunk:.2f} | {total:.1f} |", flush=True)
                rows.append({"chunks": written, "ms_per_chunk": per_chunk, "total_s": total})
        conn.close()
    print(f"\nlast size against the first: {per_chunk / first:.2f}x the cost per chunk")
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
