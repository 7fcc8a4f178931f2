"""The streaming BM25 build (two passes, bounded memory) gives exactly the index plain bm25s builds."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import bm25s
import numpy as np
import pytest
import Stemmer

from ragkit.bm25 import BM25Index
from ragkit.types import Chunk

WORDS = (
    "river owl meadow granite kestrel lantern harbour orchard running runs ran runner connection connected "
    "connects generously generous the a of and to is was were be been being THE Of AND it its "
    "42 007 3.14 1e9 x y z ab AB café naïve Straße ünïcödé Ωmega 日本語 данные مرحبا año "
    "don't it's e-mail state-of-the-art foo_bar __init__ ___ 12ab"
).split()


def reference(texts: list[str], k1: float = 0.9, b: float = 0.4) -> bm25s.BM25:
    """What ``BM25Index.build`` did before streaming: tokenize everything at once, then ``BM25.index``."""
    stemmer = Stemmer.Stemmer("english")
    tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(tokens, show_progress=False)
    return retriever


def chunks_of(texts: list[str], titles: list[str] | None = None) -> list[Chunk]:
    return [
        Chunk(
            id=f"c{i:06d}",
            doc_id=f"d{i}",
            text=text,
            start=0,
            end=len(text),
            meta={"title": titles[i]} if titles else {},
        )
        for i, text in enumerate(texts)
    ]


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        kind = i % 11
        if kind == 0:
            texts.append("")  # empty
        elif kind == 1:
            texts.append("the a of and to is THE Of")  # nothing left after stop words
        elif kind == 2:
            texts.append(" ".join(["owl"] * rng.randint(1, 60)))  # one term, repeated
        elif kind == 3:
            texts.append("x y z ! ? - . ,")  # only one-character tokens
        else:
            words = rng.choices(WORDS, k=rng.randint(1, 80))
            # rare, unique-ish tokens too, so the vocabulary grows over the whole corpus
            words += [f"tok{rng.randint(0, 50 * n)}" for _ in range(rng.randint(0, 5))]
            texts.append(" ".join(words))
    return texts


def assert_same_index(ours: BM25Index, texts: list[str], queries: list[str]) -> None:
    expected = reference(texts)
    got = ours._retriever
    assert got is not None
    # the vocabulary, ids included (bm25s numbers stems in the order of a set: the same set in this process)
    assert list(got.vocab_dict.items()) == list(expected.vocab_dict.items())
    for key in ("indptr", "indices", "data"):
        assert got.scores[key].dtype == expected.scores[key].dtype, key
        assert got.scores[key].shape == expected.scores[key].shape, key
    assert np.array_equal(got.scores["indptr"], expected.scores["indptr"])
    assert np.array_equal(got.scores["indices"], expected.scores["indices"])
    np.testing.assert_allclose(got.scores["data"], expected.scores["data"], rtol=0, atol=1e-6)
    assert np.array_equal(got.scores["data"], expected.scores["data"])  # in fact bit for bit
    assert got.scores["num_docs"] == expected.scores["num_docs"] == len(texts)
    assert got.nonoccurrence_array is None
    assert got.unique_token_ids_set == set(expected.vocab_dict.values())

    old = BM25Index(expected, ours.chunk_ids, ours.generation)
    assert ours.search(queries, 10) == old.search(queries, 10)
    mask = (np.arange(len(texts)) % 3 != 0).astype(np.float32)
    assert ours.search(queries[:20], 10, mask) == old.search(queries[:20], 10, mask)


@pytest.fixture(scope="module")
def synthetic() -> list[str]:
    return synthetic_texts(4000)


def synthetic_queries(n: int = 100, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    queries = [" ".join(rng.choices(WORDS, k=rng.randint(1, 6))) for _ in range(n - 3)]
    return [*queries, "", "the of and", "zzzunknownzzz"]


def test_synthetic_corpus_matches_bm25s(synthetic: list[str]) -> None:
    chunks = chunks_of(synthetic)
    index = BM25Index.build(lambda: iter(chunks), 7, batch_size=333)
    assert index.chunk_ids == [c.id for c in chunks] and index.generation == 7
    assert_same_index(index, synthetic, synthetic_queries())


def test_batch_size_does_not_change_the_index(synthetic: list[str]) -> None:
    chunks = chunks_of(synthetic)
    built = [BM25Index.build(lambda: iter(chunks), 1, batch_size=size) for size in (1, 7, 1000, 10**6)]
    first = built[0]._retriever
    assert first is not None
    for other in built[1:]:
        assert other._retriever is not None
        assert list(other._retriever.vocab_dict.items()) == list(first.vocab_dict.items())
        for key in ("indptr", "indices", "data"):
            assert np.array_equal(other._retriever.scores[key], first.scores[key]), key


def test_every_input_form_gives_the_same_index(synthetic: list[str]) -> None:
    chunks = chunks_of(synthetic[:500])
    forms = [
        lambda: (c for c in chunks),  # a factory of generators, as the callers pass it
        chunks,  # a list
        tuple(chunks),
        iter(chunks),  # a one-shot iterator: read into a list first
        (c for c in chunks),
    ]
    built = [BM25Index.build(form, 3, batch_size=64) for form in forms]
    for index in built:
        assert index.chunk_ids == built[0].chunk_ids
        assert index._retriever is not None and built[0]._retriever is not None
        for key in ("indptr", "indices", "data"):
            assert np.array_equal(index._retriever.scores[key], built[0]._retriever.scores[key])
    assert_same_index(built[0], synthetic[:500], synthetic_queries(30))


def test_titles_are_indexed(synthetic: list[str]) -> None:
    texts = synthetic[:300]
    titles = [f"Title {i} kestrel" if i % 2 else "" for i in range(len(texts))]
    chunks = chunks_of(texts, titles)
    index = BM25Index.build(lambda: iter(chunks), 1, batch_size=50)
    assert_same_index(index, [c.embed_text for c in chunks], ["kestrel", "title owl"])


TRICKY = [
    "",
    "a",
    "ab",
    "a b c",
    "x1 1x __ _a a_ ___init___",
    "don't it's e-mail state-of-the-art",
    "Straße STRASSE İstanbul ǅemal ﬁne ﬀ",  # lower() that changes length, ligatures
    "café cafe\u0301 n\u0303o",  # combining marks (\w in Unicode)
    "日本語のテキスト 中文 한국어",
    "٣٤ ١٢٣ ²³ ½ Ⅻ 10th 3.14 1,000",
    "\u00a0non\u00a0breaking\u2009thin\u200bzero width\u200djoiner",
    "tab\there\nnew\r\nline",
    "emoji 🦉🦉 owl🦉owl",
    "RUNNING Runs run runner's",
]


def test_tokenizer_matches_bm25s() -> None:
    from ragkit.bm25 import _SPLIT, _Encoder

    pattern = re.compile(r"(?u)\b\w\w+\b").findall  # bm25s.tokenize's default
    rng = random.Random(5)
    alphabet = "aZ _-'.1٣ßİ\u0301é日🦉\u00a0\n"
    samples = TRICKY + ["".join(rng.choices(alphabet, k=rng.randint(0, 30))) for _ in range(3000)]
    for text in samples:
        assert _SPLIT(text.lower()) == pattern(text.lower()), text

    encoder = _Encoder()
    stems = bm25s.tokenize(samples, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False,
                           show_progress=False)
    terms, lengths = encoder.encode(samples, grow=True)
    names = list(encoder.ids)
    assert [len(doc) for doc in stems] == lengths.tolist()
    assert [names[t] for t in terms.tolist()] == [stem for doc in stems for stem in doc]


def test_scifact_matches_bm25s(shared_data: Path) -> None:
    path = shared_data / "scifact" / "corpus.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    chunks = chunks_of([r["text"] for r in rows], [r.get("title", "") for r in rows])
    queries_path = shared_data / "scifact" / "queries.jsonl"
    if queries_path.is_file():
        lines = queries_path.read_text(encoding="utf-8").splitlines()
        queries = [json.loads(line)["text"] for line in lines if line.strip()][:100]
    else:
        queries = [r["title"] for r in rows[:100]]
    index = BM25Index.build(lambda: iter(chunks), 1, batch_size=1000)
    assert_same_index(index, [c.embed_text for c in chunks], queries)


def test_small_and_empty_corpora() -> None:
    assert BM25Index.build(lambda: iter([]), 4)._retriever is None
    assert BM25Index.build([], 4).search(["owl"], 3) == [[]]

    one = BM25Index.build(chunks_of(["owl owls"]), 1)
    assert_same_index(one, ["owl owls"], ["owl", "river", ""])
    assert one.search(["owl"], 5)[0][0][0] == "c000000"

    # no chunk with a searchable word: bm25s.BM25.index fails here; the streaming build gives an empty index
    nothing = BM25Index.build(chunks_of(["", "the of", "a ! ?"]), 2)
    assert nothing._retriever is not None
    assert nothing._retriever.vocab_dict == {"": 0}
    assert nothing.search(["owl", "", "the"], 5) == [[], [], []]


def test_saved_index_loads_both_ways(tmp_path: Path, synthetic: list[str]) -> None:
    texts = synthetic[:800]
    chunks = chunks_of(texts)
    queries = synthetic_queries(40)
    new = BM25Index.build(lambda: iter(chunks), 5, batch_size=100)
    old = BM25Index(reference(texts), [c.id for c in chunks], 5)

    new.save(tmp_path / "new")
    old.save(tmp_path / "old")
    for name in ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json"):
        assert (tmp_path / "new" / "bm25-5" / name).read_bytes() == (tmp_path / "old" / "bm25-5" / name).read_bytes()
    new_params = json.loads((tmp_path / "new" / "bm25-5" / "params.index.json").read_text())
    old_params = json.loads((tmp_path / "old" / "bm25-5" / "params.index.json").read_text())
    assert new_params == old_params
    assert sorted(p.name for p in (tmp_path / "new" / "bm25-5").iterdir()) == sorted(
        p.name for p in (tmp_path / "old" / "bm25-5").iterdir()
    )

    expected = old.search(queries, 10)
    for folder in ("new", "old"):
        loaded = BM25Index.load(tmp_path / folder)
        assert loaded is not None and loaded.generation == 5 and loaded.chunk_ids == new.chunk_ids
        assert loaded.search(queries, 10) == expected

    empty = BM25Index.build(chunks_of(["the", ""]), 6)
    empty.save(tmp_path / "empty")
    loaded = BM25Index.load(tmp_path / "empty")
    assert loaded is not None and loaded.search(["owl"], 3) == [[]]


def test_chunks_changing_between_passes_are_read_again(synthetic: list[str]) -> None:
    stable = chunks_of(synthetic[:200])
    changed = chunks_of([*synthetic[:100], "brand new kestrel words", *synthetic[101:200]])
    calls = 0

    def source() -> Iterator[Chunk]:
        nonlocal calls
        calls += 1
        return iter(changed if calls == 2 else stable)  # the second pass of the first attempt differs

    index = BM25Index.build(source, 1, batch_size=30)
    assert calls == 4
    assert_same_index(index, synthetic[:200], ["kestrel owl"])

    def always_changing() -> Iterator[Chunk]:
        nonlocal calls
        calls += 1
        return iter(changed if calls % 2 else stable)

    calls = 0
    index = BM25Index.build(always_changing, 1, batch_size=30)  # 3 tries, then one reading held in a list
    assert calls == 7
    assert_same_index(index, [c.embed_text for c in changed], ["kestrel owl"])


def test_catalog_factory_as_the_callers_pass_it(tmp_path: Path, synthetic: list[str]) -> None:
    from ragkit import Index, Settings
    from ragkit.testing import HashingEmbedder

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(synthetic[:60]):
        (corpus / f"doc{i}.txt").write_text(f"{text} kestrel number {i}." if text else "the of")
    settings = Settings().merged(graph={"enabled": False}, chunking={"max_tokens": 16, "overlap": 4})
    index = Index.create(tmp_path / "idx", settings, embedder=HashingEmbedder(64))
    index.add([str(corpus)])
    chunks = [c for batch in index.catalog.iter_chunks() for c in batch]
    assert len(chunks) > 60

    built = BM25Index.build(
        lambda: (c for cs in index.catalog.iter_chunks(batch_size=7) for c in cs), 9, batch_size=25
    )
    assert built.chunk_ids == [c.id for c in chunks]
    assert_same_index(built, [c.embed_text for c in chunks], ["kestrel", "owl river", "number 7"])
    saved = index.bm25  # built and saved by the pipeline
    assert saved.chunk_ids == built.chunk_ids
    assert saved.search(["kestrel owl"], 10) == built.search(["kestrel owl"], 10)
