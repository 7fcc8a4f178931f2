"""Extraction with the real spaCy pipeline: entities, noun phrases, parsed relations, titles and headings."""

from __future__ import annotations

from typing import Any

import pytest

from ragkit.graph.extract import SpacyExtractor, extract_doc, load_pipeline
from ragkit.graph.model import ChunkExtraction
from ragkit.graph.settings import GraphSettings
from ragkit.types import Chunk

pytestmark = pytest.mark.slow

TEXTS = {
    "journal": (
        "Journal of Psychotherapy Integration",
        "The Journal of Psychotherapy Integration is a peer-reviewed academic journal published by the American "
        "Psychological Association. The APA was founded in 1892 at Clark University.",
    ),
    "lothair": (
        "Lothair II",
        "Lothair II was the king of Lotharingia. He was the second son of Emperor Lothair I and Ermengarde of "
        "Tours.",
    ),
}


@pytest.fixture(scope="module")
def extractor() -> Any:
    with SpacyExtractor(GraphSettings(n_process=1)) as ex:
        yield ex


@pytest.fixture(scope="module")
def extracted(extractor: SpacyExtractor) -> dict[str, ChunkExtraction]:
    chunks = [
        Chunk(key, key, text, 0, len(text), {"title": title, "headings": ["History"] if key == "lothair" else []})
        for key, (title, text) in TEXTS.items()
    ]
    return {ex.chunk_id: ex for ex in extractor.extract(chunks)}


def keys(ex: ChunkExtraction, kind: str) -> set[str]:
    return {m.key for m in ex.mentions if m.kind == kind}


def triples(ex: ChunkExtraction, kind: str | None = None) -> set[tuple[str, str, str]]:
    return {(r.source, r.label, r.target) for r in ex.relations if kind is None or r.kind == kind}


def test_named_entities_with_offsets(extracted: dict[str, ChunkExtraction]) -> None:
    journal = extracted["journal"]
    assert {"journal of psychotherapy integration", "american psychological association", "clark university"} <= keys(
        journal, "entity"
    )
    text = TEXTS["journal"][1]
    for m in journal.mentions:
        if m.kind in ("entity", "noun_phrase"):
            assert text[m.start : m.end] == m.surface
    assert not any(m.label == "DATE" for m in journal.mentions)  # values ("1892") are not entities


def test_acronym_resolves_to_the_long_name(extracted: dict[str, ChunkExtraction]) -> None:
    apa = [m for m in extracted["journal"].mentions if m.surface == "APA"]
    assert apa and apa[0].key == "american psychological association"


def test_parsed_relations(extracted: dict[str, ChunkExtraction]) -> None:
    journal = triples(extracted["journal"], "svo")
    assert any(
        label == "published by" and target == "american psychological association" for _, label, target in journal
    )
    lothair = triples(extracted["lothair"])
    # "He was the second son of ...": the pronoun subject is the document's title entity
    assert any(source == "lothair ii" and target == "lotharingia" for source, _, target in lothair)
    cooccur = triples(extracted["lothair"], "cooccur")
    assert all(source < target for source, _, target in cooccur)  # undirected, stored once


def test_titles_headings_and_noun_phrases(extracted: dict[str, ChunkExtraction]) -> None:
    lothair = extracted["lothair"]
    assert keys(lothair, "title") == {"lothair ii"}
    assert keys(lothair, "heading") == {"history"}
    assert "king" in keys(lothair, "noun_phrase")
    assert "lotharingia" in keys(lothair, "entity")


def test_fast_gemm_gives_the_same_annotations() -> None:
    fast, plain = load_pipeline(fast_gemm=True), load_pipeline(fast_gemm=False)
    texts = [text for _, text in TEXTS.values()]
    options = (frozenset(GraphSettings().excluded_labels), True, 6, 12)
    for a, b in zip(fast.pipe(texts), plain.pipe(texts), strict=False):
        assert [(t.tag_, t.dep_, t.head.i, t.ent_type_) for t in a] == [
            (t.tag_, t.dep_, t.head.i, t.ent_type_) for t in b
        ]
        assert extract_doc(a, *options) == extract_doc(b, *options)


def test_worker_processes_match_in_process_extraction() -> None:
    chunks = [
        Chunk(f"c{i}", f"d{i // 3}", text, 0, len(text), {"title": title})
        for i, (title, text) in enumerate(list(TEXTS.values()) * 6)
    ]
    single = list(SpacyExtractor(GraphSettings(n_process=1)).extract(chunks))
    with SpacyExtractor(GraphSettings(n_process=2, batch_size=2)) as parallel:
        assert list(parallel.extract(chunks)) == single


def test_worker_processes_start_with_one_blas_thread_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether or not threadpoolctl is installed, a worker's BLAS and OpenMP pools are one thread: the workers
    already use every core. The caller's own settings are left as they were."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    from ragkit.graph.extract import _WORKER_CONTEXT

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "8")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with ProcessPoolExecutor(1, mp_context=_WORKER_CONTEXT) as pool:
        seen = [pool.submit(os.getenv, name).result() for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")]
    assert seen == ["1", "1"]
    assert os.environ["OPENBLAS_NUM_THREADS"] == "8" and "OMP_NUM_THREADS" not in os.environ


def test_extract_hands_the_batches_to_the_workers_when_called() -> None:
    """The index pipeline starts a batch's extraction, embeds it and writes the batch before it, then collects:
    the batches must be with the workers before the result is iterated, and two started extractions collected
    in either order give what one process gives."""
    chunks = [
        Chunk(f"c{i}", f"d{i // 3}", text, 0, len(text), {"title": title})
        for i, (title, text) in enumerate(list(TEXTS.values()) * 6)
    ]
    first, second = chunks[:6], chunks[6:]
    single = list(SpacyExtractor(GraphSettings(n_process=1)).extract(chunks))
    with SpacyExtractor(GraphSettings(n_process=2, batch_size=2)) as parallel:
        parallel.start()
        assert parallel._pool is not None
        submitted: list[int] = []
        pool_map = parallel._pool.map

        def counted_map(fn: Any, batches: Any) -> Any:
            submitted.append(len(batches))
            return pool_map(fn, batches)

        parallel._pool.map = counted_map  # type: ignore[method-assign]
        started_first = parallel.extract(first)
        started_second = parallel.extract(second)
        assert submitted == [3, 3], "the batches were not submitted when extract() was called"
        assert parallel.workers_running
        later = list(started_second)
        assert list(started_first) + later == single


def test_worker_processes_match_in_process_extraction_of_long_texts() -> None:
    """The pieces of one long text are spread over batches and workers, and merged back in order."""
    from ragkit.graph.extract import piece_starts

    paragraphs = [text for _, text in TEXTS.values()]
    long_text = "\n\n".join(paragraphs * 40) + " " + "\U0001f600" * 3000
    chunks = [
        Chunk("short", "d0", paragraphs[0], 0, len(paragraphs[0]), {"title": "Journal"}),
        Chunk("long", "d1", long_text, 0, len(long_text), {"title": "Lothair II"}),
    ]
    settings = GraphSettings(batch_size=2, max_chars_per_text=1000, max_chars_per_batch=2500)
    single = list(SpacyExtractor(settings.replace(n_process=1)).extract(chunks))
    with SpacyExtractor(settings.replace(n_process=2)) as parallel:
        assert parallel.uses_processes(1 + len(piece_starts(long_text, 1000)))  # two chunks, but many pieces
        assert list(parallel.extract(chunks)) == single
        assert parallel._pool is not None
    assert sum(m.key == "lotharingia" for m in single[1].mentions) == 40


def _annotations(doc: Any) -> list[tuple[Any, ...]]:
    return [(t.tag_, t.dep_, t.head.i, t.ent_iob_, t.ent_type_, t.is_sent_start) for t in doc]


def test_annotate_gives_the_same_annotations_as_nlp_pipe() -> None:
    """The batch-wise decoder of the parser and the entity recognizer against spaCy's own, on this repository's
    documentation (real prose with names, code and lists). Both use the same batches (the last one partial):
    BLAS can round a batch of another size differently in the last bit, which may flip a near-tie."""
    from pathlib import Path

    from ragkit.graph.extract import annotate

    docs_dir = Path(__file__).resolve().parents[1] / "docs"
    texts = [p for f in sorted(docs_dir.glob("*.md")) for p in f.read_text().split("\n\n") if p.strip()][:300]
    texts += ["", " ", "Hello.", *(text for _, text in TEXTS.values())]
    nlp = load_pipeline()
    expected = [_annotations(doc) for doc in nlp.pipe(texts, batch_size=64)]
    got = [_annotations(doc) for doc in annotate(nlp, texts, batch_size=64)]
    assert len(texts) % 64
    assert len(got) == len(texts)
    assert sum(a != b for a, b in zip(got, expected, strict=True)) == 0
    assert sum(1 for doc in expected for t in doc if t[3] == "B") > 100  # the texts do have entities


def test_annotate_runs_components_that_are_not_parsers() -> None:
    import spacy

    from ragkit.graph.extract import annotate

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "ORG", "pattern": "Clark University"}])
    texts = ["The APA was founded at Clark University. It grew.", "Nothing here."]
    got = [([(e.text, e.label_) for e in d.ents], [s.text for s in d.sents]) for d in annotate(nlp, texts)]
    assert got == [([("Clark University", "ORG")], ["The APA was founded at Clark University.", "It grew."]),
                   ([], ["Nothing here."])]


def test_workers_skip_pytorch_only_for_pipelines_without_it(tmp_path: Any) -> None:
    from ragkit.graph.extract import _needs_torch, default_model

    assert not _needs_torch(default_model())
    assert not _needs_torch("")
    trf = tmp_path / "trf"
    trf.mkdir()
    (trf / "config.cfg").write_text('[components.transformer]\nfactory = "curated_transformer"\n')
    assert _needs_torch(str(trf))
    assert _needs_torch(str(tmp_path / "missing"))  # unknown: nothing is assumed
    assert _needs_torch("no_such_spacy_package")
    assert _needs_torch("no_such.package")


# --- bounded work: long texts in pieces, rough runs in fixed tokens ------------------------------------------


def test_piece_starts_cut_after_paragraphs_then_sentences_then_spaces() -> None:
    from ragkit.graph.extract import piece_starts

    assert piece_starts("short", 100) == [0]
    text = "a" * 60 + "\n\n" + "b" * 30 + ". " + "c" * 20 + " " + "d" * 200
    starts = piece_starts(text, 100)
    assert starts[:2] == [0, 62]  # after the paragraph break, not after the later sentence end
    assert piece_starts("a" * 60 + ". " + "b" * 20 + " " + "c" * 100, 100)[:2] == [0, 62]
    assert piece_starts("a" * 70 + " " + "b" * 100, 100)[:2] == [0, 71]
    assert piece_starts("x" * 250, 100) == [0, 100, 200]  # nowhere to cut but anywhere
    assert piece_starts("a" * 10 + " " + "b" * 150, 100)[:2] == [0, 100]  # a space in the first half: too early


def test_piece_starts_bound_every_piece() -> None:
    import random

    from ragkit.graph.extract import piece_starts

    rng = random.Random(7)
    for _ in range(200):
        text = "".join(rng.choice(["word ", "x", ". ", "\n", "\n\n", "\U0001f600", "(("]) for _ in range(400))
        limit = rng.randint(10, 300)
        starts = piece_starts(text, limit)
        ends = [*starts[1:], len(text)]
        assert starts[0] == 0 and all(0 < end - start <= limit for start, end in zip(starts, ends, strict=True))


def test_batch_bounds_limit_texts_and_characters() -> None:
    from ragkit.graph.extract import batch_bounds

    assert batch_bounds([10] * 5, 2, 1000) == [(0, 2), (2, 4), (4, 5)]
    assert batch_bounds([40, 40, 40, 500, 10], 64, 100) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert batch_bounds([], 64, 100) == []


def test_merge_pieces_shifts_offsets_and_sentences() -> None:
    from ragkit.graph.extract import merge_pieces
    from ragkit.graph.model import EntityMention, RelationMention

    first = (
        (EntityMention("a", "A", "ORG", "entity", 0, 1, 0), EntityMention("x", "x", "NOUN", "noun_phrase", 2, 3, 1)),
        (RelationMention("a", "x", "is", "appos"), RelationMention("a", "b", "co-occurs with", "cooccur")),
    )
    second = (
        (EntityMention("b", "B", "ORG", "entity", 4, 5, 0),),
        (RelationMention("a", "x", "is", "appos"), RelationMention("b", "x", "of", "prep")),
    )
    mentions, relations = merge_pieces([(0, (first, 3)), (100, (second, 1))])
    assert mentions == (
        EntityMention("a", "A", "ORG", "entity", 0, 1, 0),
        EntityMention("b", "B", "ORG", "entity", 104, 105, 3),
        EntityMention("x", "x", "NOUN", "noun_phrase", 2, 3, 1),
    )
    assert relations == (
        RelationMention("a", "x", "is", "appos"),
        RelationMention("b", "x", "of", "prep"),
        RelationMention("a", "b", "co-occurs with", "cooccur"),
    )


def test_extraction_settings_are_validated() -> None:
    from ragkit.errors import ConfigError

    with pytest.raises(ConfigError, match="max_chars_per_text"):
        GraphSettings.from_options({"max_chars_per_text": 2_000_000})
    with pytest.raises(ConfigError, match="max_chars_per_batch"):
        GraphSettings.from_options({"max_chars_per_batch": 0})


def test_bounded_tokenizer_keeps_normal_text_and_coarsens_rough_runs() -> None:
    from ragkit.graph.extract import ROUGH_TOKEN_CHARS, BoundedTokenizer

    nlp = load_pipeline()
    make_doc = BoundedTokenizer(nlp)
    normal = [text for _, text in TEXTS.values()] + [
        "See https://en.wikipedia.org/wiki/Lothair_II_(king)?action=history#top for more.",
        "x" * 5000 + " then words",  # long but no symbols: spaCy's tokenizer is fast on it
        "  two  spaces\n\nand lines \t",
    ]
    for text in normal:
        expected = [(t.text, t.whitespace_) for t in nlp.make_doc(text)]
        assert [(t.text, t.whitespace_) for t in make_doc(text)] == expected
    rough = "Lothair II " + "(" * 200 + ")" * 100 + " was king.  " + "\U0001f600" * 130
    doc = make_doc(rough)
    assert doc.text == rough
    assert [t.text for t in doc][:2] == ["Lothair", "II"]
    assert [len(t.text) for t in doc][2:7] == [ROUGH_TOKEN_CHARS] * 4 + [300 - 4 * ROUGH_TOKEN_CHARS]
    assert doc[6].whitespace_ == " " and doc[7].text == "was"


def test_long_texts_are_extracted_in_pieces_with_text_offsets() -> None:
    """A text longer than ``max_chars_per_text`` gives the merged extraction of its pieces (cut on the paragraph
    breaks here), annotated in one batch: offsets into the whole text, sentence numbers counted through it."""
    from ragkit.graph.extract import BoundedTokenizer, extract_batch, merge_pieces, piece_starts

    paragraphs = [text for _, text in TEXTS.values()] * 3
    text = "\n\n".join(paragraphs)
    limit = max(map(len, paragraphs)) + 2
    starts = piece_starts(text, limit)
    assert len(starts) == len(paragraphs)
    pieces = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    with SpacyExtractor(GraphSettings(n_process=1, max_chars_per_text=limit)) as split:
        [(mentions, relations)] = list(split._raw_extractions([text]))
        alone = extract_batch(split.nlp, BoundedTokenizer(split.nlp), split._options(), pieces)
    assert (mentions, relations) == merge_pieces(list(zip(starts, alone, strict=True)))
    assert sum(count for _, count in alone) == 3 * 4  # two sentences a paragraph
    assert {m.sentence for m in mentions} == set(range(12))
    for m in mentions:
        assert text[m.start : m.end] == m.surface
    assert [m.start for m in mentions if m.key == "lotharingia"] == [
        i + paragraphs[1].index("Lotharingia") for i in starts[1::2]
    ]


def test_normal_texts_are_extracted_as_before(extractor: SpacyExtractor) -> None:
    """Texts under the bounds: the extractor's pieces and batches are ``annotate``'s batches of 64 texts (as
    before pieces existed), so the extractions are those of ``extract_doc`` on them."""
    from pathlib import Path

    from ragkit.graph.extract import annotate

    docs_dir = Path(__file__).resolve().parents[1] / "docs"
    texts = [p for f in sorted(docs_dir.glob("*.md")) for p in f.read_text().split("\n\n") if p.strip()][:150]
    options = extractor._options()
    expected = [extract_doc(doc, *options) for doc in annotate(extractor.nlp, texts, batch_size=64)]
    assert list(extractor._raw_extractions(texts)) == expected


HOSTILE = {
    "one 5 MB line without spaces": "x" * 5_000_000,
    "1 MB of one emoji": "\U0001f600" * 1_000_000,
    "100k nested brackets": "[" * 100_000 + "]" * 100_000,
    "zero-width and combining characters": "Paris\u200b\u200d\u0301\u0327\ufeff" * 100_000,
    "hyphenated run": "a-" * 500_000,
    "NUL bytes": "\x00" * 1_000_000,
    "prose with a long rough word": "Lothair II was king. " + ":" * 300_000 + " He ruled Lotharingia.",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_texts_go_through_quickly(extractor: SpacyExtractor, name: str) -> None:
    import time

    text = HOSTILE[name]
    chunk = Chunk("c", "d", text, 0, len(text), {"title": "T"})
    started = time.perf_counter()
    [extraction] = list(extractor.extract([chunk]))
    seconds = time.perf_counter() - started
    assert seconds < 60, f"{name}: {seconds:.1f} s"
    for m in extraction.mentions:
        if m.start >= 0:
            assert text[m.start : m.end] == m.surface
    if name.startswith("prose"):
        assert {"lothair ii", "lotharingia"} <= {m.key for m in extraction.mentions}
