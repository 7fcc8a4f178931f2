"""Grounding: each sentence of an answer checked against the retrieved passages, and its citations repaired.

Whatever wrote the answer (the extractive answerer, a local model, a server), each of its sentences is compared
with the sentences of the passages it was answered from, on two signals:

* **similarity**: the cosine of their embeddings, from the index's own embedder (the one retrieval uses), the
  sentences of a whole batch of answers and passages embedded in one call (two neighbouring source sentences
  taken together get the normalized sum of their vectors);
* **overlap**: the share of the answer sentence's content words (stopwords dropped, crudely stemmed, and words
  of five letters or more matched on their first five) that the source sentence or its passage's title holds.

A passage *supports* an answer sentence when one of its sentences, or two neighbouring ones, reaches both
``threshold`` and ``min_overlap`` and every number the answer sentence writes in digits is in the passage; a
sentence copied word for word from a passage is supported by it without an embedding. A sentence that combines
two passages ("A was born in 1939, before B, born in 1976") is supported *jointly* when a sentence of each comes
within ``JOINT_MARGIN`` of ``threshold`` and together they hold its numbers and ``(1 + min_overlap) / 2`` of its
content words. Sentences that state nothing to check (an abstention such as "No relevant passages were found.",
a bare "Yes.") are left as they are.

The defaults (``GroundingSettings``: threshold 0.55, min_overlap 0.65, for all-MiniLM-L6-v2) were chosen on
sentences written against hotpotqa-train100 passages: 61 of 62 paraphrases and two-passage sentences supported,
80 of 81 inventions flagged (49 about the passages' own subjects, 32 unrelated); see ``tests/test_grounding.py``.
Another embedder may want another threshold.

Citations are then repaired: a sentence that cites no supporting passage gets the best one (or both, when
supported jointly), an uncited supported sentence gets its marker, and a sentence that nothing supports keeps its
text, loses its markers and is listed in ``Answer.unsupported``. Markers are renumbered in order of first
citation, so that ``[n]`` in the text is ``citations[n - 1]`` and ``citations`` lists exactly the cited hits.

>>> answer = ground(generator.generate(question, hits), hits, index.embedder.embed_documents)
>>> answer.text, answer.unsupported
('Sourdough rises thanks to a wild yeast starter. [1] The Q3 budget for Kestrel was $1.1 million.',
 ('The Q3 budget for Kestrel was $1.1 million.',))
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ragkit.config import GroundingSettings
from ragkit.connectors.generators.prompt import hit_source
from ragkit.types import Answer, Hit

Embed = Callable[[Sequence[str]], np.ndarray]
"""Texts to L2-normalized vectors, e.g. ``index.embedder.embed_documents``."""

_DEFAULTS = GroundingSettings()
PREFIX = 5  # words this long or longer match on their first PREFIX letters ("directs" meets "director")
JOINT_MARGIN = 0.1  # how far below threshold each of two sentences that support a claim jointly may be
JOINT_UNITS_PER_HIT = 2  # the best units of each passage tried two by two for joint support

# "[3]", "[1, 2]": one bracket holding one or more passage numbers (the form every generator writes).
_MARKER = re.compile(r"\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")
# The end of a sentence: ".!?" (and closing quotes), the citation markers right after it, then space or the end.
# Possessive, and only from the start of a run of marks, so that a long run of them is read once (linear time).
_SENTENCE_END = re.compile(r"(?<![.!?])[.!?]++[\"'”’)]*+(?:[ \t]*\[\s*\d+(?:\s*,\s*\d+)*\s*\])*(?=\s|$)")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+")
# A period after these does not end a sentence: "e.g.", "Dr.", "J. R. R.", "c. 1243", "U.S.".
_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf al ca c mr mrs ms dr st jr sr prof no vol fig approx inc ltd co corp u.s u.k jan feb mar "
    "apr jun jul aug sep sept oct nov dec".split()
)
_ABSTENTION = re.compile(
    r"\b(?:no relevant passages were found|i (?:do not|don't|cannot|can't) (?:know|tell|say|answer)"
    r"|(?:the )?(?:passages?|context|sources?|documents?) (?:do|does) not (?:say|contain|mention|state|provide"
    r"|include|specify|answer)|(?:not|no) enough information|there is no information"
    r"|cannot be (?:determined|answered))\b",
    re.IGNORECASE,
)
_STOPWORDS = frozenset(
    """a an and are as at be been being but by can could did do does for from had has have how i if in into is
    it its me my no not of on or our she he her his him so that the their them then there these they this
    those to was we were what when where which who whom whose why will with would you your about after before
    than also both either neither yes only just very s t because since while although though however therefore
    thus whereas due thanks usually mainly mostly often answer question passage context according""".split()
)


# -- text: sentences, words, numbers -------------------------------------------------------------------------


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> frozenset[str]:
    """Lower-cased, crudely stemmed words of ``text`` minus a small English stopword list; numbers are kept."""
    words = (m.group(0).lower() for m in _WORD.finditer(text))
    return frozenset(_stem(w) for w in words if w not in _STOPWORDS)


def numbers(text: str) -> frozenset[str]:
    """The numbers written in digits in ``text``, thousands separators dropped ("6,960" and "6960" agree)."""
    return frozenset(n.replace(",", "") for n in _NUMBER.findall(text))


def _after_abbreviation(text: str, period: int) -> bool:
    """Whether the period at ``text[period]`` follows an abbreviation, an initial or a list number."""
    start = period
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "."):
        start -= 1
    word = text[start:period].lower()
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return True
    line_start = text.rfind("\n", 0, start) + 1
    return word.isdigit() and not text[line_start:start].strip()  # "1. " opening a list item


def sentence_spans(text: str, *, split_lines: bool = True) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of ``text``, surrounding space excluded.

    A sentence ends after ``.!?`` (and closing quotes) followed by space; the citation markers right after it
    stay with it, so "Paris is in France. [1]" is one sentence. ``split_lines`` also ends one at every line
    break (answers: list items); otherwise only at blank lines (passages: hard-wrapped text).
    """
    breaks = {
        match.end()
        for match in _SENTENCE_END.finditer(text)
        if not (match.group(0).startswith(".") and _after_abbreviation(text, match.start()))
    }
    lines = re.finditer(r"\n", text) if split_lines else _BLANK_LINE.finditer(text)
    breaks.update(m.start() for m in lines)
    spans, start = [], 0
    for end in sorted(breaks | {len(text)}):
        piece = text[start:end]
        if piece.strip():
            spans.append((start + len(piece) - len(piece.lstrip()), start + len(piece.rstrip())))
        start = end
    return spans


def passage_sentences(text: str) -> list[str]:
    """The sentences of a retrieved passage, whitespace collapsed."""
    return [" ".join(text[s:e].split()) for s, e in sentence_spans(text, split_lines=False)]


def claim_of(sentence: str) -> str:
    """What an answer sentence states: its citation markers and a leading list marker removed."""
    return " ".join(_LIST_MARKER.sub("", _MARKER.sub(" ", sentence)).split())


def _without_labels(claim: str, labels: Sequence[str]) -> str:
    """``claim`` without the passage labels a model copied from its prompt ("(docs/bread.txt) Sourdough ...")."""
    for label in labels:
        claim = claim.replace(f"({label})", " ")
    return " ".join(claim.split())


def states_a_claim(claim: str) -> bool:
    """False for a sentence with nothing to check: no content words, or an abstention ("I do not know.")."""
    return bool(content_words(claim)) and not (_ABSTENTION.search(claim) and not numbers(claim))


def _word_sequence(text: str) -> str:
    return " " + " ".join(m.group(0).lower() for m in _WORD.finditer(text)) + " "


# -- attribution ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribution:
    """What grounding found for one sentence of an answer.

    ``hits``: positions, in the hit list grounded against, of the passages that support it, best first; when
    ``joint``, it takes all of them together (each alone does not). ``sources``: the supporting source sentences
    (for an unsupported sentence, the closest one), with their ``similarity`` and ``overlap``. ``checked`` is
    False for a sentence that states nothing to check; such a sentence is never flagged.
    """

    sentence: str
    supported: bool
    hits: tuple[int, ...] = ()
    joint: bool = False
    sources: tuple[str, ...] = ()
    similarity: float = 0.0
    overlap: float = 0.0
    checked: bool = True


@dataclass(frozen=True)
class _Unit:
    """A source sentence, or two neighbouring ones, of one passage (its vector: their vectors' normalized sum)."""

    sentences: tuple[str, ...]
    hit: int
    words: frozenset[str]  # content words of the unit and of its passage's title
    prefixes: frozenset[str]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


@dataclass(frozen=True)
class _Passages:
    units: list[_Unit]
    numbers: list[frozenset[str]]  # per hit: the numbers of its title and text
    word_sequences: list[str]  # per hit: its title and text as one lower-cased word sequence


def _passages(hits: Sequence[Hit]) -> _Passages:
    units: list[_Unit] = []
    for position, hit in enumerate(hits):
        title_words = content_words(str(hit.chunk.meta.get("title", "") or ""))
        sentences = passage_sentences(hit.chunk.text)
        for parts in [(s,) for s in sentences] + list(zip(sentences, sentences[1:], strict=False)):
            words = frozenset().union(*map(content_words, parts)) | title_words
            units.append(_Unit(parts, position, words, frozenset(w[:PREFIX] for w in words if len(w) >= PREFIX)))
    titled = [f"{hit.chunk.meta.get('title', '') or ''} {hit.chunk.text}" for hit in hits]
    return _Passages(units, [numbers(t) for t in titled], [_word_sequence(t) for t in titled])


def overlap(claim_words: frozenset[str], words: frozenset[str], prefixes: frozenset[str]) -> float:
    """The share of ``claim_words`` found in ``words``, long words matching on their first letters."""
    if not claim_words:
        return 0.0
    found = sum(w in words or (len(w) >= PREFIX and w[:PREFIX] in prefixes) for w in claim_words)
    return found / len(claim_words)


def _quoted_by(claim: str, passages: _Passages) -> tuple[int, ...]:
    """The passages that hold ``claim`` word for word (punctuation and case aside)."""
    sequence = _word_sequence(claim)
    return tuple(h for h, text in enumerate(passages.word_sequences) if sequence in text)


def _attribute_claim(
    claim: str, similarity: np.ndarray, passages: _Passages, threshold: float, min_overlap: float
) -> Attribution:
    """One claim's attribution from its row of cosine similarities with ``passages.units``."""
    units = passages.units
    if not units:
        return Attribution(claim, supported=False)
    words, wanted = content_words(claim), numbers(claim)
    overlaps = np.array([overlap(words, u.words, u.prefixes) for u in units], dtype=np.float32)
    combined = similarity + overlaps
    best_of_hit: dict[int, int] = {}  # supporting passage -> its best unit, best passage first
    for u in np.argsort(-combined, kind="stable").tolist():
        hit = units[u].hit
        if hit not in best_of_hit and wanted <= passages.numbers[hit]:
            if similarity[u] >= threshold and overlaps[u] >= min_overlap:
                best_of_hit[hit] = u
    if best_of_hit:
        best = next(iter(best_of_hit.values()))
        return Attribution(
            claim, True, tuple(best_of_hit), False, (units[best].text,), float(similarity[best]),
            float(overlaps[best]),
        )
    joint = _joint_support(claim, similarity, passages, threshold, min_overlap)
    if joint is not None:
        return joint
    closest = int(np.argmax(combined))
    return Attribution(
        claim, False, (), False, (units[closest].text,), float(similarity[closest]), float(overlaps[closest])
    )


def _joint_support(
    claim: str, similarity: np.ndarray, passages: _Passages, threshold: float, min_overlap: float
) -> Attribution | None:
    """The best two units of two passages that support ``claim`` together, or None.

    Each must come within ``JOINT_MARGIN`` of ``threshold`` (each covers part of the claim), and together they
    must hold its numbers and ``(1 + min_overlap) / 2`` of its content words: stricter than one sentence, since a
    subject from one passage and a predicate from another is how an invented fact looks too.
    """
    units, words, wanted = passages.units, content_words(claim), numbers(claim)
    per_hit: dict[int, list[int]] = {}
    for u in np.argsort(-similarity, kind="stable").tolist():
        if similarity[u] < threshold - JOINT_MARGIN:
            break
        if len(per_hit.setdefault(units[u].hit, [])) < JOINT_UNITS_PER_HIT:
            per_hit[units[u].hit].append(u)
    candidates = [u for best in per_hit.values() for u in best]
    best: tuple[float, int, int, float] | None = None
    for i, a in enumerate(candidates):
        for b in candidates[i + 1 :]:
            first, second = units[a], units[b]
            if first.hit == second.hit or not wanted <= passages.numbers[first.hit] | passages.numbers[second.hit]:
                continue
            together = overlap(words, first.words | second.words, first.prefixes | second.prefixes)
            score = float(min(similarity[a], similarity[b])) + together
            if together >= (1 + min_overlap) / 2 and (best is None or score > best[0]):
                best = (score, a, b, together)
    if best is None:
        return None
    _, a, b, together = best
    return Attribution(
        claim, True, (units[a].hit, units[b].hit), True, (units[a].text, units[b].text),
        float(min(similarity[a], similarity[b])), together,
    )


def attribute_many(
    claims_per_answer: Sequence[Sequence[str]],
    hits_per_answer: Sequence[Sequence[Hit]],
    embed: Embed,
    *,
    threshold: float = _DEFAULTS.threshold,
    min_overlap: float = _DEFAULTS.min_overlap,
) -> list[list[Attribution]]:
    """The attribution of each claim (an answer sentence without its markers) to the hits that support it.

    Claims quoted word for word from a passage, and those that state nothing, need no embedding; all the others
    and the sentences of their passages are embedded in one call of ``embed`` (none when there are none).
    """
    passages = [_passages(hits) for hits in hits_per_answer]
    found: list[list[Attribution | None]] = []  # None: to be scored on embeddings
    texts: dict[str, int] = {}  # each distinct claim and source sentence embedded once
    scored_per_answer = []  # the claims as scored: without the passage labels of the prompt
    for claims, hits, passage in zip(claims_per_answer, hits_per_answer, passages, strict=True):
        labels = sorted({label for label in map(hit_source, hits) if label})
        scored = [_without_labels(claim, labels) for claim in claims]
        row: list[Attribution | None] = []
        for claim, text in zip(claims, scored, strict=True):
            if not states_a_claim(text):
                row.append(Attribution(claim, supported=True, checked=False))
            elif quoted := _quoted_by(text, passage):
                row.append(Attribution(claim, True, quoted, sources=(text,), similarity=1.0, overlap=1.0))
            else:
                row.append(None)
                for sentence in (text, *(s for u in passage.units for s in u.sentences)):
                    texts.setdefault(sentence, len(texts))
        found.append(row)
        scored_per_answer.append(scored)
    vectors = np.asarray(embed(list(texts)), dtype=np.float32) if texts else np.zeros((0, 0), dtype=np.float32)
    results = []
    for claims, scored, passage, row in zip(claims_per_answer, scored_per_answer, passages, found, strict=True):
        if any(a is None for a in row) and passage.units:
            unit_vectors = np.stack([vectors[[texts[s] for s in u.sentences]].sum(axis=0) for u in passage.units])
            unit_vectors /= np.maximum(np.linalg.norm(unit_vectors, axis=1, keepdims=True), 1e-12)
        else:
            unit_vectors = np.zeros((len(passage.units), vectors.shape[1] if len(vectors) else 0), np.float32)
        results.append([
            done if done is not None else dataclasses.replace(
                _attribute_claim(text, unit_vectors @ vectors[texts[text]], passage, threshold, min_overlap),
                sentence=claim,
            )
            for claim, text, done in zip(claims, scored, row, strict=True)
        ])
    return results


def attribute(
    sentences: Sequence[str],
    hits: Sequence[Hit],
    embed: Embed,
    *,
    threshold: float = _DEFAULTS.threshold,
    min_overlap: float = _DEFAULTS.min_overlap,
) -> list[Attribution]:
    """The attribution of each answer sentence to the hits that support it.

    >>> [a.hits for a in attribute(["Vienna lies on the Danube. [2]"], hits, embedder.embed_documents)]
    [(0,)]
    """
    claims = [claim_of(s) for s in sentences]
    return attribute_many([claims], [hits], embed, threshold=threshold, min_overlap=min_overlap)[0]


# -- citation repair -----------------------------------------------------------------------------------------


def _pool(answer: Answer, hits: Sequence[Hit]) -> list[Hit]:
    """The passages an answer is checked against: the hits, then any cited hit not among them."""
    known = {hit.chunk.id for hit in hits}
    return [*hits, *(hit for hit in answer.citations if hit.chunk.id not in known)]


def _kept(found: Attribution, given: list[int]) -> list[int]:
    """The passages a sentence cites after repair, from those it cited (``given``) and what supports it."""
    if not found.checked:
        return given  # nothing to judge it by
    if found.joint:
        return list(found.hits)
    if found.supported:
        return [p for p in given if p in found.hits] or [found.hits[0]]
    return []


def _rewrite_markers(
    sentence: str, markers: list[re.Match[str]], groups: list[list[int]], keep: list[int],
    marker: Callable[[Iterable[int]], str],
) -> str:
    """``sentence`` citing ``keep``: each kept marker stays where it was, a dropped one goes with the space before
    it, and the passages no marker names join the last kept marker, else take the last marker's place, else the
    end of the sentence."""
    missing = [p for p in keep if not any(p in group for group in groups)]
    kept_at = [i for i, group in enumerate(groups) if any(p in keep for p in group)]
    anchor = kept_at[-1] if kept_at else (len(markers) - 1 if markers and missing else None)
    rebuilt, last = [], 0
    for i, (match, group) in enumerate(zip(markers, groups, strict=True)):
        before = sentence[last : match.start()]
        kept = list(dict.fromkeys(p for p in group if p in keep)) + (missing if i == anchor else [])
        rebuilt.append(before + marker(kept) if kept else before.rstrip(" \t"))
        last = match.end()
    rebuilt.append(sentence[last:])
    new = "".join(rebuilt).strip()
    return new + " " + marker(missing) if missing and anchor is None else new


def _repair(
    answer: Answer, pool: Sequence[Hit], spans: Sequence[tuple[int, int]], attributions: Sequence[Attribution]
) -> Answer:
    """The answer with its markers rewritten from the attributions of its sentences, renumbered."""
    position = {hit.chunk.id: p for p, hit in enumerate(pool)}
    order: dict[int, int] = {}  # pool position -> citation number, in order of first citation

    def marker(positions: Iterable[int]) -> str:
        return "[" + ", ".join(str(order.setdefault(p, len(order) + 1)) for p in positions) + "]"

    pieces, cursor, unsupported, corrected = [], 0, [], 0
    for (start, end), found in zip(spans, attributions, strict=True):
        sentence = answer.text[start:end]
        markers = list(_MARKER.finditer(sentence))
        written = [[int(n) for n in m.group(1).split(",")] for m in markers]
        valid = [[n for n in numbers_ if 1 <= n <= len(answer.citations)] for numbers_ in written]
        groups = [[position[answer.citations[n - 1].chunk.id] for n in numbers_] for numbers_ in valid]
        given = list(dict.fromkeys(p for group in groups for p in group))
        keep = _kept(found, given)
        corrected += found.checked and (set(keep) != set(given) or valid != written)
        new = _rewrite_markers(sentence, markers, groups, keep, marker)
        if found.checked and not found.supported:
            unsupported.append(new)
        pieces += [answer.text[cursor:start], new]
        cursor = end
    pieces.append(answer.text[cursor:])
    checked = sum(a.checked for a in attributions)
    return dataclasses.replace(
        answer,
        text="".join(pieces),
        citations=tuple(pool[p] for p in sorted(order, key=order.__getitem__)),
        unsupported=tuple(unsupported),
        meta={
            **answer.meta,
            "grounding": {"sentences": checked, "unsupported": len(unsupported), "corrected": corrected},
        },
    )


def ground_many(
    answers: Sequence[Answer],
    hits_per_answer: Sequence[Sequence[Hit]],
    embed: Embed,
    *,
    threshold: float = _DEFAULTS.threshold,
    min_overlap: float = _DEFAULTS.min_overlap,
) -> list[Answer]:
    """Each answer checked against its hits and its citations repaired (see the module's docstring).

    One embedding call for the whole batch. An answer already grounded (``"grounding"`` in its ``meta``) is
    returned as it is.
    """
    if len(answers) != len(hits_per_answer):
        raise ValueError(f"{len(answers)} answers but {len(hits_per_answer)} hit lists")
    todo = [i for i, answer in enumerate(answers) if "grounding" not in answer.meta]
    pools = {i: _pool(answers[i], hits_per_answer[i]) for i in todo}
    spans = {i: sentence_spans(answers[i].text) for i in todo}
    claims = [[claim_of(answers[i].text[s:e]) for s, e in spans[i]] for i in todo]
    found = attribute_many(claims, [pools[i] for i in todo], embed, threshold=threshold, min_overlap=min_overlap)
    grounded = list(answers)
    for i, attributions in zip(todo, found, strict=True):
        grounded[i] = _repair(answers[i], pools[i], spans[i], attributions)
    return grounded


def ground(
    answer: Answer,
    hits: Sequence[Hit],
    embed: Embed,
    *,
    threshold: float = _DEFAULTS.threshold,
    min_overlap: float = _DEFAULTS.min_overlap,
) -> Answer:
    """``answer`` checked against ``hits``: citations filled in or corrected, unsupported sentences listed.

    >>> grounded = ground(answer, hits, index.embedder.embed_documents)
    >>> grounded.unsupported          # sentences no passage supports, as they stand in grounded.text
    """
    return ground_many([answer], [hits], embed, threshold=threshold, min_overlap=min_overlap)[0]
