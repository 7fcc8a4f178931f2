"""Hostile and broken inputs: each bad file (or row) is one error naming it, everything else is indexed.

One tree holds every kind of hostile input next to good files; it is indexed through the Python API (hashing
embedder, so it is fast) and once through ``ragkit index`` in a subprocess, which must exit 3 (partial) and
name each bad file on stderr.

Behaviours chosen where the requirement is silent (the loaders' docstrings say the same):

* zero-byte or whitespace-only file: a LoadError "empty file" (a notice for that file, never a crash);
* UTF-8 (with or without BOM), UTF-16 and UTF-32 *with* a BOM decode; invalid UTF-8 is a LoadError naming the
  first bad byte and its offset, not a decode with replacement characters: a Latin-1 file read as UTF-8 would
  index mojibake, and the error tells the user to convert it. Broken UTF-16 (a lone surrogate, an odd byte
  count) is a LoadError too;
* a NUL byte in a text/Markdown/HTML file, or one in the first 8 KiB of a JSONL/CSV file: "binary file, not
  text"; a NUL byte or invalid UTF-8 further into a JSONL/CSV file is an error for that row only;
* JSONL/CSV: a bad row is a LoadError whose source is ``"{file}:{row}"``; the rows after it still load. A CSV
  quoted field that is never closed is reported on its row, and parsing starts again on the next line. A JSON
  string with a lone surrogate (``"\\ud83d"``, half an emoji) loads with U+FFFD in its place;
* size: a file that becomes one document (txt, md, html, pdf) over the limit (64 MiB by default,
  ``RAGKIT_MAX_FILE_MB`` or ``load_sources(max_file_bytes=...)``) is refused before it is read, with a
  LoadError naming the file, its size and the limit. JSONL/CSV files are streamed row by row, whatever their
  size; a single row over the limit is a row error. Memory is bounded either way (measured below on 200 MB
  files);
* symlink loops, dangling links, pipes/sockets/devices with a text suffix, unreadable files and folders, and
  files that vanish or change while the run is under way: one LoadError each (a changed file is indexed with
  the content read); folders thousands deep are walked without recursion; paths over PATH_MAX are an error
  for that folder;
* a symbolic link whose target lies outside the folders being indexed (``/etc/passwd``, ``/dev/zero``, a
  folder beside the tree) is not followed: one LoadError "symbolic link to ... outside the indexed folder;
  not followed (use --follow-symlinks)". Links inside the tree are followed; ``follow_symlinks=True``
  follows every link;
* a binary file is refused from its first 8 KiB ("binary file, not text"), whatever its size: a zip bomb
  renamed ``.txt`` is never decompressed, 100 MB of NUL bytes are never read;
* a file name that is not valid UTF-8 (``b"caf\xe9.txt"``) is indexed with the source ``caf\\xe9.txt``
  (each undecodable byte written ``\\xNN``): SQLite cannot store the lone surrogate Python decodes it to;
* a PDF whose page tree loops (``/Kids`` leading back to an ancestor) or nests too deep: "corrupt PDF (...)";
* HTML nested 50,000 deep: "HTML nested too deeply" in milliseconds;
* a CSV of 10,000 columns: each row is a Document whose text is the text column, the other columns meta
  (without a text column: the columns as `name: value` lines);
* HTML: scripts, styles and inline ``data:`` blobs are never indexed, however big (lxml's 10 MB node limit
  is lifted so a huge inline script does not lose the page);
* text in any script, right-to-left included, is indexed as is and is retrievable.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from cli_run import run_ragkit
from pypdf import PdfWriter
from pypdf.generic import ArrayObject, DecodedStreamObject, DictionaryObject, NameObject, NumberObject

from ragkit import Index, Settings
from ragkit.connectors.loaders import load_file, load_sources
from ragkit.testing import HashingEmbedder
from ragkit.types import Document, LoadError

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
DEEP = 1100  # deeper than Python's recursion limit: a recursive walk fails here
MAX_ENV = "RAGKIT_MAX_FILE_MB"
HOW_TO_RAISE = f"split it, or raise the limit with {MAX_ENV}"

# Good files: relative path -> (content, a query that must find it).
SCRIPTS = {
    "scripts/arabic.txt": (
        "تعيش البومة في الغابات الكثيفة وتصطاد الفئران ليلا قرب النهر.",
        "البومة الغابات",
    ),
    "scripts/hebrew.md": ("# ינשופים\n\nהינשוף צד עכברים בלילה ליד הנהר הגדול.\n", "הינשוף עכברים"),
    "scripts/chinese.txt": ("猫头鹰在夜间捕食老鼠。", "猫头鹰在夜间捕食老鼠"),
    "scripts/japanese.txt": ("東京の図書館では毎朝八時に開館します。", "東京の図書館では毎朝八時に開館します"),  # noqa: E501
    "scripts/korean.txt": ("부엉이는 밤에 들쥐를 사냥한다.", "부엉이는 들쥐를"),
    "scripts/hindi.txt": ("उल्लू रात में चूहों का शिकार करता है।", "उल्लू चूहों"),
    "scripts/thai.txt": ("นกฮูกล่าหนูในเวลากลางคืน", "นกฮูกล่าหนูในเวลากลางคืน"),
    "scripts/russian.txt": ("Сова охотится на мышей ночью в густом лесу.", "Сова охотится"),
    "scripts/greek.txt": ("Η κουκουβάγια κυνηγά ποντίκια τη νύχτα.", "κουκουβάγια ποντίκια"),
    "scripts/bidi.md": (
        "# Mixed\n\nThe Persian word \u200fجغد\u200f means owl; \u202eoverride\u202c and עברית "
        "sit beside English, emoji 👩\u200d👩\u200d👧 and cafe\u0301 na\u0131\u0308ve.\n",
        "جغد",
    ),
}
GOOD = {
    "good/owls.txt": ("Barn owls hunt voles at night over open meadows.", "barn owls voles"),
    "good/guide.md": ("# Guide\n\n## Ferns\n\nFerns reproduce with spores, not seeds.\n", "ferns spores"),
    "good/crlf.txt": ("Line one about kestrels.\r\nLine two about kestrels.\r\n", "kestrels"),
    "good/utf8_bom.txt": ("\ufeffThe heron waits motionless in shallow water.", "heron motionless"),
    **SCRIPTS,
}


# --- building the tree ------------------------------------------------------------------------------------


def make_pdf(path: Path, pages: list[str], password: str | None = None) -> bytes:
    """A real PDF with one Helvetica text line per page, optionally RC4-encrypted with a user password."""
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
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
    if password:
        writer.encrypt(user_password=password, algorithm="RC4-128")
    with path.open("wb") as handle:
        writer.write(handle)
    return path.read_bytes()


def make_looped_pdf(path: Path, text: str, *, to_root: bool = True) -> Path:
    """A one-page PDF whose page tree loops: the root ``/Pages`` lists itself among its ``/Kids``
    (``to_root``), or lists an intermediate ``/Pages`` node whose ``/Kids`` lead back to the root."""
    make_pdf(path, [text])
    writer = PdfWriter(clone_from=str(path))
    root_ref = writer._pages
    pages = root_ref.get_object()
    if to_root:
        pages[NameObject("/Kids")].append(root_ref)
    else:
        middle = DictionaryObject(
            {NameObject("/Type"): NameObject("/Pages"), NameObject("/Parent"): root_ref,
             NameObject("/Count"): NumberObject(1), NameObject("/Kids"): ArrayObject([root_ref])}
        )
        pages[NameObject("/Kids")].append(writer._add_object(middle))
        pages[NameObject("/Count")] = NumberObject(2)
    with path.open("wb") as handle:
        writer.write(handle)
    return path


def make_zip_bomb(path: Path, megabytes: int) -> Path:
    """A real zip of one file of ``megabytes`` MiB of zeros (a few hundred KiB on disk), named ``path``."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("zeros.bin", "w", force_zip64=True) as member:
            block = bytes(2**20)
            for _ in range(megabytes):
                member.write(block)
    return path


def make_sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of ``size`` bytes: ``head``, then a hole (NUL bytes that cost no disk)."""
    with path.open("wb") as handle:
        handle.write(head)
        handle.truncate(size)
    return path


def wide_csv(columns: int, rows: list[tuple[str, str]]) -> str:
    """A CSV with ``_id``, ``text`` and ``columns - 2`` numbered columns; ``rows``: (id, text)."""
    header = ["_id", "text", *(f"c{i}" for i in range(2, columns))]
    values = ",".join(str(i) for i in range(2, columns))
    return "\n".join([",".join(header), *(f"{row_id},{text},{values}" for row_id, text in rows)]) + "\n"


NON_UTF8_NAME = os.fsdecode(b"caf\xe9.txt")  # the lone surrogate Python decodes the byte 0xe9 to
NON_UTF8_SOURCE = "caf\\xe9.txt"  # as the index stores it
EMOJI_LINE = "\U0001f989" * (2**20 // 4)  # 1 MB of one emoji (4 UTF-8 bytes each), one line
ZERO_WIDTH = (
    "Zero\u200bwidth spaces, jo\u200diners\u200c and combining marks: cafe\u0301, Z\u0351\u0352\u0353algo\u0301"
    "\u0302\u0303\u0304, and the kingfisher\u2060 dives for minnows.\n"
)
MIXED_ENCODINGS = "Caf\u00e9 au lait, then ".encode() + "cr\u00e8me br\u00fbl\u00e9e".encode("latin-1") + b" and more"
MIXED_REASON = "not valid UTF-8 text (invalid byte 0xe8 at offset 22)"
OUTSIDE_LINK = "outside the indexed folder; not followed (use --follow-symlinks)"


def make_deep(root: Path, depth: int, leaf: str, text: str) -> Path:
    """``root/d/d/.../leaf`` ``depth`` folders deep, made relative to open folders (no PATH_MAX limit)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        handle = os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(handle, text.encode())
        os.close(handle)
    finally:
        os.close(fd)
    return root


def remove_tree(root: Path) -> None:
    """Remove a tree that may be thousands of folders deep and hold mode-000 folders.

    ``shutil.rmtree`` recurses (it fails past ~1000 levels) and ``rm -rf`` takes seconds on such a tree, so
    this walks it with folder descriptors: down into the first sub-folder, up through ``..`` when empty.
    """
    if not os.path.lexists(root):
        return
    if not root.is_dir() or root.is_symlink():
        root.unlink()
        return
    flags = os.O_RDONLY | os.O_DIRECTORY
    names: list[str] = []
    fd = os.open(root, flags)
    try:
        while True:
            child = None
            for name in os.listdir(fd):
                if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    child = name
                    break
                os.unlink(name, dir_fd=fd)
            if child is not None:
                os.chmod(child, 0o700, dir_fd=fd)
                below = os.open(child, flags, dir_fd=fd)
                os.close(fd)
                fd = below
                names.append(child)
            elif names:
                above = os.open("..", flags, dir_fd=fd)
                os.close(fd)
                fd = above
                os.rmdir(names.pop(), dir_fd=fd)
            else:
                break
    finally:
        os.close(fd)
    os.rmdir(root)


def write(root: Path, relative: str, data: bytes | str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_bytes(data.encode("utf-8"))
    else:
        path.write_bytes(data)
    return path


HUGE_HTML_SCRIPT = 11 * 2**20  # over libxml2's 10 MB text node limit


def huge_html() -> str:
    blob = "QUJD" * (HUGE_HTML_SCRIPT // 4)
    return (
        "<html><head><title>Falconry</title><script>var payload = '"
        + "scriptonly " * (HUGE_HTML_SCRIPT // 11)
        + "';</script><style>body { color: red }</style></head><body><nav>Home | About</nav><article>"
        "<h1>Falconry</h1><p>Falconers train peregrine falcons to return to the glove after each flight, "
        "rewarding them with food.</p>"
        f"<p><img src='data:image/png;base64,{blob}' alt='falcon'></p>"
        "<p>A hooded falcon stays calm while it is carried to the field.</p></article>"
        "<script>document.write('trackingpixel')</script></body></html>"
    )


# Rows: (content, {row: reason substring}, [texts of rows that load]).
JSONL = (
    b'{"_id": "r1", "text": "Puffins nest in burrows on sea cliffs."}\n'
    b'{"_id": "r2", "text": "unterminated\n'
    b'{"_id": "r3", "text": "caf\xe9 latin-1 bytes"}\n'
    b'["an", "array"]\n'
    b'{"_id": "r5", "title": "no text field"}\n'
    + b'{"_id": "r6", "text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    + b'{"_id": "r7", "text": "big number", "n": ' + b"9" * 5000 + b"}\n"
    b"\n"
    b'{"_id": "r9", "text": "Half an emoji \\ud83d stays loadable."}\n'
    b'{"_id": "r10", "text": "Gannets dive from thirty metres into the sea."}\n'
)
JSONL_ERRORS = {
    2: "bad JSON",
    3: "not valid UTF-8 text (invalid byte 0xe9",
    4: "not an object",
    5: "missing text field 'text'",
    6: "bad JSON: nested too deeply",
    7: "bad JSON",
}
CSV = (
    b"_id,title,text\n"
    b"c1,Grebes,Grebes carry their chicks on their backs.\n"
    b"c2,Latin,caf\xe9 au lait\n"
    b"c3,Ragged\n"
    b'c4,Multi,"A quoted field\nover two lines about swifts."\n'
    b'c5,Open,"this quote is never closed\n'
    b"c6,Swallows,Swallows migrate to Africa each autumn.\n"
    b"c7,Martins,House martins build mud nests under eaves.\n"
)
CSV_ERRORS = {
    2: "not valid UTF-8 text (invalid byte 0xe9",
    3: "missing text field 'text'",
    5: "malformed CSV (a quoted field opened on line 7 is never closed)",
}


def build_tree(root: Path, *, locked: bool = True) -> dict[str, str]:
    """Every hostile input plus good files under ``root``; returns {relative source: expected reason}.

    Row errors are keyed ``"rows/x.jsonl:ROW"``. Files that only the API test mutates (``race/``) are made
    here in their first state; ``locked`` adds an unreadable file and folder (mode 000).
    """
    expected: dict[str, str] = {}
    for relative, (text, _) in GOOD.items():
        write(root, relative, text)
    write(root, "good/wide.txt", "Wide text: the curlew calls over the estuary.".encode("utf-16"))
    big_endian = "# Wide\n\nBig-endian text about the dipper.".encode("utf-16-be")
    write(root, "good/wide_be.md", b"\xfe\xff" + big_endian)
    write(root, "good/page.html", "<html><head><title>Kites</title><script>var hidden = 'secretscript';"
          "</script></head><body><p>Red kites circle above the hills looking for carrion.</p></body></html>")
    make_pdf(root / "good" / "report.pdf", ["Ospreys plunge feet first to catch fish.", "Second page text."])
    write(root, "long/one_line.txt", "filler " * 150_000 + "needleword at the very end")
    write(root, "long/one_word.md", "x" * 1_000_000 + " trailingword")
    write(root, "html/huge_inline.html", huge_html())
    make_deep(root / "deep", DEEP, "leaf.txt", "The deepest folder holds a note about wrens.")

    # Broken PDFs.
    good_pdf = (root / "good" / "report.pdf").read_bytes()
    write(root, "bad/truncated.pdf", good_pdf[: len(good_pdf) // 2])
    expected["bad/truncated.pdf"] = "corrupt PDF"
    make_pdf(root / "bad" / "encrypted.pdf", ["Secret plans."], password="hunter2")
    expected["bad/encrypted.pdf"] = "encrypted PDF (needs a password)"
    write(root, "bad/png.pdf", PNG)
    expected["bad/png.pdf"] = "not a PDF file"
    # Zero-byte and whitespace-only files of every type.
    for suffix in ("txt", "md", "html", "pdf", "jsonl", "csv"):
        write(root, f"bad/zero.{suffix}", b"")
        expected[f"bad/zero.{suffix}"] = "empty file"
    write(root, "bad/blank.md", " \n\t\n")
    expected["bad/blank.md"] = "empty file"
    # Binary files with text extensions, NUL bytes.
    for suffix in ("txt", "md", "html", "jsonl", "csv"):
        write(root, f"bad/image.{suffix}", PNG)
        expected[f"bad/image.{suffix}"] = "binary file, not text"
    nested = "<div>" * 5000 + "<p>lost</p>" + "</div>" * 5000
    write(root, "bad/nested.html", f"<html><body>{nested}</body></html>")
    expected["bad/nested.html"] = "HTML nested too deeply (the parser stops at"
    write(root, "bad/nul.txt", b"Text with a NUL \x00 byte in the middle of it.")
    expected["bad/nul.txt"] = "binary file, not text"
    write(root, "bad/nul_late.md", b"# Late\n\n" + b"plain words " * 2000 + b"\x00 and then a NUL")
    expected["bad/nul_late.md"] = "binary file, not text"
    # Bad encodings.
    write(root, "bad/latin1.txt", "Caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    expected["bad/latin1.txt"] = "not valid UTF-8 text (invalid byte 0xe9 at offset 3)"
    write(root, "bad/utf16_surrogate.txt", b"\xff\xfe" + "ok ".encode("utf-16-le") + b"\x00\xd8A\x00")
    expected["bad/utf16_surrogate.txt"] = "not valid UTF-16 text"
    write(root, "bad/utf16_odd.md", "odd length".encode("utf-16") + b"\x41")
    expected["bad/utf16_odd.md"] = "not valid UTF-16 text"
    write(root, "bad/mixed_encodings.txt", MIXED_ENCODINGS)
    expected["bad/mixed_encodings.txt"] = MIXED_REASON
    # Too big to be one document: a sparse 200 MB file that starts with text (the streamed, measured case is
    # a test of its own).
    make_sparse(root / "bad" / "too_big.txt", 200 * 2**20, b"Text at the start. " * 1000)
    expected["bad/too_big.txt"] = "file too large (200 MB, over the 64 MB limit)"
    # Binary whatever the suffix and size: never read past the first 8 KiB, never decompressed.
    make_sparse(root / "bad" / "nul_100mb.txt", 100 * 2**20)
    expected["bad/nul_100mb.txt"] = "binary file, not text"
    make_zip_bomb(root / "bad" / "zip_bomb.txt", 64)
    expected["bad/zip_bomb.txt"] = "binary file, not text"
    # Hostile structure.
    make_looped_pdf(root / "bad" / "page_loop.pdf", "Looping pages.")
    expected["bad/page_loop.pdf"] = "corrupt PDF (PdfReadError: Detected cyclic page references.)"
    write(root, "bad/nested_50k.html", "<html><body>" + "<div>" * 50_000 + "x" + "</div>" * 50_000 + "</body></html>")
    expected["bad/nested_50k.html"] = "HTML nested too deeply (the parser stops at"
    # A pipe would block a reader forever.
    os.mkfifo(root / "bad" / "pipe.txt")
    expected["bad/pipe.txt"] = "not a regular file (named pipe)"
    if os.path.exists("/dev/zero"):  # an endless "file" outside the tree: never followed, so never read
        os.symlink("/dev/zero", root / "bad" / "endless.txt")
        expected["bad/endless.txt"] = f"symbolic link to /dev/zero {OUTSIDE_LINK}"
    # Links out of the tree are not followed; links inside it are (their targets load once).
    outside = root.parent / "outside"
    write(outside, "secret.txt", "The private key is hunter2; nobody indexes this.")
    (root / "links").mkdir()
    os.symlink(outside / "secret.txt", root / "links" / "secret.txt")
    expected["links/secret.txt"] = f"symbolic link to {outside.resolve() / 'secret.txt'} {OUTSIDE_LINK}"
    os.symlink(outside, root / "links" / "outside_folder")
    expected["links/outside_folder"] = f"symbolic link to {outside.resolve()} {OUTSIDE_LINK}"
    os.symlink(root / "good" / "owls.txt", root / "links" / "owls_alias.txt")
    os.symlink(root / "good", root / "links" / "good_alias")
    # Strange but good text: indexed as written.
    write(root, "long/emoji.txt", EMOJI_LINE + "\n")
    write(root, "scripts/zero_width.txt", ZERO_WIDTH)
    write(root, "names/" + NON_UTF8_NAME, "Grey herons nest in colonies called heronries.")
    write(root, "rows/wide.csv", wide_csv(10_000, [("w1", "Avocets sweep their upturned bills through mud."),
                                                   ("w2", "Oystercatchers prise mussels open.")]))
    # Links.
    (root / "loop").mkdir()  # (a link back to the root is inside the tree: a loop, not an outside link)
    os.symlink(root, root / "loop" / "back_to_root")
    expected["loop/back_to_root"] = "symbolic link loop"
    os.symlink(root / "loop" / "self.md", root / "loop" / "self.md")
    expected["loop/self.md"] = "symbolic link loop"
    os.symlink(root / "nowhere.txt", root / "loop" / "dangling.txt")
    expected["loop/dangling.txt"] = "broken symbolic link"
    # Rows.
    write(root, "rows/mixed.jsonl", JSONL)
    expected.update({f"rows/mixed.jsonl:{row}": reason for row, reason in JSONL_ERRORS.items()})
    write(root, "rows/long_row.jsonl", b'{"text": "short row"}\n{"text": "' + b"y" * (65 * 2**20) + b'"}\n'
          b'{"text": "row after the long one about ravens"}\n')
    expected["rows/long_row.jsonl:2"] = "row too large"
    write(root, "rows/mixed.csv", CSV)
    expected.update({f"rows/mixed.csv:{row}": reason for row, reason in CSV_ERRORS.items()})
    # Files the API test changes while the run is under way.
    write(root, "race/a_vanishes.txt", "This file is deleted before it is read.")
    expected["race/a_vanishes.txt"] = "no such file or directory"
    write(root, "race/b_shrinks.txt", "This file is emptied before it is read.")
    expected["race/b_shrinks.txt"] = "empty file"
    write(root, "race/c_becomes_dir.txt", "This file is replaced by a folder before it is read.")
    expected["race/c_becomes_dir.txt"] = "is a directory, not a file"
    write(root, "race/d_changes.txt", "Old content that is never indexed.")
    if locked:
        write(root, "locked/secret.txt", "Nobody may read this.").chmod(0)
        expected["locked/secret.txt"] = "permission denied"
        write(root, "locked/sealed/inner.txt", "Nor this.")
        (root / "locked" / "sealed").chmod(0)
        expected["locked/sealed"] = "permission denied"
    return expected


def mutate_race(root: Path) -> None:
    (root / "race" / "a_vanishes.txt").unlink()
    (root / "race" / "b_shrinks.txt").write_bytes(b"")
    (root / "race" / "c_becomes_dir.txt").unlink()
    (root / "race" / "c_becomes_dir.txt").mkdir()
    (root / "race" / "d_changes.txt").write_text("New content about nightjars, read during the run.")


def relative_source(source: str, root: Path) -> str:
    """``source`` (a resolved or absolute path, maybe with ``:ROW``) relative to ``root``."""
    for base in (str(root.resolve()), str(root.absolute())):
        if source.startswith(base + os.sep):
            return source[len(base) + 1 :]
    raise AssertionError(f"{source} is not under {root}")


@pytest.fixture
def tree(tmp_path: Path):
    """An empty folder for the tree: in RAM (/dev/shm) when possible, where the thousand-level folder chain
    is removed in milliseconds (on a disk mounted with ``discard`` each ``rmdir`` takes ~3 ms)."""
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="ragkit-hostile-", dir=shm)) if os.access(shm, os.W_OK) else tmp_path
    root = base / "corpus"
    root.mkdir()
    try:
        yield root
    finally:
        remove_tree(root)
        if base != tmp_path:
            remove_tree(base)  # and the folder beside the tree that links point to


def settings() -> Settings:
    return Settings().merged(graph={"enabled": False})


# --- the tree through the Python API ---------------------------------------------------------------------


def test_hostile_tree_through_the_api(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = build_tree(tree, locked=not IS_ROOT)
    if IS_ROOT:  # root reads mode-000 files: inject the refusal where the loaders touch the disk
        write(tree, "locked/secret.txt", "Nobody may read this.")
        write(tree, "locked/sealed/inner.txt", "Nor this.")
        expected["locked/secret.txt"] = expected["locked/sealed"] = "permission denied"
        real_open, real_scandir = Path.open, os.scandir

        def guarded_open(self: Path, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if self.name == "secret.txt":
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        def guarded_scandir(path="."):  # noqa: ANN001, ANN202
            if os.path.basename(str(path)) == "sealed":
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(Path, "open", guarded_open)
        monkeypatch.setattr(os, "scandir", guarded_scandir)

    # Files vanish, shrink, turn into folders and change after the walk listed their folder, just before they
    # are read (the walk is lazy: it reads each file when the pipeline asks for the next document).
    import ragkit.connectors.loaders.walk as walk

    real_load_file, mutated = walk.load_file, []

    def racing_load_file(path: Path, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if path.name == "a_vanishes.txt":
            mutate_race(tree)
            mutated.append(path)
        return real_load_file(path, *args, **kwargs)

    monkeypatch.setattr(walk, "load_file", racing_load_file)
    index = Index.create(tmp_path / "idx", settings(), embedder=HashingEmbedder(64))
    report = index.add([tree])
    assert mutated
    monkeypatch.setattr(walk, "load_file", real_load_file)

    errors = {relative_source(e.source, tree): e.reason for e in report.errors}
    assert len(errors) == len(report.errors) == report.failed, "one error per bad file or row"
    assert sorted(errors) == sorted(expected), (set(errors) ^ set(expected), report.errors)
    for source, reason in expected.items():
        assert reason in errors[source], (source, errors[source])

    # Everything else is indexed: each good file, and every good row.
    indexed = {relative_source(s, tree) for s in index.catalog.sources()}
    deep_leaf = "deep/" + "d/" * DEEP + "leaf.txt"
    assert indexed == {
        *GOOD, "good/wide.txt", "good/wide_be.md", "good/page.html", "good/report.pdf", "long/one_line.txt",
        "long/one_word.md", "long/emoji.txt", "scripts/zero_width.txt", f"names/{NON_UTF8_SOURCE}",
        "html/huge_inline.html", deep_leaf, "race/d_changes.txt", "rows/mixed.jsonl", "rows/long_row.jsonl",
        "rows/mixed.csv", "rows/wide.csv",
    }
    rows = index.catalog.sources()
    jsonl_ids = set(rows[str((tree / "rows" / "mixed.jsonl").resolve())])
    assert jsonl_ids == {"r1", "r9", "r10"}
    assert len(rows[str((tree / "rows" / "mixed.csv").resolve())]) == 4  # c1, c4, c6, c7
    assert sorted(rows[str((tree / "rows" / "wide.csv").resolve())]) == ["w1", "w2"]
    assert report.added == sum(len(ids) for ids in rows.values())

    # Chunks are exact spans of the documents the loaders produce (loaded again: a source is not always a
    # path, the non-UTF-8 name is escaped).
    by_source = {doc.id: doc for doc in load_sources([tree]) if isinstance(doc, Document)}
    chunks = [c for batch in index.catalog.iter_chunks() for c in batch]
    assert chunks
    for chunk in chunks:
        doc = by_source[chunk.doc_id]
        assert chunk.text == doc.text[chunk.start : chunk.end]

    def top_source(query: str, mode: str = "bm25", k: int = 1) -> list[str]:
        return [relative_source(h.source, tree) for h in index.retrieve(query, k=k, mode=mode)]

    # Good files, every script included, are retrievable.
    for relative, (_, query) in GOOD.items():
        assert top_source(query) == [relative], (relative, query)
        assert relative in top_source(query, "hybrid", k=3), (relative, query)
    assert top_source("curlew estuary") == ["good/wide.txt"]
    assert top_source("dipper") == ["good/wide_be.md"]
    assert top_source("ospreys fish") == ["good/report.pdf"]
    assert top_source("needleword") == ["long/one_line.txt"]
    assert top_source("trailingword") == ["long/one_word.md"]
    assert top_source("wrens deepest") == [deep_leaf]
    assert top_source("nightjars") == ["race/d_changes.txt"]
    assert top_source("ravens") == ["rows/long_row.jsonl"]
    assert top_source("gannets dive") == top_source("puffins burrows") == ["rows/mixed.jsonl"]
    assert top_source("swallows africa") == top_source("martins mud nests") == ["rows/mixed.csv"]
    assert top_source("peregrine falcons glove") == ["html/huge_inline.html"]
    assert top_source("kingfisher minnows") == ["scripts/zero_width.txt"]
    assert top_source("herons heronries") == [f"names/{NON_UTF8_SOURCE}"]
    assert top_source("avocets upturned bills") == top_source("oystercatchers mussels") == ["rows/wide.csv"]
    assert [c.text for c in chunks if "\U0001f989" in c.text]  # the emoji line is indexed
    # Nothing behind a link out of the tree is indexed.
    assert not [c for c in chunks if "hunter2" in c.text]
    assert index.retrieve("private key hunter2", k=3, mode="bm25") == []
    # Scripts, styles and inline data never reach the index.
    for word in ("secretscript", "scriptonly", "trackingpixel", "QUJDQUJD"):
        assert not [c for c in chunks if word in c.text], word
        assert index.retrieve(word, k=3, mode="bm25") == []
    half_emoji = [c.text for c in chunks if "Half an emoji" in c.text]
    assert half_emoji == ["Half an emoji \ufffd stays loadable."]
    assert index.retrieve("Secret plans", k=3, mode="bm25") == []  # the encrypted PDF stayed out

    # A second run: nothing good changes, every bad input still there is reported again.
    again = index.add([tree])
    assert again.added == again.updated == 0 and again.unchanged == report.added
    gone = {"race/a_vanishes.txt", "race/c_becomes_dir.txt"}  # no longer files: nothing to report
    assert sorted(relative_source(e.source, tree) for e in again.errors) == sorted(set(expected) - gone)
    index.close()


# --- the tree through the CLI, once ----------------------------------------------------------------------


# Put first on a child's PYTHONPATH, this runs at its start-up: as root with RAGKIT_TEST_DROP_DAC=1, it drops
# CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set and execs itself again, so that the CLI it
# runs (through run_ragkit, as every CLI run in the suite does) is refused mode-000 files like a user is.
DROP_DAC = textwrap.dedent(
    """
    import ctypes, os, sys

    if os.environ.pop("RAGKIT_TEST_DROP_DAC", "") == "1":
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
        os.execv(sys.executable, sys.orig_argv)
    """
)


def _unprivileged_env(folder: Path) -> dict[str, str]:
    """Environment for a child that, as root, cannot read mode-000 files (see DROP_DAC)."""
    if not IS_ROOT:
        return {}
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(DROP_DAC)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "RAGKIT_TEST_DROP_DAC": "1"}


def _permissions_enforced(probe: Path, env: dict[str, str]) -> bool:
    """Whether a child started like the CLI below is refused a mode-000 file."""
    probe.write_text("x")
    probe.chmod(0)
    try:
        result = subprocess.run(
            [sys.executable, "-c", f"open({str(probe)!r}).read()"],
            env={**os.environ, **env},
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        probe.chmod(0o644)
        probe.unlink()
    return result.returncode != 0 and b"PermissionError" in result.stderr


def test_hostile_tree_through_the_cli_exits_partial_naming_each_bad_file(tree: Path, tmp_path: Path) -> None:
    env = _unprivileged_env(tmp_path / "site")
    locked = _permissions_enforced(tmp_path / "probe.txt", env)
    expected = build_tree(tree, locked=locked)
    for relative in [r for r in expected if r.startswith("race/")]:
        del expected[relative]  # unchanged here: the race files are good files
    (tmp_path / "ragkit.toml").write_text('[embedder]\nmodel = "hashing-64"\n\n[graph]\nenabled = false\n')
    env[MAX_ENV] = ""  # the default limit
    result = run_ragkit("index", tree, "--index", tmp_path / "idx", "--json", cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 3, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    named = {relative_source(e["source"], tree): e["reason"] for e in summary["errors"]}
    assert len(named) == len(summary["errors"]) == summary["failed"], "one error per bad file or row"
    assert sorted(named) == sorted(expected)
    for source, reason in expected.items():
        assert reason in named[source], (source, named[source])
    files = len(GOOD) + 4 + 2 + 1 + 1 + 4 + 3  # good/, long/, html/, deep/, the (unchanged) race/ files, 3 more
    good = files + 3 + 4 + 2 + 2  # and the good rows of mixed.jsonl, mixed.csv, long_row.jsonl and wide.csv
    assert summary["added"] == summary["documents"] == good, summary


# --- 200 MB: memory stays bounded -----------------------------------------------------------------------

MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from ragkit import Index, Settings
    from ragkit.connectors.loaders import load_sources
    from ragkit.testing import HashingEmbedder
    from ragkit.types import Document

    folder, index_dir, rows = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    index = Index.create(index_dir, Settings().merged(graph={"enabled": False}), embedder=HashingEmbedder(64))
    index.add_documents([Document("warm-up", "warm up every part of the pipeline", "warm-up")])
    base = peak_mb()
    report = index.add([folder])
    after_index = peak_mb()
    documents = errors = 0
    for item in load_sources([rows]):
        if isinstance(item, Document):
            documents += 1
        else:
            errors += 1
    after_rows = peak_mb()
    print(json.dumps({
        "base": base, "index": after_index - base, "rows": after_rows - base, "documents": documents,
        "row_errors": errors, "added": report.added, "errors": [[e.source, e.reason] for e in report.errors],
    }))
    """
)


def test_200_mb_files_keep_memory_bounded(tmp_path: Path) -> None:
    """A 200 MB text file is refused by size before it is read (it would be one 200 MB document, and its
    chunks and vectors many times that); a 200 MB JSONL file streams row by row. Peak RSS of the indexing
    process grows by far less than the file size in both cases."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "small.txt").write_text("A small file about starlings indexes next to the giant one.")
    line = ("The quick brown fox jumps over the lazy dog while the owl watches. " * 15 + "\n").encode()
    block = (line * (2**20 // len(line) + 1))[: 2**20]
    big = folder / "giant.txt"
    rows = tmp_path / "giant.jsonl"
    try:
        with big.open("wb") as handle:
            for _ in range(200):
                handle.write(block)
        row = json.dumps({"text": line.decode().strip()}).encode() + b"\n"
        row_block = row * (2**20 // len(row))
        with rows.open("wb") as handle:
            while handle.tell() < 200 * 2**20:
                handle.write(row_block)
        env = {k: v for k, v in os.environ.items() if k != MAX_ENV}
        result = subprocess.run(
            [sys.executable, "-c", MEASURE, str(folder), str(tmp_path / "idx"), str(rows)],
            capture_output=True, text=True, timeout=300, env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        size_mb = big.stat().st_size / 2**20
    finally:
        big.unlink(missing_ok=True)
        rows.unlink(missing_ok=True)
    assert measured["added"] == 1
    [(source, reason)] = measured["errors"]
    assert source == str(big.resolve())
    assert reason == f"file too large ({size_mb:.0f} MB, over the 64 MB limit); {HOW_TO_RAISE}"
    assert measured["index"] < 100, measured  # MB over the baseline: the 200 MB file was never read
    assert measured["documents"] > 100_000 and measured["row_errors"] == 0
    assert measured["rows"] < 100, measured  # streaming 200 MB of rows holds one row at a time


def test_size_limit_is_configurable_and_names_file_and_limit(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    text = "words about larks " * 70_000  # ~1.2 MB
    write(tmp_path, "a.txt", text)
    write(tmp_path, "b.md", "# Small\n\nsmall enough")
    rows = ['{"text": "short"}', json.dumps({"text": text}), '{"text": "after"}']
    write(tmp_path, "rows.jsonl", "\n".join(rows) + "\n")
    items = list(load_sources([tmp_path], max_file_bytes=2**20))
    errors = {relative_source(e.source, tmp_path): e.reason for e in items if isinstance(e, LoadError)}
    assert errors == {
        "a.txt": f"file too large (1.2 MB, over the 1.0 MB limit); {HOW_TO_RAISE}",
        "rows.jsonl:2": f"row too large (1.2 MB, over the 1.0 MB limit); {HOW_TO_RAISE}",
    }
    assert [d.text for d in items if isinstance(d, Document)] == ["# Small\n\nsmall enough", "short", "after"]
    monkeypatch.setenv(MAX_ENV, "2")
    assert all(isinstance(i, Document) for i in load_sources([tmp_path]))
    monkeypatch.setenv(MAX_ENV, "0.5")
    assert sum(isinstance(i, LoadError) for i in load_sources([tmp_path])) == 2
    assert all(isinstance(i, Document) for i in load_sources([tmp_path], max_file_bytes=4 * 2**20))


# --- single behaviours, each on its own -----------------------------------------------------------------


def test_paths_longer_than_path_max_are_an_error_for_that_folder(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    name = "n" * 250
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(20):  # 20 levels of 251 characters: past PATH_MAX (4096)
            os.mkdir(name, dir_fd=fd)
            below = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = below
        os.close(os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    write(root, "shallow.txt", "The shallow file still loads.")
    try:
        items = list(load_sources([root]))
    finally:
        remove_tree(root)
    docs = [i for i in items if isinstance(i, Document)]
    errors = [i for i in items if isinstance(i, LoadError)]
    assert [Path(d.source).name for d in docs] == ["shallow.txt"]
    assert len(errors) == 1 and errors[0].reason == "file name too long"
    assert errors[0].source.startswith(str(root / name / name))


def test_html_with_huge_inline_data_keeps_its_text_and_drops_scripts(tmp_path: Path) -> None:
    path = write(tmp_path, "page.html", huge_html())
    [doc] = list(load_file(path))
    assert isinstance(doc, Document), doc
    assert doc.title == "Falconry"
    assert "peregrine falcons" in doc.text and "hooded falcon" in doc.text
    assert "scriptonly" not in doc.text and "QUJD" not in doc.text and "trackingpixel" not in doc.text
    assert len(doc.text) < 1000


def test_csv_and_jsonl_bad_rows_are_reported_and_the_rest_loads(tmp_path: Path) -> None:
    jsonl = list(load_file(write(tmp_path, "mixed.jsonl", JSONL)))
    errors = {int(e.source.rsplit(":", 1)[1]): e.reason for e in jsonl if isinstance(e, LoadError)}
    assert sorted(errors) == sorted(JSONL_ERRORS)
    assert all(JSONL_ERRORS[row] in reason for row, reason in errors.items()), errors
    assert [d.id for d in jsonl if isinstance(d, Document)] == ["r1", "r9", "r10"]
    csv_items = list(load_file(write(tmp_path, "mixed.csv", CSV)))
    docs = [d for d in csv_items if isinstance(d, Document)]
    assert [(d.id, d.meta["row"]) for d in docs] == [("c1", 1), ("c4", 4), ("c6", 6), ("c7", 7)]
    assert docs[1].text == "A quoted field\nover two lines about swifts."
    errors = {int(e.source.rsplit(":", 1)[1]): e.reason for e in csv_items if isinstance(e, LoadError)}
    assert sorted(errors) == sorted(CSV_ERRORS)
    assert all(CSV_ERRORS[row] in reason for row, reason in errors.items()), errors
    # Classic Mac line ends (bare CR) and a NUL late in the file (past the binary sniff) are row problems.
    mac = write(tmp_path, "mac.csv", b"_id,text\rm1,first\rm2,second\r")
    assert [d.text for d in load_file(mac)] == ["first", "second"]
    head = b'{"text": "pad"}\n' * 1000 + b'{"text": "nul '
    late = write(tmp_path, "late.jsonl", head + b'\x00 raw"}\n{"text": "end"}\n')
    items = list(load_file(late))
    errors = [e.reason for e in items if isinstance(e, LoadError)]
    assert errors == [f"binary data in the row (NUL byte at offset {len(head)})"]
    assert items[-1].text == "end" and len(items) == 1002


def test_utf16_and_utf32_rows_stream_and_keep_line_separators(tmp_path: Path) -> None:
    rows = '{"text": "one\u2028still one"}\r\n{"text": "two"}\n' + '{"text": "x"}\n' * 3000
    for codec in ("utf-16", "utf-16-be", "utf-32"):
        data = rows.encode(codec)
        if codec == "utf-16-be":
            data = b"\xfe\xff" + data
        items = list(load_file(write(tmp_path, f"wide-{codec}.jsonl", data)))
        assert all(isinstance(i, Document) for i in items), items[:3]
        assert [d.text for d in items[:2]] == ["one\u2028still one", "two"] and len(items) == 3002


def test_chunk_ids_are_stable_across_processes_for_multi_script_text(tmp_path: Path, hashing) -> None:  # noqa: ANN001
    """The same file gives the same chunk ids in a fresh process (ids hash the span, not Python's hash())."""
    text = "\n\n".join(content for content, _ in SCRIPTS.values()) * 20
    path = write(tmp_path, "many.md", text)
    script = textwrap.dedent(
        f"""
        import json
        from pathlib import Path
        from ragkit.chunking import make_chunker
        from ragkit.connectors.loaders import load_file
        from ragkit.testing import HashingEmbedder
        [doc] = load_file(Path({str(path)!r}))
        print(json.dumps({{s: [c.id for c in make_chunker(s, HashingEmbedder(64), 24, 4).split(doc)]
                          for s in ("tokens", "sentences", "markdown", "auto")}}))
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    from ragkit.chunking import make_chunker

    [doc] = load_file(path)
    strategies = ("tokens", "sentences", "markdown", "auto")
    local = {s: [c.id for c in make_chunker(s, hashing, 24, 4).split(doc)] for s in strategies}
    assert json.loads(result.stdout) == local and all(local.values())


def test_a_file_that_grows_while_it_is_read_stays_bounded(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The size is checked on the open file, then at most limit + 1 bytes are read: a file that grows after
    the check (simulated: fstat reports it small) is refused without reading the rest."""
    import ragkit.connectors.loaders.common as common

    path = write(tmp_path, "growing.txt", "growing " * 300_000)  # 2.4 MB
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:
        info = real_fstat(fd)
        return os.stat_result((*info[:6], 10, *info[7:]))  # st_size as it was before the file grew

    monkeypatch.setattr(common.os, "fstat", stale_fstat)
    assert list(load_file(path, max_file_bytes=2**20)) == [
        LoadError(str(path), f"file too large (over the 1.0 MB limit); {HOW_TO_RAISE} (it grew while it was read)")  # noqa: E501
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_named_directly_is_reported_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jsonl")
    assert list(load_sources([tmp_path / "pipe.jsonl"])) == [
        LoadError(str(tmp_path / "pipe.jsonl"), "not a regular file (named pipe)")
    ]



# --- the hostile inputs, one at a time ---------------------------------------------------------


def _bytes_read() -> int:
    """Bytes this process has read through system calls so far (Linux); -1 where unknown."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return -1
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("rchar:")))


def test_binary_files_are_refused_from_their_first_bytes_whatever_their_size(tmp_path: Path) -> None:
    """100 MB of NUL bytes and a zip bomb renamed to a text suffix are refused after reading 8 KiB: never
    read whole, never decompressed, whatever the size limit."""
    make_sparse(tmp_path / "nul.txt", 100 * 2**20)
    make_sparse(tmp_path / "nul_small.md", 10 * 2**20)  # under the size limit: still not read whole
    make_zip_bomb(tmp_path / "bomb.zip", 128)
    for suffix in ("txt", "md", "html", "jsonl", "csv"):
        (tmp_path / f"bomb.{suffix}").write_bytes((tmp_path / "bomb.zip").read_bytes())
    (tmp_path / "bomb.zip").unlink()
    assert all(p.stat().st_size < 2**20 for p in tmp_path.glob("bomb.*"))
    started, read_before = time.perf_counter(), _bytes_read()
    items = list(load_sources([tmp_path], max_file_bytes=2**30))
    elapsed, read = time.perf_counter() - started, _bytes_read() - read_before
    assert [(Path(e.source).name, e.reason) for e in items] == [
        (f"bomb.{suffix}", "binary file, not text") for suffix in ("csv", "html", "jsonl", "md", "txt")
    ] + [("nul.txt", "binary file, not text"), ("nul_small.md", "binary file, not text")]
    if read >= 0:
        assert read < 2**20, read  # a few 8 KiB sniffs, not megabytes
    assert elapsed < 2, elapsed
    # And under the default limit the 100 MB file is binary, not "too large": raising the limit would not help.
    assert list(load_file(tmp_path / "nul.txt")) == [LoadError(str(tmp_path / "nul.txt"), "binary file, not text")]


def test_a_pdf_whose_page_tree_loops_is_corrupt_not_a_recursion_error(tmp_path: Path) -> None:
    to_root = make_looped_pdf(tmp_path / "to_root.pdf", "Looping pages.")
    via_child = make_looped_pdf(tmp_path / "via_child.pdf", "Looping pages.", to_root=False)
    # A page tree 3,000 levels deep (no loop): deeper than Python's recursion limit.
    deep = make_pdf(tmp_path / "deep.pdf", ["Deep pages."]) and tmp_path / "deep.pdf"
    writer = PdfWriter(clone_from=str(deep))
    root_ref = writer._pages
    page_ref = root_ref.get_object()["/Kids"][0]
    parent = root_ref
    refs = []
    for _ in range(3000):
        ref = writer._add_object(
            DictionaryObject({NameObject("/Type"): NameObject("/Pages"), NameObject("/Count"): NumberObject(1),
                              NameObject("/Parent"): parent})
        )
        refs.append(ref)
        parent = ref
    for ref, child in zip(refs, [*refs[1:], page_ref], strict=True):
        ref.get_object()[NameObject("/Kids")] = ArrayObject([child])
    root_ref.get_object()[NameObject("/Kids")] = ArrayObject([refs[0]])
    with deep.open("wb") as handle:
        writer.write(handle)
    started = time.perf_counter()
    reasons = {path.name: [str(i) for i in load_file(path)] for path in (to_root, via_child, deep)}
    assert time.perf_counter() - started < 10
    for name, items in reasons.items():
        [item] = items
        assert ": corrupt PDF (" in item, (name, item)
        assert "RecursionError" not in item
    assert "cyclic page references" in reasons["to_root.pdf"][0]
    assert "cyclic page references" in reasons["via_child.pdf"][0]
    assert "page tree depth" in reasons["deep.pdf"][0]


@pytest.mark.parametrize("tag", ["div", "span", "b", "table", "p", "li", "td", "a"])
def test_html_nested_50k_deep_is_fast_and_reported_or_indexed(tmp_path: Path, tag: str) -> None:
    """Tags libxml2 nests stop the parser at 2,048 levels: the file is reported. Tags it closes implicitly
    (a ``<p>`` in a ``<p>``) become 50,000 siblings and load; either way in seconds, not minutes."""
    path = write(tmp_path, "nested.html", f"<html><body>{f'<{tag}>' * 50_000}deep words{f'</{tag}>' * 50_000}"
                 "<p>words after the nest</p></body></html>")
    started = time.perf_counter()
    [item] = load_file(path)
    assert time.perf_counter() - started < 15
    if isinstance(item, LoadError):
        assert item.reason == "HTML nested too deeply (the parser stops at 2048 levels)"
        assert tag not in ("p", "li", "td", "a")
    else:
        assert "deep words" in item.text and "words after the nest" in item.text


def test_a_10000_column_csv_loads_its_text_column_fast(tmp_path: Path) -> None:
    """Each row's text is its text column; the 9,998 other columns are meta. Parsing is linear in the file."""
    rows = [(f"w{i}", f"Row {i} is about avocets.") for i in range(50)]
    path = write(tmp_path, "wide.csv", wide_csv(10_000, rows))
    started = time.perf_counter()
    docs = list(load_file(path))
    assert time.perf_counter() - started < 5
    assert [(d.id, d.text) for d in docs] == rows
    assert len(docs[0].meta) == 9_998 + 1 and docs[0].meta["c9999"] == "9999" and docs[0].meta["row"] == 1
    # Without a text column, a row's text is its columns as `name: value` lines: still linear in the file.
    started = time.perf_counter()
    without = wide_csv(10_000, rows).replace("_id,text,", "_id,body,", 1)
    no_text = list(load_file(write(tmp_path, "no_text.csv", without)))
    assert time.perf_counter() - started < 5
    assert [d.id for d in no_text if isinstance(d, Document)] == [row_id for row_id, _ in rows]
    assert no_text[0].text.startswith("body: Row 0 is about avocets.\nc2: 2\nc3: 3\n")
    assert no_text[0].text.endswith("\nc9999: 9999") and no_text[0].text.count("\n") == 9_998


def test_text_is_kept_as_written_zero_width_combining_emoji_and_mixed_encodings(tmp_path: Path) -> None:
    [zero_width] = load_file(write(tmp_path, "zero_width.txt", ZERO_WIDTH))
    assert zero_width.text == ZERO_WIDTH  # nothing normalized, nothing stripped
    [emoji] = load_file(write(tmp_path, "emoji.md", EMOJI_LINE))
    assert emoji.text == EMOJI_LINE and len(emoji.text.encode()) == 2**20
    [mixed] = load_file(write(tmp_path, "mixed.txt", MIXED_ENCODINGS))
    assert mixed == LoadError(str(tmp_path / "mixed.txt"), MIXED_REASON)
    assert MIXED_ENCODINGS[22] == 0xE8  # the offset names the first Latin-1 byte


def test_a_file_name_that_is_not_utf8_is_indexed_with_an_escaped_stable_source(tmp_path: Path) -> None:
    """The catalog, JSON and the terminal cannot take the lone surrogate Python decodes ``0xe9`` to; the
    source writes the byte as ``\\xe9``. The id follows from it, so a second run finds the document unchanged
    and ``sync`` removes it when the file is gone. A bad file with such a name is reported under the same
    escaped source."""
    folder = tmp_path / "docs"
    write(folder, NON_UTF8_NAME, "Grey herons nest in colonies called heronries.")
    write(folder, os.fsdecode(b"bin\xff.txt"), b"\x00binary")
    write(folder, "plain.txt", "Little egrets stir the mud with their feet.")
    [error, doc, _] = load_sources([folder])  # sorted by name: "bin\udcff" before "caf\udce9"
    assert doc.source == f"{folder}/{NON_UTF8_SOURCE}" and doc.source.encode("utf-8")
    assert error == LoadError(f"{folder}/bin\\xff.txt", "binary file, not text")
    json.dumps([doc.source, error.source], ensure_ascii=False).encode("utf-8")

    index = Index.create(tmp_path / "idx", settings(), embedder=HashingEmbedder(64))
    first = index.add([folder])
    assert (first.added, first.failed) == (2, 1)
    assert [h.source for h in index.retrieve("herons heronries", k=1, mode="bm25")] == [doc.source]
    again = index.add([folder])
    assert (again.added, again.updated, again.unchanged, again.failed) == (0, 0, 2, 1)
    (folder / NON_UTF8_NAME).unlink()
    synced = index.add([folder], sync=True)
    assert synced.removed == 1 and index.retrieve("herons heronries", k=1, mode="bm25") == []
    index.close()
