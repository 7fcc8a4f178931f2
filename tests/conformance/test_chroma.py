"""Chroma (a persistent directory inside the index) passes the conformance suite, on one collection and three."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragkit.protocols import VectorIndex

from .vector_index_suite import IndexFactory, VectorIndexSuite

pytest.importorskip("chromadb", reason="Chroma backend needs the 'chroma' extra")

from ragkit.connectors.vectors.chroma import ChromaIndex  # noqa: E402


@pytest.fixture(params=[1, 3], ids=lambda shards: f"{shards}shard")
def chroma_shards(request: pytest.FixtureRequest) -> int:
    return request.param


class TestChromaConformance(VectorIndexSuite):
    @pytest.fixture
    def exact_search(self) -> bool:
        return False  # Chroma searches an HNSW graph

    @pytest.fixture
    def make_index(self, chroma_shards: int) -> IndexFactory:
        def make(directory: Path, dim: int) -> VectorIndex:
            return ChromaIndex(directory / "chroma", dim, shards=chroma_shards)

        return make
