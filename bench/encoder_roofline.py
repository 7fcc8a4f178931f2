"""Where the CPU encoder's time goes, and how fast its matrix products run against the same products alone.

Embeds a shared set's passages (``title + " " + text``) with the default CPU encoder (OpenVINO fp32) in the same
batches as indexing, with OpenVINO's per-operator counters on, and prints:

- each operator kind's share of the forward time;
- the rate of the dense layers (FullyConnected) and of attention (the fused ``Subgraph``) in GFLOP/s, from the
  model's shapes and the padded batches;
- a reference rate for those products: the fastest of the model's three product shapes (hidden to hidden, hidden
  to intermediate, intermediate to hidden) over 512-4,096 tokens, each compiled alone by the same runtime with
  the same threads (a floor for the machine's fp32 peak: it also pays for copying its input and output), and the
  same in bf16 where the CPU has it natively (what a lower precision would offer);
- what attention at the dense layers' rate would save, the most left to win inside the fp32 forward;
- the machine's fp32 peak (one large square product, the faster of OpenVINO and numpy's BLAS), the dense layers'
  share of it, and how long the whole forward would take at that rate: the floor of any fp32 encoder here.

Indexing time is the encoder's (issue 16: 25.6 of 26.4 s of MuSiQue's index in the forward), so this bounds the
index speed any fp32 change can reach.

    .venv/bin/python bench/encoder_roofline.py --dataset scifact --limit 600
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def passages(folder: Path, limit: int) -> list[str]:
    texts = []
    with (folder / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            texts.append(f"{row.get('title', '')} {row['text']}".strip())
            if len(texts) == limit:
                break
    return texts


def product_rate(core: Any, tokens: int, inner: int, outer: int, precision: str, threads: int) -> float:
    """GFLOP/s of one ``tokens x inner`` by ``inner x outer`` product compiled at ``precision``."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([tokens, inner], np.float32)
    weights = ops.constant(rng.standard_normal((inner, outer)).astype(np.float32))
    model = ov.Model([ops.matmul(x, weights, False, False)], [x])
    compiled = core.compile_model(model, "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
    })
    request = compiled.create_infer_request()
    feed = rng.standard_normal((tokens, inner)).astype(np.float32)
    for _ in range(3):
        request.infer([feed])
    runs, start = 20, time.perf_counter()
    for _ in range(runs):
        request.infer([feed])
    return 2.0 * tokens * inner * outer * runs / (time.perf_counter() - start) / 1e9


def blas_rate(size: int) -> float:
    """GFLOP/s of numpy's fp32 ``size x size`` product (its BLAS, its threads), best of three."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--limit", type=int, default=600, help="passages embedded (the first N of the corpus)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import openvino as ov

    from ragkit.connectors.embedders.openvino import OpenVinoEmbedder, native_bf16
    from ragkit.connectors.embedders.sentence_transformers import DEFAULT_MODEL, resolve_model

    config = json.loads((Path(resolve_model(DEFAULT_MODEL)) / "config.json").read_text(encoding="utf-8"))
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    embedder = OpenVinoEmbedder(threads=args.threads)
    core = ov.Core()
    embedder._compiled = core.compile_model(str(embedder.model_path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": args.threads, "INFERENCE_PRECISION_HINT": "f32",
        "PERF_COUNT": "YES",
    })
    request = embedder._compiled.create_infer_request()
    embedder._requests.request = request

    times: Counter[str] = Counter()
    dense_flops = attention_flops = 0.0
    infer = embedder._infer

    def counted(feeds: dict[str, np.ndarray]) -> np.ndarray:
        nonlocal dense_flops, attention_flops
        out = infer(feeds)
        rows, width = feeds["input_ids"].shape
        dense_flops += 2.0 * rows * width * layers * (4 * hidden * hidden + 2 * hidden * inner)
        attention_flops += 2.0 * 2 * rows * width * width * hidden * layers  # scores, then weighted values
        for node in request.profiling_info:
            if node.status.name == "EXECUTED":
                times[node.node_type] += node.real_time.total_seconds()
        return out

    embedder._infer = counted  # type: ignore[method-assign]
    texts = passages(args.data / args.dataset, args.limit)
    embedder.embed_documents(texts[:64])  # warm-up: compiled shapes, caches
    times.clear()
    dense_flops = attention_flops = 0.0
    start = time.perf_counter()
    embedder.embed_documents(texts)
    wall = time.perf_counter() - start

    total = sum(times.values())
    print(f"{args.dataset}: {len(texts)} passages in {wall:.2f} s ({len(texts) / wall:.1f}/s), {args.threads} threads;"
          f" operators {total:.2f} s")
    for kind, seconds in times.most_common(6):
        print(f"  {kind:16s} {seconds:7.2f} s  {100 * seconds / total:5.1f}%")
    fc, attention = times["FullyConnected"], times["Subgraph"]
    dense_rate = dense_flops / fc / 1e9 if fc else float("nan")
    attention_rate = attention_flops / attention / 1e9 if attention else float("nan")
    pairs = ((hidden, hidden), (hidden, inner), (inner, hidden))
    shapes = [(tokens, a, b) for tokens in (512, 1024, 2048, 4096) for a, b in pairs]
    alone = max(product_rate(core, *shape, "f32", args.threads) for shape in shapes)
    print(f"dense layers: {dense_rate:.0f} GFLOP/s; attention: {attention_rate:.0f} GFLOP/s; "
          f"whole forward: {(dense_flops + attention_flops) / wall / 1e9:.0f} GFLOP/s")
    print(f"the same products compiled alone (same runtime and threads): {alone:.0f} GFLOP/s;"
          f" the model's dense layers at {dense_rate / alone:.0%} of that")
    if attention:
        saved = attention * (1.0 - attention_rate / max(dense_rate, alone))
        print(f"attention at the dense layers' rate would save {saved:.2f} s of the operators' {total:.2f} s"
              f" ({saved / total:.1%}); the other operators take {total - fc - attention:.2f} s")
    peak = max(product_rate(core, 3072, 3072, 3072, "f32", args.threads), blas_rate(3072))
    floor = (dense_flops + attention_flops) / peak / 1e9
    print(f"the machine's fp32 peak (a 3072 x 3072 x 3072 product, OpenVINO or numpy's BLAS, the faster):"
          f" {peak:.0f} GFLOP/s; the dense layers at {dense_rate / peak:.0%} of it; the whole forward at that rate"
          f" would take {floor:.2f} s (the {wall:.2f} s measured is {wall / floor:.2f}x that)")
    if native_bf16():
        bf16 = max(product_rate(core, *shape, "bf16", args.threads) for shape in shapes)
        print(f"the same products alone in bf16: {bf16:.0f} GFLOP/s ({bf16 / alone:.2f}x fp32)")


if __name__ == "__main__":
    main()
