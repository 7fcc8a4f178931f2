"""Quantized and ONNX embeddings against torch fp32, on the CPU: agreement, speed, memory and retrieval quality.

Each encoder runs in its own child process (so its RSS and imports are its own):

- ``torch-fp32``: ``SentenceTransformerEmbedder`` (today's default)
- ``onnx-fp32``, ``onnx-int8``: ``OnnxEmbedder`` (``ragkit.connectors.embedders.onnx``)
- ``openvino-fp32``, ``openvino-bf16``: ``OpenVinoEmbedder`` (``ragkit.connectors.embedders.openvino``; bf16 where
  the CPU computes it natively)
- ``torch-int8``: the same model after ``torch.ao.quantization.quantize_dynamic`` of its ``nn.Linear`` layers

and reports: load seconds, passages/s over a fixed sample of each shared set (batches, as indexing embeds), the
p50 of one short query at a time after warm-up with 1 and 2 threads, peak RSS, and the minimum and mean cosine
of its sample vectors to torch fp32's. ``--quality`` also builds a ragkit index per shared set (one chunk per
passage, graph off: what ``ragkit eval`` builds) with the encoder, times it, and runs ``ragkit eval``'s dense and
hybrid modes. Load averages are printed beside every timing; ``--repeats`` runs the timings again (median).

    .venv/bin/python bench/quantized.py                                    # speed, memory, agreement
    .venv/bin/python bench/quantized.py --quality --variants onnx-int8     # + index time and recall / nDCG
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = ("hotpotqa-train100", "musique-train100", "scifact")
VARIANTS = ("torch-fp32", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-bf16", "torch-int8")
METRICS = ("recall@2", "recall@5", "recall@10", "hit@5", "mrr@10", "ndcg@10")
REFERENCE = "torch-fp32"


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def passages(name: str, limit: int | None) -> list[str]:
    texts = []
    with (DATA / name / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            texts.append(f"{row.get('title', '')} {row['text']}".strip())
            if limit is not None and len(texts) >= limit:
                break
    return texts


def short_queries(limit: int) -> list[str]:
    with (DATA / "hotpotqa-train100" / "queries.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle][:limit]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make(variant: str, threads: int) -> Any:
    """The encoder ``variant`` with ``threads`` intra-op threads."""
    if variant.startswith("onnx"):
        from ragkit.connectors.embedders.onnx import OnnxEmbedder

        return OnnxEmbedder(precision=variant.removeprefix("onnx-"), threads=threads)
    if variant.startswith("openvino"):
        from ragkit.connectors.embedders.openvino import OpenVinoEmbedder

        return OpenVinoEmbedder(precision=variant.removeprefix("openvino-"), threads=threads)
    import torch

    from ragkit.connectors.embedders import SentenceTransformerEmbedder

    torch.set_num_threads(threads)
    embedder = SentenceTransformerEmbedder(device="cpu")
    if variant == "torch-int8":
        embedder.model = torch.ao.quantization.quantize_dynamic(embedder.model, {torch.nn.Linear}, dtype=torch.qint8)
        embedder.name = "all-MiniLM-L6-v2@torch-int8"
    return embedder


def query_p50_ms(embedder: Any, queries: list[str], clock: Any = time.perf_counter) -> float:
    """Median milliseconds of one query at a time after warm-up, by ``clock`` (wall, or this process's CPU)."""
    for text in queries[:10]:
        embedder.embed_query(text)
    times = []
    for text in queries:
        start = clock()
        embedder.embed_query(text)
        times.append(clock() - start)
    return statistics.median(times) * 1000


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One encoder's figures, in this (child) process."""
    variant, out = args.child, Path(args.out)
    started = time.perf_counter()
    embedder = make(variant, 2)
    result: dict[str, Any] = {"variant": variant, "load_s": time.perf_counter() - started}
    result["rss_after_load_mb"] = peak_rss_mb()
    sample = [t for name in args.datasets for t in passages(name, args.sample)]
    queries = short_queries(args.queries)
    embedder.embed_documents(sample[:32])  # warm-up
    rounds = []
    for _ in range(args.repeats):
        before = load()
        start, cpu = time.perf_counter(), time.process_time()
        vectors = embedder.embed_documents(sample)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        p50_2 = query_p50_ms(embedder, queries)
        rounds.append({"docs_per_s": len(sample) / seconds, "docs_per_cpu_s": len(sample) / cpu_seconds,
                       "query_p50_ms_2t": p50_2, "load": f"{before} -> {load()}"})
    np.save(out / f"{variant}.npy", vectors)
    one = make(variant, 1)
    p50_1 = [query_p50_ms(one, queries) for _ in range(args.repeats)]
    cpu_1 = [query_p50_ms(one, queries, time.process_time) for _ in range(args.repeats)]
    result |= {
        "docs_per_s": statistics.median(r["docs_per_s"] for r in rounds),
        "docs_per_cpu_s": statistics.median(r["docs_per_cpu_s"] for r in rounds),
        "query_p50_ms_2t": statistics.median(r["query_p50_ms_2t"] for r in rounds),
        "query_p50_ms_1t": statistics.median(p50_1),
        "query_p50_cpu_ms_1t": statistics.median(cpu_1),
        "rounds": rounds,
        "sample": len(sample),
    }
    if args.quality:
        result["quality"] = {}
        for name in args.datasets:  # each set's figures are kept as soon as they exist
            result["quality"][name] = quality(embedder, name)
            (out / f"{variant}.{name}.quality.json").write_text(json.dumps(result["quality"][name], indent=2))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def quality(embedder: Any, name: str) -> dict[str, Any]:
    """Index the whole set with ``embedder`` as ``ragkit eval`` does (graph off), then its dense and hybrid runs."""
    from ragkit.config import Settings
    from ragkit.eval.cli import LabelledModes
    from ragkit.eval.datasets import load_beir
    from ragkit.eval.runner import run_eval
    from ragkit.index import Index

    dataset = load_beir(DATA / name)
    settings = Settings().merged(chunking={"strategy": "none"}, graph={"enabled": False})
    with tempfile.TemporaryDirectory(prefix="ragkit-quantized-") as folder:
        before = load()
        start = time.perf_counter()
        index = Index.create(Path(folder) / "index", settings, embedder=embedder)
        added = index.add([dataset.corpus_file()])
        seconds = time.perf_counter() - start
        with index:
            report = run_eval(dataset, LabelledModes(index), ["dense", "hybrid"], latency_queries=0)
    metrics = {mode: {m: result.metrics[m] for m in METRICS} for mode, result in report.results.items()}
    return {"index_s": seconds, "chunks": added.chunks, "load": f"{before} -> {load()}", "metrics": metrics}


def run_child(variant: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", variant, "--out", str(out), "--sample", str(args.sample),
               "--queries", str(args.queries), "--repeats", str(args.repeats), "--datasets", ",".join(args.datasets)]
    if args.quality:
        command.append("--quality")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def agreement(out: Path, variant: str) -> tuple[float, float] | None:
    reference, vectors = out / f"{REFERENCE}.npy", out / f"{variant}.npy"
    if not (reference.exists() and vectors.exists()):
        return None
    cosines = (np.load(reference) * np.load(vectors)).sum(axis=1)
    return float(cosines.min()), float(cosines.mean())


def report(results: list[dict[str, Any]], out: Path) -> None:
    base = next((r for r in results if r["variant"] == REFERENCE), None)
    print("\n| encoder | cosine to torch fp32 (min / mean) | passages/s (per CPU s) | query p50 ms, 1 thread "
          "(CPU ms) | 2 threads | peak RSS MB | load s |")
    print("|---|---|---|---|---|---|---|")

    def ratio(r: dict[str, Any], key: str) -> str:
        return f" ({r[key] / base[key]:.2f}×)" if base is not None and r is not base else ""

    for r in results:
        cos = agreement(out, r["variant"])
        print(f"| {r['variant']} | " + (f"{cos[0]:.4f} / {cos[1]:.4f}" if cos else "-"),
              f"| {r['docs_per_s']:.1f}{ratio(r, 'docs_per_s')}",
              f"({r['docs_per_cpu_s']:.1f}{ratio(r, 'docs_per_cpu_s')})",
              f"| {r['query_p50_ms_1t']:.2f}{ratio(r, 'query_p50_ms_1t')} "
              f"({r['query_p50_cpu_ms_1t']:.2f}{ratio(r, 'query_p50_cpu_ms_1t')})",
              f"| {r['query_p50_ms_2t']:.2f}{ratio(r, 'query_p50_ms_2t')}",
              f"| {r['peak_rss_mb']:.0f}{ratio(r, 'peak_rss_mb')} | {r['load_s']:.1f} |")
    for r in results:
        print(f"  {r['variant']} timing rounds (load averages before -> after): "
              + "; ".join(f"{x['docs_per_s']:.1f}/s, {x['query_p50_ms_2t']:.2f} ms [{x['load']}]" for x in r["rounds"]))
    if any("quality" in r for r in results):
        print("\n| set | encoder | index s | mode | " + " | ".join(METRICS) + " | load |")
        print("|---|---|---|---|" + "---|" * len(METRICS) + "---|")
        for r in results:
            for name, q in r.get("quality", {}).items():
                for mode, values in q["metrics"].items():
                    cells = " | ".join(f"{values[m]:.3f}" for m in METRICS)
                    print(f"| {name} | {r['variant']} | {q['index_s']:.1f} | {mode} | {cells} | {q['load']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--sample", type=int, default=200, help="passages per set for speed and agreement")
    parser.add_argument("--queries", type=int, default=100, help="short queries timed one at a time")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds (their median is reported)")
    parser.add_argument("--quality", action="store_true", help="also index every set and run dense and hybrid")
    parser.add_argument("--out", help="where vectors and results go (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.datasets = [d for d in args.datasets.split(",") if d]
    if args.child:
        print(json.dumps(child(args)))
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)} (valid: {', '.join(VARIANTS)})")
    out = Path(args.out or tempfile.mkdtemp(prefix="ragkit-quantized-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
          f", {os.cpu_count()} cores, load {load()}, vectors in {out}")
    for variant in variants:  # export (and compile) once first, so that no timed child pays for it or loads torch
        if variant.startswith(("onnx", "openvino")):
            runtime, _, precision = variant.partition("-")
            cls = {"onnx": "OnnxEmbedder", "openvino": "OpenVinoEmbedder"}[runtime]
            subprocess.run([sys.executable, "-c", f"from ragkit.connectors.embedders.{runtime} import {cls}; "
                            f"{cls}(precision={precision!r})"], check=True)
    results = []
    for variant in variants:
        result = run_child(variant, args, out)
        (out / f"{variant}.json").write_text(json.dumps(result, indent=2))
        results.append(result)
        print(f"{variant}: done, load {load()}", flush=True)
    done = {r["variant"] for r in results}  # and what earlier runs with the same --out measured
    files = [out / f"{v}.json" for v in VARIANTS if v not in done]
    earlier = [json.loads(file.read_text()) for file in files if file.exists()]
    report(sorted(results + earlier, key=lambda r: VARIANTS.index(r["variant"])), out)


if __name__ == "__main__":
    main()
