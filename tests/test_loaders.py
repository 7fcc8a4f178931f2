"""Loaders: every format from real files on disk; one LoadError per unreadable file, the rest loads."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from ragkit.chunking import TokenChunker, WhitespaceTokenOffsets
from ragkit.connectors.loaders import SUPPORTED_SUFFIXES, RowFields, glob_regex, load_file, load_sources
from ragkit.types import Document, LoadError, sha1_hex

DEFAULT_FIELDS = RowFields()
SCIFACT = Path(__file__).parents[2] / "shared/data/scifact/corpus.jsonl"


def _escape_pdf(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(path: Path, pages: list[str], title: str | None = None, password: str | None = None) -> Path:
    """A real PDF with one Helvetica text line per entry of ``pages`` ("" gives a blank page)."""
    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    font_ref = writer._add_object(font)
    for text in pages:
        page = writer.add_blank_page(612, 792)
        if text:
            page[NameObject("/Resources")] = DictionaryObject(
                {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font_ref})}
            )
            stream = DecodedStreamObject()
            stream.set_data(f"BT /F1 12 Tf 72 720 Td ({_escape_pdf(text)}) Tj ET".encode("latin-1"))
            page[NameObject("/Contents")] = writer._add_object(stream)
    if title:
        writer.add_metadata({"/Title": title})
    if password:
        writer.encrypt(user_password=password, algorithm="RC4-128")
    with path.open("wb") as handle:
        writer.write(handle)
    return path


def split(items: list[Document | LoadError]) -> tuple[list[Document], list[LoadError]]:
    docs = [i for i in items if isinstance(i, Document)]
    errors = [i for i in items if isinstance(i, LoadError)]
    assert len(docs) + len(errors) == len(items)
    return docs, errors


def load_one(path: Path, fields: RowFields = DEFAULT_FIELDS) -> list[Document | LoadError]:
    return list(load_file(path, fields))


# --- formats ---------------------------------------------------------------------------------------


def test_text_file_loads_with_resolved_source_and_hashed_id(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("Line one.\r\nLine two.\n", encoding="utf-8")
    [doc] = load_one(path)
    assert isinstance(doc, Document)
    assert doc.source == str(path.resolve())
    assert doc.id == sha1_hex(str(path.resolve()))[:16]
    assert doc.text == "Line one.\nLine two.\n"
    assert doc.title == ""


def test_markdown_title_is_first_h1_outside_code(tmp_path: Path) -> None:
    path = tmp_path / "guide.md"
    path.write_text("Intro line.\n\n```sh\n# not a title\n```\n\n## Sub\n\n# Real Title #\n\nBody.\n")
    [doc] = load_one(path)
    assert doc.title == "Real Title"
    assert "# not a title" in doc.text
    (tmp_path / "plain.md").write_text("no heading here\n## only level two\n")
    [doc] = load_one(tmp_path / "plain.md")
    assert doc.title == ""


def test_utf8_bom_is_stripped_and_utf16_with_bom_decodes(tmp_path: Path) -> None:
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfcaf\xc3\xa9 au lait")
    (tmp_path / "wide.txt").write_bytes("Grüße aus Köln\n".encode("utf-16"))
    (tmp_path / "wide_be.md").write_bytes(b"\xfe\xff" + "# Über\ntext".encode("utf-16-be"))
    [bom] = load_one(tmp_path / "bom.txt")
    [wide] = load_one(tmp_path / "wide.txt")
    [wide_be] = load_one(tmp_path / "wide_be.md")
    assert bom.text == "café au lait"
    assert wide.text == "Grüße aus Köln\n"
    assert (wide_be.title, wide_be.text) == ("Über", "# Über\ntext")


HTML_PAGE = """<!DOCTYPE html>
<html><head><title>  Field   Guide to Owls </title>
<style>body { color: red; } .owl { display: none; }</style>
<script>var tracker = "SECRET_SCRIPT_TOKEN"; function f() { return 1; }</script>
</head><body>
<nav><a href="/">Home</a> | <a href="/about">NAVIGATION_MENU_ITEM</a></nav>
<article>
<h1>Owls of the northern forests</h1>
<p>The great grey owl hunts voles under deep snow, listening for movement before it plunges
through the crust. It is one of the largest owls by length, though much of its bulk is feathers.</p>
<p>Boreal owls nest in old woodpecker holes and depend on mature forest with plenty of dead trees.
Their numbers rise and fall with the rodent cycles of the taiga.</p>
</article>
<script>console.log("SECOND_SCRIPT")</script>
</body></html>"""


def test_html_main_text_without_markup_scripts_styles_or_navigation(tmp_path: Path) -> None:
    path = tmp_path / "owls.html"
    path.write_text(HTML_PAGE, encoding="utf-8")
    [doc] = load_one(path)
    assert isinstance(doc, Document)
    assert doc.title == "Field Guide to Owls"
    assert "great grey owl hunts voles" in doc.text
    assert "rodent cycles of the taiga" in doc.text
    for unwanted in (
        "SECRET_SCRIPT_TOKEN",
        "SECOND_SCRIPT",
        "color: red",
        "NAVIGATION_MENU_ITEM",
        "<p>",
        "</",
    ):
        assert unwanted not in doc.text


def test_html_headings_stand_apart_from_the_paragraph_below(tmp_path: Path) -> None:
    from ragkit.connectors.generators.extractive import split_sentences

    path = tmp_path / "trip.html"
    path.write_text(
        "<html><body><article><h1>Trip to Lisbon</h1><p>We stayed in Alfama for a week in May.</p><h2>Packing</h2>"
        "<p>Bring a raincoat and walking shoes.<br>also a hat for the sun.</p><table><tr><th>Item</th><th>Price</th>"
        "</tr><tr><td>Tea</td><td>2</td></tr></table></article></body></html>",
        encoding="utf-8",
    )
    [doc] = load_one(path)
    assert isinstance(doc, Document)
    assert "Packing\n\nBring a raincoat" in doc.text
    assert "walking shoes.\nalso a hat" in doc.text  # a line break inside a paragraph stays one block
    assert "| Item | Price |" in doc.text and "\n\n|---" not in doc.text  # a table stays one block
    assert "Bring a raincoat and walking shoes." in split_sentences(doc.text)


def test_html_falls_back_to_body_text_when_trafilatura_finds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trafilatura

    monkeypatch.setattr(trafilatura, "extract", lambda *args, **kwargs: None)
    path = tmp_path / "page.htm"
    path.write_text(HTML_PAGE, encoding="utf-8")
    [doc] = load_one(path)
    assert isinstance(doc, Document)
    assert "great grey owl hunts voles" in doc.text
    assert "Owls of the northern forests\n" in doc.text  # block elements end lines
    for unwanted in ("SECRET_SCRIPT_TOKEN", "SECOND_SCRIPT", "color: red", "Field Guide", "<"):
        assert unwanted not in doc.text


def test_html_body_text_with_control_characters_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lxml keeps a control character (here U+001C) of an HTML file but refuses to set a string holding one."""
    import trafilatura

    monkeypatch.setattr(trafilatura, "extract", lambda *args, **kwargs: None)
    path = tmp_path / "page.html"
    path.write_text("<html><body><p>owls</p>\x1cdo hunt<div>voles</div>\x1c at night</body></html>")
    [doc] = load_one(path)
    assert isinstance(doc, Document)
    assert "\x1c" not in doc.text
    assert all(word in doc.text for word in ("owls", "do hunt", "voles", "at night"))


def test_html_without_visible_text_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.html"
    path.write_text("<html><head><script>var x = 1;</script></head><body>  </body></html>")
    [error] = load_one(path)
    assert isinstance(error, LoadError)
    assert error.source == str(path)
    assert "no text" in error.reason


def test_pdf_pages_offsets_and_title(tmp_path: Path) -> None:
    path = make_pdf(
        tmp_path / "paper.pdf", ["Alpha page one text.", "", "Gamma page three (final)."], title="Owl Paper"
    )
    [doc] = load_one(path)
    assert isinstance(doc, Document)
    assert doc.title == "Owl Paper"
    offsets = doc.meta["page_offsets"]
    assert len(offsets) == 3 and offsets[0] == 0
    assert doc.text[offsets[0] :].startswith("Alpha page one text.")
    assert doc.text[offsets[2] :].startswith("Gamma page three (final).")
    assert doc.text[offsets[1] : offsets[2]].strip() == ""  # the blank page keeps its place
    # 4 tokens per chunk, 2 of them taken by the title that embed_text prepends
    chunks = TokenChunker(WhitespaceTokenOffsets(), max_tokens=4, overlap=0).split(doc)
    pages = {c.text: c.meta["page"] for c in chunks}
    assert pages == {"Alpha page": 1, "one text.": 1, "Gamma page": 3, "three (final).": 3}


def test_pdf_problems_are_named(tmp_path: Path) -> None:
    good = make_pdf(tmp_path / "good.pdf", ["Some words on a page."]).read_bytes()
    (tmp_path / "truncated.pdf").write_bytes(good[: len(good) // 3])
    (tmp_path / "garbage.pdf").write_bytes(b"%PDF-1.7\nthis is not really a pdf at all\n%%EOF\n")
    (tmp_path / "notpdf.pdf").write_bytes(b"plain text pretending to be a PDF")
    make_pdf(tmp_path / "locked.pdf", ["Secret words."], password="hunter2")
    make_pdf(tmp_path / "scanned.pdf", ["", ""])
    reasons = {}
    for name in ("truncated.pdf", "garbage.pdf", "notpdf.pdf", "locked.pdf", "scanned.pdf"):
        [error] = load_one(tmp_path / name)
        assert isinstance(error, LoadError), name
        assert error.source == str(tmp_path / name)
        reasons[name] = error.reason
    assert reasons["truncated.pdf"].startswith("corrupt PDF (")
    assert reasons["garbage.pdf"].startswith("corrupt PDF (")
    assert reasons["notpdf.pdf"] == "not a PDF file (no %PDF- header)"
    assert reasons["locked.pdf"].startswith("encrypted PDF")
    assert reasons["scanned.pdf"].startswith("no extractable text")


def test_jsonl_beir_rows_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    rows = [
        json.dumps(
            {"_id": "d1", "title": "First", "text": "Alpha text.", "metadata": {"url": "u"}, "year": 2020}
        ),
        "",
        '{"_id": "d2", "title": "broken", "text": ',
        json.dumps(["not", "an", "object"]),
        json.dumps({"_id": "d3", "title": "No text"}),
        json.dumps({"_id": "d4", "text": "   "}),
        json.dumps({"id": 7, "text": "Fallback id field.", "tags": ["x"], "score": 0.5, "ok": True}),
        json.dumps({"text": "No id at all."}),
        json.dumps({"_id": "d1", "text": "Duplicate id."}),
        json.dumps({"_id": "d5", "title": "Last", "text": "Omega text."}),
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    docs, errors = split(load_one(path))
    source = str(path.resolve())
    assert [d.id for d in docs] == ["d1", "7", f"{sha1_hex(source)[:16]}:8", "d5"]
    assert all(d.source == source for d in docs)
    first = docs[0]
    assert (first.title, first.text) == ("First", "Alpha text.")
    assert first.meta == {"year": 2020, "row": 1}  # the metadata object is not a scalar
    assert docs[1].meta == {"score": 0.5, "ok": True, "row": 7}
    assert [e.source for e in errors] == [f"{path}:{n}" for n in (3, 4, 5, 6, 9)]
    reasons = [e.reason for e in errors]
    assert reasons[0].startswith("bad JSON")
    assert "not an object" in reasons[1]
    assert "missing text field 'text'" in reasons[2]
    assert "empty text" in reasons[3]
    assert "duplicate id 'd1'" in reasons[4]


def test_csv_with_custom_fields(tmp_path: Path) -> None:
    path = tmp_path / "faq.csv"
    path.write_text(
        "doc_id,heading,body,lang\n"
        'q1,Returns,"You can return items\nwithin 30 days, with receipt.",en\n'
        "q2,Empty,,en\n"
        "q3,Shipping,Ships in two days.,de\n",
        encoding="utf-8-sig",  # spreadsheet exports start with a BOM
    )
    fields = RowFields(id="doc_id", title="heading", text="body")
    docs, errors = split(load_one(path, fields))
    assert [d.id for d in docs] == ["q1", "q3"]
    assert docs[0].title == "Returns"
    assert docs[0].text == "You can return items\nwithin 30 days, with receipt."
    assert docs[0].meta == {"lang": "en", "row": 1}
    assert docs[1].meta == {"lang": "de", "row": 3}
    assert [(e.source, "empty text" in e.reason) for e in errors] == [(f"{path}:2", True)]
    # Default fields name a text column the file lacks: each row's text is its columns, `name: value`.
    docs, errors = split(load_one(path))
    assert errors == [] and len(docs) == 3
    assert docs[0].text == (
        "doc_id: q1\nheading: Returns\nbody: You can return items\nwithin 30 days, with receipt.\nlang: en"
    )
    assert docs[1].text == "doc_id: q2\nheading: Empty\nlang: en"


def test_utf16_jsonl_keeps_unicode_line_separators_inside_rows(tmp_path: Path) -> None:
    path = tmp_path / "wide.jsonl"
    rows = [{"_id": "a", "text": "first\u2028still first"}, {"_id": "b", "text": "second\u0085row"}]
    path.write_bytes("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode("utf-16"))
    docs, errors = split(list(load_sources(str(path))))  # a single path, not a list, is accepted too
    assert errors == []
    assert [(d.id, d.text, d.meta["row"]) for d in docs] == [
        ("a", "first\u2028still first", 1),
        ("b", "second\u0085row", 2),
    ]


# --- errors in a folder: one LoadError each, the rest loads ----------------------------------------


def test_each_bad_file_gives_one_error_and_the_rest_loads(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a_good.txt").write_text("A perfectly fine text file.")
    (folder / "b_binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (folder / "c_empty.md").write_text(" \n\t\n")
    (folder / "d_latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (folder / "e_corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage")
    (folder / "f_wide.txt").write_bytes("UTF-16 text loads.".encode("utf-16"))
    (folder / "g_zero.txt").write_bytes(b"")
    make_pdf(folder / "h_good.pdf", ["A readable PDF page."])
    docs, errors = split(list(load_sources([folder])))
    assert [Path(d.source).name for d in docs] == ["a_good.txt", "f_wide.txt", "h_good.pdf"]
    by_file = {Path(e.source).name: e.reason for e in errors}
    assert len(errors) == len(by_file) == 5
    assert by_file["b_binary.txt"] == "binary file, not text"
    assert by_file["c_empty.md"] == "empty file"
    assert by_file["d_latin1.txt"] == "not valid UTF-8 text (invalid byte 0xe9 at offset 3)"
    assert by_file["e_corrupt.pdf"].startswith("corrupt PDF (")
    assert by_file["g_zero.txt"] == "empty file"


def test_error_sources_match_document_sources_for_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipeline matches failures to indexed documents by source, so both use the resolved path."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "good.txt").write_text("fine")
    (tmp_path / "docs" / "bad.txt").write_bytes(b"\x00\x01binary")
    (tmp_path / "docs" / "rows.jsonl").write_text('{"text": "ok"}\nnot json\n')
    monkeypatch.chdir(tmp_path)
    docs, errors = split(list(load_sources(["docs", "missing.md"])))
    folder = (tmp_path / "docs").resolve()
    assert sorted(d.source for d in docs) == [str(folder / "good.txt"), str(folder / "rows.jsonl")]
    assert [e.source for e in errors] == [
        str(folder / "bad.txt"),
        f"{folder / 'rows.jsonl'}:2",
        str(tmp_path.resolve() / "missing.md"),
    ]


def test_symlink_loops_are_reported_once_and_walking_continues(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "doc.txt").write_text("inside sub")
    (root / "top.txt").write_text("at the top")
    os.symlink(root, root / "sub" / "back_to_root")
    os.symlink(root / "self_link", root / "self_link")  # a link to itself: ELOOP
    os.symlink(root / "missing_target", root / "dangling.txt")
    docs, errors = split(list(load_sources([root])))
    assert sorted(Path(d.source).name for d in docs) == ["doc.txt", "top.txt"]
    by_link = {Path(e.source).name: e.reason for e in errors}
    assert set(by_link) == {"back_to_root", "self_link", "dangling.txt"}
    assert "symbolic link loop" in by_link["back_to_root"]
    assert "symbolic link loop" in by_link["self_link"]
    assert "broken symbolic link" in by_link["dangling.txt"]


def test_a_folder_reached_twice_through_links_loads_once(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.txt").write_text("only once")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    docs, errors = split(list(load_sources([tmp_path, tmp_path / "real" / "x.txt"])))
    assert [d.text for d in docs] == ["only once"] and errors == []


OUTSIDE = "outside the indexed folder; not followed (use --follow-symlinks)"


def _link_tree(tmp_path: Path) -> tuple[Path, Path]:
    """``tree/`` to index, with links in and out of it at several depths; ``outside/`` beside it."""
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    (tree / "a" / "b").mkdir(parents=True)
    (outside / "keys").mkdir(parents=True)
    (outside / "keys" / "id_rsa.txt").write_text("PRIVATE KEY material")
    (outside / "notes.md").write_text("# Outside\n\nnotes from outside")
    (tree / "inside.txt").write_text("inside the tree")
    (tree / "a" / "b" / "deep.md").write_text("# Deep\n\ndeep inside")
    os.symlink(outside / "notes.md", tree / "notes_link.md")  # a file out of the tree, at the top
    os.symlink(outside / "keys", tree / "a" / "b" / "keys")  # a folder out of the tree, two levels down
    os.symlink("../../inside.txt", tree / "a" / "b" / "inside_link.txt")  # relative, stays inside
    os.symlink(tree / "a" / "b", tree / "b_alias")  # a folder inside: followed (its files load once)
    os.symlink(Path("..") / ".." / "outside" / "notes.md", tree / "a" / "up.md")  # relative, leaves the tree
    return tree, outside


def test_symlinks_out_of_the_tree_are_reported_not_followed(tmp_path: Path) -> None:
    tree, outside = _link_tree(tmp_path)
    docs, errors = split(list(load_sources([tree])))
    assert sorted(Path(d.source).name for d in docs) == ["deep.md", "inside.txt"]
    assert not [d for d in docs if "PRIVATE" in d.text or "outside" in d.text]
    assert sorted((e.source, e.reason) for e in errors) == sorted([
        (str(tree / "notes_link.md"), f"symbolic link to {outside.resolve() / 'notes.md'} {OUTSIDE}"),
        (str(tree / "a" / "up.md"), f"symbolic link to {outside.resolve() / 'notes.md'} {OUTSIDE}"),
        (str(tree / "a" / "b" / "keys"), f"symbolic link to {outside.resolve() / 'keys'} {OUTSIDE}"),
    ])
    assert all(e.stage == "load" for e in errors)


def test_follow_symlinks_follows_every_link(tmp_path: Path) -> None:
    tree, outside = _link_tree(tmp_path)
    docs, errors = split(list(load_sources([tree], follow_symlinks=True)))
    assert errors == []
    assert sorted(Path(d.source).name for d in docs) == ["deep.md", "id_rsa.txt", "inside.txt", "notes.md"]
    if os.path.exists("/dev/zero"):  # followed, a device is still never read
        os.symlink("/dev/zero", tree / "zero.txt")
        named = list(load_sources([tree / "zero.txt"]))  # a file named directly: its resolved path
        assert named == [LoadError("/dev/zero", "not a regular file (device)")]
        _, errors = split(list(load_sources([tree], follow_symlinks=True)))
        assert [(e.source, e.reason) for e in errors] == [(str(tree / "zero.txt"), "not a regular file (device)")]
        _, errors = split(list(load_sources([tree])))
        reasons = {e.source: e.reason for e in errors}
        assert reasons[str(tree / "zero.txt")] == f"symbolic link to /dev/zero {OUTSIDE}"


def test_links_between_indexed_folders_and_to_named_files_are_inside(tmp_path: Path) -> None:
    """A link from one source folder into another, or to a file also named as a source, stays in what is
    being indexed: followed (and loaded once). A link named directly as a source is always followed."""
    tree, outside = _link_tree(tmp_path)
    docs, errors = split(list(load_sources([tree, outside])))
    assert errors == []
    assert sorted(Path(d.source).name for d in docs) == ["deep.md", "id_rsa.txt", "inside.txt", "notes.md"]
    docs, errors = split(list(load_sources([tree, outside / "notes.md"])))
    assert sorted(Path(d.source).name for d in docs) == ["deep.md", "inside.txt", "notes.md"]
    assert [Path(e.source).name for e in errors] == ["keys"]  # the folder link still leads outside
    docs, errors = split(list(load_sources([tree / "notes_link.md", tree / "a" / "b" / "keys"])))
    assert sorted(d.text for d in docs) == ["# Outside\n\nnotes from outside", "PRIVATE KEY material"]
    assert errors == []


def test_a_link_out_of_a_link_loop_or_excluded_is_not_reported_twice(tmp_path: Path) -> None:
    """Excluded paths and unsupported suffixes are skipped before links are judged; a loop stays a loop."""
    tree, outside = _link_tree(tmp_path)
    os.symlink(outside / "notes.md", tree / "data.xyz")  # unsupported suffix: skipped silently
    os.symlink(tree, tree / "a" / "loop")  # back to the root: inside, a loop
    _, errors = split(list(load_sources([tree], exclude=["a/b/*"])))
    notes = f"symbolic link to {outside.resolve() / 'notes.md'} {OUTSIDE}"
    assert sorted((Path(e.source).name, e.reason) for e in errors) == [
        ("loop", f"symbolic link loop (leads back to {tree.resolve()})"),
        ("notes_link.md", notes),
        ("up.md", notes),
    ]


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="running as root: chmod 000 does not block reads"
)
def test_unreadable_file_with_chmod(tmp_path: Path) -> None:
    (tmp_path / "locked.txt").write_text("secret")
    (tmp_path / "open.txt").write_text("public")
    (tmp_path / "locked.txt").chmod(0)
    try:
        docs, errors = split(list(load_sources([tmp_path])))
    finally:
        (tmp_path / "locked.txt").chmod(0o644)
    assert [d.text for d in docs] == ["public"]
    assert [(Path(e.source).name, e.reason) for e in errors] == [("locked.txt", "permission denied")]


def test_permission_errors_are_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root ignores chmod, so the OS refusal is injected at the two places the loaders touch the disk."""
    (tmp_path / "locked.txt").write_text("secret")
    (tmp_path / "locked.jsonl").write_text('{"text": "secret"}\n')
    (tmp_path / "open.txt").write_text("public")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "inner.txt").write_text("hidden")
    real_open, real_scandir = Path.open, os.scandir

    def guarded_open(self: Path, *args: object, **kwargs: object):
        if self.name.startswith("locked"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    def guarded_scandir(path: object = "."):
        if Path(str(path)).name == "private":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(Path, "open", guarded_open)
    monkeypatch.setattr(os, "scandir", guarded_scandir)
    docs, errors = split(list(load_sources([tmp_path])))
    assert [d.text for d in docs] == ["public"]
    assert sorted((Path(e.source).name, e.reason) for e in errors) == [
        ("locked.jsonl", "permission denied"),
        ("locked.txt", "permission denied"),
        ("private", "permission denied"),
    ]


def test_an_unexpected_loader_failure_is_one_error_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ragkit.connectors.loaders.text as text_loader

    real_decode = text_loader.decode_text

    def flaky_decode(data: bytes) -> str:
        if data.startswith(b"boom"):
            raise ValueError("simulated bug")
        return real_decode(data)

    monkeypatch.setattr(text_loader, "decode_text", flaky_decode)
    (tmp_path / "a.txt").write_text("boom goes the loader")
    (tmp_path / "b.txt").write_text("still loads")
    docs, errors = split(list(load_sources([tmp_path])))
    assert [d.text for d in docs] == ["still loads"]
    assert [(Path(e.source).name, e.reason) for e in errors] == [
        ("a.txt", "could not read it (ValueError: simulated bug)")
    ]


def test_explicit_sources_nonexistent_unsupported_and_directories(tmp_path: Path) -> None:
    (tmp_path / "data.xyz").write_text("whatever")
    (tmp_path / "Makefile").write_text("all:")
    (tmp_path / "UPPER.TXT").write_text("suffixes are case-insensitive")
    items = list(load_sources([tmp_path / "missing.txt", tmp_path / "data.xyz", tmp_path / "Makefile",
                               tmp_path / "UPPER.TXT"]))  # fmt: skip
    docs, errors = split(items)
    assert [d.text for d in docs] == ["suffixes are case-insensitive"]
    assert errors[0] == LoadError(str(tmp_path / "missing.txt"), "no such file or directory")
    assert errors[1].reason.startswith("unsupported file type '.xyz' (supported: ")
    assert all(suffix in errors[1].reason for suffix in SUPPORTED_SUFFIXES)
    assert errors[2].reason.startswith("unsupported file type (no suffix)")
    [error] = load_one(tmp_path)
    assert isinstance(error, LoadError)
    os.symlink(tmp_path / "nowhere.txt", tmp_path / "dangling.txt")
    assert list(load_sources([tmp_path / "dangling.txt"])) == [
        LoadError(str(tmp_path / "dangling.txt"), "broken symbolic link (its target does not exist)")
    ]


# --- walking: order, dot-folders, include/exclude --------------------------------------------------


def _tree(root: Path) -> None:
    for relative in (
        "README.md",
        "b.txt",
        "a.txt",
        "notes.xyz",
        "docs/guide.md",
        "docs/api/ref.md",
        "docs/api/table.csv",
        "drafts/wip.md",
        "drafts/old/ancient.md",
        ".git/objects/x.md",
        ".ragkit/cache.txt",
        "docs/.hidden.md",
    ):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".csv":
            path.write_text("_id,text\nrow1,first row\n")
        else:
            path.write_text(f"# {relative}\n\ncontent of {relative}\n")


def _relative(docs: list[Document], root: Path) -> list[str]:
    return [Path(d.source).relative_to(root.resolve()).as_posix() for d in docs]


def test_walk_is_sorted_recursive_and_skips_dot_entries(tmp_path: Path) -> None:
    _tree(tmp_path)
    docs, errors = split(list(load_sources([tmp_path])))
    assert errors == []
    expected = ["README.md", "a.txt", "b.txt", "docs/api/ref.md", "docs/api/table.csv", "docs/guide.md",
                "drafts/old/ancient.md", "drafts/wip.md"]  # fmt: skip
    assert _relative(docs, tmp_path) == expected
    again, _ = split(list(load_sources([tmp_path])))
    assert [d.id for d in again] == [d.id for d in docs]


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (["**/*.md"], ["drafts/*"], ["README.md", "docs/api/ref.md", "docs/guide.md"]),
        (["docs/**"], [], ["docs/api/ref.md", "docs/api/table.csv", "docs/guide.md"]),
        (["*.txt"], [], ["a.txt", "b.txt"]),
        ([], ["*.md"], ["a.txt", "b.txt", "docs/api/table.csv"]),
        ([], ["docs/api/", "b.txt"], ["README.md", "a.txt", "docs/guide.md", "drafts/old/ancient.md",
                                      "drafts/wip.md"]),
        (["drafts/*.md"], [], ["drafts/wip.md"]),
        (["**/a?.md", "docs/*/[rs]*.md"], [], ["docs/api/ref.md"]),
    ],
)  # fmt: skip
def test_include_and_exclude_globs(
    tmp_path: Path, include: list[str], exclude: list[str], expected: list[str]
) -> None:
    _tree(tmp_path)
    docs, errors = split(list(load_sources([tmp_path], include=include, exclude=exclude)))
    assert errors == []
    assert _relative(docs, tmp_path) == expected


def test_glob_regex_semantics() -> None:
    assert glob_regex("**/*.md").match("top.md") and glob_regex("**/*.md").match("a/b/c.md")
    assert glob_regex("docs/*.md").match("docs/x.md")
    assert not glob_regex("docs/*.md").match("docs/sub/x.md")
    assert glob_regex("a/**/b.md").match("a/b.md") and glob_regex("a/**/b.md").match("a/x/y/b.md")
    assert glob_regex("[!x]*.txt").match("dir/y.txt") and not glob_regex("[!x]*.txt").match("x.txt")
    assert glob_regex("./notes/*").match("notes/n.txt")
    assert not glob_regex("*.md").match("x.mdx")


def test_scifact_corpus_loads_as_is() -> None:
    if not SCIFACT.exists():
        pytest.skip(f"{SCIFACT} is not present in this checkout")
    docs, errors = split(list(load_sources([SCIFACT])))
    assert errors == []
    assert len(docs) == 5183
    with SCIFACT.open(encoding="utf-8") as handle:
        expected = [json.loads(line) for line in handle if line.strip()]
    assert [d.id for d in docs] == [row["_id"] for row in expected]
    assert [(d.title, d.text) for d in docs[:50]] == [(row["title"], row["text"]) for row in expected[:50]]
    assert docs[-1].meta["row"] == len(expected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=400) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    suffix=st.sampled_from(sorted(SUPPORTED_SUFFIXES)),
)
def test_any_bytes_give_documents_or_errors_never_exceptions(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"random{suffix}"
        path.write_bytes(data)
        items = list(load_sources([folder]))
    assert items, "every file gives at least one Document or LoadError"
    for item in items:
        assert isinstance(item, (Document, LoadError))
        if isinstance(item, Document):
            assert item.text.strip()
        else:
            assert item.source.startswith(str(path)) and item.reason


# --- large text files load as parts ----------------------------------------------------------------------


def test_a_large_text_file_loads_as_parts_that_map_back(tmp_path: Path) -> None:
    from ragkit.connectors.loaders.common import decode_text
    from ragkit.connectors.loaders.text import load_text

    path = tmp_path / "big.md"
    text = "# Big\n\n" + "".join(f"Paragraph {i} about caf\u00e9s.\r\n\r\nA line\rthat ends.\n" for i in range(9000))
    path.write_bytes(text.encode("utf-8"))
    docs = list(load_text(path, part_chars=50_000))
    assert len(docs) > 5 and all(isinstance(d, Document) for d in docs)
    whole = decode_text(path.read_bytes())
    assert "".join(d.text for d in docs) == whole
    for number, doc in enumerate(docs):
        assert len(doc.text) <= 50_000 and doc.title == "Big" and doc.meta["part"] == number
        assert whole[doc.meta["offset"] : doc.meta["offset"] + len(doc.text)] == doc.text
        assert doc.id == (docs[0].id if number == 0 else f"{docs[0].id}:part-{number}")
    assert all(d.text.endswith("\n\n") for d in docs[:-1])  # cut after blank lines
    again = list(load_text(path, part_chars=50_000))
    assert [(d.id, d.content_hash) for d in again] == [(d.id, d.content_hash) for d in docs]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"ok " * 100_000 + b"caf\xe9" + b" more" * 10, "not valid UTF-8 text (invalid byte 0xe9 at offset 300003)"),
        (b"ok " * 100_000 + b"\x00", "binary file, not text"),
        (b" \n" * 100_000, "empty file"),
    ],
)
def test_a_bad_large_text_file_is_one_error_and_no_part(tmp_path: Path, data: bytes, reason: str) -> None:
    from ragkit.connectors.loaders.text import load_text

    path = tmp_path / "big.txt"
    path.write_bytes(data)
    (item,) = list(load_text(path, part_chars=50_000))
    assert isinstance(item, LoadError) and item.reason == reason


def test_a_large_text_file_indexes_in_parts_and_reindexes_incrementally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ragkit import Index, Settings
    from ragkit.connectors.loaders import text as text_loader
    from ragkit.testing import HashingEmbedder

    monkeypatch.setattr(text_loader, "TEXT_PART_CHARS", 20_000)
    path = tmp_path / "log.txt"
    lines = [f"Entry {i}: the heron number {i} waited by the weir." for i in range(2000)]
    path.write_text("\n".join(lines))
    settings = Settings().merged(graph={"enabled": False})
    with Index.create(tmp_path / "idx", settings, embedder=HashingEmbedder(64)) as index:
        first = index.add([path])
        assert first.added > 3 and first.failed == 0
        assert index.retrieve("Entry 1999", k=1, mode="bm25")[0].source == str(path.resolve())
        lines[-1] = "Entry 1999: a kingfisher, not a heron."
        path.write_text("\n".join(lines))
        second = index.add([path])
        assert (second.updated, second.added, second.unchanged) == (1, 0, first.added - 1)


def test_a_damaged_pdf_prints_nothing_without_logging_configured(tmp_path: Path) -> None:
    """A script that indexes a damaged PDF gets the LoadError naming it, not pypdf's bare warning on stderr."""
    import subprocess
    import sys

    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 broken")
    script = (
        "import sys; from pathlib import Path; from ragkit.connectors.loaders.pdf import load_pdf; "
        "print([type(x).__name__ for x in load_pdf(Path(sys.argv[1]))])"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "broken.pdf")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "['LoadError']", done.stderr
    assert done.stderr == ""
