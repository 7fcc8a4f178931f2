"""Peak memory of `ragkit index` on large files: a 1 GB text file and a 200 MB JSONL file.

    python bench/index_memory.py [--text-mb 1024] [--jsonl-mb 200] [--embedder hashing-64] [--graph]
                                 [--work DIR] [--keep]

Each file is indexed by the real CLI (`python -m ragkit.cli index FILE --index DIR --json`) in a fresh process;
the resident memory of that process and all its children (graph workers) is sampled every 50 ms and the peak
is printed next to the target (issue 17: peak RSS < 2.5 GB for both files).

The default embedder here is the hashing fake (`hashing-64`) and the graph is off: with MiniLM on 2 cores a
1 GB file takes hours to embed, while what this bench measures is whether memory grows with the file (loading,
chunking, catalog, vectors, BM25). `--embedder` and `--graph` run the default pipeline on smaller sizes, e.g.
`--text-mb 8 --jsonl-mb 8 --embedder sentence-transformers/all-MiniLM-L6-v2 --graph`. A one-document file over
the size limit (64 MiB by default) is refused, so the bench raises the limit with RAGKIT_MAX_FILE_MB for the
text file: a user who does the same must still get bounded memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

TARGET_GB = 2.5
WORDS = (
    "river owl meadow granite kestrel lantern harbour orchard village bridge station engine garden forest "
    "library museum theory signal market captain winter summer mountain valley island coast storm treaty "
    "council archive letter painter composer novel chapter century kingdom empire province railway canal "
    "the a of in on and to with from by for as at is was were has had will which that"
).split()


def prose(rng: random.Random, n_chars: int, label: int) -> str:
    """Paragraphs of sentences, each paragraph numbered (so chunks are distinct and the cache cannot help)."""
    out, size = [], 0
    while size < n_chars:
        sentences = []
        for _ in range(rng.randint(3, 8)):
            words = rng.choices(WORDS, k=rng.randint(6, 22))
            sentences.append(" ".join(words).capitalize() + ".")
        paragraph = f"Section {label}.{len(out)}. " + " ".join(sentences)
        out.append(paragraph)
        size += len(paragraph) + 2
    return "\n\n".join(out)


def write_text(path: Path, megabytes: int) -> None:
    rng = random.Random(1)
    with path.open("w", encoding="utf-8") as handle:
        for block in range(megabytes):
            handle.write(prose(rng, 2**20 - 2, block) + "\n\n")


def write_jsonl(path: Path, megabytes: int) -> None:
    rng = random.Random(2)
    with path.open("w", encoding="utf-8") as handle:
        row = 0
        while handle.tell() < megabytes * 2**20:
            text = prose(rng, rng.randint(400, 1600), row)
            handle.write(json.dumps({"_id": f"r{row}", "title": f"Row {row}", "text": text}) + "\n")
            row += 1


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def index_file(path: Path, index_dir: Path, config: Path, env: dict[str, str]) -> tuple[float, float, dict]:
    """(peak RSS in GB, seconds, the CLI's JSON report) of indexing one file."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "ragkit.cli", "--config", str(config), "index", str(path), "--index", str(index_dir),
         "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(watched))
        time.sleep(0.05)
    out, err = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode not in (0, 3):
        raise SystemExit(f"ragkit index {path} failed ({process.returncode}):\n{err[-3000:]}")
    return peak / 1e9, seconds, json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-mb", type=int, default=1024)
    parser.add_argument("--jsonl-mb", type=int, default=200)
    parser.add_argument("--embedder", default="hashing-64")
    parser.add_argument("--graph", action="store_true", help="build the knowledge graph too (slow on big files)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ragkit-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    config = work / "ragkit.toml"
    config.write_text(f'[embedder]\nmodel = "{args.embedder}"\n[graph]\nenabled = {str(args.graph).lower()}\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RAGKIT_MAX_FILE_MB": str(max(64, args.text_mb + 1))}
    print(f"embedder {args.embedder}, graph {'on' if args.graph else 'off'}; target: peak RSS < {TARGET_GB} GB")
    try:
        for kind, megabytes, write in (("text", args.text_mb, write_text), ("jsonl", args.jsonl_mb, write_jsonl)):
            if megabytes <= 0:
                continue
            path = work / f"big.{'txt' if kind == 'text' else 'jsonl'}"
            if not path.exists() or path.stat().st_size < megabytes * 2**20 * 0.99:
                write(path, megabytes)
            index_dir = work / f"index-{kind}"
            shutil.rmtree(index_dir, ignore_errors=True)
            peak, seconds, report = index_file(path, index_dir, config, env)
            size = path.stat().st_size / 2**20
            verdict = "ok" if peak < TARGET_GB else "OVER TARGET"
            print(
                f"{kind:>5} {size:7.0f} MB: peak RSS {peak:.2f} GB (target < {TARGET_GB} GB: {verdict}); "
                f"{report['documents']} documents, {report['chunks']} chunks, {report['failed']} failed, "
                f"{seconds:.0f} s ({size / seconds:.2f} MB/s)"
            )
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
