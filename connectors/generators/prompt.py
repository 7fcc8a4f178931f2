"""Prompts with numbered context passages, a token budget, and the mapping of ``[n]`` citations back to hits.

Every model-backed generator builds its prompt here, so all of them number passages the same way and all
answers cite the same way: ``[1] (source) text`` in the prompt, ``[n]`` in the answer, and
``Answer.citations[n - 1]`` is the hit that ``[n]`` refers to after :func:`parse_citations` renumbers them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ragkit.types import Answer, Hit

if TYPE_CHECKING:
    from ragkit.protocols import Generator

# Short and concrete, for small models too: with the same decoding, SmolLM2-135M cited a passage itself in 5 of
# 10 HotpotQA answers with these words and in 2 of 10 with the earlier ones (connectors/generators/local.py).
SYSTEM_PROMPT = (
    "Answer the question from the numbered passages only, in one to three short sentences. "
    "End each sentence with the number of the passage it comes from in square brackets, like [1] or [2]. "
    "If the passages do not say, answer that you do not know."
)
# The last line of the user message. It shows a real marker ("[1]"), never a placeholder: small models copy what
# they are shown, and the earlier "cite the passages you use as [n]" came back as a literal "[n]" in answers.
ANSWER_INSTRUCTION = "Answer in one to three sentences, only from the passages above, and cite them like [1]."

Messages = list[dict[str, str]]
TokenCounter = Callable[[str], int]

# "[3]", "[1, 2]", "[1,2,5]": one bracket holding one or more passage numbers.
_CITATION = re.compile(r"\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")
# The start of a marker still being written at the end of streamed text: "[", "[1", "[1, ".
_OPEN_CITATION = re.compile(r"\[[\d\s,]*\Z")


def approx_token_count(text: str) -> int:
    """A tokenizer-free estimate (about four characters per token), for servers whose tokenizer we lack."""
    return math.ceil(len(text) / 4)


def hit_source(hit: Hit) -> str:
    """The label a passage carries in the prompt: the hit's source, else the chunk's document id."""
    return hit.source or str(hit.chunk.meta.get("source", "")) or hit.chunk.doc_id


def format_passage(number: int, hit: Hit, text: str | None = None) -> str:
    body = " ".join((hit.chunk.text if text is None else text).split())
    return f"[{number}] ({hit_source(hit)}) {body}"


def _user_message(question: str, passages: Sequence[str]) -> str:
    context = "\n".join(passages) if passages else "(no passages were found)"
    return (
        f"Context passages:\n{context}\n\n"
        f"Question: {question.strip()}\n"
        f"{ANSWER_INSTRUCTION}"
    )


def _messages(question: str, passages: Sequence[str], system_prompt: str) -> Messages:
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": _user_message(question, passages)},
    ]


def _messages_tokens(messages: Messages, count_tokens: TokenCounter) -> int:
    # A few tokens per message for the chat template's role markers.
    return sum(count_tokens(m["content"]) + 4 for m in messages)


def _truncate_to_fit(
    question: str, hit: Hit, budget_tokens: int, count_tokens: TokenCounter, system_prompt: str
) -> str | None:
    """The longest word-prefix of the top passage that fits the budget (binary search), or None."""
    words = hit.chunk.text.split()
    low, high, best = 1, len(words), None
    while low <= high:
        middle = (low + high) // 2
        text = " ".join(words[:middle]) + " ..."
        cost = _messages_tokens(
            _messages(question, [format_passage(1, hit, text)], system_prompt), count_tokens
        )
        if cost <= budget_tokens:
            best, low = text, middle + 1
        else:
            high = middle - 1
    return best


def build_messages(
    question: str,
    hits: Sequence[Hit],
    budget_tokens: int = 1536,
    count_tokens: TokenCounter = approx_token_count,
    system_prompt: str = SYSTEM_PROMPT,
) -> tuple[Messages, tuple[Hit, ...]]:
    """System and user chat messages holding the question and as many numbered passages as fit.

    ``hits`` are taken best first; passages are dropped from the lowest-ranked end until the whole prompt
    fits ``budget_tokens`` (as counted by ``count_tokens``). When not even the top passage fits whole, its
    leading words are kept. Returns the messages and the hits they show, in prompt order, so that ``[n]``
    in the prompt is ``used_hits[n - 1]``.

    >>> messages, used = build_messages("Who wrote it?", hits, budget_tokens=512)
    """
    if budget_tokens < 1:
        raise ValueError(f"budget_tokens must be positive (got {budget_tokens})")
    hits = list(hits)
    kept = len(hits)
    while kept > 0:
        passages = [format_passage(i + 1, hit) for i, hit in enumerate(hits[:kept])]
        messages = _messages(question, passages, system_prompt)
        if _messages_tokens(messages, count_tokens) <= budget_tokens:
            return messages, tuple(hits[:kept])
        kept -= 1
    if hits:
        text = _truncate_to_fit(question, hits[0], budget_tokens, count_tokens, system_prompt)
        if text is not None:
            return _messages(question, [format_passage(1, hits[0], text)], system_prompt), (hits[0],)
    return _messages(question, [], system_prompt), ()


def parse_citations(text: str, used_hits: Sequence[Hit]) -> tuple[str, tuple[Hit, ...]]:
    """Map the ``[n]`` markers of a model's answer back to the passages it was shown.

    Passages are renumbered in order of first citation, so that in the returned text ``[k]`` refers to
    ``citations[k - 1]``; numbers that name no passage are removed, and a bracket left empty disappears.
    Returns ``(renumbered_text, citations)``.

    >>> parse_citations("Paris [2], on the Seine [2, 9].", hits)   # hits[1] becomes citation 1
    ('Paris [1], on the Seine [1].', (hits[1],))
    """
    order: dict[int, int] = {}  # passage number -> new number

    def renumber(match: re.Match[str]) -> str:
        numbers: list[int] = []
        for part in match.group(1).split(","):
            passage = int(part)
            if not 1 <= passage <= len(used_hits):
                continue
            new = order.setdefault(passage, len(order) + 1)
            if new not in numbers:
                numbers.append(new)
        return f"[{', '.join(str(n) for n in numbers)}]" if numbers else "\x00"

    renumbered = _CITATION.sub(renumber, text)
    # Drop removed markers together with the space before them ("Paris [9]." -> "Paris.").
    renumbered = re.sub(r"[ \t]*\x00", "", renumbered).strip()
    citations = tuple(used_hits[passage - 1] for passage in sorted(order, key=order.__getitem__))
    return renumbered, citations


class StreamedCitations:
    """Renumbers the ``[n]`` markers of streamed text as :func:`parse_citations` does, delta by delta.

    :meth:`feed` returns the part of the text that is settled, renumbered: a marker still being written (``[1,``)
    and trailing whitespace (which a dropped marker would take with it) wait for the next delta; :meth:`finish`
    returns the rest. The pieces returned join to ``parse_citations(whole_text, passages)[0]``.

    >>> citations = StreamedCitations(hits)
    >>> citations.feed("Paris [3"), citations.feed("] is on the Seine [1]."), citations.finish()
    ('Paris', ' [1] is on the Seine [2].', '')
    """

    def __init__(self, passages: Sequence[Hit]) -> None:
        self.passages = passages
        self.text = ""  # everything fed so far, as written
        self.sent = ""  # everything returned so far, renumbered

    def feed(self, delta: str) -> str:
        self.text += delta
        end = len(self.text.rstrip())
        still_open = _OPEN_CITATION.search(self.text, 0, end)
        if still_open is not None:
            end = len(self.text[: still_open.start()].rstrip())
        return self._settle(self.text[:end])

    def finish(self) -> str:
        return self._settle(self.text)

    def _settle(self, text: str) -> str:
        renumbered, _ = parse_citations(text, self.passages)
        if not renumbered.startswith(self.sent):  # not expected: the settled text only ever grows
            return ""
        new, self.sent = renumbered[len(self.sent) :], renumbered
        return new


def streamed_answer(generator: Generator, question: str, hits: Sequence[Hit], text: str) -> Answer:
    """The Answer for the whole ``text`` that ``generator.stream(question, hits)`` produced.

    A generator with an ``answer_from_stream(question, hits, text)`` method builds it as its ``generate`` would
    (the passages its prompt showed, its own numbering); for any other, ``[n]`` in the text is ``hits[n - 1]``,
    the prompt's numbering, and :func:`parse_citations` renumbers it.
    """
    build = getattr(generator, "answer_from_stream", None)
    if build is not None:
        answer: Answer = build(question, hits, text)
        return answer
    body, citations = parse_citations(text.strip(), hits)
    meta = {"passages": tuple(hit.chunk.id for hit in hits)}
    return Answer(text=body, citations=citations, generator=generator.name, meta=meta)


def fit_history(
    history: Sequence[dict[str, str]], budget_tokens: int, count_tokens: TokenCounter = approx_token_count
) -> Messages:
    """The latest turns of a conversation that fit ``budget_tokens``, to go between the system prompt and the
    question (so that "and where was she born?" reads as a follow-up).

    Only ``user`` and ``assistant`` turns with text are kept (a client's own system prompt would compete with the
    citation instructions); the oldest are dropped first, whole, until the rest fit.

    >>> fit_history([{"role": "user", "content": "Who wrote Hamlet?"}, {"role": "assistant", "content": "..."}], 256)
    """
    turns = [
        {"role": str(turn.get("role")), "content": str(turn.get("content") or "")}
        for turn in history
        if turn.get("role") in ("user", "assistant") and (turn.get("content") or "").strip()
    ]
    kept: Messages = []
    used = 0
    for turn in reversed(turns):
        cost = count_tokens(turn["content"]) + 4  # the chat template's role markers
        if used + cost > budget_tokens:
            break
        kept.append(turn)
        used += cost
    return kept[::-1]
