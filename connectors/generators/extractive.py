"""The generator that needs no model: the best sentences of the top hits, each followed by its citation.

It always works, which makes it the fallback of every other generator. Scoring is deliberately simple and
deterministic: how many of the question's content words a sentence contains, weighted down by its hit's rank.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ragkit.connectors.generators.prompt import parse_citations
from ragkit.types import Answer, Hit

NO_ANSWER = "No relevant passages were found."

_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have how i if in into is it
    its me my no not of on or our she he so that the their them then there these they this those to was we
    were what when where which who whom whose why will with would you your about after before than""".split()
)


def _stem(word: str) -> str:
    """A crude suffix strip so that "flows" meets "flow" and "erupted" meets "erupt"; deterministic."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> list[str]:
    """Lower-cased, crudely stemmed words minus a small English stopword list (numbers are kept)."""
    return [_stem(w) for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w not in _STOPWORDS]


def split_sentences(text: str) -> list[str]:
    """Sentences of a passage: split after ``.!?`` followed by space (not after an initial or an abbreviation
    such as "U.S." or "c."), and at blank lines. The same splitter grounding checks answers with, so every
    sentence this generator quotes is one sentence of its source."""
    from ragkit.grounding import passage_sentences

    return passage_sentences(text)


_NAME = re.compile(r"\b[A-Z][\w'-]*")
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b")
_MONTH = re.compile(r"\b(January|February|March|April|May|June|July|August|September|October|November|December)\b")
_NUMBER = re.compile(r"\d")
_CODE = re.compile(r"[{}`]|^\s*(def|class|import|from|return|\$|>>>|#+)\s|=>|::|\w\(\)")


def answer_kind(question: str) -> str:
    """What the question asks for: ``time``, ``number``, ``name`` (a person, place or thing), or ``other``."""
    q = question.lower()
    if re.search(r"\b(when|what year|which year|what date|in what year|how long ago)\b", q):
        return "time"
    if re.search(r"\b(how many|how much|what percentage|what percent|how old|how tall|how far|how long)\b", q):
        return "number"
    if re.search(r"\b(who|whom|whose|where|which|what (?:country|city|county|state|team|company|language))\b", q):
        return "name"
    return "other"


def answer_type_bonus(kind: str, sentence: str, question_words: set[str]) -> float:
    """1 when ``sentence`` holds something of the kind the question asks for that the question does not."""
    if kind == "time":
        new = [y for y in _YEAR.findall(sentence) if y not in question_words]
        return 1.0 if new or _MONTH.search(sentence) else 0.0
    if kind == "number":
        return 1.0 if any(n.lower() not in question_words for n in re.findall(r"\d[\d,.]*", sentence)) else 0.0
    if kind == "name":
        names = [w for w in _NAME.findall(sentence)[1:] if w.lower() not in question_words]
        return 1.0 if names else 0.0
    return 0.0


def not_prose(sentence: str) -> bool:
    """Headings, code and boilerplate: lines an answer should not quote."""
    if _CODE.search(sentence):
        return True
    letters = sum(ch.isalpha() for ch in sentence)
    return letters < 0.6 * len(sentence.replace(" ", ""))


@dataclass(eq=False)
class _Sentence:
    rank: int
    position: int
    text: str
    words: set[str]
    title: str
    score: float
    typed: float


def rank_weight(rank: int) -> float:
    """How much a sentence from the hit at ``rank`` (0 = best) counts: 1, 0.8, 0.67, 0.57, ..."""
    return 1.0 / (1.0 + 0.25 * rank)


class ExtractiveGenerator:
    """Answers with the best two or three sentences of the top hits, each cited as ``[n]``; no model needed.

    >>> answer = ExtractiveGenerator().generate("What is the capital of France?", hits)
    >>> answer.text
    'Paris is the capital of France. [1]'
    """

    def __init__(self, max_sentences: int = 3, max_hits: int = 5, min_words: int = 3) -> None:
        if max_sentences < 1 or max_hits < 1:
            raise ValueError("max_sentences and max_hits must be at least 1")
        self.name = "extractive"
        self.max_sentences = max_sentences
        self.max_hits = max_hits
        self.min_words = min_words

    def _select(self, question: str, hits: Sequence[Hit]) -> list[tuple[str, int]]:
        """The chosen ``(sentence, hit index)`` pairs, the most answer-like first."""
        terms = set(content_words(question))
        question_words = {w.lower() for w in _WORD.findall(question)}
        kind = answer_kind(question)
        candidates: list[_Sentence] = []
        seen: set[str] = set()
        for rank, hit in enumerate(hits[: self.max_hits]):
            title = str(hit.chunk.meta.get("title") or "")
            for position, sentence in enumerate(split_sentences(hit.chunk.text)):
                key = sentence.lower()
                if len(sentence.split()) < self.min_words or key in seen or not_prose(sentence):
                    continue
                seen.add(key)
                words = content_words(sentence)
                overlap = len(terms.intersection(words))
                # Dividing by log length keeps long run-on sentences from winning on size alone.
                score = overlap * rank_weight(rank) / math.log2(2 + len(words))
                typed = answer_type_bonus(kind, sentence, question_words)
                candidates.append(_Sentence(rank, position, sentence, set(words), title, score, typed))
        if not candidates:  # every sentence was too short or not prose: the top hit's text as it is
            return [(" ".join(hits[0].chunk.text.split()), 0)] if hits[0].chunk.text.strip() else []
        by_score = sorted(candidates, key=lambda c: (-(c.score * (1 + c.typed)), c.rank, c.position))
        first = by_score[0]
        if first.score == 0:  # nothing overlaps the question: the lead sentence of the best hit
            lead = min(candidates, key=lambda c: (c.rank, c.position))
            return [(lead.text, lead.rank)]
        chosen = [first]
        bridge = self._second_hop(first, candidates, terms, question_words, kind)
        if bridge is not None:
            chosen.append(bridge)
        for candidate in by_score[1:]:
            if len(chosen) >= self.max_sentences:
                break
            if candidate.score > 0 and candidate not in chosen:
                chosen.append(candidate)
        # the most answer-like sentence first: the second hop's, when the question asks for something it holds
        if bridge is not None and kind != "other" and bridge.typed:
            chosen.sort(key=lambda c: c is not bridge)
        else:
            chosen.sort(key=lambda c: -c.typed)
        return [(c.text, c.rank) for c in chosen]

    @staticmethod
    def _second_hop(
        first: _Sentence, candidates: list[_Sentence], terms: set[str], question_words: set[str], kind: str
    ) -> _Sentence | None:
        """The best sentence of another passage about something the first sentence names (its bridge).

        Multi-hop questions ("Who founded the company that makes X?") are answered in a passage that the
        question does not name: the first hop's sentence names it (the company). A passage whose title, or
        failing that whose sentence, mentions the first sentence's new names is that second passage; its best
        sentence shares the question's other words and holds what the question asks for, beyond the bridge.
        """
        raw_names = {w.lower() for w in _NAME.findall(first.text)} - question_words
        names = {_stem(w) for w in raw_names} - _STOPWORDS
        if not names:
            return None
        best: tuple[float, _Sentence] | None = None
        for candidate in candidates:
            if candidate.rank == first.rank:
                continue
            title_words = {_stem(w.lower()) for w in _WORD.findall(candidate.title)}
            linked = 2 * len(names & title_words) + len(names & candidate.words)
            if not linked:
                continue
            typed = answer_type_bonus(kind, candidate.text, question_words | raw_names)
            shared = len((terms & candidate.words) - names)
            score = (linked + 2 * shared) * (1 + typed) / math.log2(2 + len(candidate.words))
            score /= 1 + 0.1 * candidate.position
            if best is None or score > best[0]:
                best = (score, candidate)
        return best[1] if best else None

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:
        hits = list(hits)
        if not hits:
            return Answer(text=NO_ANSWER, citations=(), generator=self.name, meta={"passages": ()})
        number_of: dict[int, int] = {}
        parts: list[str] = []
        for sentence, rank in self._select(question, hits):
            number = number_of.setdefault(rank, len(number_of) + 1)
            parts.append(f"{sentence} [{number}]")
        citations = tuple(hits[rank] for rank in sorted(number_of, key=number_of.__getitem__))
        text = " ".join(parts) if parts else NO_ANSWER
        meta = {"passages": tuple(hit.chunk.id for hit in hits[: self.max_hits])}
        return Answer(text=text, citations=citations, generator=self.name, meta=meta)

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
        """The same text as :meth:`generate`, one cited sentence at a time."""
        text = self.generate(question, hits).text
        pieces = re.split(r"(?<=\])\s", text)
        for index, piece in enumerate(pieces):
            yield piece if index == len(pieces) - 1 else piece + " "

    def answer_from_stream(self, question: str, hits: Sequence[Hit], text: str) -> Answer:
        """The answer for text :meth:`stream` produced: its ``[n]`` is :meth:`generate`'s citation ``n``, not a hit."""
        answer = self.generate(question, hits)
        body, citations = parse_citations(text.strip(), answer.citations)
        return dataclasses.replace(answer, text=body, citations=citations)

    def generate_many(
        self, questions: Sequence[str], hits_per_question: Sequence[Sequence[Hit]]
    ) -> list[Answer]:
        if len(questions) != len(hits_per_question):
            raise ValueError(f"{len(questions)} questions but {len(hits_per_question)} hit lists")
        return [self.generate(q, h) for q, h in zip(questions, hits_per_question, strict=True)]
