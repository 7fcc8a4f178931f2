"""Milvus (through milvus-lite, in a ``.db`` path inside the index directory) passes the conformance suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragkit.protocols import VectorIndex

from .vector_index_suite import IndexFactory, VectorIndexSuite

pytest.importorskip("pymilvus", reason="Milvus backend needs the 'milvus' extra")
pytest.importorskip("milvus_lite", reason="Milvus backend needs the 'milvus' extra")

from ragkit.connectors.vectors.milvus import MilvusIndex  # noqa: E402


@pytest.fixture(params=["FLAT", "HNSW"])
def milvus_index_type(request: pytest.FixtureRequest) -> str:
    return request.param


class TestMilvusConformance(VectorIndexSuite):
    @pytest.fixture
    def exact_search(self, milvus_index_type: str) -> bool:
        return milvus_index_type == "FLAT"

    @pytest.fixture
    def make_index(self, milvus_index_type: str) -> IndexFactory:
        def make(directory: Path, dim: int) -> VectorIndex:
            return MilvusIndex(directory / "milvus.db", dim, index_type=milvus_index_type)

        return make
