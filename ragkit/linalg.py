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
ms after a 5,183 x 384 product on one thread and 6.3-8.7 ms after the same product on two, which had saved 0.02-0.04
ms. So one query's scan of at most :data:`ONE_THREAD_SCAN` elements runs on one BLAS thread (through threadpoolctl;
about 1 ms on one core at the limit). OpenBLAS gives the same bits on one thread as on two for 5,183 and 20,000 rows,
not for 1,890; the benches' recall figures on the shared sets came out unchanged (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar, Token
from typing import Any

import numpy as np

ONE_THREAD_SCAN = 1 << 22  # elements (about 10,000 vectors of 384): one query's scan up to this runs on one thread

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
            with one_blas_thread() if vectors.size <= ONE_THREAD_SCAN else contextlib.nullcontext():
                return matrix_vector(vectors, queries[0])[None, :]
        return queries @ vectors.T
    with torch.inference_mode():
        return (torch.from_numpy(queries) @ torch.from_numpy(vectors).T).numpy()


def matrix_vector(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` (numpy, on BLAS's threads as they are set)."""
    return matrix @ vector


class _OneBlasThread:
    """BLAS libraries limited to one thread while any caller is inside (``with one_blas_thread():``), then set back
    to what they had. Nested and concurrent callers share one limit; without threadpoolctl it does nothing.
    OpenBLAS 0.3.31 may ignore the limit when it is set from a thread other than the main one (seen with a second
    worker thread): the product then runs on its threads as before, and they are given back all the same."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: list[tuple[Any, int]] = []
        self._libraries: list[Any] | None = None

    def libraries(self) -> list[Any]:
        """threadpoolctl's controllers of the BLAS libraries loaded when this was first used (numpy's among them:
        numpy loads its BLAS on import); libraries loaded later are not numpy's and are left alone."""
        if self._libraries is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:
                self._libraries = []
            else:
                self._libraries = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        return self._libraries

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._saved = [(library, library.num_threads) for library in self.libraries()]
                for library, threads in self._saved:
                    if threads != 1:
                        library.set_num_threads(1)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    for library, threads in self._saved:
                        if threads != 1:
                            library.set_num_threads(threads)


one_blas_thread = _OneBlasThread()
