"""Row files with ordinary column names: text from the columns or a template, per-file settings, and a row file
re-indexed under another id field leaving no duplicates behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragkit import Index, Settings
from ragkit.config import load_settings, parse_settings
from ragkit.connectors.loaders import RowFields, glob_regex, load_file, load_sources
from ragkit.connectors.loaders.rows import FieldsByPath
from ragkit.errors import ConfigError
from ragkit.testing import HashingEmbedder
from ragkit.types import Document, LoadError, sha1_hex

PEOPLE = (
    "name,city,notes\n"
    "Ada Lovelace,London,Wrote the first program for the Analytical Engine.\n"
    "Grace Hopper,Arlington,\n"
    "Alan Turing,Manchester,Proposed the imitation game.\n"
)


def split(items: list[Document | LoadError]) -> tuple[list[Document], list[LoadError]]:
    return [i for i in items if isinstance(i, Document)], [i for i in items if isinstance(i, LoadError)]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_index(path: Path, **loaders: object) -> Index:
    settings = Settings().merged(loaders=loaders, chunking={"strategy": "none"})
    return Index.create(path, settings, embedder=HashingEmbedder(64), graph=False, exist_ok=True)


def reopen(path: Path, **loaders: object) -> Index:
    settings = Settings().merged(loaders=loaders, chunking={"strategy": "none"}, graph={"enabled": False})
    return Index.open(path, settings, embedder=HashingEmbedder(64))


def test_a_csv_with_ordinary_columns_loads_each_row_as_name_value_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "people.csv", PEOPLE)
    docs, errors = split(list(load_file(path)))
    assert errors == []
    source = str(path.resolve())
    assert [d.id for d in docs] == [f"{sha1_hex(source)[:16]}:{row}" for row in (1, 2, 3)]  # no id column
    assert docs[0].text == (
        "name: Ada Lovelace\ncity: London\nnotes: Wrote the first program for the Analytical Engine."
    )
    assert docs[1].text == "name: Grace Hopper\ncity: Arlington"  # the empty notes are left out
    assert docs[1].meta == {"name": "Grace Hopper", "city": "Arlington", "notes": "", "row": 2}
    # The id and title columns are not repeated in the text.
    docs, _ = split(list(load_file(path, RowFields(id="name", title="city"))))
    assert [d.id for d in docs] == ["Ada Lovelace", "Alan Turing"]
    assert docs[0].title == "London" and docs[0].text == "notes: Wrote the first program for the Analytical Engine."


def test_a_row_with_no_value_but_its_id_and_title_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "people.csv", PEOPLE)
    docs, errors = split(list(load_file(path, RowFields(id="name", title="city"))))
    assert [d.id for d in docs] == ["Ada Lovelace", "Alan Turing"]
    assert [e.source for e in errors] == [f"{path.resolve()}:2"]
    assert errors[0].reason.startswith("missing text field 'text', and no other column has a value")


def test_a_template_builds_the_text_from_named_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "people.csv", PEOPLE)
    fields = RowFields(id="name", template="{name} lives in {city}. {notes}")
    docs, errors = split(list(load_file(path, fields)))
    assert errors == []
    assert [d.text for d in docs] == [
        "Ada Lovelace lives in London. Wrote the first program for the Analytical Engine.",
        "Grace Hopper lives in Arlington. ",
        "Alan Turing lives in Manchester. Proposed the imitation game.",
    ]
    # A template wins over a text field the file has.
    beir = write(tmp_path / "corpus.jsonl", json.dumps({"_id": "d1", "title": "T", "text": "body", "year": 2020}))
    [doc] = load_file(beir, RowFields(template="{title} ({year}): {text}"))
    assert isinstance(doc, Document) and doc.text == "T (2020): body"


def test_a_template_naming_a_missing_column_fails_that_row_only(tmp_path: Path) -> None:
    path = write(
        tmp_path / "people.jsonl",
        "\n".join(
            json.dumps(row)
            for row in (
                {"name": "Ada", "city": "London"},
                {"name": "Grace"},
                {"name": "Alan", "city": "Manchester", "notes": None},
            )
        ),
    )
    fields = RowFields(id="name", template="{name} lives in {city}.")
    docs, errors = split(list(load_file(path, fields)))
    assert [d.text for d in docs] == ["Ada lives in London.", "Alan lives in Manchester."]
    assert [e.source for e in errors] == [f"{path.resolve()}:2"]  # the row
    assert "column 'city'" in errors[0].reason and "(columns: name)" in errors[0].reason
    # Nothing is evaluated: an attribute look-up is just a column name no row has.
    [error, *_] = load_file(path, RowFields(template="{name.__class__}"))
    assert isinstance(error, LoadError) and "column 'name.__class__'" in error.reason
    # Indexed, the other rows are there.
    index = make_index(tmp_path / "idx", id_field="name", text_template="{name} lives in {city}.")
    report = index.add([path])
    assert (report.added, report.failed) == (2, 1)
    assert index.stats()["documents"] == 2


def test_a_csv_header_without_a_templated_column_is_one_error(tmp_path: Path) -> None:
    path = write(tmp_path / "people.csv", PEOPLE)
    [error] = load_file(path, RowFields(template="{name} was born in {country}."))
    assert isinstance(error, LoadError) and error.source == str(path.resolve())
    assert "column 'country'" in error.reason and "(columns: name, city, notes)" in error.reason


@pytest.mark.parametrize(
    "template, problem",
    [
        ("{name", "expected '}'"),
        ("no columns", "names no column"),
        ("{} and {name}", "{} names no column"),
        ("{price:>8}", "format spec or conversion"),
        ("{name!r}", "format spec or conversion"),
    ],
)
def test_an_unusable_template_is_refused_up_front(template: str, problem: str) -> None:
    with pytest.raises(ValueError, match="text template") as caught:
        RowFields(template=template)
    assert problem in str(caught.value)
    with pytest.raises(ConfigError, match="loaders.text_template") as config:
        parse_settings({"loaders": {"text_template": template}})
    assert problem in str(config.value)


def test_a_jsonl_with_nested_values_renders_them_compactly(tmp_path: Path) -> None:
    row = {
        "id": 7,
        "name": "Ada",
        "address": {"city": "London", "zip": "N1"},
        "languages": ["en", "fr"],
        "active": True,
        "score": 1.5,
        "empty": [],
        "none": None,
        "blank": "  ",
    }
    path = write(tmp_path / "people.jsonl", json.dumps(row) + "\n")
    [doc] = load_file(path)
    assert isinstance(doc, Document) and doc.id == "7"
    assert doc.text == (
        'name: Ada\naddress: {"city": "London", "zip": "N1"}\nlanguages: ["en", "fr"]\nactive: true\nscore: 1.5'
    )
    [templated] = load_file(path, RowFields(template="{name} at {address}, {none}."))
    assert isinstance(templated, Document)
    assert templated.text == 'Ada at {"city": "London", "zip": "N1"}, .'


def test_beir_rows_load_as_before(tmp_path: Path) -> None:
    """With the text field present nothing changes: its text, title, id and meta as they always were."""
    rows = [
        {"_id": "d1", "title": "First", "text": "Alpha text.", "metadata": {"url": "u"}, "year": 2020},
        {"_id": "d2", "title": "No text"},
        {"_id": "d3", "text": "   "},
        {"_id": "d4", "text": None, "other": "x"},
    ]
    path = write(tmp_path / "corpus.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    docs, errors = split(list(load_file(path)))
    assert [(d.id, d.title, d.text, d.meta) for d in docs] == [("d1", "First", "Alpha text.", {"year": 2020, "row": 1})]
    reasons = [e.reason for e in errors]
    assert reasons[0].startswith("missing text field 'text'")  # only an id and a title: nothing to build
    assert reasons[1] == "empty text in field 'text'"
    assert reasons[2] == "missing text field 'text'"  # present but null: an error, as before
    csv_path = write(tmp_path / "corpus.csv", "_id,title,text,lang\nc1,T,Some text.,en\nc2,U\n")
    docs, errors = split(list(load_file(csv_path)))
    assert [(d.id, d.title, d.text, d.meta) for d in docs] == [("c1", "T", "Some text.", {"lang": "en", "row": 1})]
    assert [e.reason for e in errors] == ["missing text field 'text'"]  # a short row, as before


def test_per_file_settings_the_first_matching_glob_wins(tmp_path: Path) -> None:
    write(tmp_path / "data" / "people.csv", PEOPLE)
    write(tmp_path / "data" / "faq.csv", "question,answer\nWhere is Ada from?,London\n")
    write(tmp_path / "data" / "corpus.jsonl", json.dumps({"_id": "b1", "text": "A BEIR row."}) + "\n")
    config = write(
        tmp_path / "ragkit.toml",
        """
[loaders]
text_template = "{name} lives in {city}."

[[loaders.files]]
glob = "data/people.csv"
id_field = "name"

[[loaders.files]]
glob = "*.csv"
id_field = "question"
text_field = "answer"
text_template = ""

[[loaders.files]]
glob = "people.csv"
id_field = "never used: the first entry matched"

[[loaders.files]]
glob = "**/*.jsonl"
text_template = ""
""",
    )
    loaders = load_settings(config).loaders
    assert [entry.glob for entry in loaders.files] == ["data/people.csv", "*.csv", "people.csv", "**/*.jsonl"]
    docs, errors = split(list(load_sources([tmp_path / "data"], fields=loaders.row_fields())))
    assert errors == []
    assert sorted((d.id, d.text) for d in docs) == [
        ("Ada Lovelace", "Ada Lovelace lives in London."),
        ("Alan Turing", "Alan Turing lives in Manchester."),
        ("Grace Hopper", "Grace Hopper lives in Arlington."),
        ("Where is Ada from?", "London"),
        ("b1", "A BEIR row."),
    ]
    # Globs match the end of the path, relative to any folder above the file; absolute ones work too.
    rule = FieldsByPath(((glob_regex(f"{tmp_path}/data/*.csv"), RowFields(id="name")),))
    assert rule(tmp_path / "data" / "people.csv") == RowFields(id="name")
    assert rule(tmp_path / "people.csv") is None
    assert RowFields(per_file=rule).for_file(tmp_path / "other.csv") == RowFields(per_file=rule)


@pytest.mark.parametrize(
    "loaders, problem",
    [
        ({"files": [{"glob": "*.csv", "idfield": "name"}]}, "unknown key 'loaders.files.0.idfield' (valid keys: glob,"),
        ({"files": [{"glob": "*.csv"}]}, "'loaders.files.0': Value error, set at least one of id_field"),
        ({"files": [{"id_field": "name"}]}, "'loaders.files.0.glob': Field required"),
        ({"files": [{"glob": "[z-a].csv", "id_field": "x"}]}, "'loaders.files.0.glob': Value error, not a valid glob"),
        ({"files": [{"glob": "*.csv", "text_template": "{"}]}, "'loaders.files.0.text_template': Value error"),
        ({"files": {"glob": "*.csv", "id_field": "x"}}, "[[loaders.files]] table (double brackets)"),
        ({"files": [{"glob": "*.csv", "id_field": ""}]}, "'loaders.files.0.id_field'"),
    ],
)
def test_per_file_settings_are_checked_when_the_settings_load(loaders: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"loaders": loaders}, origin="ragkit.toml")
    assert problem in str(caught.value)


def test_changing_the_id_field_leaves_one_document_per_row(tmp_path: Path) -> None:
    path = write(tmp_path / "people.csv", PEOPLE)
    index = make_index(tmp_path / "idx")
    first = index.add([path])
    assert (first.added, first.removed) == (3, 0)
    index.close()
    index = reopen(tmp_path / "idx", id_field="name")
    second = index.add([path])  # no --sync: the file is one unit, its rows under the old ids go
    assert (second.added, second.removed, second.failed) == (3, 3, 0)
    assert index.stats()["documents"] == 3
    assert index.stats()["chunks"] == 3
    for mode in ("bm25", "dense"):
        hits = index.retrieve("London Analytical Engine program", k=5, mode=mode)
        assert hits[0].chunk.doc_id == "Ada Lovelace", mode
        found = [h.chunk.doc_id for h in hits]
        assert len(found) == len(set(found)) and set(found) <= {"Ada Lovelace", "Alan Turing", "Grace Hopper"}
    assert len(index.vectors) == 3
    again = index.add([path])
    assert (again.added, again.unchanged, again.removed) == (0, 3, 0)
    index.close()


def test_a_row_file_with_a_bad_row_keeps_its_earlier_documents(tmp_path: Path) -> None:
    path = write(tmp_path / "people.csv", PEOPLE)
    index = make_index(tmp_path / "idx")
    index.add([path])
    index.close()
    # Under the new id field, row 2 fails (nothing but its id and title): the file did not load completely.
    index = reopen(tmp_path / "idx", id_field="name", title_field="city")
    report = index.add([path])
    assert (report.added, report.failed, report.removed) == (2, 1, 0)
    assert index.stats()["documents"] == 3 + 2
    index.close()
    # With every row loading again, the rows under the old ids go: one document per row is left.
    index = reopen(tmp_path / "idx", id_field="name")
    report = index.add([path])
    assert (report.added, report.updated, report.failed, report.removed) == (1, 2, 0, 3)
    assert index.stats()["documents"] == 3
    index.close()


def test_documents_added_in_code_are_not_replaced(tmp_path: Path) -> None:
    """``add_documents`` takes documents as given: one call's rows do not remove another call's."""
    index = make_index(tmp_path / "idx")
    index.add_documents([Document(id="a", text="first batch", source="crm", meta={"row": 1})])
    report = index.add_documents([Document(id="b", text="second batch", source="crm", meta={"row": 2})])
    assert report.removed == 0 and index.stats()["documents"] == 2
    index.close()
