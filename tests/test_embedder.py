"""The real packaged MiniLM: shape, normalization, the on-disk cache, and the GPU encoding path (run on CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from ragkit.connectors.embedders import EmbeddingCache
from ragkit.connectors.embedders.sentence_transformers import PipelinedEncoder, encode_pipelined, mean_pooling_model

pytestmark = pytest.mark.slow

TEXTS = ["A volcano erupts lava.", "Sourdough needs a starter.", "x " * 400, "Ünïcödé text — with dashes", ""]


def test_embeddings_are_normalized_float32(minilm):
    vectors = minilm.embed_documents(TEXTS)
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm.max_tokens == 256 and minilm.dim == 384


def test_pipelined_encoding_matches_sentence_transformers(minilm):
    assert mean_pooling_model(minilm.model)
    reference = minilm.model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    fast = encode_pipelined(minilm.model, TEXTS, batch_size=2, device="cpu")
    np.testing.assert_allclose(np.sum(reference * fast, axis=1), 1.0, atol=1e-5)


def test_padded_batches_and_warm_up_change_no_vector(minilm):
    """The GPU path pads each batch to a multiple of 8 tokens (masked out) and can warm up every such shape; both
    run on CPU too, and a call smaller than the workers' batches is cut so that each worker tokenizes a part."""
    reference = minilm.model.encode(TEXTS * 30, normalize_embeddings=True, convert_to_numpy=True)
    encoder = PipelinedEncoder(minilm.model, "cpu", batch_size=4, pad_multiple=8, workers=2)
    assert encoder.warm_up() > 0
    padded = encoder(TEXTS * 30)
    assert padded.dtype == np.float32 and padded.shape == (150, 384)
    np.testing.assert_allclose(np.sum(reference * padded, axis=1), 1.0, atol=1e-5)
    assert encoder([]).shape == (0, 384)


def test_cache_embeds_each_text_once(minilm, tmp_path):
    cache = EmbeddingCache(tmp_path / "e.sqlite", minilm.name, minilm.dim)
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return minilm.embed_documents(texts)

    first, computed = cache.embed(["a", "b", "a"], embed)
    assert computed == 2 and calls == [["a", "b"]]
    again, computed = cache.embed(["b", "a", "c"], embed)
    assert computed == 1 and calls[-1] == ["c"]
    np.testing.assert_array_equal(first[0], again[1])
    reopened = EmbeddingCache(tmp_path / "e.sqlite", minilm.name, minilm.dim)
    assert set(reopened.get_many([__import__("ragkit.types").types.sha1_hex("c")])) != set()


def test_cache_reads_vectors_an_earlier_version_stored(tmp_path):
    """Caches written before the rowid layout keep their vectors: looked up in the old table, by writers and
    readers alike; new vectors go to the new table."""
    import sqlite3

    from ragkit.testing import HashingEmbedder
    from ragkit.types import sha1_hex

    hashing = HashingEmbedder(16)
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # the earlier layout, as it was created
        conn.execute(
            "CREATE TABLE embeddings (model TEXT NOT NULL, text_hash TEXT NOT NULL, vector BLOB NOT NULL, "
            "PRIMARY KEY (model, text_hash)) WITHOUT ROWID"
        )
        conn.execute("INSERT INTO embeddings VALUES (?, ?, ?)",
                     (hashing.name, sha1_hex("old text"), hashing.embed_documents(["old text"])[0].tobytes()))
    calls: list[list[str]] = []

    def embed(texts):
        calls.append(list(texts))
        return hashing.embed_documents(texts)

    reader = EmbeddingCache(path, hashing.name, 16, read_only=True)
    assert set(reader.get_many([sha1_hex("old text")])) == {sha1_hex("old text")}
    cache = EmbeddingCache(path, hashing.name, 16)
    vectors, computed = cache.embed(["old text", "new text"], embed)
    assert computed == 1 and calls == [["new text"]]
    np.testing.assert_array_equal(vectors, hashing.embed_documents(["old text", "new text"]))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 1
        assert "WITHOUT ROWID" not in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'vectors'").fetchone()[0]


@pytest.mark.slow
def test_loading_the_embedder_prints_no_progress_bar() -> None:
    import subprocess
    import sys

    code = "from ragkit.connectors.embedders import SentenceTransformerEmbedder; SentenceTransformerEmbedder()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Loading weights" not in result.stderr and "it/s" not in result.stderr, result.stderr
