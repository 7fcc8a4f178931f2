"""Rerankers: a cross-encoder reads each (query, passage) pair of a mode's top hits and re-scores it.

A retrieval mode ranks by comparing separately built vectors or term statistics; a cross-encoder sees the query
and the passage together, which ranks better and costs one model pass per pair, so it re-scores only the
mode's top ``retrieval.rerank_candidates`` hits. The model is a sentence-transformers ``CrossEncoder`` loaded
from a local directory, or from an installed Python package that carries one; nothing is downloaded.

:func:`rerank_by_scores` is the pure core (hits and their scores in, the top ``k`` out); the class only adds
the model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ragkit.connectors.huggingface import model_package, packaged_model_dir, quiet_progress_bars
from ragkit.errors import ConfigError
from ragkit.types import Hit

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

RERANK_SUFFIX = "+rerank"
"""Appended to a hit's ``retriever`` (``"dense"`` -> ``"dense+rerank"``) once a reranker has scored it."""


def resolve_reranker_model(name: str | os.PathLike[str]) -> Path:
    """The directory of the cross-encoder ``name`` names: a local directory, or the model inside an installed
    Python package. ConfigError otherwise: no model is ever downloaded."""
    text = str(name)
    if text and Path(text).is_dir():
        return Path(text)
    package = model_package(text)
    if package is not None:
        try:
            return packaged_model_dir(package)
        except ImportError as exc:
            raise ConfigError(f"retrieval.rerank: {exc}") from None
    raise ConfigError(
        f"retrieval.rerank: {text!r} is neither a local directory nor an installed Python package; nothing is "
        "downloaded: give the directory of a sentence-transformers cross-encoder, or install the package that "
        "carries one"
    )


def rerank_by_scores(hits: Sequence[Hit], scores: Sequence[float], k: int) -> list[Hit]:
    """The ``k`` best of ``hits`` by ``scores`` (ties keep the first-stage order), each hit carrying its new
    score, ``retriever`` ``"<mode>+rerank"`` and, added to what the mode explained, ``rerank_score`` and
    ``first_stage_rank`` (1 = the mode's best).

    >>> [h.score for h in rerank_by_scores(hits, [0.1, 0.9, 0.5], k=2)]   # doctest: +SKIP
    [0.9, 0.5]
    """
    if len(scores) != len(hits):
        raise ValueError(f"{len(scores)} scores for {len(hits)} hits")
    order = sorted(range(len(hits)), key=lambda i: -scores[i])  # sorted() is stable: ties keep their order
    reranked = []
    for i in order[:k]:
        hit, score = hits[i], float(scores[i])
        explain = {**(hit.explain or {}), "rerank_score": score, "first_stage_rank": i + 1}
        retriever = hit.retriever if hit.retriever.endswith(RERANK_SUFFIX) else hit.retriever + RERANK_SUFFIX
        reranked.append(dataclasses.replace(hit, score=score, retriever=retriever, explain=explain))
    return reranked


class CrossEncoderReranker:
    """A ``ragkit.protocols.Reranker`` over a sentence-transformers ``CrossEncoder`` loaded offline.

    ``model`` is a local model directory or an installed package that carries one; ``device`` ``"auto"`` picks
    CUDA when present. Each pair's passage is the chunk's ``embed_text`` (its title, then its text), what the
    modes themselves ranked.

    >>> reranker = CrossEncoderReranker("models/ms-marco-MiniLM-L-6-v2", device="cpu")   # doctest: +SKIP
    >>> reranker.rerank("what makes sourdough rise?", index.retrieve(q, k=50, mode="dense"), k=5)  # doctest: +SKIP
    """

    def __init__(self, model: str | os.PathLike[str], *, device: str = "auto", batch_size: int | None = None) -> None:
        from sentence_transformers import CrossEncoder

        from ragkit.connectors.embedders.sentence_transformers import pick_device

        self.name = str(model)
        self.path = resolve_reranker_model(model)
        self.device = pick_device(device)
        self.batch_size = batch_size or (256 if self.device.startswith("cuda") else 32)
        try:
            with quiet_progress_bars():
                self.model: CrossEncoder = CrossEncoder(str(self.path), device=self.device, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"retrieval.rerank: cannot load a cross-encoder from {self.path} offline ({exc}); nothing is "
                "downloaded"
            ) from None
        labels = getattr(self.model, "num_labels", 1)
        if labels != 1:
            raise ConfigError(
                f"retrieval.rerank: {self.path} is a classifier with {labels} labels; a reranker gives one "
                "relevance score per (query, passage) pair"
            )

    def rerank(self, query: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        """The ``k`` best of ``hits`` for ``query`` by the cross-encoder's score (see :func:`rerank_by_scores`)."""
        return self.rerank_many([query], [hits], k)[0]

    def rerank_many(self, queries: Sequence[str], hits: Sequence[Sequence[Hit]], k: int) -> list[list[Hit]]:
        """:meth:`rerank` for a batch: one ``predict`` over every (query, passage) pair of every query."""
        if len(queries) != len(hits):
            raise ValueError(f"{len(queries)} queries but {len(hits)} hit lists")
        pairs = [(query, hit.chunk.embed_text) for query, row in zip(queries, hits, strict=True) for hit in row]
        if not pairs:
            return [[] for _ in queries]
        predicted = self.model.predict(
            pairs, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True
        )
        scores = np.asarray(predicted, dtype=np.float64).reshape(-1).tolist()
        if len(scores) != len(pairs):
            raise ValueError(f"{self.name}: {len(scores)} scores for {len(pairs)} pairs; a reranker gives one each")
        results, start = [], 0
        for row in hits:
            results.append(rerank_by_scores(row, scores[start : start + len(row)], k))
            start += len(row)
        return results
