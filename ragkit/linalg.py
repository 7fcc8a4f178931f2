"""Dense products on the query path, run in the thread pool that is already busy with the query.

A query first goes through the embedder (PyTorch, which multiplies on its own OpenMP threads) and then through an
exact scan of the stored vectors. Done by numpy, that scan runs on OpenBLAS's threads, a second pool. Each pool's
threads keep spinning for a while after their work is done, so on a machine with few cores the two pools take
turns slowing each other down. On 2 cores, with MiniLM and 100k 384-d vectors, the embedding took 29 ms instead of
13 and the scan 15 ms instead of 9 (``bench/graph_latency.py``). When PyTorch is loaded the product therefore runs
in PyTorch, on the threads that have just embedded the query; otherwise numpy computes it.
"""

from __future__ import annotations

import sys

import numpy as np


def inner_products(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``queries @ vectors.T`` in float32 (queries x vectors), without copying ``vectors``."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    torch = sys.modules.get("torch")  # only when something else loaded it: importing PyTorch costs seconds
    if torch is None or not vectors.size or not queries.size or not vectors.flags.writeable:
        return queries @ vectors.T
    with torch.inference_mode():
        return (torch.from_numpy(queries) @ torch.from_numpy(vectors).T).numpy()
