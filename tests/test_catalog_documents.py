"""``Catalog.documents``: stored documents read back whole, their text laid back together from the chunks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ragkit.catalog import Catalog
from ragkit.errors import IndexFormatError
from ragkit.types import Chunk, Document, chunk_id


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog(tmp_path / "catalog.sqlite", create=True)
    yield catalog
    catalog.close()


def spans_of(doc: Document, spans: Sequence[tuple[int, int]]) -> list[Chunk]:
    return [
        Chunk(id=chunk_id(doc.id, s, e, doc.text[s:e]), doc_id=doc.id, text=doc.text[s:e], start=s, end=e)
        for s, e in spans
    ]


def put(catalog: Catalog, doc: Document, spans: Sequence[tuple[int, int]]) -> None:
    with catalog.transaction() as conn:
        catalog.put_document(conn, doc, spans_of(doc, spans), {})


def test_overlapping_chunks_are_kept_once(catalog: Catalog) -> None:
    text = "alpha beta gamma delta"
    put(catalog, Document(id="d", text=text, source="s"), [(0, 10), (6, 16), (11, 22)])
    assert catalog.documents(["d"])["d"].text == text


def test_a_chunk_inside_another_and_chunks_stored_out_of_order(catalog: Catalog) -> None:
    text = "one two three four"
    put(catalog, Document(id="d", text=text, source="s"), [(8, 18), (0, 13), (4, 7)])
    assert catalog.documents(["d"])["d"].text == text


def test_gaps_become_one_space_and_the_stripped_ends_are_lost(catalog: Catalog) -> None:
    text = "  first\n\n\nsecond   third \n"
    put(catalog, Document(id="d", text=text, source="s"), [(2, 7), (10, 16), (19, 24)])
    assert catalog.documents(["d"])["d"].text == "first second third"


def test_adjacent_chunks_join_without_a_space(catalog: Catalog) -> None:
    put(catalog, Document(id="d", text="abcdef", source="s"), [(0, 3), (3, 6)])
    assert catalog.documents(["d"])["d"].text == "abcdef"


def test_one_chunk_is_the_text_and_no_chunk_is_empty(catalog: Catalog) -> None:
    put(catalog, Document(id="one", text="  only  ", source="s"), [(2, 6)])
    put(catalog, Document(id="none", text="", source="s"), [])
    found = catalog.documents(["one", "none"])
    assert (found["one"].text, found["none"].text) == ("only", "")


def test_missing_ids_are_left_out_and_repeats_read_once(catalog: Catalog) -> None:
    put(catalog, Document(id="a", text="text a", source="s"), [(0, 6)])
    assert list(catalog.documents(["nope", "a", "a"])) == ["a"]
    assert catalog.documents([]) == {}


def test_source_title_and_metadata_round_trip(catalog: Catalog) -> None:
    meta = {"lang": "fr", "n": 3, "nested": {"list": [1, "é"]}, "flag": True, "none": None}
    doc = Document(id="d", text="bonjour", source="docs/a.md", title="Salut", meta=meta)
    put(catalog, doc, [(0, 7)])
    assert catalog.documents(["d"])["d"] == doc


def test_unreadable_metadata_is_an_index_format_error(catalog: Catalog) -> None:
    put(catalog, Document(id="d", text="x", source="s"), [(0, 1)])
    with catalog.transaction() as conn:
        conn.execute("UPDATE documents SET meta = '[1]' WHERE id = 'd'")
    with pytest.raises(IndexFormatError, match="metadata of document 'd'"):
        catalog.documents(["d"])


def test_more_ids_than_one_batch_holds(catalog: Catalog) -> None:
    docs = [Document(id=f"doc{i:04}", text=f"text {i} here", source="s", meta={"i": i}) for i in range(2000)]
    with catalog.transaction() as conn:
        for doc in docs:
            half = len(doc.text) // 2
            catalog.put_document(conn, doc, spans_of(doc, [(0, half + 1), (half, len(doc.text))]), {})
    wanted = [d.id for d in docs[::-1]] + ["missing"]
    found = catalog.documents(wanted)
    assert len(found) == 2000
    assert all(found[d.id] == d for d in docs)
