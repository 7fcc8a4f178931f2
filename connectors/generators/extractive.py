"""The generator that needs no model: one sentence from each of the best passages, each followed by its citation.

It always works, which makes it the fallback of every other generator, and it is the default on a machine
without a GPU or a configured server. Scoring is deterministic and takes milliseconds: a sentence counts the
question's content words it contains (a rare one more than a common one), more when it holds the kind of thing
the question asks for (a year, a number, a name); passages compete by their best sentence, their rank, and
whether they are the second hop of a multi-hop question (see :meth:`ExtractiveGenerator._select`).
docs/benchmarks.md has its answer figures.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import Stemmer

from ragkit.connectors.generators.prompt import parse_citations
from ragkit.types import Answer, Hit

NO_ANSWER = "No relevant passages were found."

_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have how i if in into is it
    its me my no not of on or our she he so that the their them then there these they this those to was we
    were what when where which who whom whose why will with would you your about after before than""".split()
)


_STEMMER = Stemmer.Stemmer("english")  # Snowball, the stemmer of the BM25 index


@functools.lru_cache(maxsize=1 << 16)
def _stem(word: str) -> str:
    """The English Snowball stem, so that "refused" meets "refuse" and "located" meets "location"."""
    return str(_STEMMER.stemWord(word))


def content_words(text: str) -> list[str]:
    """Lower-cased, stemmed words minus a small English stopword list (numbers are kept)."""
    return [_stem(w) for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w not in _STOPWORDS]


def split_sentences(text: str) -> list[str]:
    """Sentences of a passage: split after ``.!?`` followed by space (not after an initial or an abbreviation
    such as "U.S." or "c."), and at blank lines. The same splitter grounding checks answers with, so every
    sentence this generator quotes is one sentence of its source."""
    from ragkit.grounding import passage_sentences

    return passage_sentences(text)


# A sentence opening with a pronoun or "The <common noun>" ("It was founded by ...", "The club was formed in
# 1993") is about its passage's subject, though it does not name it.
_ANAPHOR = re.compile(r"(?:[Hh]e|[Ss]he|[Ii]ts?|[Tt]hey|[Hh]is|[Hh]er|[Tt]heir|[Tt]his|[Tt]hese|[Tt]he [a-z]+)\b")
_NAME = re.compile(r"\b[A-Z][\w'-]*")
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b")
_MONTH = re.compile(r"\b(January|February|March|April|May|June|July|August|September|October|November|December)\b")
_NUMBER = re.compile(r"\d")
# A count written in words: "a two-time Pro Bowl selection", "twice", "three seasons" ("one" is too often "one of")
_NUMBER_WORDS = re.compile(
    r"\b(?:two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|hundred|thousand"
    r"|million|billion|twice|thrice)\b",
    re.IGNORECASE,
)
# Code outside inline spans: braces, a statement keyword or prompt at the start, arrows, scope operators, calls
# ("f()", a method call "index.ask(", "print("), an assignment at the start ("hits = ..."), a code fence.
_CODE = re.compile(
    r"[{}]|^\s*(def|class|import|from|return|\$|>>>|#+)\s|=>|::|\w\(\)|\b[a-z_]\w*\.[a-z_]\w*\(|\bprint\("
    r"|^\s*[a-z_][\w.]*\s*=[^=]|```"
)
# An inline code span (`ragkit index`) inside a sentence of prose; a doubled backtick (``like this'') is a
# typographic opening quote, not code.
_INLINE_CODE = re.compile(r"(?<!`)`[^`\n]+`(?!`)")


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
        numbers = re.findall(r"\d[\d,.]*", sentence) + _NUMBER_WORDS.findall(sentence)
        return 1.0 if any(n.lower() not in question_words for n in numbers) else 0.0
    if kind == "name":
        names = [w for w in _NAME.findall(sentence)[1:] if w.lower() not in question_words]
        return 1.0 if names else 0.0
    return 0.0


_TERMINAL = re.compile(r"[.!?][\"'”’)]*$")


def terminated(sentence: str) -> str:
    """``sentence`` ending in ``.!?``: a quoted table row or list line ("name: Golden Gate Bridge ... designer:
    Joseph Strauss") gets a period, so that the answer's sentences, and each one's citation, stay apart when the
    answer is split again (grounding; ``ragkit.grounding.sentence_spans``)."""
    return sentence if _TERMINAL.search(sentence) else f"{sentence}."


def not_prose(sentence: str) -> bool:
    """Headings, code and boilerplate: lines an answer should not quote. A sentence of prose that names a
    command or a setting in an inline code span (`ragkit index`) is prose; a stray backtick is not."""
    prose = _INLINE_CODE.sub("code", sentence)
    if prose.count("|") >= 2:  # a table row
        return True
    if _CODE.search(prose) or re.search(r"(?<!`)`(?!`)", prose):
        return True
    letters = sum(ch.isalpha() for ch in sentence)
    return letters < 0.6 * len(sentence.replace(" ", ""))


@dataclass(eq=False)
class _Sentence:
    rank: int
    position: int
    text: str
    title: str
    score: float
    typed: float
    overlap: float
    second_hop: bool = False


LEAD_BONUS = 0.5
"""Added to the score of a passage's first sentence of prose (below any heading): it usually says what the
passage's subject is."""
UNNAMED_BONUS = 0.5
"""A passage about something the question does not name counts this much more (the answer is rarely the
question's own subject)."""
BRIDGE_BONUS = 1.0
"""A passage about something another retrieved passage names, one that shares a word with the question, counts
this much more (a second hop)."""
SAME_PASSAGE_DECAY = 0.5
"""Each further sentence of one passage counts this much of the one before it."""


def _title_key(title: str) -> str:
    """A title as words, lower case, without a parenthesised qualifier: "Hello Love (song)" -> "hello love"."""
    return " ".join(_WORD.findall(re.sub(r"\s*\([^)]*\)", "", title).lower()))


def term_weights(terms: set[str], sentences: Sequence[set[str]]) -> dict[str, float]:
    """How much each of the question's ``terms`` counts when a sentence shares it: ``0.5 + 0.5 * idf / mean``.

    ``idf`` is the term's inverse frequency over the retrieved passages' ``sentences`` (sets of content words),
    and ``mean`` its mean over the terms that occur there. A word every passage repeats (the question's subject,
    "film", "state") says little about which sentence answers; a word one sentence holds ("godfather",
    "headquartered", "abbreviated") says much. Half of each weight stays flat so that no term stops counting.
    """
    if not sentences:
        return dict.fromkeys(terms, 1.0)
    frequency = {term: sum(term in words for words in sentences) for term in terms}
    idf = {term: math.log((len(sentences) + 1) / (0.5 + n)) for term, n in frequency.items()}
    present = [idf[term] for term in terms if frequency[term]]
    mean = sum(present) / len(present) if present else 0.0
    if mean <= 0:
        return dict.fromkeys(terms, 1.0)
    return {term: 0.5 + 0.5 * value / mean for term, value in idf.items()}


def rank_weight(rank: int) -> float:
    """How much a sentence from the hit at ``rank`` (0 = best) counts: 1, 0.8, 0.67, 0.57, ..."""
    return 1.0 / (1.0 + 0.25 * rank)


class ExtractiveGenerator:
    """Answers with the best sentence of each of (up to) four passages, each cited as ``[n]``; no model needed.

    >>> answer = ExtractiveGenerator().generate("What is the capital of France?", hits)
    >>> answer.text
    'Paris is the capital of France. [1]'
    """

    def __init__(self, max_sentences: int = 4, max_hits: int = 5, min_words: int = 3) -> None:
        if max_sentences < 1 or max_hits < 1:
            raise ValueError("max_sentences and max_hits must be at least 1")
        self.name = "extractive"
        self.max_sentences = max_sentences
        self.max_hits = max_hits
        self.min_words = min_words

    def _select(self, question: str, hits: Sequence[Hit]) -> list[tuple[str, int]]:
        """The chosen ``(sentence, hit index)`` pairs, the most answer-like first, spread over the passages.

        A sentence scores by the question's content words it shares, each weighted by how rare it is among the retrieved
        sentences (:func:`term_weights`; a sentence that refers back to its passage's subject, "It was founded by ...",
        shares the subject's words too), more when it holds what the question asks for, plus a bonus for a passage's
        lead sentence, which in encyclopaedic and documentation text says what the subject is. Passages weigh their
        sentences by their rank and by whether they are a *second hop*: a passage about something another retrieved
        passage names (its title occurs there) but the question does not, where that other passage shares a word with
        the question (a first hop). Multi-hop questions ("Who founded the company that makes X?") are answered in such a
        passage: the question names X, X's passage names the company, the company's passage holds the answer. Each
        further sentence of one passage counts half as much as the one before, so the answer draws on several passages;
        a passage that shares no word with the question is used only as a bridge.
        """
        terms = set(content_words(question))
        question_words = {w.lower() for w in _WORD.findall(question)}
        question_text = f" {' '.join(_WORD.findall(question.lower()))} "
        # a question quoted whole (an API example's request body): a keyword query ("red apple pie") is not one
        quoted = question_text if question.rstrip().endswith("?") and len(question_text.split()) >= 4 else ""
        kind = answer_kind(question)
        passages: list[list[_Sentence]] = []
        seen: set[str] = set()
        split = [split_sentences(hit.chunk.text) for hit in hits[: self.max_hits]]
        weight = term_weights(terms, [set(content_words(s)) for sentences in split for s in sentences])
        for rank, hit in enumerate(hits[: self.max_hits]):
            title = str(hit.chunk.meta.get("title") or "")
            subject_words = set(content_words(title)) if title else set()
            sentences: list[_Sentence] = []
            first_prose = True  # the passage's lead sentence (a heading above it is no lead)
            for position, sentence in enumerate(split[rank]):
                if position == 0 and not title:  # an untitled passage is about what its first sentence names
                    subject_words = {_stem(w.lower()) for w in _NAME.findall(sentence)} - _STOPWORDS
                key = sentence.lower()
                if len(sentence.split()) < self.min_words or key in seen or not_prose(sentence):
                    continue
                if quoted and quoted in f" {' '.join(_WORD.findall(key))} ":
                    continue  # an example that quotes the question ("queries": ["Which backends are there?"])
                seen.add(key)
                words = content_words(sentence)
                about = subject_words.union(words) if _ANAPHOR.match(sentence) else words
                # Dividing by log length keeps long run-on sentences from winning on size alone.
                overlap = sum(weight[term] for term in terms.intersection(about)) / math.log2(2 + len(words))
                typed = answer_type_bonus(kind, sentence, question_words)
                score = overlap * (1 + typed) + (LEAD_BONUS if first_prose else 0.0)
                first_prose = False
                sentences.append(_Sentence(rank, position, sentence, title, score, typed, overlap))
            if sentences:
                passages.append(sorted(sentences, key=lambda c: -c.score))
        if not passages:  # every sentence was too short or not prose: the top hit's text as it is
            return [(" ".join(hits[0].chunk.text.split()), 0)] if hits[0].chunk.text.strip() else []
        # a second hop is named by a first hop, a passage that shares a word with the question. It leads the
        # answer only when that first hop is about something the question names, or holds a question word the
        # second hop lacks (the part of the question it answers): a table row about the same bridge that says no
        # more of the question is a parallel candidate, not a first hop.
        asked = {s[0].rank: terms.intersection(content_words(hits[s[0].rank].chunk.text)) for s in passages}
        named = {s[0].rank: bool(key := _title_key(s[0].title)) and f" {key} " in question_text for s in passages}
        texts = {
            s[0].rank: f" {' '.join(_WORD.findall(hits[s[0].rank].chunk.text.lower()))} "
            for s in passages
            if any(c.overlap for c in s)
        }
        ranked: list[tuple[float, _Sentence]] = []
        for sentences in passages:
            rank, subject = sentences[0].rank, _title_key(sentences[0].title)
            doc_id = hits[rank].chunk.doc_id  # a document's own chunks naming its title make no second hop
            namers = [
                o for o, text in texts.items() if subject and hits[o].chunk.doc_id != doc_id and f" {subject} " in text
            ]
            bridge = bool(namers)
            leads = any(named[o] or asked[o] - asked[rank] for o in namers)
            if not bridge and not any(c.overlap for c in sentences):
                continue
            unnamed = bool(subject) and f" {subject} " not in question_text
            prior = rank_weight(rank) * (1 + UNNAMED_BONUS * unnamed + BRIDGE_BONUS * bridge)
            for nth, candidate in enumerate(sentences):
                if nth and not candidate.overlap:
                    continue
                candidate.second_hop = leads and unnamed
                ranked.append((prior * (0.2 + candidate.score) * SAME_PASSAGE_DECAY**nth, candidate))
        if not ranked:  # nothing overlaps the question: the lead sentence of the best hit
            lead = min((c for s in passages for c in s), key=lambda c: (c.rank, c.position))
            return [(lead.text, lead.rank)]
        ranked.sort(key=lambda pair: (-pair[0], pair[1].rank, pair[1].position))
        chosen = [candidate for _, candidate in ranked[: self.max_sentences]]
        # the most answer-like first: what the question asks for, found in the second hop when there is one
        chosen.sort(key=lambda c: (-c.typed, not (c.typed and c.second_hop)))
        return [(c.text, c.rank) for c in chosen]

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:
        hits = list(hits)
        if not hits:
            return Answer(text=NO_ANSWER, citations=(), generator=self.name, meta={"passages": ()})
        number_of: dict[int, int] = {}
        parts: list[str] = []
        for sentence, rank in self._select(question, hits):
            number = number_of.setdefault(rank, len(number_of) + 1)
            parts.append(f"{terminated(sentence)} [{number}]")
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
