"""Dense products on the query path, run in the thread pool that is already busy with the query.

A query first goes through the embedder (PyTorch, which multiplies on its own OpenMP threads) and then through an
exact scan of the stored vectors. Done by numpy, that scan runs on OpenBLAS's threads, a second pool. Each pool's
threads keep spinning for a while after their work is done, so on a machine with few cores the two pools take
turns slowing each other down. On 2 cores, with MiniLM and 100k 384-d vectors, the embedding took 29 ms instead of
13 and the scan 15 ms instead of 9 (``bench/graph_latency.py``). So while a query is answered
(:func:`products_scope`) by an index whose encoder runs PyTorch on the CPU (:func:`products_beside`, when it embeds
the query), the products run in PyTorch, on the threads that have just embedded it; otherwise numpy computes them.
The choice follows the index, not what the process happens to have imported: the two libraries round differently in
the last bit, and that must not re-rank near-ties of one index from one process to the next.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar, Token

import numpy as np

_in_torch: ContextVar[bool] = ContextVar("ragkit.linalg.in_torch", default=False)


def products_scope() -> Token[bool]:
    """Start a query: its products run in numpy until :func:`products_beside` says otherwise. Returns the token
    for :func:`products_done`, which ends it."""
    return _in_torch.set(False)


def products_beside(embedder: object) -> None:
    """The query was just embedded by ``embedder``: the rest of its products run in PyTorch's pool when that
    runs PyTorch on the CPU (it says so with ``cpu_pool = "torch"``)."""
    _in_torch.set(getattr(embedder, "cpu_pool", None) == "torch")


def products_done(token: Token[bool]) -> None:
    _in_torch.reset(token)


def inner_products(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``queries @ vectors.T`` in float32 (queries x vectors), without copying ``vectors``."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    torch = sys.modules.get("torch") if _in_torch.get() else None
    if torch is None or not vectors.size or not queries.size or not vectors.flags.writeable:
        if len(queries) == 1:  # one query: the matrix-vector product along the rows, 10% faster than across
            return (vectors @ queries[0])[None, :]
        return queries @ vectors.T
    with torch.inference_mode():
        return (torch.from_numpy(queries) @ torch.from_numpy(vectors).T).numpy()
