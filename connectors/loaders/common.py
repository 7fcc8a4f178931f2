"""Helpers shared by the format loaders: ids, sources, byte decoding and short reasons for OS errors."""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ragkit.types import sha1_hex

_SNIFF_BYTES = 8192
# Control bytes that never appear in text files (tab, newlines, form feed, escape and backspace excluded).
_BINARY_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f\v\x1b\x08")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_UTF32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)


class Unreadable(Exception):
    """A file (or row) that cannot be read; ``reason`` becomes the LoadError's reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def file_source(path: Path) -> str:
    """The ``source`` of every document (and LoadError) from ``path``: its resolved absolute path."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):  # a symlink loop on Python < 3.13
        return os.path.abspath(path)


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


def read_bytes(path: Path) -> bytes:
    """The bytes of ``path``; OS errors become ``Unreadable`` with a short reason."""
    try:
        with path.open("rb") as handle:
            return handle.read()
    except OSError as exc:
        raise Unreadable(os_reason(exc)) from None


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


def text_lines(handle: Iterable[bytes]) -> Iterator[tuple[int, str]]:
    """``(line_number, line)`` of a binary file handle, decoded one line at a time (streaming).

    The first line decides the encoding: a UTF-16 BOM switches the rest to UTF-16, otherwise UTF-8 (BOM
    stripped). Invalid bytes raise ``Unreadable`` naming the byte and its offset in the file.
    """
    lines = iter(handle)
    first = next(lines, b"")
    if first.startswith(_UTF16_BOMS):
        parts = decode_text(first + b"".join(lines)).split("\n")  # not splitlines(): keep U+2028 in rows
        yield from enumerate([part + "\n" for part in parts[:-1]] + [parts[-1]], 1)
        return
    offset = 0
    if first.startswith(codecs.BOM_UTF8):
        first, offset = first[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
    if looks_binary(first[:_SNIFF_BYTES]):
        raise Unreadable("binary file, not text")
    number = 0
    for raw in _chain_first(first, lines):
        number += 1
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise utf8_error(exc, raw, offset) from None
        offset += len(raw)


def _chain_first(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
