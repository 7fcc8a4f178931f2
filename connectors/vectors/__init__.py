"""Vector backends behind ``ragkit.protocols.VectorIndex``: FAISS (default), Milvus and Chroma."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ragkit.protocols import VectorIndex

BACKENDS: tuple[str, ...] = ("faiss", "milvus", "chroma")


def open_vector_index(directory: Path, dim: int, settings: Mapping[str, Any]) -> VectorIndex:
    """Open (or create) the backend an index's manifest names, with its data under ``directory``."""
    backend = settings.get("backend", "faiss")
    shards = int(settings.get("shards") or 1)
    if backend == "faiss":
        from ragkit.connectors.vectors.faiss import FaissShardedIndex

        return FaissShardedIndex(directory / "faiss", dim, shards=shards, kind=settings.get("kind", "flat"))
    if backend == "milvus":
        from ragkit.connectors.vectors.milvus import MilvusIndex

        uri = settings.get("uri") or str(directory / "milvus.db")
        return MilvusIndex(uri, dim, token=settings.get("token"), shards_num=shards)
    if backend == "chroma":
        from ragkit.connectors.vectors.chroma import ChromaIndex

        uri = settings.get("uri")
        if uri:
            host, _, port = uri.removeprefix("http://").partition(":")
            return ChromaIndex(None, dim, host=host, port=int(port or 8000), shards=shards)
        return ChromaIndex(directory / "chroma", dim, shards=shards)
    raise ValueError(f"unknown vector backend {backend!r} (valid: {', '.join(BACKENDS)})")
