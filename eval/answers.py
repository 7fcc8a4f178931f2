"""Score generated answers against gold answers and gold passages: the metrics of ``ragkit eval --answers``.

The metrics are pure functions of strings and ids, so each can be checked by hand:

- :func:`exact_match`, :func:`f1` and :func:`contains` compare the answer text with the gold answer and its
  aliases (the best over all of them counts), after the SQuAD / HotpotQA normalisation
  (:func:`normalize_answer`: lower case, punctuation removed, articles a/an/the removed, whitespace collapsed).
  Citation markers such as ``[1]`` or ``[1, 2]`` are removed from the answer first (:func:`strip_citations`).
- :func:`citation_precision` and :func:`citation_recall` compare the documents of the cited chunks with the
  gold passages (the qrels).
- :func:`unsupported_share` is the share of the answer's sentences that grounding flagged as supported by no
  source (``Answer.unsupported``).

:func:`answer_questions` is the runner's part: retrieve and answer each question alone, timed, and score it.

>>> exact_match("The Cat sat [1]", ["cat sat"]), f1("a cat sat down", ["the cat sat"])
(1.0, 0.8)
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragkit.types import Answer, Hit

Retrieve = Callable[[list[str], int, str], list[list[Hit]]]
"""``retrieve(queries, k, mode)``: ranked chunk hits per query (``Index.retrieve_many``)."""

Answerer = Callable[[list[str], list[list[Hit]]], list[Answer]]
"""``answerer(questions, hits)``: one Answer per question (``pipelines.query.answer_many`` with a generator)."""

_CITATION = re.compile(r"\[\s*\d+(?:\s*[,;\u2013-]\s*\d+)*\s*\]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"\w")
_YES_NO = frozenset({"yes", "no", "noanswer"})


# -- text metrics ------------------------------------------------------------------------------------------


def strip_citations(text: str) -> str:
    """``text`` without citation markers (``[1]``, ``[1, 2]``, ``[1-3]``) and with whitespace collapsed."""
    return " ".join(_CITATION.sub(" ", text).split())


def normalize_answer(text: str) -> str:
    """The SQuAD v1.1 / HotpotQA normalisation: lower case, no punctuation, no articles, single spaces.

    >>> normalize_answer("The  Cat, sat!")
    'cat sat'
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(gold: str | Iterable[str]) -> list[str]:
    return [gold] if isinstance(gold, str) else list(gold)


def exact_match(prediction: str, gold: str | Iterable[str]) -> float:
    """1.0 when the normalised answer equals a normalised gold answer (any alias), else 0.0."""
    predicted = normalize_answer(strip_citations(prediction))
    return float(any(predicted == normalize_answer(g) for g in _golds(gold)))


def _token_f1(predicted: str, gold: str) -> float:
    """HotpotQA's ``f1_score`` on two normalised strings (yes / no / noanswer must match exactly)."""
    if (predicted in _YES_NO or gold in _YES_NO) and predicted != gold:
        return 0.0
    predicted_tokens, gold_tokens = predicted.split(), gold.split()
    if not predicted_tokens or not gold_tokens:  # SQuAD v2: two empty answers agree
        return float(predicted_tokens == gold_tokens)
    same = sum((Counter(predicted_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, gold: str | Iterable[str]) -> float:
    """Token F1 of the normalised answer against the best-matching gold answer (0.0 when there is none)."""
    predicted = normalize_answer(strip_citations(prediction))
    return max((_token_f1(predicted, normalize_answer(g)) for g in _golds(gold)), default=0.0)


def contains(prediction: str, gold: str | Iterable[str]) -> float:
    """1.0 when a normalised gold answer occurs in the normalised answer as whole words, else 0.0.

    Whole words: gold ``35`` is not found in ``350 stores``. An empty gold answer is never found.
    """
    predicted = f" {normalize_answer(strip_citations(prediction))} "
    return float(any(g and f" {g} " in predicted for g in map(normalize_answer, _golds(gold))))


def split_sentences(text: str) -> list[str]:
    """The sentences of an answer, citation markers removed: split after ``.!?`` + space and at line breaks."""
    text = _CITATION.sub(" ", text)
    return [" ".join(s.split()) for s in _SENTENCE_END.split(text) if _WORD.search(s)]


def count_sentences(text: str) -> int:
    """How many sentences ``text`` has, split as grounding splits answers (``ragkit.grounding.sentence_spans``),
    so that ``Answer.unsupported`` and the count agree; :func:`split_sentences` where grounding is absent."""
    try:
        from ragkit.grounding import sentence_spans
    except ImportError:
        return len(split_sentences(text))
    return sum(1 for start, end in sentence_spans(text) if _WORD.search(_CITATION.sub(" ", text[start:end])))


def unsupported_share(text: str, unsupported: Sequence[str]) -> float:
    """``len(unsupported)`` over the number of sentences of ``text``; 0.0 for an empty answer, at most 1.0."""
    if not unsupported:
        return 0.0
    sentences = count_sentences(text)
    if sentences == 0:
        return 0.0
    return min(1.0, len(unsupported) / max(sentences, len(unsupported)))


# -- citation metrics --------------------------------------------------------------------------------------


def citation_precision(cited_docs: Sequence[str], gold: Collection[str]) -> float:
    """Share of cited chunks (given as their document ids, one per chunk) whose document is a gold passage.

    An answer that cites nothing scores 0.0: it gives the reader nothing to check.
    """
    if not cited_docs:
        return 0.0
    return sum(doc in gold for doc in cited_docs) / len(cited_docs)


def citation_recall(cited_docs: Iterable[str], gold: Collection[str]) -> float:
    """Share of gold passages cited by at least one chunk (0.0 when there are no gold passages)."""
    if not gold:
        return 0.0
    return len(set(cited_docs) & set(gold)) / len(gold)


def median(values: Iterable[float | None]) -> float | None:
    """The p50 of the values that are not None (linear interpolation), None when there are none."""
    present = [v for v in values if v is not None]
    return float(np.percentile(present, 50)) if present else None


# -- one answer, and a mode's answers ----------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerScore:
    """How one answer did: its text, the gold, every metric, and the time to retrieve and to generate it."""

    qid: str
    answer: str
    gold_answers: tuple[str, ...]
    exact_match: float
    f1: float
    contains: float
    cited: tuple[str, ...]
    citation_precision: float
    citation_recall: float
    unsupported: tuple[str, ...]
    unsupported_share: float
    retrieve_ms: float | None = None
    generate_ms: float | None = None
    degraded: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.answer,
            "gold_answers": list(self.gold_answers),
            "exact_match": self.exact_match,
            "f1": self.f1,
            "contains": self.contains,
            "cited": list(self.cited),
            "citation_precision": self.citation_precision,
            "citation_recall": self.citation_recall,
            "unsupported": list(self.unsupported),
            "unsupported_share": self.unsupported_share,
            "retrieve_ms": self.retrieve_ms,
            "generate_ms": self.generate_ms,
            "degraded": self.degraded,
        }


def score_answer(
    qid: str,
    answer: Answer,
    gold_answers: Sequence[str],
    gold_passages: Collection[str],
    retrieve_ms: float | None = None,
    generate_ms: float | None = None,
) -> AnswerScore:
    """Every metric of one answer. Cited chunks count once each, in citation order."""
    seen: set[str] = set()
    cited: list[str] = []
    for hit in answer.citations:
        if hit.chunk.id not in seen:
            seen.add(hit.chunk.id)
            cited.append(hit.chunk.doc_id)
    golds = tuple(gold_answers)
    return AnswerScore(
        qid=qid,
        answer=answer.text,
        gold_answers=golds,
        exact_match=exact_match(answer.text, golds),
        f1=f1(answer.text, golds),
        contains=contains(answer.text, golds),
        cited=tuple(cited),
        citation_precision=citation_precision(cited, gold_passages),
        citation_recall=citation_recall(cited, gold_passages),
        unsupported=tuple(answer.unsupported),
        unsupported_share=unsupported_share(answer.text, answer.unsupported),
        retrieve_ms=retrieve_ms,
        generate_ms=generate_ms,
        degraded=answer.degraded,
    )


@dataclass(frozen=True)
class AnswerMetrics:
    """A mode's answer metrics: means over the questions with a gold answer, and p50 latencies.

    ``cited`` is the share of answers citing at least one chunk; ``degraded`` the share a failing or slow
    generator left to the extractive fallback; ``skipped`` counts evaluated queries without a gold answer.
    """

    generator: str
    k: int
    questions: int
    exact_match: float
    f1: float
    contains: float
    citation_precision: float
    citation_recall: float
    cited: float
    unsupported_share: float
    degraded: float
    retrieve_p50_ms: float | None
    generate_p50_ms: float | None
    total_p50_ms: float | None
    skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator,
            "k": self.k,
            "questions": self.questions,
            "skipped": self.skipped,
            "exact_match": self.exact_match,
            "f1": self.f1,
            "contains": self.contains,
            "citation_precision": self.citation_precision,
            "citation_recall": self.citation_recall,
            "cited": self.cited,
            "unsupported_share": self.unsupported_share,
            "degraded": self.degraded,
            "latency_ms": {
                "retrieve_p50": self.retrieve_p50_ms,
                "generate_p50": self.generate_p50_ms,
                "total_p50": self.total_p50_ms,
            },
        }


def aggregate_answers(scores: Sequence[AnswerScore], generator: str, k: int, skipped: int = 0) -> AnswerMetrics:
    """Means of the per-answer metrics and p50 latencies (retrieve, generate, and both per question)."""
    if not scores:
        raise ValueError("no answers to aggregate")

    def mean(values: Iterable[float]) -> float:
        return float(np.mean(list(values)))

    totals = [
        s.retrieve_ms + s.generate_ms if s.retrieve_ms is not None and s.generate_ms is not None else None
        for s in scores
    ]
    return AnswerMetrics(
        generator=generator,
        k=k,
        questions=len(scores),
        exact_match=mean(s.exact_match for s in scores),
        f1=mean(s.f1 for s in scores),
        contains=mean(s.contains for s in scores),
        citation_precision=mean(s.citation_precision for s in scores),
        citation_recall=mean(s.citation_recall for s in scores),
        cited=mean(float(bool(s.cited)) for s in scores),
        unsupported_share=mean(s.unsupported_share for s in scores),
        degraded=mean(float(s.degraded) for s in scores),
        retrieve_p50_ms=median(s.retrieve_ms for s in scores),
        generate_p50_ms=median(s.generate_ms for s in scores),
        total_p50_ms=median(totals),
        skipped=skipped,
    )


# -- the runner's part -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerCase:
    """One question to answer, with what it is scored against."""

    qid: str
    question: str
    gold_answers: tuple[str, ...]
    gold_passages: frozenset[str]


def answer_questions(
    cases: Sequence[AnswerCase],
    retrieve: Retrieve,
    answerer: Answerer,
    mode: str,
    k: int,
    *,
    clock: Callable[[], float],
    progress: Callable[[int], None] | None = None,
) -> list[AnswerScore]:
    """Retrieve ``k`` chunks in ``mode`` and answer each question alone, timing both steps; score each answer.

    One question at a time, as a user asks: the latencies are per question, not a batch divided by its size.
    An untimed first question loads the generator's model and warms caches (it is answered again, timed).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    if not cases:
        return []
    first = [cases[0].question]
    answerer(first, retrieve(first, k, mode))  # warm-up, untimed
    scores = []
    for done, case in enumerate(cases, start=1):
        began = clock()
        hits = retrieve([case.question], k, mode)
        retrieved = clock()
        answers = answerer([case.question], hits)
        generated = clock()
        if len(answers) != 1:
            raise RuntimeError(f"the generator returned {len(answers)} answers for one question")
        scores.append(
            score_answer(
                case.qid,
                answers[0],
                case.gold_answers,
                case.gold_passages,
                retrieve_ms=(retrieved - began) * 1000.0,
                generate_ms=(generated - retrieved) * 1000.0,
            )
        )
        if progress is not None:
            progress(done)
    return scores
