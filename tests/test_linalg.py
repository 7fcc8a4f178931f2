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


def test_one_small_scan_runs_in_numpys_loop_and_larger_ones_or_batches_in_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    """One query's small scan never wakes BLAS's pool (its spinning threads slowed the next query's forward)."""
    seen: list[tuple[int, ...]] = []
    real = linalg.row_dots

    def recording(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
        seen.append(matrix.shape)
        return real(matrix, vector)

    monkeypatch.setattr(linalg, "row_dots", recording)
    rng = np.random.default_rng(5)
    query = rng.standard_normal((1, 48)).astype(np.float32)
    small = rng.standard_normal((500, 48)).astype(np.float32)
    out = inner_products(query, small)
    assert seen == [small.shape]
    assert out.dtype == np.float32 and out.shape == (1, 500)
    np.testing.assert_allclose(out[0], small.astype(np.float64) @ query[0].astype(np.float64), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(inner_products(query, small), out)  # the same bits every time

    seen.clear()
    monkeypatch.setattr(linalg, "SMALL_SCAN", 100)  # past the limit, on a machine of many cores: BLAS's threads
    monkeypatch.setattr(linalg, "process_cores", lambda: 16)
    np.testing.assert_array_equal(inner_products(query, small), (small @ query[0])[None, :])
    assert seen == []
    monkeypatch.setattr(linalg, "process_cores", lambda: 2)  # on two cores, any size: numpy's loop
    np.testing.assert_array_equal(inner_products(query, small), out)
    assert seen == [small.shape]
    seen.clear()
    np.testing.assert_array_equal(inner_products(np.vstack([query, query]), small), np.vstack([query, query]) @ small.T)
    assert seen == []  # several queries: one matrix product
