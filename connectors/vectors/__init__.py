"""Vector backends behind ``ragkit.protocols.VectorIndex``: FAISS (default), Milvus and Chroma, and plugins.

Each backend is an opener registered in ``ragkit.registry.vector_backends``:
``open(directory, dim, settings, *, read_only=False) -> VectorIndex``, ``settings`` being an index's
``[vectors]`` section (``backend``, ``kind``, ``shards``, ``uri``, ``token``). Third-party backends register
theirs under the ``ragkit.vector_backends`` entry-point group (see ``docs/plugins.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ragkit.protocols import VectorIndex
from ragkit.registry import vector_backends

BACKENDS: tuple[str, ...] = ("faiss", "milvus", "chroma")  # the built-in ones; all: vector_backends.names()


def open_vector_index(
    directory: Path, dim: int, settings: Mapping[str, Any], *, read_only: bool = False
) -> VectorIndex:
    """Open (or create) the backend an index's manifest names, with its data under ``directory``.

    ``read_only``: the caller only searches; a backend that can must then leave its files as they are.
    """
    opener = vector_backends.get(settings.get("backend", "faiss"))
    return opener(directory, dim, settings, read_only=read_only)


def _shards(settings: Mapping[str, Any]) -> int:
    return int(settings.get("shards") or 1)


def open_faiss(directory: Path, dim: int, settings: Mapping[str, Any], *, read_only: bool = False) -> VectorIndex:
    """FAISS shards under ``directory/faiss`` (``kind``: flat, hnsw or ivfpq)."""
    from ragkit.connectors.vectors.faiss import FaissShardedIndex

    return FaissShardedIndex(
        directory / "faiss", dim, shards=_shards(settings), kind=settings.get("kind", "flat"), read_only=read_only
    )


def open_milvus(directory: Path, dim: int, settings: Mapping[str, Any], *, read_only: bool = False) -> VectorIndex:
    """Milvus at ``uri``, else milvus-lite in ``directory/milvus.db``; a server is read live (``read_only`` unused)."""
    from ragkit.connectors.vectors.milvus import MilvusIndex

    uri = settings.get("uri") or str(directory / "milvus.db")
    return MilvusIndex(uri, dim, token=settings.get("token"), shards_num=_shards(settings))


def open_chroma(directory: Path, dim: int, settings: Mapping[str, Any], *, read_only: bool = False) -> VectorIndex:
    """A Chroma server at ``uri`` (``http://host:port``), else a persistent Chroma in ``directory/chroma``."""
    from ragkit.connectors.vectors.chroma import ChromaIndex

    uri = settings.get("uri")
    if uri:
        host, _, port = uri.removeprefix("http://").partition(":")
        return ChromaIndex(None, dim, host=host, port=int(port or 8000), shards=_shards(settings))
    return ChromaIndex(directory / "chroma", dim, shards=_shards(settings))


__all__ = ["BACKENDS", "open_chroma", "open_faiss", "open_milvus", "open_vector_index"]
