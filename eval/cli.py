"""``ragkit eval``: build (or reuse) an index of a dataset's corpus and score every retrieval mode on it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragkit.types import RETRIEVAL_MODES, sha1_hex

GRAPH_MODES = {"graph", "multihop", "graph_hybrid"}


def add_eval_parser(commands: Any, parents: Sequence[Any] = ()) -> None:
    sub = commands.add_parser(
        "eval",
        parents=list(parents), help="measure recall@k, hit@k, MRR, nDCG... of each retrieval mode on a dataset",
        description="DATASET is a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv), or a JSONL file "
        'of {"query": ..., "gold": [doc ids]} lines evaluated against an existing --index.',
    )
    sub.add_argument("dataset", type=Path)
    sub.add_argument("--modes", default="dense,bm25,hybrid", help="comma-separated retrieval modes")
    sub.add_argument("--k", default="1,2,5,10,20", help="comma-separated cutoffs")
    sub.add_argument("--split", default="test")
    sub.add_argument("--index", type=Path, help="index to use or build (default: a cache keyed by the settings)")
    sub.add_argument("--chunking", action="store_true", help="use the configured chunker, not one chunk per passage")
    sub.add_argument("--backend", choices=("faiss", "milvus", "chroma"), help="vector backend of a new index")
    sub.add_argument("--batch-size", type=int, default=64)
    sub.add_argument("--latency-queries", type=int, default=None, help="queries timed alone (default: all)")
    sub.add_argument("--json", action="store_true", help="print the results as JSON")
    sub.add_argument("--report", type=Path, help="write JSON, Markdown, a recall@k plot and per-query results here")


def _csv(value: str, flag: str, cast: Any = str) -> list[Any]:
    try:
        items = [cast(part.strip()) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag}: cannot read {value!r}") from None
    if not items:
        raise argparse.ArgumentTypeError(f"{flag}: give at least one value")
    return items


def _cache_root() -> Path:
    base = os.environ.get("RAGKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ragkit"
    )
    return Path(base) / "eval"


def eval_index_dir(dataset: Any, settings: Any) -> Path:
    """A cache directory for the index of ``dataset`` built with ``settings``: same inputs, same index."""
    corpus = Path(dataset.corpus_path).resolve()
    stat = corpus.stat()
    key = json.dumps(
        [str(corpus), stat.st_size, int(stat.st_mtime), settings.embedder.model,
         settings.chunking.model_dump(), settings.vectors.model_dump(), settings.graph.enabled],
        sort_keys=True,
    )
    return _cache_root() / f"{dataset.name}-{sha1_hex(key)[:12]}"


def cmd_eval(args: argparse.Namespace) -> int:
    from ragkit.config import load_settings
    from ragkit.eval.datasets import load_beir, load_gold_dataset
    from ragkit.eval.report import format_table, write_report
    from ragkit.eval.runner import run_eval
    from ragkit.index import Index

    modes = _csv(args.modes, "--modes")
    unknown = [m for m in modes if m not in RETRIEVAL_MODES]
    if unknown:
        raise argparse.ArgumentTypeError(f"--modes: unknown {unknown} (valid: {', '.join(RETRIEVAL_MODES)})")
    ks = _csv(args.k, "--k", int)
    settings = load_settings(args.config)
    needs_graph = bool(GRAPH_MODES & set(modes))
    settings = settings.merged(
        chunking={} if args.chunking else {"strategy": "none"},
        vectors={"backend": args.backend},
        graph={"enabled": needs_graph},
    )
    if args.dataset.is_file():
        if args.index is None:
            raise argparse.ArgumentTypeError("a gold JSONL file is evaluated against an existing index: pass --index")
        index = Index.open(args.index, settings)
        dataset = load_gold_dataset(args.dataset, passages=index.catalog.counts()["documents"])
    else:
        dataset = load_beir(args.dataset, split=args.split)
        path = args.index or eval_index_dir(dataset, settings)
        index = Index.create(path, settings, exist_ok=True)
        report = index.add([dataset.corpus_path])
        if report.failed:
            for error in report.errors[:10]:
                print(f"warning: {error}", file=sys.stderr)
    with index:
        result = run_eval(
            dataset, index, modes, ks, batch_size=args.batch_size,
            overfetch=3 if args.chunking else 1, latency_queries=args.latency_queries,
        )
    if args.report:
        write_report(result, args.report)
    if args.json:
        print(result.to_json())
    else:
        print(f"{dataset.name}: {result.queries} queries, {result.passages} passages")
        print(format_table(result))
        if args.report:
            print(f"report written to {args.report}")
    return 0
