"""PDF files (pypdf): page texts joined by blank lines, with each page's start offset for page citations."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ragkit.connectors.loaders.common import Unreadable, file_doc_id, file_source, read_bytes
from ragkit.types import Document, LoadError

if TYPE_CHECKING:
    from pypdf import PdfReader

PAGE_SEPARATOR = "\n\n"

# pypdf logs what it repairs in a damaged file ("EOF marker not found") without naming the file; ragkit reports the
# file as a LoadError instead. With no logging configured, Python would print pypdf's line bare on stderr: a
# NullHandler keeps it off, and an application that configures logging still receives it.
logging.getLogger("pypdf").addHandler(logging.NullHandler())


def _open(path: Path, max_file_bytes: int | None) -> PdfReader:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    data = read_bytes(path, max_file_bytes)  # a whole PDF in memory at most: the size limit bounds it
    if b"%PDF-" not in data[:1024]:
        raise Unreadable("not a PDF file (no %PDF- header)" if data else "empty file")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types for damaged files
        raise Unreadable(f"corrupt PDF ({_describe(exc)})") from None
    if reader.is_encrypted:
        try:
            decrypted = reader.decrypt("")
        except (DependencyError, NotImplementedError) as exc:
            raise Unreadable(f"encrypted PDF that cannot be decrypted here ({_describe(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - damaged encryption dictionaries raise anything
            raise Unreadable(f"encrypted PDF ({_describe(exc)})") from None
        if not decrypted:
            raise Unreadable("encrypted PDF (needs a password); save an unencrypted copy to index it")
    return reader


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "objects nested too deeply or in a loop"
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _title(reader: PdfReader) -> str:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:  # noqa: BLE001 - damaged metadata only costs the title
        return ""
    return " ".join(str(title).split()) if title else ""


def load_pdf(path: Path, max_file_bytes: int | None = None) -> Iterator[Document | LoadError]:
    """A ``.pdf`` file as one Document with ``meta["page_offsets"]`` (each page's start in ``text``).

    Files over the size limit (see ``common.size_limit``) are a LoadError, so memory stays bounded. A damaged
    file is a LoadError "corrupt PDF (...)" naming pypdf's finding: a page tree whose ``/Kids`` lead back to
    an ancestor ("cyclic page references") or nest over 100 levels, a truncated file, a broken xref.
    """
    try:
        reader = _open(path, max_file_bytes)
        try:
            pages = list(reader.pages)
        except Exception as exc:  # noqa: BLE001
            raise Unreadable(f"corrupt PDF ({_describe(exc)})") from None
        texts: list[str] = []
        first_error: Exception | None = None
        for page in pages:
            try:
                texts.append((page.extract_text() or "").replace("\x00", ""))
            except Exception as exc:  # noqa: BLE001 - one bad page should not lose the others
                first_error = first_error or exc
                texts.append("")
        if not any(t.strip() for t in texts):
            if first_error is not None:
                raise Unreadable(f"corrupt PDF ({_describe(first_error)})")
            raise Unreadable("no extractable text (scanned pages need OCR first)")
    except Unreadable as exc:
        yield LoadError(file_source(path), exc.reason)
        return
    offsets, position = [], 0
    for text in texts:
        offsets.append(position)
        position += len(text) + len(PAGE_SEPARATOR)
    source = file_source(path)
    meta = {"page_offsets": offsets, "pages": len(texts)}
    yield Document(
        id=file_doc_id(source),
        text=PAGE_SEPARATOR.join(texts),
        source=source,
        title=_title(reader),
        meta=meta,
    )
