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
