"""FAISS passes the VectorIndex conformance suite: exact, HNSW and IVF-PQ, on one shard and on three."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragkit.conformance import IndexFactory
from ragkit.connectors.vectors.faiss import FaissShardedIndex
from ragkit.protocols import VectorIndex
from ragkit.testing import VectorIndexConformance

# IVF-PQ trains once a shard holds ``train_size`` vectors: keep it below a shard's share of the 2,000-vector
# corpus, so the quantized index (not the flat buffer it starts from) is what gets tested; otherwise defaults.
IVFPQ_OPTIONS = {"nlist": 16, "nprobe": 8, "train_size": 400}


@pytest.fixture(
    scope="module",
    params=[("flat", 1), ("flat", 3), ("hnsw", 1), ("hnsw", 3), ("ivfpq", 1), ("ivfpq", 3)],
    ids=lambda param: f"{param[0]}-{param[1]}shard",
)
def faiss_layout(request: pytest.FixtureRequest) -> tuple[str, int]:
    return request.param


@pytest.fixture(scope="module")
def exact_search(faiss_layout: tuple[str, int]) -> bool:
    return faiss_layout[0] == "flat"


@pytest.fixture(scope="module")
def make_index(faiss_layout: tuple[str, int]) -> IndexFactory:
    kind, shards = faiss_layout
    options = IVFPQ_OPTIONS if kind == "ivfpq" else {}

    def make(directory: Path, dim: int) -> VectorIndex:
        return FaissShardedIndex(directory, dim, shards=shards, kind=kind, **options)

    return make


class TestFaissConformance(VectorIndexConformance):
    pass


def test_flat_search_of_a_few_queries_equals_faiss_own_search(tmp_path: Path) -> None:
    """Fewer than FLAT_BLAS_BELOW queries go through one BLAS product over FAISS's storage; more go through
    FAISS. Both must give the same hits, also after deletes and re-adds have reshuffled that storage."""
    import numpy as np

    from ragkit.connectors.vectors.faiss import FLAT_BLAS_BELOW

    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    ids = rng.permutation(10_000)[:3000].astype(np.int64) + 5
    store = FaissShardedIndex(tmp_path / "v", 32, shards=2, kind="flat")
    store.add(ids, vectors, [{"doc_id": f"d{i}"} for i in ids])
    store.delete(ids[::7])
    store.add(ids[::14], vectors[::14] * 0.5, [{"doc_id": "again"}] * len(ids[::14]))
    queries = rng.standard_normal((FLAT_BLAS_BELOW + 5, 32)).astype(np.float32)
    via_faiss = store.search(queries, 10)
    for row in (0, 3, FLAT_BLAS_BELOW):
        few = store.search(queries[row : row + 1], 10)
        np.testing.assert_array_equal(few[1][0], via_faiss[1][row])
        np.testing.assert_allclose(few[0][0], via_faiss[0][row], rtol=1e-5)
    small = store.search(queries[:2], 5000)  # k beyond what is stored: padded as FAISS pads
    assert (small[1][:, : len(store.ids())] >= 0).all() and (small[1][:, len(store.ids()) :] == -1).all()
