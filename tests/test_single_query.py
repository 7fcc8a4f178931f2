"""The lean one-query path (``SingleQueryEncoder``) gives ``encode``'s vector bit for bit, and the index uses it."""

from __future__ import annotations

import numpy as np
import pytest

from ragkit.connectors.embedders.single_query import SingleQueryEncoder
from ragkit.testing import HashingEmbedder

pytestmark = pytest.mark.slow

TEXTS = [
    "who founded the company that built the bridge?",
    "A volcano erupts lava.",
    "",
    "   spaced \t out  ",
    "Ünïcödé naïve café 東京 — dashes",
    "word " * 600,  # past max_seq_length: truncated as encode truncates
]


def test_same_vector_as_encode_bit_for_bit(minilm):
    encoder = SingleQueryEncoder.of(minilm)
    assert encoder is not None and encoder.usable
    for text in TEXTS:
        reference = minilm.embed_queries([text])
        vector = encoder(text)
        assert vector.dtype == np.float32 and vector.shape == (1, minilm.dim) and vector.flags.c_contiguous
        assert np.array_equal(vector, reference), text[:40]


def test_follows_a_changed_max_seq_length(minilm):
    encoder = SingleQueryEncoder.of(minilm)
    assert encoder is not None
    before = minilm.model.max_seq_length
    try:
        minilm.model.max_seq_length = 16
        assert np.array_equal(encoder(TEXTS[-1]), minilm.embed_queries([TEXTS[-1]]))
        assert len(encoder.tokenize(TEXTS[-1])["input_ids"][0]) == 16
    finally:
        minilm.model.max_seq_length = before


def test_training_mode_is_not_used(minilm):
    encoder = SingleQueryEncoder.of(minilm)
    assert encoder is not None
    minilm.model.train()
    try:
        assert not encoder.usable  # the store then asks the embedder, whose encode switches to eval mode
    finally:
        minilm.model.eval()
    assert encoder.usable


def test_other_embedders_are_declined():
    assert SingleQueryEncoder.of(HashingEmbedder(16)) is None
    assert SingleQueryEncoder.of(object()) is None


def test_index_queries_use_it_with_the_same_hits(minilm, tmp_path):
    from ragkit import Document, Index, Settings

    settings = Settings().merged(chunking={"strategy": "none"}, graph={"enabled": False})
    docs = [
        Document(id=f"d{i}", text=text, source=f"mem#{i}", title=f"T{i}")
        for i, text in enumerate(["Volcanoes erupt lava and ash.", "Sourdough bread needs a starter.",
                                  "The bridge was founded by a company in 1901.", "Cats sleep most of the day."])
    ]
    with Index.create(tmp_path / "idx", settings, embedder=minilm) as index:
        index.add_documents(docs)
        question = "who built the bridge?"
        single = index.retrieve(question, k=3, mode="dense")
        by_encode = index.search_by_vector(minilm.embed_queries([question]), k=3)[0]
        assert [(h.chunk.id, h.score, h.source) for h in single] == [
            (h.chunk.id, h.score, h.source) for h in by_encode
        ]
        assert single[0].chunk.doc_id == "d2" and single[0].source == "mem#2"
        assert isinstance(index.store._parts.get("single-query"), SingleQueryEncoder)
