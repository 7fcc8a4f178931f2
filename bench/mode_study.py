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
        result[name] = {"qrels": {q: dict(dataset.qrels[q]) for q in ids}, "rankings": rankings}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))


def rrf(rankings: Sequence[Sequence[str]], weights: Sequence[float], constant: float = 60.0) -> list[str]:
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, doc in enumerate(ranking):
            scores[doc] = scores.get(doc, 0.0) + weight / (constant + rank + 1)
    return sorted(scores, key=lambda d: (-scores[d], d))


Combination = Callable[[dict[str, list[str]]], list[str]]

COMBINATIONS: dict[str, Combination] = {
    **{mode: (lambda r, m=mode: r[m]) for mode in MODES},
    "rrf(hybrid, graph_hybrid)": lambda r: rrf([r["hybrid"], r["graph_hybrid"]], [1, 1]),
    "rrf(dense, bm25, graph_hybrid)": lambda r: rrf([r["dense"], r["bm25"], r["graph_hybrid"]], [1, 1, 1]),
    "rrf(dense, bm25, multihop)": lambda r: rrf([r["dense"], r["bm25"], r["multihop"]], [1, 1, 1]),
    "rrf(dense, bm25, graph, multihop)": lambda r: rrf(
        [r["dense"], r["bm25"], r["graph"], r["multihop"]], [1, 1, 1, 1]
    ),
    "rrf(bm25, graph_hybrid x2)": lambda r: rrf([r["bm25"], r["graph_hybrid"]], [1, 2]),
    "rrf(bm25, graph, multihop)": lambda r: rrf([r["bm25"], r["graph"], r["multihop"]], [1, 1, 1]),
}


def score(out: Path) -> None:
    from ragkit.eval.metrics import ndcg_at_k, recall_at_k

    data = json.loads(out.read_text())
    header = f"{'combination':40}" + "".join(f"{name[:14]:>30}" for name in data)
    print(header)
    print(f"{'':40}" + "".join(f"{'R@2   R@5   nDCG@10':>30}" for _ in data))
    for label, combine in COMBINATIONS.items():
        cells = []
        for set_data in data.values():
            qrels, rankings = set_data["qrels"], set_data["rankings"]
            figures = [0.0, 0.0, 0.0]
            for q, gold in qrels.items():
                ranked = combine({mode: rankings[mode][q] for mode in rankings})
                figures[0] += recall_at_k(ranked, gold, 2)
                figures[1] += recall_at_k(ranked, gold, 5)
                figures[2] += ndcg_at_k(ranked, gold, 10)
            n = len(qrels)
            cells.append("  ".join(f"{f / n:.3f}" for f in figures))
        print(f"{label:40}" + "".join(f"{c:>30}" for c in cells))


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
