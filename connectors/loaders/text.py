"""Plain-text and Markdown files: one Document per file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ragkit.chunking import iter_atx_headings
from ragkit.connectors.loaders.common import Unreadable, decode_text, file_doc_id, file_source, read_bytes
from ragkit.types import Document, LoadError


def markdown_title(text: str) -> str:
    """The first level-1 ATX heading (``# Title``) outside code blocks, else ``""``."""
    return next((title for _, level, title in iter_atx_headings(text) if level == 1 and title), "")


def load_text(path: Path, max_file_bytes: int | None = None) -> Iterator[Document | LoadError]:
    """A ``.txt`` or ``.md`` file as one Document; Markdown files take their first ``# `` heading as title.

    Files over the size limit (see ``common.size_limit``) are a LoadError, so memory stays bounded.
    """
    try:
        text = decode_text(read_bytes(path, max_file_bytes))
    except Unreadable as exc:
        yield LoadError(file_source(path), exc.reason)
        return
    source = file_source(path)
    is_markdown = path.suffix.lower() in (".md", ".markdown")
    title = markdown_title(text) if is_markdown else ""
    yield Document(id=file_doc_id(source), text=text, source=source, title=title)
