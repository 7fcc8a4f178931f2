"""The query path's Python tokenizer (``AsciiWordPiece``) gives exactly the Rust tokenizer's ids, or steps aside."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest
import tokenizers

from ragkit.connectors.embedders.sentence_transformers import DEFAULT_MODEL, resolve_model
from ragkit.connectors.embedders.wordpiece import AsciiWordPiece

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WORDS = ["the", "Running", "UNAFFABLE", "x" * 100, "y" * 101, "co-op", "don't", "42nd", "e-mail:", "a.b.c", "#1"]


def rust_tokenizer(max_length: int | None = 256) -> tokenizers.Tokenizer:
    rust = tokenizers.Tokenizer.from_file(str(Path(resolve_model(DEFAULT_MODEL)) / "tokenizer.json"))
    rust.no_padding()
    if max_length is None:
        rust.no_truncation()
    else:
        rust.enable_truncation(max_length)
    return rust


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    chars = string.printable.replace("[", "") + "\x00\x01\x0b\x0c\x1c\x1f\x7f"
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append("".join(rng.choice(chars) for _ in range(rng.choice([0, 1, 5, 40, 300, 1500]))))
        else:
            out.append(rng.choice(["", " ", "\t"]).join(rng.choice(WORDS) for _ in range(rng.choice([1, 8, 300]))))
    return out


@pytest.mark.parametrize("max_length", [256, 16, None])
def test_ids_equal_the_rust_tokenizer(max_length):
    rust = rust_tokenizer(max_length)
    fast = AsciiWordPiece.of(rust)
    assert fast is not None
    for text in texts(3000, seed=max_length or 0):
        assert fast(text) == rust.encode(text).ids, repr(text)
    assert fast._words  # the cache filled


def test_steps_aside_for_what_it_cannot_vouch_for():
    rust = rust_tokenizer()
    fast = AsciiWordPiece.of(rust)
    assert fast is not None
    for text in ["naïve café", "東京", "[MASK] token", "a[SEP]b", "emoji 😀"]:
        assert fast(text) is None, text  # non-ASCII text, or an added token's first character: Rust decides
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    assert AsciiWordPiece.of(bpe) is None


def test_queries_of_the_shared_sets():
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent (the shared evaluation sets)")
    from ragkit.eval.datasets import load_beir

    rust = rust_tokenizer()
    fast = AsciiWordPiece.of(rust)
    assert fast is not None
    checked = 0
    for name in ("hotpotqa-train100", "musique-train100", "scifact"):
        for text in load_beir(DATA / name).queries.values():
            got = fast(text)
            if got is not None:
                assert got == rust.encode(text).ids, text
                checked += 1
    assert checked > 400
