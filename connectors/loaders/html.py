"""HTML files: the main text (via trafilatura, no markup, scripts or boilerplate) and the ``<title>``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragkit.connectors.loaders.common import Unreadable, decode_text, file_doc_id, file_source, read_bytes
from ragkit.types import Document, LoadError

_DEPTH_LIMIT = re.compile(r"Excessive depth in document: (\d+)")
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)
_DROPPED_TAGS = ("script", "style", "noscript", "template", "head")
_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt figcaption figure footer form h1 h2 h3 h4 h5 h6 header "
    "hr li main nav ol p pre section table td th tr ul".split()
)


def _parse(markup: str) -> Any:
    """The lxml tree of a page. ``huge_tree``: without it libxml2 silently drops text nodes and attributes
    over 10 MB (a big inline script or ``data:`` image), and with them the rest of the page."""
    import lxml.html
    from lxml.etree import ParserError

    parser = lxml.html.HTMLParser(huge_tree=True)
    try:
        tree = lxml.html.document_fromstring(markup, parser=parser)
    except (ParserError, ValueError) as exc:
        raise Unreadable(f"not parseable as HTML ({exc})") from None
    # A resource limit stops the parser part way (elements nested thousands deep): the rest of the page would
    # be silently lost, so the file is an error instead.
    limits = [e for e in parser.error_log if e.type_name == "ERR_RESOURCE_LIMIT"]
    if limits:
        depth = _DEPTH_LIMIT.search(limits[0].message)
        if depth:
            raise Unreadable(f"HTML nested too deeply (the parser stops at {depth.group(1)} levels)")
        raise Unreadable(f"not parseable as HTML ({limits[0].message.strip()})")
    return tree


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _title(tree: Any) -> str:
    title = tree.findtext(".//title") or ""
    return " ".join(title.split())


def _body_text(tree: Any) -> str:
    """Fallback main text: the visible text of the body, one line per block element."""
    for element in tree.xpath("|".join(f"//{tag}" for tag in _DROPPED_TAGS)):
        element.drop_tree()
    for element in tree.iter():
        if isinstance(element.tag, str) and element.tag.lower() in _BLOCK_TAGS:
            # lxml refuses to set a string with characters XML cannot hold, which its HTML parser kept
            element.tail = "\n" + _NOT_XML.sub(" ", element.tail or "")
    lines = (" ".join(line.split()) for line in tree.text_content().splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _main_text(tree: Any) -> str:
    """The main text by trafilatura, given the parsed tree (a copy: trafilatura prunes what it is given)."""
    import copy

    import trafilatura

    try:
        text = trafilatura.extract(
            copy.deepcopy(tree), include_comments=False, include_tables=True, include_images=False,
            deduplicate=False,
        )
    except Exception:  # noqa: BLE001 - a page trafilatura chokes on falls back to the plain body text
        text = None
    return _blocks((text or "").strip())


def _blocks(text: str) -> str:
    """trafilatura's text has one block (heading, paragraph, list item, table row) per line: separate the blocks
    by blank lines, as in Markdown, so that a heading does not run into the paragraph below it as one sentence
    ("Packing Bring a raincoat"). A table's rows stay together, and a line that goes on in lower case (after a
    ``<br>``) stays with the line before it."""
    lines = text.splitlines()
    out = lines[:1]
    for before, line in zip(lines, lines[1:], strict=False):
        same_block = (before.startswith("|") and line.startswith("|")) or line[:1].islower()
        out.append(line if same_block else f"\n{line}")
    return "\n".join(out)


def load_html(path: Path, max_file_bytes: int | None = None) -> Iterator[Document | LoadError]:
    """An ``.html``/``.htm`` file as one Document; pages with no visible text are a LoadError.

    Files over the size limit (see ``common.size_limit``) are a LoadError, so memory stays bounded. Elements
    nested deeper than libxml2 parses (2,048 levels: ``<div>`` 50,000 deep) are a LoadError "HTML nested too
    deeply" in milliseconds; tags the parser closes implicitly (``<p>``, ``<li>``, ``<td>`` 50,000 times)
    become that many siblings, and the page loads in a few seconds.
    """
    try:
        markup = _XML_DECLARATION.sub("", decode_text(read_bytes(path, max_file_bytes, text=True)), count=1)
        tree = _parse(markup)
        title = _title(tree)
        text = _main_text(tree) or _body_text(tree)
        if not text:
            raise Unreadable("no text content (only markup)")
    except Unreadable as exc:
        yield LoadError(file_source(path), exc.reason)
        return
    source = file_source(path)
    yield Document(id=file_doc_id(source), text=text, source=source, title=title)
