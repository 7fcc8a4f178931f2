"""One query's exact scan from memory: numpy's own loop against BLAS on 1 to all cores, and what each leaves for
the next query's forward. Checks the rule of ``ragkit.linalg.inner_products`` on the machine it runs on.

``ragkit.linalg`` runs one query's scan in numpy's loop (``row_dots``) when it is at most ``SMALL_SCAN`` elements
or the process has at most ``FEW_CORES`` cores, and as a BLAS matrix-vector product on all of BLAS's threads
otherwise. For each size this prints, as medians over ``--repeat`` cold runs (a large buffer is read before each
product, so the vectors come from memory, as they do after a query's forward):

- the scan in numpy's loop, and in BLAS with 1, 2, 4, ... and all threads (threadpoolctl);
- after each, a MiniLM-sized forward of one 24-token query (random weights, same shapes; OpenVINO as the CPU
  default runs it, or PyTorch) started right after the scan: BLAS's idle threads spin for a while and take cores
  from it;
- which of the two the rule picks here.

    .venv/bin/python bench/scan_threads.py --sizes 10000,100000,300000,1000000
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import numpy as np


def cold(flush: np.ndarray) -> None:
    float(flush.sum())  # evicts the vectors from every cache level


def timed(run: Callable[[], object], flush: np.ndarray, after: Callable[[], object] | None, repeat: int
          ) -> tuple[float, float]:
    """Median ms of ``run`` from cold caches, and of ``after`` started right after it (0 without one)."""
    scans, forwards = [], []
    run()
    for _ in range(repeat):
        cold(flush)
        start = time.perf_counter()
        run()
        middle = time.perf_counter()
        if after is not None:
            after()
            forwards.append(time.perf_counter() - middle)
        scans.append(middle - start)
    return 1e3 * statistics.median(scans), 1e3 * statistics.median(forwards) if forwards else 0.0


def minilm_forward(runtime: str) -> Callable[[], object]:
    """One 24-token query through a MiniLM-shaped BERT (random weights) in PyTorch or OpenVINO (the CPU default's
    runtime), on all of the process's cores."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    model = BertModel(config).eval()
    ids = torch.randint(1000, 20000, (1, 24))
    if runtime == "openvino":
        import openvino as ov

        with torch.inference_mode():
            converted = ov.convert_model(model, example_input={"input_ids": ids})
        request = ov.Core().compile_model(converted, "CPU", {"PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
        feed = ids.numpy()
        return lambda: request.infer([feed])

    def forward() -> object:
        with torch.inference_mode():
            return model(input_ids=ids).last_hidden_state

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,300000,1000000", help="vectors per scan, comma-separated")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--flush-mb", type=int, default=512, help="buffer read before each scan to evict the caches")
    parser.add_argument("--forward", choices=("openvino", "torch"), default="openvino", help="the query's runtime")
    args = parser.parse_args()

    from threadpoolctl import threadpool_info, threadpool_limits

    from ragkit.devices import process_cores
    from ragkit.linalg import FEW_CORES, SMALL_SCAN, row_dots

    cores = process_cores()
    blas = [f"{p['internal_api']} {p['version']} ({p['num_threads']} threads)" for p in threadpool_info()
            if p["user_api"] == "blas"]
    print(f"{cores} cores; BLAS: {', '.join(blas)}")
    counts = sorted({1, 2, 4, 8, 16, 32, cores} & set(range(1, cores + 1)))
    flush = np.ones(args.flush_mb << 18, dtype=np.float32)
    forward = minilm_forward(args.forward)
    forward()
    alone = statistics.median(timed(forward, flush, None, args.repeat)[0] for _ in range(3))
    print(f"the {args.forward} forward alone, from cold caches: {alone:.2f} ms")
    rng = np.random.default_rng(0)
    header = " | ".join(f"BLAS {t}" for t in counts)
    print("each cell: the scan + the forward started right after it, ms")
    print(f"| vectors | loop | {header} | rule here |")
    for size in (int(s) for s in args.sizes.split(",")):
        vectors = rng.standard_normal((size, args.dim), dtype=np.float32)
        query = rng.standard_normal(args.dim, dtype=np.float32)
        loop_scan = functools.partial(row_dots, vectors, query)
        blas_scan = functools.partial(np.matmul, vectors, query)
        loop, after_loop = timed(loop_scan, flush, forward, args.repeat)
        cells = []
        for threads in counts:
            with threadpool_limits(threads, user_api="blas"):
                scan, after = timed(blas_scan, flush, forward, args.repeat)
            cells.append(f"{scan:.2f} + {after:.2f}")
        rule = "loop" if vectors.size <= SMALL_SCAN or cores <= FEW_CORES else f"BLAS {cores}"
        print(f"| {size:,} | {loop:.2f} + {after_loop:.2f} | {' | '.join(cells)} | {rule} |", flush=True)


if __name__ == "__main__":
    main()
