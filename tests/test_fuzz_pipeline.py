"""Property-based tests (hypothesis) of the whole default pipeline, knowledge graph on.

Hypothesis writes hostile documents (any Unicode category, zero-width joiners, combining marks, right-to-left
text, emoji runs, NUL and control characters, words of thousands of characters, runs of blank lines, Markdown
headings and code fences, HTML-like tags, now and then a lone surrogate) with hostile ids, titles, metadata and
tags, and runs a sequence of operations on one index: ``add_documents`` (new documents, updates, an id given twice),
``delete``, files of every text format written to a folder and indexed with ``add`` (loaders included), rewritten,
removed and synced, and reopening the index. Each document goes load -> chunk -> embed (``HashingEmbedder``) ->
extract (spaCy) -> commit.

After every operation:
* nothing escaped as an exception (a bad document may be reported in the run's ``errors``, as a LoadError);
* ``check_index_consistency``: catalog, vectors, BM25 and graph agree;
* documents added in code are there with their latest text (or were reported), deleted ones are gone, and a
  ``where`` filter on a tag finds exactly the documents given that tag; a file just indexed gave documents or was
  reported; a sync leaves no document of a removed file;
* every document of the catalog is found by a BM25 query for its rarest word, and the other modes (dense,
  hybrid, graph) answer;
and at the end the graph holds exactly what extracting the catalog's chunks again gives, and the reopened index
has the same counts and is still consistent.

Failures hypothesis found are kept as explicit examples above ``test_pipeline_in_one_process``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bm25s
import pytest
import Stemmer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ragkit import Document, Index, LoadError, Settings
from ragkit.errors import ConfigError
from ragkit.testing import HashingEmbedder, check_index_consistency

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # tags holding these are refused (a where filter cannot match them)

pytestmark = pytest.mark.slow

EMBEDDER_DIM = 32

# --- text ----------------------------------------------------------------------------------------------------

SENTENCES = [
    "Marie Curie was born in Warsaw and worked in Paris. ",
    "The Beatles released Abbey Road in 1969. ",
    "Ada Lovelace wrote the first program for the Analytical Engine. ",
    "He founded the Acme Corporation with Alan Turing in London. ",
    "The owl hunts mice in the forest at night. ",
    "Tokyo is the capital of Japan, and Kyoto was the capital before it. ",
    "She was the first president of the American Psychological Association. ",
]
HOSTILE_PIECES = [
    "\u200d", "\u200b", "\u200c", "\ufeff", "\u2060",  # zero-width joiner, space, non-joiner, BOM, word joiner
    "e\u0301", "a\u0301\u0308\u0327\u0323\u0338", "\u0301\u0301\u0301",  # combining marks, some with no base
    "\u202e", "\u202d", "\u2066", "\u2069", "\u200f", "\u200e",  # bidi overrides, isolates and marks
    "تعيش البومة في الغابات", "הינשוף צד עכברים", "猫头鹰東京の図書館", "부엉이", "उल्लू रात में", "นกฮูกล่าหนู",
    "\U0001f989", "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466", "\U0001f1fa\U0001f1f8",
    "\U0001f44d\U0001f3fd", "\ufffd",
    "\x00", "\x01", "\x07", "\x08", "\x1b[31m", "\x7f", "\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\r", "\r\n",
    "\t", "\u00a0", "\u3000",
    "# Heading\n", "## Sub heading\n", "###### deep\n", "#\n", "# \u200d\n",
    "```\ncode { fence }\n", "```python\nprint('x')\n```\n", "~~~\n",
    "<b>bold</b>", "<script>alert(1)</script>", "<!-- comment -->", "</p>", "<div", "&amp;&lt;&#0;&#x10FFFF;",
    "<![CDATA[x]]>", "| a | b |\n|---|---|\n",
    '"quoted, text"', "a,b;c\td", "{\"nested\": [1, 2]}", "[[[[", "\\", "'", "%s%d{0}",
]
LONE_SURROGATES = ["\udc80", "\ud83d", "x\udfff"]  # not valid Unicode: such a document is reported, not indexed
LONG_RUNS = st.builds(
    lambda piece, count: piece * count,
    st.sampled_from(["x", "Z", "\U0001f989", "\u0301", "a\u0301", "\u200d", "-", ".", "\n", "\n\n", " ", "9"]),
    st.integers(1, 9000),
)
WORD = st.text(st.characters(codec="utf-8", categories=("Lu", "Ll", "Lo", "Nd")), min_size=2, max_size=12)
ANY_CHARS = st.text(st.characters(codec="utf-8"), max_size=24)  # any category, no lone surrogates
TEXT = st.lists(
    st.one_of(
        st.sampled_from(SENTENCES),
        st.sampled_from(HOSTILE_PIECES),
        WORD.map(lambda w: w + " "),
        ANY_CHARS,
        LONG_RUNS,
    ),
    max_size=24,
).map("".join)
DOCUMENT_TEXT = st.one_of(TEXT, st.tuples(TEXT, st.sampled_from(LONE_SURROGATES), TEXT).map("".join))
SHORT_TEXT = st.lists(st.one_of(WORD, st.sampled_from(HOSTILE_PIECES), ANY_CHARS), max_size=4).map("".join)
TITLE = st.one_of(st.just(""), st.sampled_from(["Marie Curie", "The Beatles", "the", "  ", "(x)"]), SHORT_TEXT)
ID = st.one_of(WORD, SHORT_TEXT.filter(bool), st.sampled_from(["a/b", "..", "x:1", "\x00", " ", "%", "'; --"]))
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), SHORT_TEXT
)
META = st.dictionaries(
    SHORT_TEXT,
    st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SHORT_TEXT, inner, max_size=3),
                 max_leaves=6),
    max_size=4,
)
TAGS = st.one_of(st.none(), st.fixed_dictionaries({"tenant": st.one_of(WORD, SHORT_TEXT)}))

# --- files ---------------------------------------------------------------------------------------------------

FILE_NAME = st.text(st.characters(codec="utf-8", exclude_characters="/\x00", exclude_categories=("Cc",)),
                    max_size=10)
ROW = st.fixed_dictionaries(
    {"title": TITLE, "text": TEXT},
    optional={"_id": ID.map(lambda i: f"row-{i}"), "lang": SHORT_TEXT, "score": SCALAR},
)


def _html(title: str, body: str) -> str:
    paragraphs = "".join(f"<p>{part}</p>\n" for part in body.split("\n\n"))
    return f"<!DOCTYPE html><html><head><title>{title}</title></head><body><article>{paragraphs}</article></body>"


def _jsonl(rows: list[dict[str, Any]], bad_line: str | None) -> str:
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    if bad_line is not None:
        lines.insert(len(lines) // 2, bad_line)
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["_id", "title", "text", "lang", "score"], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return out.getvalue()


FILE_CONTENT = st.one_of(
    st.tuples(st.just(".txt"), DOCUMENT_TEXT),
    st.tuples(st.just(".md"), st.builds(lambda t, body: f"# {t}\n\n{body}" if t else body, TITLE, TEXT)),
    st.tuples(st.just(".html"), st.builds(_html, TITLE, TEXT)),
    st.tuples(st.just(".jsonl"), st.builds(_jsonl, st.lists(ROW, max_size=4),
                                           st.one_of(st.none(), st.sampled_from(["{", "[1]", "\x00", '{"text": 1}'])))),
    st.tuples(st.just(".csv"), st.builds(_csv, st.lists(ROW, max_size=4))),
)
ENCODING = st.sampled_from(["utf-8", "utf-8-sig", "utf-16"])

# --- operations ----------------------------------------------------------------------------------------------
# ("add", [(pool slot, text, title, meta)], tags) | ("delete", pool slot) | ("delete_id", id)
# ("write", slot, suffix, content, encoding) -> files written, then index.add([folder])
# ("remove", slot) -> file removed, then index.add([folder], sync=True) | ("delete_file", slot)
# ("reopen",) -> the index closed and opened again

OPERATION = st.one_of(
    st.tuples(
        st.just("add"),
        st.lists(st.tuples(st.integers(0, 3), DOCUMENT_TEXT, TITLE, META), min_size=1, max_size=4),
        TAGS,
    ),
    st.tuples(st.just("delete"), st.integers(0, 3)),
    st.tuples(st.just("delete_id"), ID),
    st.tuples(st.just("write"), st.integers(0, 3), FILE_CONTENT, ENCODING),
    st.tuples(st.just("remove"), st.integers(0, 3)),
    st.tuples(st.just("delete_file"), st.integers(0, 3)),
    st.just(("reopen",)),
)
CHUNKING = st.sampled_from([
    {},
    {"strategy": "tokens", "max_tokens": 8, "overlap": 4, "max_chars": 100},
    {"strategy": "sentences", "max_tokens": 24},
    {"strategy": "markdown", "max_tokens": 16, "max_chars": 300},
    {"strategy": "none"},
    {"strategy": "auto", "max_tokens": 12, "overlap": 0},
])


@pytest.fixture(scope="module", autouse=True)
def spacy_loaded_once():
    """Every index run loads spaCy afresh (a second or more); these tests share one loaded pipeline, for speed.
    Worker processes (``n_process`` > 1) still load their own."""
    import functools

    from ragkit.graph import extract

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(extract, "load_pipeline", functools.lru_cache(maxsize=None)(extract.load_pipeline))
        yield


@dataclass
class Run:
    """The index under test and what the test expects of it."""

    index: Index
    folder: Path
    ids: list[str]  # the pool of document ids that add_documents uses (slot -> id)
    names: list[str]  # slot -> file name stem
    latest: dict[str, Document] = field(default_factory=dict)  # in-code documents that must be in the catalog
    gone: set[str] = field(default_factory=set)  # in-code documents that must not be
    tenants: dict[str, str] = field(default_factory=dict)  # in-code document -> its "tenant" tag
    errors: list[LoadError] = field(default_factory=list)


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def make_settings(chunking: dict[str, Any], graph_options: dict[str, Any]) -> Settings:
    return Settings().merged(chunking=chunking, graph={"options": graph_options})


def check_report(run: Run, report: Any) -> None:
    assert report.failed == len(report.errors), report
    for error in report.errors:
        assert isinstance(error, LoadError), error
        assert isinstance(error.reason, str) and error.reason, error
        assert "Traceback" not in error.reason, error
    run.errors += report.errors


def apply(run: Run, operation: tuple[Any, ...]) -> None:
    index, kind = run.index, operation[0]
    if kind == "add":
        documents = [
            Document(id=run.ids[slot], text=text, source=f"memory/{slot}/{position}", title=title, meta=meta)
            for position, (slot, text, title, meta) in enumerate(operation[1])
        ]
        tags = operation[2]
        if tags and any(UNSTORABLE.search(f"{key}{value}") for key, value in tags.items()):
            with pytest.raises(ConfigError, match="tag"):  # refused before anything is written
                index.add_documents(documents, meta=tags)
            return
        report = index.add_documents(documents, meta=tags)
        check_report(run, report)
        failed = {e.source for e in report.errors}
        first = {}
        for doc in documents:
            first.setdefault(doc.id, doc)
        for doc in documents:
            if first[doc.id] is not doc:  # an id given twice in one call: the first one is kept
                assert doc.source in failed, f"duplicate id {doc.id!r} not reported"
            elif doc.source in failed or any(s.startswith(doc.source + ":") for s in failed):
                run.latest.pop(doc.id, None)  # reported: it may keep its old version or have none
                run.gone.discard(doc.id)
            else:
                run.latest[doc.id] = doc
                run.gone.discard(doc.id)
                run.tenants.pop(doc.id, None)
                if operation[2]:
                    run.tenants[doc.id] = operation[2]["tenant"]
    elif kind in ("delete", "delete_id"):
        doc_id = run.ids[operation[1]] if kind == "delete" else operation[1]
        removed = index.delete(doc_id)
        if doc_id in run.latest:
            assert doc_id in removed, (doc_id, removed)
        for gone in removed:
            run.latest.pop(gone, None)
            run.tenants.pop(gone, None)
            run.gone.add(gone)
    elif kind == "write":
        _, slot, (suffix, content), encoding = operation
        for old in run.folder.glob(f"{run.names[slot]}.*"):
            old.unlink()  # one file per slot: a new suffix replaces the old file
        path = run.folder / f"{run.names[slot]}{suffix}"
        path.write_bytes(content.encode(encoding, "surrogatepass"))  # lone surrogates: invalid bytes
        report = index.add([run.folder])
        check_report(run, report)
        check_file(run, path, report.errors)
    elif kind == "remove":
        for old in run.folder.glob(f"{run.names[operation[1]]}.*"):
            old.unlink()
        report = index.add([run.folder], sync=True)
        check_report(run, report)
        on_disk = {str(p.resolve()) for p in run.folder.iterdir()}
        stale = [s for s in index.catalog.sources() if s.startswith(str(run.folder.resolve())) and
                 s not in on_disk]
        assert not stale, stale
    elif kind == "delete_file":
        for old in run.folder.glob(f"{run.names[operation[1]]}.*"):
            index.delete(str(old))
            assert not index.catalog.documents_of_sources([str(old.resolve())])


def check_file(run: Run, path: Path, errors: list[LoadError]) -> None:
    """A file just indexed gave documents, or was reported."""
    source = str(path.resolve())
    if run.index.catalog.documents_of_sources([source]):
        return
    assert any(e.source == source or e.source.startswith(source + ":") for e in errors), (
        f"{path.name}: neither indexed nor reported"
    )


_BM25_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # bm25s's default token pattern
_STEMMER = Stemmer.Stemmer("english")


def _stems(texts: list[str]) -> list[set[str]]:
    tokens = bm25s.tokenize(texts, stopwords="en", stemmer=_STEMMER, show_progress=False, return_ids=False)
    return [set(t) for t in tokens]


def check_retrieval(index: Index) -> None:
    """Every document with a searchable word is found by a BM25 query for its rarest one, among exactly the
    chunks that contain it; the other modes answer the same query."""
    chunks = [c for batch in index.catalog.iter_chunks() for c in batch]
    if not chunks:
        return
    stems = _stems([c.embed_text for c in chunks])
    doc_stems: dict[str, set[str]] = {}
    for chunk, chunk_stems in zip(chunks, stems, strict=True):
        doc_stems.setdefault(chunk.doc_id, set()).update(chunk_stems)
    queried = 0
    for doc_id, own in sorted(doc_stems.items()):
        candidates = []
        for chunk in (c for c in chunks if c.doc_id == doc_id):
            for word in dict.fromkeys(_BM25_TOKEN.findall(chunk.embed_text)):
                query_stems = _stems([word])[0]
                if query_stems and query_stems <= own:
                    matching = sum(1 for s in stems if s & query_stems)
                    candidates.append((matching, word))
            if len(candidates) > 20:
                break
        if not candidates:
            continue  # no word BM25 indexes (stop words, punctuation, single characters)
        matching, word = min(candidates)
        hits = index.retrieve(word, k=matching, mode="bm25")
        assert doc_id in {h.chunk.doc_id for h in hits}, (doc_id, word, matching, hits)
        assert len(hits) == matching, (word, matching, len(hits))
        if queried < 2:
            for mode in ("dense", "hybrid", "graph", "graph_hybrid", "multihop"):
                assert isinstance(index.retrieve(word, k=3, mode=mode), list)
        queried += 1


def check_model(run: Run) -> None:
    catalog = run.index.catalog
    for doc_id, doc in run.latest.items():
        assert catalog.has_document(doc_id), f"document {doc_id!r} was added and not reported, but is missing"
        chunks = [c for c in catalog.chunks_by_ids(list(catalog.chunk_ids_where({"doc_id": doc_id}))).values()]
        for chunk in chunks:
            assert chunk.text == doc.text[chunk.start : chunk.end], (doc_id, chunk)
        if doc.text.strip():
            assert chunks, f"document {doc_id!r} has text but no chunks"
    for doc_id in run.gone - set(run.latest):
        assert not catalog.has_document(doc_id), f"document {doc_id!r} was deleted but is still there"


def check_tenants(run: Run) -> None:
    """A ``where`` filter on a tag finds exactly the documents given that tag, in the catalog and in the vectors."""
    import numpy as np

    index = run.index
    for tenant in sorted(set(run.tenants.values())):
        tagged = [doc_id for doc_id, t in run.tenants.items() if t == tenant]
        expected = {d for d in tagged if index.catalog.chunk_ids_where({"doc_id": d})}  # those with chunks
        chunk_ids = index.catalog.chunk_ids_where({"tenant": tenant})
        found = {c.doc_id for c in index.catalog.chunks_by_ids(list(chunk_ids)).values()}
        assert found == expected, (tenant, found, expected)
        query = np.zeros((1, EMBEDDER_DIM), dtype=np.float32)
        _, ids = index.vectors.search(query, len(chunk_ids) + 5, where={"tenant": tenant})
        assert len([i for i in ids[0] if i >= 0]) == len(chunk_ids), (tenant, ids, chunk_ids)


_EXTRACTORS: dict[Any, Any] = {}


def check_graph_matches_extraction(index: Index) -> None:
    """The graph holds exactly what extracting the catalog's chunks again gives: the mentions and relations of
    every chunk, none of a chunk or document version that is gone (a title changed with the text kept, say)."""
    from collections import Counter

    from ragkit.graph.extract import SpacyExtractor
    from ragkit.pipelines.graph_indexing import graph_settings

    graph = graph_settings(index.settings).replace(n_process=1)
    extractor = _EXTRACTORS.setdefault(graph.extraction_key(), SpacyExtractor(graph))
    chunks = sorted(
        (c for batch in index.catalog.iter_chunks() for c in batch),
        key=lambda c: (c.doc_id, c.meta.get("ord", 0), c.start),
    )
    mentions: Counter[tuple[str, ...]] = Counter()
    relations: Counter[tuple[str, ...]] = Counter()
    for ex in extractor.extract(chunks):
        keys = set()
        for m in ex.mentions:
            keys.add(m.key)
            mentions[(ex.chunk_id, m.key, m.kind, m.surface)] += 1
        for r in ex.relations:
            if r.source in keys and r.target in keys and r.source != r.target:
                relations[(ex.chunk_id, r.source, r.target, r.label, r.kind)] += 1
    conn = index.catalog.connection
    stored_mentions = Counter(conn.execute(
        "SELECT m.chunk_id, e.key, m.kind, m.surface FROM graph_mentions m JOIN graph_entities e ON e.id = m.entity_id"
    ).fetchall()) if mentions or chunks else Counter()
    stored_relations = Counter(conn.execute(
        "SELECT r.chunk_id, s.key, t.key, r.label, r.kind FROM graph_relation_mentions r "
        "JOIN graph_entities s ON s.id = r.source JOIN graph_entities t ON t.id = r.target"
    ).fetchall()) if relations or chunks else Counter()
    assert stored_mentions == mentions, (stored_mentions - mentions, mentions - stored_mentions)
    assert stored_relations == relations, (stored_relations - relations, relations - stored_relations)


def check_everything(run: Run) -> None:
    problems = check_index_consistency(run.index)
    assert problems == [], problems
    check_model(run)
    check_tenants(run)
    check_retrieval(run.index)


def run_operations(
    ids: list[str], names: list[str], chunking: dict[str, Any], operations: list[tuple[Any, ...]],
    graph_options: dict[str, Any],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "files"
        folder.mkdir()
        path = root / "index"
        config = make_settings(chunking, graph_options)
        index = Index.create(path, config, embedder=HashingEmbedder(EMBEDDER_DIM))
        run = Run(index, folder, ids, [f"{slot}-{name}" for slot, name in enumerate(names)])
        try:
            for operation in operations:
                if operation[0] == "reopen":  # the next writes start from what is on disk
                    run.index.close()
                    run.index = Index.open(path, config, embedder=HashingEmbedder(EMBEDDER_DIM))
                else:
                    apply(run, operation)
                check_everything(run)
            check_graph_matches_extraction(run.index)
            before = run.index.stats()
        finally:
            run.index.close()
        with Index.open(path, config, embedder=HashingEmbedder(EMBEDDER_DIM)) as reopened:
            after = reopened.stats()
            for key in ("documents", "chunks", "sources", "generation", "graph"):
                assert after.get(key) == before.get(key), (key, before.get(key), after.get(key))
            assert check_index_consistency(reopened) == []


POOL_IDS = st.lists(ID, min_size=4, max_size=4, unique=True)
POOL_NAMES = st.lists(FILE_NAME, min_size=4, max_size=4)
OPERATIONS = st.lists(OPERATION, min_size=1, max_size=5)


def found(operations: list[tuple[Any, ...]], ids: tuple[str, ...] = ("a", "b", "c", "d")) -> example:
    """A failure hypothesis found, kept as an explicit example (see the comment above each)."""
    return example(ids=list(ids), names=["", "", "", ""], chunking={}, operations=operations)


# A document id with a NUL: the FAISS sidecar's doc_id filter (json_extract, which SQLite cuts at a NUL) finds none
# of its vectors; check_index_consistency: "vectors: a doc_id filter on '\x00' finds 0 vectors".
@found([("add", [(0, SENTENCES[0], "", {})], None)], ids=("\x00", "00", "000", "0000"))
# The same for tags: where={"tenant": "acme"} also matched "acme\x00x" (catalog.chunk_ids_where and the FAISS
# sidecar), and a filter on "acme\x00x" matched nothing; such tags are now refused with a ConfigError.
@found([("add", [(0, SENTENCES[0], "", {})], {"tenant": "acme\x00x"}), ("add", [(1, SENTENCES[1], "", {})],
                                                                       {"tenant": "acme"})])
# Index.delete of an id that is not in the index and holds a NUL or a lone surrogate: Path(...).resolve() raises
# ValueError("embedded null byte") / UnicodeEncodeError out of pipelines.indexing.delete_documents.
@found([("delete", 0)], ids=("\x00", "00", "000", "a/b"))
@found([("delete", 0)], ids=("\ud83d", "00", "000", "a/b"))
# An index whose chunks hold no BM25 token (a lone zero-width joiner, a single letter): bm25s raised
# "ValueError: max() arg is an empty sequence" in BM25Index.build, after the catalog had committed; the saved BM25
# index stayed behind and every later bm25/hybrid query raised the same.
@found([("add", [(0, "\u200d", "", {})], None)])
@found([("add", [(0, "a", "", {})], None)])
# Every document of a batch failing the same stage (two texts with lone surrogates): _isolated re-raises the first
# error (UnicodeEncodeError) instead of reporting both.
@found([("add", [(0, "\udc80", "", {}), (1, "\ud83d", "", {})], None)])
@fuzz_settings(25)
@given(ids=POOL_IDS, names=POOL_NAMES, chunking=CHUNKING, operations=OPERATIONS)
def test_pipeline_in_one_process(ids, names, chunking, operations):
    run_operations(ids, names, chunking, operations, {"n_process": 1})


@fuzz_settings(2)
@given(ids=POOL_IDS, names=POOL_NAMES, operations=st.lists(OPERATION, min_size=1, max_size=2))
def test_pipeline_with_worker_processes(ids, names, operations):
    """The default ``n_process`` (2); small batches and chunks so that even these few documents start workers
    (each worker loads spaCy: a few seconds)."""
    from ragkit.graph import extract

    many = ("add", [(slot, "".join(SENTENCES), "Marie Curie", {}) for slot in range(4)], None)
    started: list[int] = []
    start = extract.SpacyExtractor.start

    def counted_start(self: Any) -> None:
        started.append(self.settings.n_process)
        start(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(extract.SpacyExtractor, "start", counted_start)
        run_operations(ids, names, {"strategy": "tokens", "max_tokens": 8, "overlap": 0}, [many, *operations],
                       {"batch_size": 2})
    assert 2 in started, "no worker processes were started"


# --- the checker itself finds what is wrong ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_index(tmp_path_factory):
    path = tmp_path_factory.mktemp("consistency") / "index"
    documents = [
        Document(id="curie", text=SENTENCES[0] + SENTENCES[5], source="memory/curie", title="Marie Curie"),
        Document(id="beatles", text=SENTENCES[1] + SENTENCES[2], source="memory/beatles"),
    ]
    with Index.create(path, make_settings({}, {"n_process": 1}), embedder=HashingEmbedder(EMBEDDER_DIM)) as index:
        index.add_documents(documents)
    return path


def tampered(built_index: Path, tmp_path: Path, change) -> list[str]:
    import shutil

    from ragkit.connectors.vectors import open_vector_index

    copy = tmp_path / "copy"
    shutil.copytree(built_index, copy)
    settings = make_settings({}, {"n_process": 1})
    with Index.open(copy, settings, embedder=HashingEmbedder(EMBEDDER_DIM)) as index:
        assert check_index_consistency(index) == []
        # readers never write: tamper through a store of its own, opened for writing as a writer would
        vectors = open_vector_index(copy, index.manifest.dimension, index.manifest.vectors)
        try:
            change(index, vectors)
        finally:
            vectors.close()
    with Index.open(copy, settings, embedder=HashingEmbedder(EMBEDDER_DIM)) as index:
        return check_index_consistency(index)


def test_checker_finds_missing_and_stray_vectors(built_index, tmp_path):
    import numpy as np

    from ragkit.types import vector_id

    def change(index: Index, vectors: Any) -> None:
        chunk = next(index.catalog.iter_chunks())[0]
        vectors.delete(np.array([vector_id(chunk.id)]))
        vectors.add(np.array([7]), np.ones((1, EMBEDDER_DIM), np.float32), [{"doc_id": "nobody"}])
        vectors.save()

    problems = tampered(built_index, tmp_path, change)
    assert any("1 catalog chunks have no vector" in p for p in problems), problems
    assert any("1 vectors belong to no catalog chunk (ids 7)" in p for p in problems), problems


def test_checker_finds_a_vector_filed_under_another_document(built_index, tmp_path):
    import numpy as np

    from ragkit.types import vector_id

    def change(index: Index, vectors: Any) -> None:
        chunk = next(index.catalog.iter_chunks())[0]
        vectors.add(np.array([vector_id(chunk.id)]), np.ones((1, EMBEDDER_DIM), np.float32), [{"doc_id": "nobody"}])
        vectors.save()

    problems = tampered(built_index, tmp_path, change)
    assert any("a doc_id filter on" in p for p in problems), problems


def test_checker_finds_a_bm25_index_of_other_chunks(built_index, tmp_path):
    from ragkit.bm25 import BM25Index

    def change(index: Index, vectors: object) -> None:
        chunks = [c for batch in index.catalog.iter_chunks() for c in batch]
        BM25Index.build(chunks[1:], index.catalog.generation).save(index.path)

    problems = tampered(built_index, tmp_path, change)
    assert problems and all(p.startswith("bm25: 1 catalog chunks are not indexed") for p in problems), problems


def test_checker_finds_stores_behind_the_catalog(built_index, tmp_path):
    def change(index: Index, vectors: object) -> None:
        with index.catalog.transaction():
            pass  # bumps the generation, as a run interrupted after its commit would leave it

    problems = tampered(built_index, tmp_path, change)
    assert any(p.startswith("vectors: saved at generation") for p in problems), problems
    assert any(p.startswith("bm25: saved at generation") for p in problems), problems


def test_checker_finds_a_graph_out_of_step(built_index, tmp_path):
    def change(index: Index, vectors: object) -> None:
        conn = index.catalog.write_connection  # the reader's connection is read-only
        conn.execute("INSERT INTO graph_mentions VALUES (999999, 'no-such-chunk', 'curie', 's', 's', 'NOUN', "
                     "'noun_phrase', 0, 1)")
        conn.execute("INSERT INTO graph_entities(key, name, label) VALUES ('lonely', 'Lonely', 'NOUN')")
        conn.execute("DELETE FROM graph_mentions WHERE kind = 'title'")

    problems = tampered(built_index, tmp_path, change)
    for expected in (
        "graph: 1 mentions of entities that do not exist",
        "entities without any mention",
        "graph: graph_mentions names 1 chunks not in the catalog ('no-such-chunk')",
        "chunks of titled documents do not mention the title",
    ):
        assert any(expected in p for p in problems), (expected, problems)


def test_assert_index_consistent_lists_the_problems(built_index, tmp_path):
    from ragkit.testing import assert_index_consistent

    def change(index: Index, vectors: object) -> None:
        with index.catalog.transaction():
            pass
        with pytest.raises(AssertionError, match="vectors: saved at generation"):
            assert_index_consistent(index)

    tampered(built_index, tmp_path, change)
