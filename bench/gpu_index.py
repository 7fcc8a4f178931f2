"""`ragkit index` end to end on a GPU machine: chunks/s with the graph off and on, next to the embedding alone.

    python bench/gpu_index.py [--chunks 100000] [--workdir DIR] [--n-process N] [--runs embed,off,on]

Writes a JSONL corpus of ``--chunks`` passages of 40-120 words drawn from docs/*.md (one chunk each: the same
shape as bench/gpu.py's chunks), then runs ``ragkit index CORPUS --json`` on it in a fresh process twice, each into
a new index: with ``--no-graph``, and with the graph (spaCy in ``--n-process`` worker processes, default one per
core). Each run is timed as a user sees it (the whole command: interpreter start, imports, model load with its
warm-up, indexing, commit) and, from inside the same process, stage by stage: model load, chunk, embed (of which
the embedder's own ``embed_documents``), graph extraction, catalog writes, the final commit (vector shards and
BM25), and the rest (loading and parsing the file, hashing, starting the graph's workers). First, in a fresh
process of its own, the embedder alone on the same chunk texts (one call, after its load): the embedding-only
figure.

The stage timers wrap the index pipeline's functions from outside (this script only); they add one clock read
per batch of 512 chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DOCS = Path(__file__).resolve().parents[1] / "docs"


def write_corpus(path: Path, n: int) -> None:
    """``n`` BEIR-style rows (``_id``, ``title``, ``text``) of 40-120 words of the docs' prose."""
    words = " ".join(p.read_text() for p in sorted(DOCS.glob("*.md"))).split()
    rng = random.Random(0)
    with path.open("w") as out:
        for i in range(n):
            size = rng.randint(40, 120)
            at = rng.randrange(0, len(words) - size)
            row = {"_id": f"p{i}", "title": "", "text": " ".join(words[at : at + size])}
            out.write(json.dumps(row) + "\n")


def timed(totals: dict[str, float], stage: str, owner: Any, name: str) -> None:
    """Replaces ``owner.name`` by a wrapper that adds its wall time to ``totals[stage]``."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[stage] += time.perf_counter() - started

    setattr(owner, name, wrapper)


def run_one(corpus: Path, index_dir: Path, config: Path, graph: bool) -> int:
    """One ``ragkit index`` run through the CLI's own entry point, with stage timers; prints one JSON line."""
    from ragkit import cli
    from ragkit.connectors.embedders import sentence_transformers
    from ragkit.index import Index
    from ragkit.pipelines import graph_indexing, indexing
    from ragkit.store import IndexStore, IndexWriter

    totals: dict[str, float] = defaultdict(float)
    timed(totals, "model load (incl. warm-up)", sentence_transformers.SentenceTransformerEmbedder, "__init__")
    timed(totals, "embed (embedder alone)", sentence_transformers.SentenceTransformerEmbedder, "embed_documents")
    timed(totals, "embed (with the embedding cache)", IndexStore, "embed")
    timed(totals, "graph workers start", graph_indexing.GraphWriter, "__init__")
    timed(totals, "graph extraction (handing a batch to the workers)", graph_indexing.GraphWriter, "start")
    timed(totals, "graph extraction (waiting for and assembling a batch)", graph_indexing.GraphWriter, "extract")
    timed(totals, "catalog writes", indexing._BatchWriter, "_write")
    timed(totals, "commit (vectors, BM25)", IndexWriter, "commit")
    timed(totals, "index.add total", Index, "add")
    make_chunker = indexing._make_chunker

    def timed_chunker(store: Any, tokens: Any = None) -> Any:
        chunker = make_chunker(store, tokens)
        timed(totals, "chunk", chunker, "split")
        return chunker

    timed(totals, "chunk (tokenizing ahead)", indexing._BatchWriter, "prepare")

    indexing._make_chunker = timed_chunker  # type: ignore[assignment]
    started = time.perf_counter()

    def report_now() -> None:  # a run cut short by a time limit still names its slowest stage
        while True:
            time.sleep(30)
            elapsed = round(time.perf_counter() - started)
            print(f"STAGES-SO-FAR {elapsed} s " + json.dumps({k: round(v, 1) for k, v in totals.items()}), flush=True)

    threading.Thread(target=report_now, daemon=True).start()
    args = ["index", str(corpus), "--index", str(index_dir), "--json", "--config", str(config)]
    if not graph:
        args.append("--no-graph")
    started = time.perf_counter()
    code = cli.main(args)
    totals["cli.main total"] = time.perf_counter() - started
    print("STAGES " + json.dumps({k: round(v, 3) for k, v in totals.items()}), flush=True)
    return code


def embed_only(corpus: Path) -> int:
    """The embedder alone on the corpus's texts, in this (fresh) process; prints one JSON line."""
    from ragkit.connectors.embedders import SentenceTransformerEmbedder

    texts = [json.loads(line)["text"] for line in corpus.open()]
    started = time.perf_counter()
    embedder = SentenceTransformerEmbedder()
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    embedder.embed_documents(texts)
    embed_s = time.perf_counter() - started
    print("EMBED " + json.dumps({
        "chunks": len(texts), "load_s": round(load_s, 3), "warm_up_s": round(embedder.warm_up_seconds, 3),
        "embed_s": round(embed_s, 3), "chunks_per_s": round(len(texts) / embed_s),
        "device": getattr(embedder, "device", "?"),
    }), flush=True)
    return 0


def child(*args: str) -> tuple[dict[str, Any], float, str]:
    """Runs this script with ``args`` in a fresh interpreter: its tagged JSON line, wall seconds and stdout. Its
    progress lines (``STAGES-SO-FAR``) are printed as they come."""
    started = time.perf_counter()
    with subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("STAGES-SO-FAR"):
                print("  " + line.rstrip(), flush=True)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"child {args} failed with code {process.returncode}")
    found: dict[str, Any] = {}
    for line in lines:
        tag, _, rest = line.partition(" ")
        if tag in ("STAGES", "EMBED"):
            found[tag] = json.loads(rest)
        elif line.startswith("{"):
            found["REPORT"] = json.loads(line)
    return found, wall, "".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, help="where the corpus and indexes go (default: a temporary dir)")
    parser.add_argument("--n-process", type=int, default=os.cpu_count() or 2, help="spaCy worker processes")
    parser.add_argument("--runs", default="embed,off,on",
                        help="which runs, comma-separated: embed (the embedder alone), off, on (the graph); "
                        "off and on run in the order given")
    parser.add_argument("--run-one", nargs=4, metavar=("CORPUS", "INDEX", "CONFIG", "GRAPH"), help=argparse.SUPPRESS)
    parser.add_argument("--embed-only", type=Path, metavar="CORPUS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        corpus, index_dir, config, graph = args.run_one
        return run_one(Path(corpus), Path(index_dir), Path(config), graph == "on")
    if args.embed_only:
        return embed_only(args.embed_only)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ragkit-gpu-index-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    started = time.perf_counter()
    write_corpus(corpus, args.chunks)
    print(f"corpus: {args.chunks:,} passages in {corpus} ({time.perf_counter() - started:.1f} s)", flush=True)
    config = work / "ragkit.toml"
    config.write_text(f"[graph]\nenabled = true\n[graph.options]\nn_process = {args.n_process}\n")

    figures: dict[str, Any] = {"chunks_requested": args.chunks, "n_process": args.n_process, "cpus": os.cpu_count()}
    runs = [run.strip() for run in args.runs.split(",")]
    e: dict[str, Any] | None = None
    if "embed" in runs:
        found, wall, _ = child("--embed-only", str(corpus))
        figures["embedding_only"] = e = found["EMBED"]
        print(f"embedding only: {e['chunks']:,} chunks in {e['embed_s']} s = {e['chunks_per_s']:,} chunks/s "
              f"(load {e['load_s']} s, of which warm-up {e['warm_up_s']} s)", flush=True)
    graphs = [graph for graph in runs if graph in ("off", "on")]  # in the order given
    for graph in graphs:
        found, wall, _ = child("--run-one", str(corpus), str(work / f"index-graph-{graph}"), str(config), graph)
        report, stages = found["REPORT"], found["STAGES"]
        chunks = report["chunks"]
        figures[f"graph_{graph}"] = {
            "chunks": chunks, "documents": report.get("documents"), "failed": report["failed"],
            "command_wall_s": round(wall, 2), "command_chunks_per_s": round(chunks / wall),
            "index_add_s": report["seconds"], "index_add_chunks_per_s": round(chunks / report["seconds"]),
            "stages_s": stages,
        }
        print(f"graph {graph}: {chunks:,} chunks; whole command {wall:.1f} s = {chunks / wall:,.0f} chunks/s; "
              f"Index.add {report['seconds']:.1f} s = {chunks / report['seconds']:,.0f} chunks/s", flush=True)
        print("  stages (s): " + ", ".join(f"{k} {v}" for k, v in stages.items()), flush=True)
    print("\n| run | chunks/s (whole command) | chunks/s (Index.add) | slowest stage |")
    print("|---|---|---|---|")
    for graph in graphs:
        f = figures[f"graph_{graph}"]
        stages = {k: v for k, v in f["stages_s"].items() if "total" not in k and k != "embed (embedder alone)"}
        slowest = max(stages, key=stages.get)
        f["slowest_stage"] = slowest
        print(f"| graph {graph} | {f['command_chunks_per_s']:,} | {f['index_add_chunks_per_s']:,} | "
              f"{slowest} ({stages[slowest]:.1f} s) |")
    if e is not None:
        print(f"| embedding only | {e['chunks_per_s']:,} (embed call) | | |")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
