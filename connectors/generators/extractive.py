"""The generator that needs no model: the best sentences of the top hits, each followed by its citation.

It always works, which makes it the fallback of every other generator. Scoring is deliberately simple and
deterministic: how many of the question's content words a sentence contains, weighted down by its hit's rank.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence

from ragkit.types import Answer, Hit

NO_ANSWER = "No relevant passages were found."

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+|\n\s*\n")
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
    """Sentences of a passage: split after ``.!?`` followed by space, and at blank lines."""
    return [" ".join(s.split()) for s in _SENTENCE_END.split(text) if s and s.strip()]


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
        """The chosen ``(sentence, hit index)`` pairs, best first."""
        terms = set(content_words(question))
        scored: list[tuple[float, int, int, str]] = []  # (-score, hit rank, position, sentence)
        seen: set[str] = set()
        for rank, hit in enumerate(hits[: self.max_hits]):
            for position, sentence in enumerate(split_sentences(hit.chunk.text)):
                words = content_words(sentence)
                key = sentence.lower()
                if len(sentence.split()) < self.min_words or key in seen:
                    continue
                seen.add(key)
                overlap = len(terms.intersection(words))
                # Dividing by log length keeps long run-on sentences from winning on size alone.
                score = overlap * rank_weight(rank) / math.log2(2 + len(words))
                scored.append((-score, rank, position, sentence))
        if not scored:  # every sentence was too short: take the top hit's text as it is
            return [(" ".join(hits[0].chunk.text.split()), 0)] if hits[0].chunk.text.strip() else []
        scored.sort()
        if scored[0][0] == 0:  # nothing overlaps the question: the lead sentence of the best hit
            scored.sort(key=lambda item: (item[1], item[2]))
            return [(scored[0][3], scored[0][1])]
        chosen = [item for item in scored if item[0] < 0][: self.max_sentences]
        return [(sentence, rank) for _, rank, _, sentence in chosen]

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

    def generate_many(
        self, questions: Sequence[str], hits_per_question: Sequence[Sequence[Hit]]
    ) -> list[Answer]:
        if len(questions) != len(hits_per_question):
            raise ValueError(f"{len(questions)} questions but {len(hits_per_question)} hit lists")
        return [self.generate(q, h) for q, h in zip(questions, hits_per_question, strict=True)]
