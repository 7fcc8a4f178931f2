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

The same contention comes back with ONNX Runtime and OpenVINO encoders, whose pools are their own: after a threaded
OpenBLAS product, OpenBLAS's workers spin for a while (up to its THREAD_TIMEOUT, about a tenth of a second), and the
next query's forward shares the cores with them. On 2 cores a MiniLM forward of one MuSiQue question took 3.6-4.1
ms after a 5,183 x 384 product on one thread and 6.3-8.7 ms after the same product on two. So one query's scan of
at most :data:`SMALL_SCAN` elements (about 10,000 vectors of 384) does not go to BLAS at all: numpy's own loop
(``einsum``) computes it on the calling thread, with no pool to wake or leave spinning, whichever thread the query
runs on. It is also faster where it matters: the forward has just pushed the vectors out of the caches, and read
from memory numpy's loop streamed them at about twice the rate of OpenBLAS's one-thread matrix-vector product
(1,890 x 384: 0.23 against 0.40 ms; 5,183: 0.41 against 0.80 ms; ``bench/query_path.py`` has the query's
figures). On a process with at most two cores, every single-query scan takes numpy's loop: from memory, two BLAS
threads read no faster (100,000 x 384: 6.4 ms against 6.8; 300,000: 18.1-18.5 against 18.4; 1,000,000: 63.5-64.4
against 63.3-64.4), and their spinning cost the next query's forward about 2 ms. ``bench/graph_latency.py`` at
100k chunks gave the default mode a p50 of 35.3-35.5 ms with the loop and 37.8-40.0 ms with BLAS's threads (p90
39.7-40.7 against 55.2-59.1). With more cores, scans over :data:`SMALL_SCAN` elements keep BLAS's threads, whose
combined bandwidth pays there: on 16 Xeon cores with an OpenVINO forward after each scan (``bench/scan_threads.py``),
scan plus forward took 5.5-10.9 ms from 20,000 to 300,000 vectors on 16 threads against 6.3-52.3 ms in the loop,
and 3.6-4.3 ms in the loop up to 10,000 vectors against 4.7-7.4 on 16 threads. The loop sums in another
order than BLAS, so scores may differ from a batch's in the last bit; each path gives the same bits every time,
and ``ragkit eval`` (batches) gave the same figures before and after.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar, Token

import numpy as np

from ragkit.devices import process_cores

SMALL_SCAN = 1 << 22  # elements (about 10,000 vectors of 384): one query's scan up to this runs in numpy's loop
FEW_CORES = 2  # on at most this many cores, one query's scan of any size runs in numpy's loop

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
        if len(queries) != 1:
            return queries @ vectors.T
        if vectors.size <= SMALL_SCAN or process_cores() <= FEW_CORES:
            return row_dots(vectors, queries[0])[None, :]
        return (vectors @ queries[0])[None, :]  # the matrix-vector product along the rows, 10% faster than across
    with torch.inference_mode():
        return (torch.from_numpy(queries) @ torch.from_numpy(vectors).T).numpy()


def row_dots(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` in numpy's own loop on the calling thread (no BLAS pool)."""
    return np.einsum("ij,j->i", matrix, vector)
