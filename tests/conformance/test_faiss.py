"""FAISS passes the VectorIndex conformance suite: exact, HNSW and IVF-PQ, on one shard and on three."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragkit.connectors.vectors.faiss import FaissShardedIndex
from ragkit.protocols import VectorIndex

from .vector_index_suite import IndexFactory, VectorIndexSuite

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


class TestFaissConformance(VectorIndexSuite):
    pass
