"""Every retrieval mode on every dataset in ../shared/data, as one comparison table.

    python bench/eval_all.py [--data DIR] [--modes dense,bm25,hybrid,graph,multihop,graph_hybrid] [--out FILE]

Runs `ragkit eval DATASET --json` for each dataset (indexes are cached, so a second run only retrieves) and
prints a Markdown table of recall@2/5/10, hit@5, MRR@10 and nDCG@10 per dataset and mode. With --out it also
writes the table, the command and the date to FILE (docs/benchmarks.md keeps the committed copy).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COLUMNS = ("recall@2", "recall@5", "recall@10", "hit@5", "mrr@10", "ndcg@10")


def evaluate(dataset: Path, modes: str) -> dict:
    command = [sys.executable, "-m", "ragkit.cli", "eval", str(dataset), "--modes", modes, "--json",
               "--latency-queries", "50"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def table(reports: list[dict]) -> str:
    head = "| dataset | mode | " + " | ".join(COLUMNS) + " | p50 ms | queries/s |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    for report in reports:
        for mode, figures in report["results"].items():
            cells = [f"{figures[c]:.3f}" for c in COLUMNS]
            latency = figures["latency_ms"]["p50"]
            lines.append(
                f"| {report['dataset']} | {mode} | " + " | ".join(cells)
                + f" | {latency:.1f} | {figures['queries_per_s']:.1f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--modes", default="dense,bm25,hybrid,graph,multihop,graph_hybrid")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    datasets = sorted(p for p in args.data.iterdir() if (p / "corpus.jsonl").exists()) if args.data.is_dir() else []
    if not datasets:
        print(f"no BEIR datasets under {args.data}", file=sys.stderr)
        return 1
    reports = []
    for dataset in datasets:
        print(f"evaluating {dataset.name} ...", file=sys.stderr)
        reports.append(evaluate(dataset, args.modes))
    text = table(reports)
    print(text)
    if args.out:
        stamp = datetime.date.today().isoformat()
        command = f"python bench/eval_all.py --modes {args.modes}"
        args.out.write_text(f"## Retrieval quality on ../shared/data ({stamp})\n\n`{command}`\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
