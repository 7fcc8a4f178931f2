"""Embedders: sentence-transformers models, plus an on-disk cache in front of any embedder."""

from __future__ import annotations

from ragkit.connectors.embedders.cache import EmbeddingCache
from ragkit.connectors.embedders.sentence_transformers import SentenceTransformerEmbedder
from ragkit.protocols import Embedder


def make_embedder(name: str, *, device: str = "auto", batch_size: int | None = None) -> Embedder:
    """The embedder a manifest or setting names: ``hashing-<dim>`` (the test fake) or a sentence-transformers model."""
    if name.startswith("hashing-") and name.removeprefix("hashing-").isdigit():
        from ragkit.testing import HashingEmbedder

        return HashingEmbedder(int(name.removeprefix("hashing-")))
    return SentenceTransformerEmbedder(name, device=device, batch_size=batch_size)


__all__ = ["EmbeddingCache", "SentenceTransformerEmbedder", "make_embedder"]
