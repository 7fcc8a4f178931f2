"""Prompt building (numbered passages, token budget) and mapping ``[n]`` citations back to hits."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ragkit.connectors.generators.prompt import (
    ANSWER_INSTRUCTION,
    SYSTEM_PROMPT,
    build_messages,
    format_passage,
    parse_citations,
)
from ragkit.types import Chunk, Hit


def make_hit(index: int, text: str, source: str = "") -> Hit:
    chunk = Chunk(id=f"chunk-{index}", doc_id=f"doc-{index}", text=text, start=0, end=len(text))
    return Hit(chunk=chunk, score=1.0 / (index + 1), retriever="test", source=source or f"file{index}.txt")


HITS = [
    make_hit(0, "Paris is the capital of France.", "paris.md"),
    make_hit(1, "Berlin is the capital of Germany.", "berlin.md"),
    make_hit(2, "Madrid is the capital of Spain.", "madrid.md"),
]


def words(text: str) -> int:
    return len(text.split())


def test_messages_number_passages_with_sources_and_ask_for_citations() -> None:
    messages, used = build_messages("What is the capital of Spain?", HITS, budget_tokens=10_000)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT and "[1]" in SYSTEM_PROMPT
    user = messages[1]["content"]
    assert "[1] (paris.md) Paris is the capital of France." in user
    assert "[3] (madrid.md) Madrid is the capital of Spain." in user
    assert user.index("[1]") < user.index("[2]") < user.index("[3]")
    assert "What is the capital of Spain?" in user
    assert used == tuple(HITS)


def test_instructions_ask_for_short_cited_answers_and_show_no_placeholder() -> None:
    """A small model copies what it is shown: a "[n]" in the prompt came back as a literal "[n]" in answers."""
    messages, _ = build_messages("What is the capital of Spain?", HITS, budget_tokens=10_000)
    user = messages[1]["content"]
    assert user.endswith(ANSWER_INSTRUCTION)  # the last thing the model reads before answering
    assert user.index("[3] (madrid.md)") < user.index("Question: What is the capital of Spain?")
    for text in (SYSTEM_PROMPT, ANSWER_INSTRUCTION):
        assert not re.search(r"\[\s*[A-Za-z]+\s*\]", text)  # no [n], [N], [number]
        assert "[1]" in text  # the markers are shown as the passages are numbered
    assert re.search(r"one to three sentences", SYSTEM_PROMPT + ANSWER_INSTRUCTION)


def test_budget_drops_the_lowest_ranked_passages_first() -> None:
    full, _ = build_messages("capital?", HITS, budget_tokens=10_000, count_tokens=words)
    cost = sum(words(m["content"]) + 4 for m in full)
    passage_cost = words(format_passage(3, HITS[2]))
    messages, used = build_messages("capital?", HITS, budget_tokens=cost - 1, count_tokens=words)
    assert used == tuple(HITS[:2])
    assert "Madrid" not in messages[1]["content"] and "Berlin" in messages[1]["content"]
    messages, used = build_messages(
        "capital?", HITS, budget_tokens=cost - passage_cost - 1, count_tokens=words
    )
    assert used == (HITS[0],)


def test_a_top_passage_too_long_for_the_budget_is_cut_to_fit() -> None:
    long_hit = make_hit(0, " ".join(f"word{i}" for i in range(500)))
    empty, _ = build_messages("question?", [], budget_tokens=10_000, count_tokens=words)
    base = sum(words(m["content"]) + 4 for m in empty)
    budget = base + 60
    messages, used = build_messages(
        "question?", [long_hit, HITS[1]], budget_tokens=budget, count_tokens=words
    )
    assert used == (long_hit,)
    assert sum(words(m["content"]) + 4 for m in messages) <= budget
    assert "word0 word1" in messages[1]["content"] and "word499" not in messages[1]["content"]


def test_no_hits_gives_a_prompt_without_passages() -> None:
    messages, used = build_messages("anything?", [], budget_tokens=512)
    assert used == ()
    assert "no passages" in messages[1]["content"]


def test_parse_citations_renumbers_in_order_of_first_use() -> None:
    text, citations = parse_citations("Madrid [3] and Paris [1]; again Madrid [3].", HITS)
    assert text == "Madrid [1] and Paris [2]; again Madrid [1]."
    assert citations == (HITS[2], HITS[0])


def test_parse_citations_drops_numbers_that_name_no_passage() -> None:
    text, citations = parse_citations("Paris [9]. Berlin [2, 7]. Both [2,1].", HITS)
    assert text == "Paris. Berlin [1]. Both [1, 2]."
    assert citations == (HITS[1], HITS[0])
    assert parse_citations("No sources here.", HITS) == ("No sources here.", ())


@given(st.lists(st.tuples(st.text(alphabet="abc .", max_size=8), st.integers(0, 6)), max_size=12))
def test_parse_citations_numbers_always_match_citations(parts: list[tuple[str, int]]) -> None:
    raw = "".join(f"{prose}[{number}]" for prose, number in parts)
    text, citations = parse_citations(raw, HITS)
    numbers = [int(n) for group in re.findall(r"\[([\d, ]+)\]", text) for n in group.split(",")]
    first_use = list(dict.fromkeys(numbers))
    assert first_use == list(range(1, len(citations) + 1))  # [k] is citations[k-1], numbered by first use
    valid = [n for _, n in parts if 1 <= n <= len(HITS)]
    assert citations == tuple(HITS[n - 1] for n in dict.fromkeys(valid))
