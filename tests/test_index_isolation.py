"""Per-document failure isolation in every stage of the index pipeline, and streaming in bounded batches.

A document that fails to chunk, embed, extract or write is reported with its source, stage and reason; every
other document is indexed, and a later run retries only the failed ones. A failure of the stage itself (every
document of a batch fails, or the machine or the index fails) stops the run instead of hiding it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragkit import Index, Settings
from ragkit.errors import ConfigError
from ragkit.pipelines import indexing
from ragkit.testing import HashingEmbedder
from ragkit.types import Document

NAMES = "alder birch cedar damson elm fir gorse hazel ivy juniper larch maple".split()
GOOD = {f"doc-{i}": f"Note about kestrels and voles in the {name} meadow." for i, name in enumerate(NAMES)}


class PoisonEmbedder(HashingEmbedder):
    """Fails on any text holding ``POISON-EMBED`` (one bad document), or on everything when ``broken``."""

    def __init__(self, broken: bool = False) -> None:
        super().__init__(64)
        self.broken = broken

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if self.broken or any("POISON-EMBED" in t for t in texts):
            raise ValueError("the model cannot embed this text")
        return super().embed_documents(texts)


def make(tmp_path: Path, embedder: HashingEmbedder | None = None, graph: bool = False) -> Index:
    settings = Settings().merged(
        graph={"enabled": graph, "options": {"n_process": 1}}, chunking={"max_tokens": 16, "overlap": 2}
    )
    return Index.create(tmp_path / "idx", settings, embedder=embedder or PoisonEmbedder())


def documents(*bad: tuple[str, str]) -> list[Document]:
    docs = [Document(id=i, text=t, source=f"/corpus/{i}.txt") for i, t in GOOD.items()]
    for doc_id, text in bad:
        docs.insert(5, Document(id=doc_id, text=text, source=f"/corpus/{doc_id}.txt"))
    return docs


def indexed_ids(index: Index) -> set[str]:
    return {c.doc_id for batch in index.catalog.iter_chunks() for c in batch}


def test_a_document_that_fails_to_embed_is_reported_and_the_rest_indexed(tmp_path: Path) -> None:
    with make(tmp_path) as index:
        report = index.add_documents(documents(("bad", "This one holds POISON-EMBED and cannot be embedded.")))
        assert report.failed == 1 and report.added == len(GOOD)
        (error,) = report.errors
        assert (error.source, error.stage) == ("/corpus/bad.txt", "embed")
        assert "ValueError: the model cannot embed this text" in error.reason
        assert report.as_dict()["errors"][0]["stage"] == "embed"
        assert indexed_ids(index) == set(GOOD)
        assert len(index.vectors) == sum(1 for batch in index.catalog.iter_chunks() for _ in batch)
        hits = index.retrieve("juniper meadow", k=1, mode="bm25")
        assert hits[0].chunk.doc_id == "doc-9"


def test_a_later_run_retries_only_the_failed_documents(tmp_path: Path) -> None:
    with make(tmp_path) as index:
        index.add_documents(documents(("bad", "POISON-EMBED for now.")))
    fixed = [
        d if d.id != "bad" else Document("bad", "Fixed text about owls.", d.source) for d in documents(("bad", ""))
    ]
    with Index.open(tmp_path / "idx", embedder=PoisonEmbedder()) as index:
        report = index.add_documents(fixed)
        assert (report.added, report.unchanged, report.failed) == (1, len(GOOD), 0)
        assert indexed_ids(index) == {*GOOD, "bad"}


def test_an_update_that_fails_keeps_the_previous_version(tmp_path: Path) -> None:
    with make(tmp_path) as index:
        index.add_documents(documents())
        before = {c.id for batch in index.catalog.iter_chunks() for c in batch}
        changed = [Document("doc-3", "POISON-EMBED replaces the note.", "/corpus/doc-3.txt")]
        report = index.add_documents(changed)
        assert (report.updated, report.failed, report.errors[0].stage) == (0, 1, "embed")
        assert {c.id for batch in index.catalog.iter_chunks() for c in batch} == before


def test_a_document_that_fails_to_chunk_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = indexing._make_chunker

    class Fussy:
        def __init__(self, inner) -> None:  # noqa: ANN001
            self.inner = inner

        def split(self, doc: Document):  # noqa: ANN201
            if "CHUNK-FAIL" in doc.text:
                raise RuntimeError("the chunker met something it cannot split")
            return self.inner.split(doc)

    monkeypatch.setattr(indexing, "_make_chunker", lambda index, tokens=None: Fussy(real(index, tokens)))
    with make(tmp_path) as index:
        report = index.add_documents(documents(("odd", "CHUNK-FAIL in here.")))
        assert [(e.source, e.stage) for e in report.errors] == [("/corpus/odd.txt", "chunk")]
        assert indexed_ids(index) == set(GOOD)


def test_a_document_that_cannot_be_written_is_reported(tmp_path: Path) -> None:
    # SQLite cannot store a lone surrogate (a file name that is not valid UTF-8, decoded by Python)
    docs = documents()
    docs.insert(3, Document("surrogate", "Text about herons.", "/corpus/caf\udce9.txt"))
    with make(tmp_path) as index:
        report = index.add_documents(docs)
        assert [e.stage for e in report.errors] == ["write"]
        assert "caf" in report.errors[0].source
        assert indexed_ids(index) == set(GOOD)
        assert len(index.vectors) == sum(1 for batch in index.catalog.iter_chunks() for _ in batch)


@pytest.mark.slow
def test_a_document_that_fails_graph_extraction_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ragkit.graph.extract import SpacyExtractor

    real = SpacyExtractor.extract

    def extract(self, chunks, titles=None):  # noqa: ANN001, ANN202
        if any("GRAPH-FAIL" in c.text for c in chunks):
            raise ValueError("spaCy choked")
        return real(self, chunks, titles)

    monkeypatch.setattr(SpacyExtractor, "extract", extract)
    with make(tmp_path, graph=True) as index:
        report = index.add_documents(documents(("odd", "Paris is in France. GRAPH-FAIL")))
        assert [(e.source, e.stage) for e in report.errors] == [("/corpus/odd.txt", "graph")]
        assert indexed_ids(index) == set(GOOD)
        assert index.graph_stats()["entities"] > 0


def test_a_broken_stage_stops_the_run_instead_of_failing_every_document(tmp_path: Path) -> None:
    with make(tmp_path, PoisonEmbedder(broken=True)) as index:
        with pytest.raises(ValueError, match="cannot embed"):
            index.add_documents(documents())
        assert indexed_ids(index) == set()


def test_documents_stream_through_in_bounded_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first batches are committed while the loader is still producing documents."""
    monkeypatch.setattr(indexing, "BATCH_CHUNKS", 8)
    monkeypatch.setattr(indexing, "TRIAGE_DOCUMENTS", 10)
    committed_while_loading: list[int] = []

    with make(tmp_path) as index:

        def produce() -> Iterator[Document]:
            for i in range(60):
                if i % 20 == 19:
                    committed_while_loading.append(len(indexed_ids(index)))
                yield Document(f"s{i}", f"Streamed note {i} on curlews and estuaries.", f"/s/{i}.txt")

        report = index.add_documents(produce())
        assert report.added == 60 and len(indexed_ids(index)) == 60
    assert committed_while_loading[0] > 0 and committed_while_loading == sorted(committed_while_loading)
    assert committed_while_loading[-1] < 60


def test_documents_that_cannot_be_stored_are_reported_before_any_stage(tmp_path: Path) -> None:
    docs = documents()
    docs[2:2] = [
        Document("half-emoji", "A lone surrogate \ud83d in the text.", "/corpus/a.jsonl"),
        Document("nul\x00id", "An id with a NUL.", "/corpus/b.jsonl"),
    ]
    with make(tmp_path) as index:
        report = index.add_documents(docs)
        reasons = sorted(e.reason for e in report.errors)
        assert reasons == [
            "document id holds a NUL character at position 3; it is not valid text",
            "document text holds a lone surrogate (U+D83D) at position 17; it is not valid text",
        ]
        assert indexed_ids(index) == set(GOOD)
        with pytest.raises(ConfigError, match="tag 'tenant'"):
            index.add_documents(documents(), meta={"tenant": "acme\x00x"})
        assert index.delete("no\x00such") == [] and index.delete("\ud83d") == []


def test_a_few_bad_documents_failing_alike_are_reported_not_fatal(tmp_path: Path) -> None:
    bad = [Document(f"bad-{i}", "POISON-EMBED", f"/corpus/bad-{i}.txt") for i in range(3)]
    with make(tmp_path) as index:
        report = index.add_documents(bad)
        assert (report.failed, report.added) == (3, 0) and {e.stage for e in report.errors} == {"embed"}


class _Recorded:
    """Records the order of a graph index run's stages: a batch's extraction handed to the workers, its
    extraction collected, its transaction."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from ragkit.pipelines.graph_indexing import GraphWriter

        self.events: list[tuple[str, tuple[str, ...]]] = []
        start, extract, write = GraphWriter.start, GraphWriter.extract, indexing._BatchWriter._write

        def started(writer: GraphWriter, chunks: Sequence[Any]) -> bool:
            self.events.append(("start", tuple(sorted({c.doc_id for c in chunks}))))
            return start(writer, chunks)

        def collected(writer: GraphWriter, chunks: Sequence[Any]) -> Any:
            self.events.append(("extract", tuple(sorted({c.doc_id for c in chunks}))))
            return extract(writer, chunks)

        def written(batch_writer: Any, batch: list[Any]) -> None:
            self.events.append(("write", tuple(sorted(e.doc.id for e in batch))))
            write(batch_writer, batch)

        monkeypatch.setattr(GraphWriter, "start", started)
        monkeypatch.setattr(GraphWriter, "extract", collected)
        monkeypatch.setattr(indexing._BatchWriter, "_write", written)


@pytest.mark.slow
def test_graph_workers_extract_a_batch_while_the_one_before_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With worker processes, batch N+1 is handed to them before batch N's transaction; batches still commit in
    order, and the index equals one built in a single process."""
    from ragkit.testing import check_index_consistency

    monkeypatch.setattr(indexing, "BATCH_CHUNKS", 4)
    docs = [Document(f"doc-{i:02d}", f"{GOOD[k]} Ada Lovelace met Charles Babbage in London.", f"/c/{i}.txt")
            for i, k in enumerate(GOOD)]
    graphs = []
    for n_process in (2, 1):
        recorded = _Recorded(monkeypatch)
        settings = Settings().merged(
            graph={"enabled": True, "options": {"n_process": n_process, "batch_size": 1}},
            chunking={"strategy": "none"},
        )
        with Index.create(tmp_path / f"idx-{n_process}", settings, embedder=HashingEmbedder(64)) as index:
            report = index.add_documents(docs)
            assert (report.added, report.failed) == (len(docs), 0)
            assert check_index_consistency(index) == []
            graph = index.graph
            graphs.append(sorted((node, data["name"], data["label"], sorted(data["chunks"]))
                                 for node, data in graph.nodes(data=True)))
        kinds = [kind for kind, _ in recorded.events]
        batches = [ids for kind, ids in recorded.events if kind == "write"]
        assert [d for ids in batches for d in ids] == [d.id for d in docs]  # in order
        if n_process == 2:
            assert kinds[:4] == ["start", "start", "extract", "write"], kinds
            assert recorded.events[1][1] == batches[1] and recorded.events[3][1] == batches[0]
        else:  # no workers: nothing to overlap, each batch is written as it is embedded
            assert kinds[:4] == ["start", "extract", "write", "start"], kinds
    assert graphs[0] == graphs[1] and graphs[0]


@pytest.mark.slow
def test_a_document_that_fails_to_embed_beside_graph_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its batch was handed to the workers whole; the batch's other documents are extracted again without it,
    and the extraction started for the whole batch is dropped, not kept until the run ends."""
    from ragkit.pipelines.graph_indexing import GraphWriter
    from ragkit.testing import check_index_consistency

    monkeypatch.setattr(indexing, "BATCH_CHUNKS", 4)
    left: list[int] = []
    close = GraphWriter.close

    def counted_close(writer: GraphWriter) -> None:
        left.append(len(writer._started))
        close(writer)

    monkeypatch.setattr(GraphWriter, "close", counted_close)
    settings = Settings().merged(
        graph={"enabled": True, "options": {"n_process": 2, "batch_size": 1}}, chunking={"strategy": "none"}
    )
    with Index.create(tmp_path / "idx", settings, embedder=PoisonEmbedder()) as index:
        report = index.add_documents(documents(("bad", "Ada Lovelace wrote POISON-EMBED notes.")))
        assert (report.failed, report.added) == (1, len(GOOD)) and report.errors[0].stage == "embed"
        assert indexed_ids(index) == set(GOOD)
        assert check_index_consistency(index) == []
        chunks_in_graph = {c for _, data in index.graph.nodes(data=True) for c in data["chunks"]}
        assert {c.id for batch in index.catalog.iter_chunks() for c in batch} <= chunks_in_graph
    assert left == [0]
