"""Helpers shared by the format loaders: ids, sources, byte decoding, size limits and short reasons for OS
errors.

Memory stays bounded whatever the input: a file that becomes one Document (text, Markdown, HTML, PDF) is
refused with a LoadError when it is larger than the file size limit, before anything is read; JSON Lines and
CSV files are streamed row by row, and only a single row (line) over the limit is refused. The limit is
``max_file_bytes`` argument of the loaders, else the environment variable ``RAGKIT_MAX_FILE_MB`` (in MiB),
else ``DEFAULT_MAX_FILE_BYTES`` (64 MiB); see ``size_limit``. A text file is first sniffed (its first 8 KiB):
a binary one is refused without reading the rest, whatever its size.

Sources are text the catalog can store: a path whose name is not valid UTF-8 (``b"caf\\xe9.txt"``, which
Python holds as the lone surrogate ``"caf\\udce9.txt"``, and SQLite and JSON cannot) gets the source
``"caf\\xe9.txt"``, each undecodable byte written as ``\\xNN``; see ``path_source``.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ragkit.types import sha1_hex

_SNIFF_BYTES = 8192
# Control bytes that never appear in text files (tab, newlines, form feed, escape and backspace excluded).
_BINARY_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f\v\x1b\x08")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_UTF32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")  # a line end after a bare CR (classic Mac line endings)
_READ_BLOCK = 1 << 20
_LINE_END = re.compile(r"\r\n|\n|\r")

DEFAULT_MAX_FILE_BYTES = 64 * 2**20
MAX_FILE_ENV = "RAGKIT_MAX_FILE_MB"


def size_limit(limit: int | None = None) -> int:
    """The size limit in bytes: ``limit`` when given, else ``$RAGKIT_MAX_FILE_MB`` (MiB), else 64 MiB."""
    if limit is not None:
        return int(limit)
    setting = os.environ.get(MAX_FILE_ENV, "").strip()
    if setting:
        try:
            megabytes = float(setting)
        except ValueError:
            megabytes = -1.0
        if megabytes > 0:
            return int(megabytes * 2**20)
    return DEFAULT_MAX_FILE_BYTES


def _megabytes(size: int) -> str:
    value = size / 2**20
    return f"{value:.0f} MB" if value >= 10 and value == int(value) else f"{value:.1f} MB"


def too_large(size: int | None, limit: int, what: str = "file") -> str:
    """The reason for a file (or row) over the size limit, naming both sizes and how to raise the limit."""
    actual = f"{_megabytes(size)}, " if size is not None else ""
    return (
        f"{what} too large ({actual}over the {_megabytes(limit)} limit); split it, or raise the limit "
        f"with {MAX_FILE_ENV}"
    )


class Unreadable(Exception):
    """A file (or row) that cannot be read; ``reason`` becomes the LoadError's reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def path_source(path: str | os.PathLike[str]) -> str:
    """A path as a source: its text, with each byte of the name that is not UTF-8 written as ``\\xNN``.

    Python decodes such bytes to lone surrogates (``os.fsdecode(b"caf\\xe9")`` is ``"caf\\udce9"``), which
    cannot be encoded as UTF-8: the catalog (SQLite), JSON output and the terminal would all fail on them. The
    escaped form is stable across runs, so the document keeps its id and incremental indexing and ``--sync``
    work; it reads like Python's ``b"caf\\xe9"``. A name that holds a literal ``\\xe9`` gets the same source
    (the second file then reports a duplicate id); such names are rare, and escaping every backslash would
    change the source of ordinary files.
    """
    text = os.fspath(path)
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes the file system holds
    except UnicodeEncodeError:  # a surrogate that did not come from undecodable bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def file_source(path: Path) -> str:
    """The ``source`` of every document (and LoadError) from ``path``: its resolved absolute path, made
    storable by ``path_source``."""
    try:
        return path_source(path.resolve())
    except (OSError, RuntimeError):  # a symlink loop on Python < 3.13
        return path_source(os.path.abspath(path))


def file_doc_id(source: str) -> str:
    """The id of a file document: 16 hex digits of the SHA-1 of its source."""
    return sha1_hex(source)[:16]


def os_reason(exc: OSError) -> str:
    """A short reason for an OS error, e.g. ``permission denied``."""
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "no such file or directory"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def read_bytes(path: Path, limit: int | None = None, *, text: bool = False) -> bytes:
    """The bytes of ``path``, at most the size limit; OS errors and bigger files become ``Unreadable``.

    The size is checked on the open file before reading, and the read stops one byte past the limit, so a
    file that grows while it is read cannot make it unbounded either. ``text``: the first 8 KiB are read
    first, and a binary file (a zip renamed ``.txt``, 100 MB of NUL bytes) is refused as
    ``"binary file, not text"`` before the size check and without reading the rest.
    """
    limit = size_limit(limit)
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = b""
            if text:
                head = handle.read(_SNIFF_BYTES)
                if sniffs_binary(head):
                    raise Unreadable("binary file, not text")
            if size > limit:
                raise Unreadable(too_large(size, limit))
            # Read what fstat announced (not a limit-sized buffer), then whatever the file grew by.
            data = head + handle.read(max(min(size, limit) + 1 - len(head), 0))
            if len(data) > size and len(data) <= limit:
                data += handle.read(limit + 1 - len(data))
    except OSError as exc:
        raise Unreadable(os_reason(exc)) from None
    if len(data) > limit:
        raise Unreadable(too_large(None, limit) + " (it grew while it was read)")
    return data


def sniffs_binary(head: bytes) -> bool:
    """Whether a file's first bytes are binary: after a UTF-8 BOM, as ``looks_binary``; a UTF-16/32 BOM
    means text (its NUL bytes are part of the encoding; ``decode_text`` checks the decoded text)."""
    if head.startswith(_UTF32_BOMS) or head.startswith(_UTF16_BOMS):
        return False
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :]
    return looks_binary(head)


def looks_binary(sample: bytes) -> bool:
    """True for bytes that are clearly not text: a NUL byte, or many control bytes."""
    if b"\x00" in sample:
        return True
    head = sample[:_SNIFF_BYTES]
    if not head:
        return False
    controls = len(head) - len(head.translate(None, _BINARY_BYTES))
    return controls / len(head) > 0.1


def utf8_error(exc: UnicodeDecodeError, data: bytes, base: int = 0) -> Unreadable:
    """The reason for bytes that are not UTF-8, naming the first bad byte and its file offset."""
    return Unreadable(
        f"not valid UTF-8 text (invalid byte 0x{data[exc.start]:02x} at offset {base + exc.start})"
    )


def decode_text(data: bytes) -> str:
    """Text of a file's bytes: UTF-8 (BOM stripped), or UTF-16/32 when a BOM says so; newlines become ``\\n``.

    Raises ``Unreadable`` for binary data, invalid UTF-8 and files with nothing but whitespace.
    """
    if data.startswith(_UTF32_BOMS) or data.startswith(_UTF16_BOMS):
        codec = "utf-32" if data.startswith(_UTF32_BOMS) else "utf-16"
        try:
            text = data.decode(codec)
        except UnicodeDecodeError as exc:
            raise Unreadable(f"not valid {codec.upper()} text (bad bytes at offset {exc.start})") from None
        if "\x00" in text:
            raise Unreadable("binary file, not text")
    else:
        base = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
        body = data[base:]
        if looks_binary(body):
            raise Unreadable("binary file, not text")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise utf8_error(exc, body, base) from None
    if not text.strip():
        raise Unreadable("empty file")
    return text.replace("\r\n", "\n").replace("\r", "\n")


Line = tuple[int, str, str | None]


def text_lines(handle: BinaryIO, limit: int | None = None) -> Iterator[Line]:
    """``(line_number, line, problem)`` of a binary file handle, decoded one line at a time (streaming).

    Lines end at LF, CRLF or a bare CR and keep their line end. The first bytes decide the encoding: a
    UTF-16/32 BOM switches to that codec, otherwise UTF-8 (BOM stripped). A binary file raises
    ``Unreadable``. A line that is not valid UTF-8, holds a NUL byte or is longer than the size limit is still
    yielded (decoded with replacement characters, or empty when too long) with ``problem`` naming what is
    wrong, so a row loader can report that row and go on with the next.
    """
    limit = size_limit(limit)
    head = handle.read(_SNIFF_BYTES)
    handle.seek(0)
    if head.startswith(_UTF32_BOMS) or head.startswith(_UTF16_BOMS):
        yield from _wide_lines(handle, "utf-32" if head.startswith(_UTF32_BOMS) else "utf-16", limit)
        return
    offset = 0
    if head.startswith(codecs.BOM_UTF8):
        handle.read(len(codecs.BOM_UTF8))
        head, offset = head[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
    if looks_binary(head):
        raise Unreadable("binary file, not text")
    number = 0
    while True:
        raw = handle.readline(limit + 1)
        if not raw:
            return
        if len(raw) > limit and not raw.endswith(b"\n"):
            skipped = len(raw) + _skip_line(handle)
            number += 1
            yield number, "", too_large(skipped, limit, "row")
            offset += skipped
            continue
        for piece in _LONE_CR.split(raw) if b"\r" in raw else (raw,):
            if not piece:
                continue
            number += 1
            yield (number, *_decode_line(piece, offset))
            offset += len(piece)


def _skip_line(handle: BinaryIO) -> int:
    """Read past the rest of an over-long line without keeping it; the number of bytes skipped."""
    skipped = 0
    while True:
        block = handle.readline(_READ_BLOCK)
        skipped += len(block)
        if not block or block.endswith(b"\n"):
            return skipped


def _decode_line(raw: bytes, offset: int) -> tuple[str, str | None]:
    problem = None
    nul = raw.find(b"\x00")
    if nul != -1:
        problem = f"binary data in the row (NUL byte at offset {offset + nul})"
    try:
        return raw.decode("utf-8"), problem
    except UnicodeDecodeError as exc:
        return raw.decode("utf-8", "replace"), problem or utf8_error(exc, raw, offset).reason


def _wide_lines(handle: BinaryIO, codec: str, limit: int) -> Iterator[Line]:
    """Lines of a UTF-16/32 file, decoded incrementally in blocks (the BOM picks the byte order).

    Only LF, CRLF and CR end a line: U+2028 and the other Unicode line breaks may sit inside a JSON string.
    """
    decoder = codecs.getincrementaldecoder(codec)()
    number, buffer, consumed, skipping = 0, "", 0, False
    while True:
        block = handle.read(_READ_BLOCK)
        try:
            buffer += decoder.decode(block, final=not block)
        except UnicodeDecodeError as exc:
            raise Unreadable(
                f"not valid {codec.upper()} text (bad bytes near offset {consumed + exc.start}, "
                f"after line {number})"
            ) from None
        consumed += len(block)
        position = 0
        for end in _LINE_END.finditer(buffer):
            if block and end.end() == len(buffer) and end.group() == "\r":
                break  # a CR at the end of a block may be the first half of a CRLF
            line, position = buffer[position : end.end()], end.end()
            number += 1
            if skipping:
                skipping = False
                yield number, "", too_large(None, limit, "row")
            else:
                yield number, line, "binary data in the row (NUL character)" if "\x00" in line else None
        buffer = buffer[position:]
        if len(buffer) * 2 > limit:  # an over-long row: drop its text, report it where it ends
            buffer, skipping = "", True
        if not block:
            if buffer or skipping:
                number += 1
                yield number, buffer, too_large(None, limit, "row") if skipping else None
            return
