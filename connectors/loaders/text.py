"""Plain-text and Markdown files: one Document per file, or consecutive parts of a large file."""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterator
from pathlib import Path

from ragkit.chunking import iter_atx_headings
from ragkit.connectors.loaders.common import (
    _READ_BLOCK,
    _SNIFF_BYTES,
    _UTF16_BOMS,
    _UTF32_BOMS,
    Unreadable,
    decode_text,
    file_doc_id,
    file_source,
    os_reason,
    read_bytes,
    size_limit,
    sniffs_binary,
    too_large,
)
from ragkit.types import Document, LoadError

# A text file larger than this many bytes is loaded as parts of at most this many characters, so that loading,
# chunking and embedding hold one part at a time, whatever the file's size.
TEXT_PART_CHARS = 4 * 2**20


def markdown_title(text: str) -> str:
    """The first level-1 ATX heading (``# Title``) outside code blocks, else ``""``."""
    return next((title for _, level, title in iter_atx_headings(text) if level == 1 and title), "")


def load_text(
    path: Path, max_file_bytes: int | None = None, part_chars: int | None = None
) -> Iterator[Document | LoadError]:
    """A ``.txt`` or ``.md`` file as one Document; Markdown files take their first ``# `` heading as title.

    Files over the size limit (see ``common.size_limit``) are a LoadError; a binary file (NUL bytes, a zip
    renamed ``.txt``) is refused from its first 8 KiB, whatever its size. Invalid UTF-8 (a Latin-1 segment in a
    UTF-8 file) is a LoadError naming the first bad byte and its offset. The text is kept as written:
    zero-width and combining characters, a single line of millions of characters or of one repeated emoji load
    as is (bounding their chunks is the chunker's job).

    A file of more than ``part_chars`` bytes (default ``TEXT_PART_CHARS``, 4 MiB) is streamed as consecutive
    Documents of at most ``part_chars`` characters, cut after a blank line, else a line end, else a space.
    The first keeps the file's id, the others are ``"{id}:part-{n}"``, with ``meta["part"]`` and
    ``meta["offset"]`` (of the part's first character in the file's text). The whole file is checked
    (encoding, binary data, emptiness) before the first part is given, so a bad file is one LoadError, as a
    small one is. Like the rows of a JSONL file, parts a file no longer has are removed by ``--sync``.
    """
    part_chars = part_chars or TEXT_PART_CHARS
    source = file_source(path)
    try:
        large = path.stat().st_size > part_chars
    except OSError as exc:
        yield LoadError(source, os_reason(exc))
        return
    is_markdown = path.suffix.lower() in (".md", ".markdown")
    doc_id = file_doc_id(source)
    if not large:
        try:
            text = decode_text(read_bytes(path, max_file_bytes, text=True))
        except Unreadable as exc:
            yield LoadError(source, exc.reason)
            return
        yield Document(id=doc_id, text=text, source=source, title=markdown_title(text) if is_markdown else "")
        return
    try:
        if not any(block.strip() for block in _decoded_blocks(path, max_file_bytes)):
            raise Unreadable("empty file")
        title = ""
        for number, (offset, text) in enumerate(_parts(_decoded_blocks(path, max_file_bytes), part_chars)):
            if number == 0 and is_markdown:
                title = markdown_title(text)
            if not text.strip():
                continue
            part_id = doc_id if number == 0 else f"{doc_id}:part-{number}"
            meta = {"part": number, "offset": offset}
            yield Document(id=part_id, text=text, source=source, title=title, meta=meta)
    except Unreadable as exc:
        yield LoadError(source, exc.reason)


def _decoded_blocks(path: Path, max_file_bytes: int | None) -> Iterator[str]:
    """The text of a file in blocks of about 1 MiB, with newlines as ``\\n``; problems raise ``Unreadable``
    with the reasons ``decode_text`` gives."""
    limit = size_limit(max_file_bytes)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise Unreadable(os_reason(exc)) from None
    with handle:
        head = handle.read(_SNIFF_BYTES)
        if sniffs_binary(head):
            raise Unreadable("binary file, not text")
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise Unreadable(too_large(size, limit))
        handle.seek(0)
        wide = head.startswith(_UTF32_BOMS) or head.startswith(_UTF16_BOMS)
        codec = ("utf-32" if head.startswith(_UTF32_BOMS) else "utf-16") if wide else "utf-8-sig"
        decoder = codecs.getincrementaldecoder(codec)()
        consumed, carry = 0, ""
        while True:
            try:
                block = handle.read(_READ_BLOCK)
            except OSError as exc:
                raise Unreadable(os_reason(exc)) from None
            if not wide and b"\x00" in block:
                raise Unreadable("binary file, not text")
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                offset = consumed - (len(exc.object) - len(block)) + exc.start
                if wide:
                    raise Unreadable(f"not valid {codec.upper()} text (bad bytes at offset {offset})") from None
                raise Unreadable(
                    f"not valid UTF-8 text (invalid byte 0x{exc.object[exc.start]:02x} at offset {offset})"
                ) from None
            consumed += len(block)
            if consumed > limit:
                raise Unreadable(too_large(None, limit) + " (it grew while it was read)")
            if wide and "\x00" in text:
                raise Unreadable("binary file, not text")
            text = carry + text
            carry = "\r" if block and text.endswith("\r") else ""  # maybe the first half of a CRLF
            if carry:
                text = text[:-1]
            yield text.replace("\r\n", "\n").replace("\r", "\n")
            if not block:
                return


def _parts(blocks: Iterator[str], part_chars: int) -> Iterator[tuple[int, str]]:
    """``(offset, text)`` of consecutive parts of at most ``part_chars`` characters, covering every block."""
    buffer, offset = "", 0
    for block in blocks:
        buffer += block
        while len(buffer) >= part_chars:
            cut = _part_end(buffer, part_chars)
            yield offset, buffer[:cut]
            offset += cut
            buffer = buffer[cut:]
    if buffer:
        yield offset, buffer


def _part_end(text: str, limit: int) -> int:
    """Where a part of ``text`` ends: after the last blank line, line end or space in the second half of the
    first ``limit`` characters, else at ``limit``."""
    half = limit // 2
    for separator in ("\n\n", "\n", " "):
        found = text.rfind(separator, half, limit)
        if found != -1:
            return found + len(separator)
    return limit
