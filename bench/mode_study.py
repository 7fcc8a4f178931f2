"""Per-query rankings of every retrieval mode on the shared sets, saved once, so that ways of combining them can be
compared offline (issue 15: one default mode that is best everywhere).

    python bench/mode_study.py collect [--data DIR] [--out bench/out/modes.json]   # runs every mode once
    python bench/mode_study.py score [--out bench/out/modes.json]                  # prints each combination

``collect`` evaluates against the indexes ``ragkit eval`` cached (run ``bench/eval_all.py`` first): one corpus
passage per chunk, graph on. ``score`` prints recall@2/5 and nDCG@10 of each mode and combination per set, next to
the best single mode, so a combination is kept only when it is at least as good everywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "out" / "modes.json"
MODES = ("dense", "bm25", "hybrid", "graph", "multihop", "graph_hybrid")
SETS = ("hotpotqa-train100", "musique-train100", "scifact")
DEPTH = 50


def collect(data: Path, out: Path) -> None:
    from ragkit import Index
    from ragkit.config import Settings
    from ragkit.eval.cli import eval_index_dir
    from ragkit.eval.datasets import load_beir

    result: dict[str, dict] = {}
    for name in SETS:
        dataset = load_beir(data / name)
        settings = Settings().merged(chunking={"strategy": "none"})
        path = eval_index_dir(dataset, settings)
        if not (path / "manifest.json").exists():
            raise SystemExit(f"{path}: no cached index; run `ragkit eval {data / name}` first")
        ids = list(dataset.queries)
        queries = [dataset.queries[q] for q in ids]
        rankings: dict[str, dict[str, list[str]]] = {}
        with Index.open(path, settings) as index:
            for mode in MODES:
                hits = index.retrieve_many(queries, k=DEPTH, mode=mode)
                rankings[mode] = {
                    q: list(dict.fromkeys(h.chunk.doc_id for h in row)) for q, row in zip(ids, hits, strict=True)
                }
                print(f"{name}: {mode} done", file=sys.stderr)
            features = {q: query_features(index, text) for q, text in zip(ids, queries, strict=True)}
        result[name] = {
            "qrels": {q: dict(dataset.qrels[q]) for q in ids}, "rankings": rankings, "features": features,
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))


def query_features(index: Any, query: str) -> dict[str, Any]:
    """What the graph sees in a question: its linked entities (how, how well, how specific, named or not)."""
    from ragkit.pipelines.retrievers import GraphSearch

    search: GraphSearch = index.store.part("graph-search", lambda: GraphSearch(index.store))
    engine = search.engines["multihop"]
    search._local.dense = {query: []}
    evidence = engine.evidence(query)
    m = evidence.matrices
    about = np.asarray(m.about.sum(axis=0)).ravel()  # how many chunks are about each entity (titles, headings)
    return {
        "text": query,
        "links": [
            {
                "score": float(link.score), "method": str(link.method), "named": bool(m.named[link.row]),
                "specificity": float(m.specificity[link.row]), "chunks": int(m.entity_chunks[link.row]),
                "about": int(about[link.row]), "phrase": link.phrase,
            }
            for link in evidence.links
        ],
    }


def rrf(rankings: Sequence[Sequence[str]], weights: Sequence[float], constant: float = 60.0) -> list[str]:
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, doc in enumerate(ranking):
            scores[doc] = scores.get(doc, 0.0) + weight / (constant + rank + 1)
    return sorted(scores, key=lambda d: (-scores[d], d))


Combination = Callable[[dict[str, list[str]], dict[str, Any]], list[str]]


def named_links(features: dict[str, Any], min_score: float = 0.9, min_specificity: float = 0.0) -> int:
    return sum(
        1 for link in features["links"]
        if link["named"] and link["score"] >= min_score and link["specificity"] >= min_specificity
    )


def gated(graph_mode: str, fallback: str, **gate: float) -> Combination:
    """``graph_mode``'s ranking when the question names an entity of the graph, else ``fallback``'s."""
    return lambda r, f: r[graph_mode] if named_links(f, **gate) else r[fallback]


def about_links(features: dict[str, Any]) -> int:
    """Links (score >= 0.9) to entities that some passage is about (its title or a heading)."""
    return sum(1 for link in features["links"] if link["about"] > 0 and link["score"] >= 0.9)


def question(features: dict[str, Any]) -> bool:
    from ragkit.pipelines.retrievers import is_question

    return is_question(features["text"])


def gated_rrf(graph_mode: str, weight: float, **gate: float) -> Combination:
    """RRF of dense, BM25 and ``graph_mode``; the graph ranking weighs ``weight`` when the question names an
    entity of the graph, else nothing."""
    return lambda r, f: rrf(
        [r["dense"], r["bm25"], r[graph_mode]], [1, 1, weight if named_links(f, **gate) else 0.0]
    )

COMBINATIONS: dict[str, Combination] = {
    **{mode: (lambda r, f, m=mode: r[m]) for mode in MODES},
    "rrf(hybrid, graph_hybrid)": lambda r, f: rrf([r["hybrid"], r["graph_hybrid"]], [1, 1]),
    "rrf(dense, bm25, graph_hybrid)": lambda r, f: rrf([r["dense"], r["bm25"], r["graph_hybrid"]], [1, 1, 1]),
    "rrf(dense, bm25, multihop)": lambda r, f: rrf([r["dense"], r["bm25"], r["multihop"]], [1, 1, 1]),
    "rrf(dense, bm25, graph, multihop)": lambda r, f: rrf(
        [r["dense"], r["bm25"], r["graph"], r["multihop"]], [1, 1, 1, 1]
    ),
    "rrf(bm25, graph_hybrid x2)": lambda r, f: rrf([r["bm25"], r["graph_hybrid"]], [1, 2]),
    "rrf(bm25, graph, multihop)": lambda r, f: rrf([r["bm25"], r["graph"], r["multihop"]], [1, 1, 1]),
    "named ? graph_hybrid : hybrid": gated("graph_hybrid", "hybrid"),
    "named ? multihop : hybrid": gated("multihop", "hybrid"),
    "named ? graph : hybrid": gated("graph", "hybrid"),
    "named(spec>=.5) ? graph_hybrid : hybrid": gated("graph_hybrid", "hybrid", min_specificity=0.5),
    "about ? graph_hybrid : hybrid": lambda r, f: r["graph_hybrid"] if about_links(f) else r["hybrid"],
    "question ? graph_hybrid : hybrid": lambda r, f: r["graph_hybrid"] if question(f) else r["hybrid"],
    "question ? graph_hybrid : rrf(bm25, graph, multihop)": lambda r, f: (
        r["graph_hybrid"] if question(f) else rrf([r["bm25"], r["graph"], r["multihop"]], [1, 1, 1])
    ),
    "question ? graph_hybrid : rrf(bm25, graph)  [auto]": lambda r, f: (
        r["graph_hybrid"] if question(f) else rrf([r["bm25"], r["graph"]], [1, 1])
    ),
    "rrf(dense, bm25, named ? graph_hybrid x2)": gated_rrf("graph_hybrid", 2.0),
    "rrf(dense, bm25, named ? graph_hybrid x4)": gated_rrf("graph_hybrid", 4.0),
    "rrf(dense, bm25, named ? multihop x4)": gated_rrf("multihop", 4.0),
}


def score(out: Path) -> None:
    from ragkit.eval.metrics import ndcg_at_k, recall_at_k

    data = json.loads(out.read_text())
    header = f"{'combination':52}" + "".join(f"{name[:14]:>30}" for name in data)
    print(header)
    print(f"{'':52}" + "".join(f"{'R@2   R@5   nDCG@10':>30}" for _ in data))
    for label, combine in COMBINATIONS.items():
        cells = []
        for set_data in data.values():
            qrels, rankings = set_data["qrels"], set_data["rankings"]
            figures = [0.0, 0.0, 0.0]
            for q, gold in qrels.items():
                ranked = combine({mode: rankings[mode][q] for mode in rankings}, set_data["features"][q])
                figures[0] += recall_at_k(ranked, gold, 2)
                figures[1] += recall_at_k(ranked, gold, 5)
                figures[2] += ndcg_at_k(ranked, gold, 10)
            n = len(qrels)
            cells.append("  ".join(f"{f / n:.3f}" for f in figures))
        print(f"{label:52}" + "".join(f"{c:>30}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("collect", "score"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.command == "collect":
        collect(args.data, args.out)
    else:
        score(args.out)


if __name__ == "__main__":
    main()
