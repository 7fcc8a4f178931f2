"""The numpy WordPiece tokenizer of the GPU path gives the model exactly the ids ``SentenceTransformer`` gives it."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ragkit.connectors.embedders.wordpiece import WordPieceBatcher

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[1] / "docs"
ODD = [
    "", " ", "x " * 400, "a" * 100, "a" * 101 + " b", "Ünïcödé — 中文 text", "[CLS] [SEP] [UNK]", "ab[SEP]cd",
    "[SEP[SEP]]", "e\u0301\u0301 ΑΣ İ ß ﬁ", "tab\tnew\nline\r\x0bvt\x00nul\ufffd", "zero\u200bwidth", "😀 emoji 𝔘",
    "한국어 텍스트", "\u0e01\u0e34 thai", "Ⅻ ① ²", "[MASK]" * 300, "word" * 30,
]


def reference(transformer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    features = transformer.tokenize(texts)  # what SentenceTransformer.encode feeds the model
    assert not features["token_type_ids"].any()
    return features["input_ids"].numpy(), features["attention_mask"].numpy().astype(bool)


def corpus(n: int) -> list[str]:
    rng = random.Random(0)
    words = " ".join(p.read_text() for p in sorted(DOCS.glob("*.md"))).split()
    pool = [chr(c) for c in range(0x20, 0x3100, 7)] + ["\x01", "\t", "\u0301", "\xa0", "\U0001d165", "[UNK]"]
    texts = [" ".join(words[i : i + rng.randint(0, 250)]) for i in rng.sample(range(len(words)), n // 2)]
    return texts + ["".join(rng.choice(pool + list("abc  ")) for _ in range(rng.randint(0, 80))) for _ in range(n // 2)]


def test_ids_equal_sentence_transformers_tokenize(minilm):
    transformer = minilm.model[0]
    batcher = WordPieceBatcher(transformer.tokenizer, transformer.max_seq_length, max_cached=3000)
    texts = corpus(3000) + ODD
    random.Random(1).shuffle(texts)
    for start in range(0, len(texts), 256):  # the cache fills, merges and reaches max_cached as batches pass
        batch = texts[start : start + 256]
        ids, lengths = batcher(batch)
        want_ids, want_mask = reference(transformer, batch)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(np.arange(ids.shape[1]) < lengths[:, None], want_mask)
    assert 0 < len(batcher._cache[0]) <= 3000


def test_threads_share_one_cache(minilm):
    transformer = minilm.model[0]
    batcher = WordPieceBatcher(transformer.tokenizer, transformer.max_seq_length)
    texts = corpus(1024)
    batches = [texts[i : i + 64] for i in range(0, len(texts), 64)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(batcher, batches))
    for batch, (ids, _) in zip(batches, results, strict=True):
        np.testing.assert_array_equal(ids, reference(transformer, batch)[0])


def test_supports_only_bert_wordpiece(minilm):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    assert WordPieceBatcher.supports(minilm.model[0].tokenizer)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    assert not WordPieceBatcher.supports(PreTrainedTokenizerFast(tokenizer_object=bpe))
