"""Embedders: sentence-transformers models, plus an on-disk cache in front of any embedder.

``make_embedder`` resolves a name through ``ragkit.registry.embedders``: an exact registered name first, then a
family (the part before the first ``-``: ``hashing-64`` -> ``hashing``), else ``sentence-transformers``, which
takes any model name or local directory. Each entry is ``make(name, *, device, batch_size) -> Embedder``.
"""

from __future__ import annotations

from ragkit.connectors.embedders.cache import EmbeddingCache
from ragkit.connectors.embedders.sentence_transformers import SentenceTransformerEmbedder
from ragkit.protocols import Embedder
from ragkit.registry import embedders

DEFAULT_FAMILY = "sentence-transformers"


def make_embedder(name: str, *, device: str = "auto", batch_size: int | None = None) -> Embedder:
    """The embedder a manifest or setting names: ``hashing-<dim>`` (the test fake), a plugin's, or a
    sentence-transformers model."""
    family, dash, _ = name.partition("-")
    if name in embedders:
        key = name
    elif dash and family in embedders:
        key = family
    else:
        key = DEFAULT_FAMILY
    embedder: Embedder = embedders.get(key)(name, device=device, batch_size=batch_size)
    return embedder


def sentence_transformer_embedder(name: str, *, device: str = "auto", batch_size: int | None = None) -> Embedder:
    """The ``sentence-transformers`` entry: any model name or local directory."""
    return SentenceTransformerEmbedder(name, device=device, batch_size=batch_size)


def hashing_embedder(name: str, *, device: str = "auto", batch_size: int | None = None) -> Embedder:
    """The ``hashing`` family: ``hashing-<dim>`` is ``ragkit.testing.HashingEmbedder(dim)`` (no model)."""
    dim = name.removeprefix("hashing-")
    if dim == name or not dim.isdigit():
        return sentence_transformer_embedder(name, device=device, batch_size=batch_size)  # a model's name, as before
    from ragkit.testing import HashingEmbedder

    return HashingEmbedder(int(dim))


__all__ = ["EmbeddingCache", "SentenceTransformerEmbedder", "make_embedder"]
