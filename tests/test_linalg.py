"""Query-path products: the same numbers whether PyTorch or numpy multiplies."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ragkit import linalg
from ragkit.linalg import inner_products


def _data(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, 48)).astype(np.float32), rng.standard_normal((500, 48)).astype(np.float32)


class _TorchOnCpu:
    cpu_pool = "torch"


def test_torch_does_the_product_beside_a_torch_encoder_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    calls = []
    real = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda a: calls.append(a.shape) or real(a))
    queries, vectors = _data()
    token = linalg.products_scope()
    try:
        linalg.products_beside(_TorchOnCpu())
        out = inner_products(queries, vectors)
    finally:
        linalg.products_done(token)
    assert calls == [queries.shape, vectors.shape]
    inner_products(queries, vectors)  # after it: numpy again
    assert len(calls) == 2
    assert out.dtype == np.float32 and out.shape == (3, 500)
    np.testing.assert_allclose(out, queries.astype(np.float64) @ vectors.T.astype(np.float64), rtol=1e-4, atol=1e-4)


def test_an_import_of_torch_alone_changes_nothing() -> None:
    """PyTorch and numpy round differently: what else the process imported must not re-rank near-ties."""
    pytest.importorskip("torch")
    queries, vectors = _data()
    np.testing.assert_array_equal(inner_products(queries, vectors), queries @ vectors.T)
    token = linalg.products_scope()
    try:
        linalg.products_beside(object())  # an index whose encoder is not PyTorch on the CPU
        np.testing.assert_array_equal(inner_products(queries, vectors), queries @ vectors.T)
    finally:
        linalg.products_done(token)


def test_numpy_does_it_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as in graph workers, where importing torch is blocked
    queries, vectors = _data()
    np.testing.assert_array_equal(inner_products(queries, vectors), queries @ vectors.T)


def test_read_only_and_odd_inputs() -> None:
    queries, vectors = _data()
    vectors.setflags(write=False)  # torch cannot wrap a read-only array without a copy: numpy takes it
    np.testing.assert_allclose(inner_products(queries, vectors), queries @ vectors.T, rtol=1e-5, atol=1e-5)
    doubles = inner_products(queries.astype(np.float64), np.asfortranarray(vectors))
    assert doubles.dtype == np.float32
    np.testing.assert_allclose(doubles, queries @ vectors.T, rtol=1e-5, atol=1e-5)
    assert inner_products(queries[:0], vectors).shape == (0, 500)
    assert inner_products(queries, vectors[:0]).shape == (3, 0)


def _blas_threads() -> list[int]:
    """The threads of the BLAS libraries the one-thread limit governs (numpy's: loaded when numpy was)."""
    pytest.importorskip("threadpoolctl")
    libraries = linalg.one_blas_thread.libraries()
    assert libraries, "threadpoolctl found no BLAS library although numpy is loaded"
    return [library.get_num_threads() for library in libraries]


def test_one_small_scan_runs_on_one_blas_thread_and_gives_the_threads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _blas_threads()
        assert before and all(n == 2 for n in before)
        seen: list[list[int]] = []
        real = linalg.matrix_vector

        def recording(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
            seen.append(_blas_threads())
            return real(matrix, vector)

        monkeypatch.setattr(linalg, "matrix_vector", recording)
        rng = np.random.default_rng(5)
        query = rng.standard_normal((1, 48)).astype(np.float32)
        small = rng.standard_normal((500, 48)).astype(np.float32)
        out = inner_products(query, small)
        np.testing.assert_allclose(out[0], small @ query[0], rtol=1e-5, atol=1e-5)
        assert seen == [[1] * len(before)]  # the product ran on one thread
        assert _blas_threads() == before  # and the threads were given back

        monkeypatch.setattr(linalg, "ONE_THREAD_SCAN", 100)  # past the limit: the library's threads
        seen.clear()
        inner_products(query, small)
        assert seen == [before]
        inner_products(np.vstack([query, query]), small)  # several queries: a matrix product, threads as they are
        assert _blas_threads() == before


def test_the_one_thread_limit_nests_and_concurrent_callers_give_the_threads_back() -> None:
    import threading

    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _blas_threads()
        with linalg.one_blas_thread():
            with linalg.one_blas_thread():
                assert _blas_threads() == [1] * len(before)
            assert _blas_threads() == [1] * len(before)  # the outer caller is still inside
        assert _blas_threads() == before

        inside = threading.Barrier(4)
        errors: list[BaseException] = []

        def scan() -> None:
            try:
                with linalg.one_blas_thread():
                    inside.wait(timeout=10)  # all four inside at once
                    with linalg.one_blas_thread():
                        inner_products(np.ones((1, 8), np.float32), np.ones((50, 8), np.float32))
                    inside.wait(timeout=10)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        workers = [threading.Thread(target=scan) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert not errors
        assert _blas_threads() == before
