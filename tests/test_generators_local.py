"""The local generator: the stop and the cleanup that keep a small model's answers short and clean (unit tests
with a fake tokenizer), then the real packaged SmolLM2-135M-Instruct: conversion cache, generation, streaming."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from servers import shared_cache_root

from ragkit.connectors.generators.local import (
    AnswerStop,
    LocalGenerator,
    _generated_only,
    clean_answer,
    converted_model_dir,
    few_shot_messages,
    finished_part,
    packaged_gguf,
    pick_device_and_dtype,
    sentence_key,
    stop_reason,
)
from ragkit.connectors.generators.prompt import ANSWER_INSTRUCTION, SYSTEM_PROMPT, parse_citations
from ragkit.errors import ConfigError
from ragkit.grounding import sentence_spans
from ragkit.types import Answer, Chunk, Hit

slow = pytest.mark.slow
MAX_NEW_TOKENS = 32
FRANCE = "What is the capital of France?"


def make_hit(index: int, text: str, source: str) -> Hit:
    chunk = Chunk(id=f"chunk-{index}", doc_id=f"doc-{index}", text=text, start=0, end=len(text))
    return Hit(chunk=chunk, score=1.0 / (index + 1), retriever="test", source=source)


HITS = [
    make_hit(0, "Paris is the capital and largest city of France.", "paris.md"),
    make_hit(1, "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.", "eiffel.md"),
    make_hit(2, "Berlin is the capital of Germany. The Brandenburg Gate stands there.", "berlin.md"),
]


def assert_well_cited(answer: Answer, hits: list[Hit]) -> None:
    """Every [n] in the text names a citation, numbered 1..k by first use, and every citation is a hit."""
    numbers = [int(n) for group in re.findall(r"\[([\d, ]+)\]", answer.text) for n in group.split(",")]
    assert list(dict.fromkeys(numbers)) == list(range(1, len(answer.citations) + 1))
    assert all(any(c.chunk.id == h.chunk.id for h in hits) for c in answer.citations)
    assert set(answer.meta["passages"]) <= {h.chunk.id for h in hits}


# -- unit tests of the stop and the cleanup (no model) -----------------------------------------------------------

# A word-level fake tokenizer: each id is a piece of text, so a script of ids is a script of text.
VOCAB = ["<prompt>", " It", " is", " big.", " The", " sky", " blue.", " [1]", " Grass", " green."]
IDS = {piece.strip(): i for i, piece in enumerate(VOCAB)}


def fake_decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def script(text: str) -> list[int]:
    return [IDS[word] for word in text.split()]


def first_stop(stop: AnswerStop, rows: list[list[int]], prompt_length: int) -> list[int | None]:
    """Feed ``rows`` (prompt + generated ids) one token at a time; the step at which each row was stopped."""
    import torch

    stopped: list[int | None] = [None] * len(rows)
    for step in range(prompt_length + 1, len(rows[0]) + 1):
        done = stop(torch.tensor([row[:step] for row in rows]), None)
        assert done.dtype == torch.bool and done.shape == (len(rows),)
        for row, flag in enumerate(done.tolist()):
            if flag and stopped[row] is None:
                stopped[row] = step - prompt_length  # generated tokens so far
    return stopped


def test_the_stop_ends_a_scripted_repeating_sequence_after_the_repeat() -> None:
    prompt = [IDS["<prompt>"]] * 3
    looping = script("It is big. [1] The sky is blue. It is big. [1] The sky is blue. It is big.")
    varied = script("It is big. [1] The sky is blue. Grass is green. [1] The sky is big. It is blue.")
    stop = AnswerStop(fake_decode, len(prompt), max_sentences=None)
    stopped = first_stop(stop, [prompt + looping, prompt + varied], len(prompt))
    # "It is big. [1] The sky is blue. It is big. [1] The": stopped once the sentence after the repeat begins,
    # so the repeat's own marker was still written; the varied row never repeats a whole sentence.
    assert stopped[0] == len(script("It is big. [1] The sky is blue. It is big. [1] The"))
    assert stop.reasons == {0: "repeat"}
    assert stopped[1] is None


def test_the_stop_ends_after_max_sentences() -> None:
    prompt = [IDS["<prompt>"]]
    text = script("It is big. The sky is blue. Grass is green. It is big.")
    stop = AnswerStop(fake_decode, len(prompt), max_sentences=2)
    assert first_stop(stop, [prompt + text], len(prompt)) == [len(script("It is big. The sky is blue. Grass"))]
    assert stop.reasons == {0: "sentences"}


def test_stop_reason_on_lines_and_sentences() -> None:
    assert stop_reason("It is big. It is big.") is None  # the repeat may still take a marker: not finished
    assert stop_reason("It is big [1]. It is big [2]. The") == "repeat"  # markers do not make it new
    assert stop_reason('    "my_plugin",\n    "my_plugin",\n    "my') == "repeat"  # a looping code line
    assert stop_reason("Paris is large. Berlin is large. Rome", max_sentences=2) == "sentences"
    assert stop_reason("Paris is large. Berlin is large. Rome", max_sentences=3) is None
    assert stop_reason("Paris is large, Berlin is large, Paris is large") is None  # no sentence finished
    looping = "The OED is a dictionary that is not a dictionary that is not a"
    assert stop_reason(looping) == "repeat" and stop_reason(looping.rsplit(" that", 1)[0]) is None  # within one
    assert stop_reason("It is a very very very good idea, and New York, New York is big") is None  # not loops
    assert clean_answer(f"{looping} dict", HITS_3) == "The OED is a dictionary that is not"  # said once
    assert clean_answer(f"Rome is in Italy. {looping} dict", HITS_3) == "Rome is in Italy."
    near = "The index is kept by the RagkitIndex, which is a dynamic index."
    assert stop_reason(f"{near} {near.replace('RagkitIndex', 'RagkitRetriever')} It") == "repeat"  # one word changed
    assert stop_reason("Paris is in France. Berlin is in Germany. Rome") is None  # alike, but not the same claim


def test_penalties_count_the_generated_tokens_only() -> None:
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    penalty = _generated_only(RepetitionPenaltyLogitsProcessor(2.0), prompt_length=2)
    scores = penalty(torch.tensor([[5, 6, 7]]), torch.ones(1, 10))
    assert scores[0, 7].item() == 0.5  # generated: penalized
    assert scores[0, 5].item() == scores[0, 6].item() == 1.0  # in the prompt only: free to copy
    untouched = penalty(torch.tensor([[5, 6]]), torch.ones(1, 10))
    assert torch.equal(untouched, torch.ones(1, 10))


HITS_3 = [
    Hit(Chunk(id=f"c{i}", doc_id=f"d{i}", text=text, start=0, end=len(text)), 1.0, "test", source)
    for i, (source, text) in enumerate(
        [("paris.md", "Paris is in France."), ("berlin.md", "Berlin is in Germany."), ("rome.md", "Rome is in Italy.")]
    )
]
ECHO = (SYSTEM_PROMPT, ANSWER_INSTRUCTION, "Where is Berlin?")


def test_cleanup_removes_placeholders_and_maps_named_citations() -> None:
    text = clean_answer("Berlin is in Germany [Passage 2]. He lives in [n] (the city of [N]).", HITS_3, ECHO)
    assert "[n]" not in text and "[N]" not in text and "Passage" not in text
    body, citations = parse_citations(text, HITS_3)
    assert body.startswith("Berlin is in Germany [1].")
    assert citations == (HITS_3[1],)  # "[Passage 2]" is the second passage
    assert "()" not in body  # nothing left where a placeholder stood


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Berlin is in Germany (2).", "Berlin is in Germany [2]."),
        ("Berlin is in Germany (passage 2) and Rome in Italy (3).", "Berlin is in Germany [2] and Rome in Italy [3]."),
        ("According to passage 2, Berlin is in Germany.", "Berlin is in Germany. [2]"),
        ("Passage 3: Rome is in Italy.", "Rome is in Italy. [3]"),
        ("[1] (paris.md) Paris is in France.", "Paris is in France. [1]"),
        ("Berlin is in Germany (berlin.md).", "Berlin is in Germany [2]."),
        ("[Sources 1 and 3] say so.", "Say so. [1] [3]"),
        ("Berlin grew (1998) and (7) times.", "Berlin grew (1998) and (7) times."),  # not passage numbers
        ("<|im_start|>assistant\nAnswer: Berlin is in Germany [2].<|im_end|>", "Berlin is in Germany [2]."),
        ("The passage I provided is:\n[2] (berlin.md) Berlin is in Germany.", "Berlin is in Germany. [2]"),
        ("The passage from [2] states that Berlin is in Germany.", "Berlin is in Germany. [2]"),
        ("Passage 2 says: Berlin is in Germany.", "Berlin is in Germany. [2]"),
    ],
)
def test_cleanup_reads_the_citation_forms_a_small_model_writes(raw: str, expected: str) -> None:
    assert clean_answer(raw, HITS_3, ECHO) == expected


def test_cleanup_drops_prompt_echoes_repeats_and_a_cut_off_end() -> None:
    raw = (
        "Question: Where is Berlin?\n"
        f"{ANSWER_INSTRUCTION}\n"
        "Berlin is in Germany [2]. Where is Berlin? Berlin is in Germany [2]. Rome is in Italy [3]. Paris is in"
    )
    assert clean_answer(raw, HITS_3, ECHO) == "Berlin is in Germany [2]. Rome is in Italy [3]. Paris is in"
    assert clean_answer(raw, HITS_3, ECHO, truncated=True) == "Berlin is in Germany [2]. Rome is in Italy [3]."
    assert clean_answer("Berlin is in", HITS_3, ECHO, truncated=True) == "Berlin is in"  # the only sentence stays
    assert clean_answer(f"{SYSTEM_PROMPT}", HITS_3, ECHO) == ""
    first = "The index is kept by the RagkitRetriever, which is a dynamic index [1]."
    looping = f"{first} {first.replace('Retriever', 'Index')} {first.replace('Retriever', 'Store')}"
    assert clean_answer(looping, HITS_3) == first  # near repeats (one word changed) go too


def test_cleanup_keeps_lines_and_moves_lone_markers_to_their_sentence() -> None:
    raw = "- Paris is in France\n[1]\n- Rome is in Italy [3]\n- Paris is in France [1]"
    assert clean_answer(raw, HITS_3) == "- Paris is in France [1]\n- Rome is in Italy [3]"


# Words of what a small model writes; sentences of 1 to 4 of them end as the model ends them.
WORDS = [
    "Berlin is in Germany", "[2]", "(2)", "[n]", "[Passage 3]", "[Passage 9]", "it", "Rome", "(1998)", "()",
    "According to passage 1,", "(berlin.md)", "<|im_end|>", "The passage from [1] states that", "The answer is:",
    '"', ",", "is big is big is big", "Passage 2 says:", "that is not a thing that is not a thing",
]
ENDS = [". ", ".\n", "? ", "\n"]
SENTENCES = st.tuples(st.lists(st.sampled_from(WORDS), min_size=1, max_size=4), st.sampled_from(ENDS))


@given(st.lists(st.one_of(SENTENCES, st.just((["Question: x?"], "\n"))), max_size=6), st.booleans())
def test_cleanup_is_idempotent_and_leaves_only_real_markers(
    sentences: list[tuple[list[str], str]], truncated: bool
) -> None:
    raw = "".join(" ".join(words) + end for words, end in sentences)
    once = clean_answer(raw, HITS_3, ECHO, truncated=truncated)
    assert clean_answer(once, HITS_3, ECHO) == once  # stream() cleans, answer_from_stream() cleans again
    for end in range(len(raw) * (not truncated)):  # stream() sends the cleanup of the sentences finished so far
        assert once.startswith(clean_answer(finished_part(raw[:end], HITS_3), HITS_3, ECHO))
    for group in re.findall(r"\[([^\]]*)\]", once):
        assert all(1 <= int(n) <= len(HITS_3) for n in group.split(","))  # only markers that name a passage
    assert "<|" not in once and "Question:" not in once


def test_the_few_shot_example_is_in_the_prompt_format_and_cites_its_passage() -> None:
    user, assistant = few_shot_messages()
    assert (user["role"], assistant["role"]) == ("user", "assistant")
    assert user["content"].endswith(ANSWER_INSTRUCTION) and "[2] (etna.txt) Mount Etna" in user["content"]
    body, citations = parse_citations(assistant["content"], [HITS_3[0], HITS_3[1]])
    assert citations == (HITS_3[1],)  # it cites [2], the passage that answers, not [1]
    assert clean_answer(assistant["content"], HITS_3[:2], (SYSTEM_PROMPT, ANSWER_INSTRUCTION)) == assistant["content"]


def test_an_answer_that_only_echoes_the_prompt_becomes_the_extractive_one_marked_degraded() -> None:
    """What the docs demo got: the model copied the prompt's last lines back; the user gets cited sentences."""
    generator = object.__new__(LocalGenerator)  # _answer needs no model: only the settings it reads
    generator.name, generator.model_name, generator.device = "local", "test-model", "cpu"
    generator.max_new_tokens, generator.system_prompt = 32, SYSTEM_PROMPT
    echo = f"Question: Where is Berlin?\n{ANSWER_INSTRUCTION}"
    answer = generator._answer("Where is Berlin?", echo, tuple(HITS_3), 20, None)
    assert answer.degraded and answer.generator == "extractive" and "local generator failed" in answer.reason
    assert "Berlin is in Germany" in answer.text and HITS_3[1] in answer.citations
    assert answer.meta["raw"] == echo and answer.meta["finish_reason"] == "stop"
    kept = generator._answer("Where is Berlin?", f"{echo}\nBerlin is in Germany (2).", tuple(HITS_3), 20, None)
    assert not kept.degraded and kept.text == "Berlin is in Germany [1]." and kept.citations == (HITS_3[1],)


def test_bad_decoding_options_are_clear_errors() -> None:
    for option, value in [("max_sentences", 0), ("repetition_penalty", 0.0), ("no_repeat_ngram_size", -1)]:
        with pytest.raises(ConfigError, match=option):
            LocalGenerator(**{option: value})  # type: ignore[arg-type]


# -- the real model -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def conversion(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The packaged GGUF converted into a fresh session cache: its directory and the seconds it took."""
    started = time.perf_counter()
    directory = converted_model_dir(cache_dir=shared_cache_root(tmp_path_factory))
    return directory, time.perf_counter() - started


@pytest.fixture(scope="session")
def local(conversion: tuple[Path, float], tmp_path_factory: pytest.TempPathFactory) -> LocalGenerator:
    started = time.perf_counter()
    generator = LocalGenerator(cache_dir=shared_cache_root(tmp_path_factory), max_new_tokens=MAX_NEW_TOKENS)
    loaded = time.perf_counter() - started
    print(f"\nSmolLM2 GGUF conversion: {conversion[1]:.1f} s; load from the cache: {loaded:.1f} s")
    return generator


@slow
def test_conversion_is_cached_as_safetensors(conversion: tuple[Path, float], local: LocalGenerator) -> None:
    directory, _ = conversion
    assert Path(local.path) == directory
    assert directory.parent.name == "models" and directory.name == packaged_gguf().stem
    files = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".pth")) for name in files)  # never pickle
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    stamp = (directory / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    assert converted_model_dir(cache_dir=directory.parent.parent) == directory
    print(f"\ncache hit lookup: {time.perf_counter() - started:.3f} s")
    assert (directory / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again


@slow
def test_device_and_dtype_follow_the_hardware(local: LocalGenerator) -> None:
    import torch

    device, dtype = pick_device_and_dtype()
    if torch.cuda.is_available():
        assert device == "cuda" and dtype in (torch.bfloat16, torch.float16)
    else:
        assert (device, dtype) == ("cpu", torch.float32)
    assert local.model.dtype == dtype and local.model.device.type == device


@pytest.fixture(scope="module")
def france(local: LocalGenerator) -> Answer:
    return local.generate(FRANCE, HITS)


@slow
def test_generate_answers_from_the_passages_with_citations(france: Answer) -> None:
    answer = france
    assert answer.generator == "local" and not answer.degraded
    assert answer.text.strip()
    assert "Paris" in answer.text  # the passage is in the prompt and the model reads it
    assert_well_cited(answer, HITS)
    assert answer.meta["passages"] == tuple(h.chunk.id for h in HITS)
    assert 0 < answer.meta["new_tokens"] <= MAX_NEW_TOKENS


@slow
def test_stream_yields_the_same_text_as_generate(local: LocalGenerator, france: Answer) -> None:
    pieces = list(local.stream(FRANCE, HITS))
    assert pieces and all(pieces)
    text, _ = parse_citations("".join(pieces).strip(), HITS)
    assert text == france.text  # greedy decoding and the same cleanup: the same text either way


@pytest.fixture(scope="session")
def default_local(conversion: tuple[Path, float], tmp_path_factory: pytest.TempPathFactory) -> LocalGenerator:
    """The generator with its default decoding (``max_new_tokens``, ``max_sentences``...), as users get it."""
    return LocalGenerator(cache_dir=shared_cache_root(tmp_path_factory))


@slow
def test_stream_sends_each_sentence_once_it_is_finished(default_local: LocalGenerator) -> None:
    """Sentences come one at a time (a repeat or a prompt echo is dropped before it is shown), and the answer
    built from the streamed text is the one generate() gives."""
    question = "Tell me about Paris and the Eiffel Tower."
    pieces = list(default_local.stream(question, HITS))
    streamed = default_local.answer_from_stream(question, HITS, "".join(pieces))
    assert streamed.text == default_local.generate(question, HITS).text
    sentences = [streamed.text[s:e] for s, e in sentence_spans(streamed.text)]
    assert len(pieces) == len(sentences) > 1
    assert len({sentence_key(s) for s in sentences}) == len(sentences)


@slow
def test_abandoned_stream_stops_generating(local: LocalGenerator) -> None:
    stream = local.stream("What is the capital of Germany?", HITS)
    assert next(stream)
    stream.close()  # stops generation after the current step and waits for the worker
    assert not [t for t in threading.enumerate() if t.name == "ragkit-local-stream"]


@slow
def test_generate_many_batches_with_left_padding(local: LocalGenerator) -> None:
    questions = [
        FRANCE,
        "When was the Eiffel Tower completed?",
        "Where is the Brandenburg Gate?",
    ]
    hits = [HITS, HITS[1:2], HITS[::-1]]
    started = time.perf_counter()
    answers = local.generate_many(questions, hits)
    print(f"\ngenerate_many: {len(questions)} answers in {time.perf_counter() - started:.1f} s")
    assert len(answers) == 3
    for answer, used in zip(answers, hits, strict=True):
        assert answer.text.strip() and answer.generator == "local"
        assert_well_cited(answer, used)
        assert answer.meta["passages"] == tuple(h.chunk.id for h in used)
    assert "1889" in answers[1].text  # the short prompt, left-padded in the batch, still answers right


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load it offline"):
        LocalGenerator(str(tmp_path / "no-such-model"))


TINY_DOCS = {
    "indexing.md": "Re-indexing a folder only processes the documents whose content hash changed. A chunk id is "
    "derived from its document id and its offsets in the text, so chunk ids stay stable when a folder is indexed "
    "again.",
    "cli.md": "The `ragkit index` command creates an index from files and folders, or updates one. The `ragkit ask` "
    "command answers a question from an index and prints the sources it cites.",
    "serving.md": "The `ragkit serve` command starts an HTTP server with an OpenAI-compatible API for the index.",
}


@slow
def test_a_real_answer_on_a_tiny_index_is_short_unrepeated_and_cited(
    tmp_path_factory: pytest.TempPathFactory, minilm: object, default_local: LocalGenerator
) -> None:
    """The question that looped until the token limit in the issue's trial ("... is about how to use the `index`
    command ..." again and again), asked with the default decoding, through ``Index.ask`` (grounded)."""
    from ragkit.index import Index

    docs = tmp_path_factory.mktemp("tiny-docs")
    for name, text in TINY_DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    generator = default_local
    with Index.create(tmp_path_factory.mktemp("tiny") / "idx", embedder=minilm, graph=False) as index:  # type: ignore[arg-type]
        index.add([docs])
        question = "How does ragkit keep chunk ids stable when a folder is indexed again?"
        hits = index.retrieve(question)
        answer = index.ask(question, generator=generator)
    print(f"\n{answer.text!r} {answer.meta['new_tokens']} tokens, {answer.meta['finish_reason']}")
    assert answer.generator == "local" and not answer.degraded
    assert 0 < answer.meta["new_tokens"] < generator.max_new_tokens  # stopped before the limit
    sentences = [answer.text[s:e] for s, e in sentence_spans(answer.text)]
    assert 1 <= len(sentences) <= generator.max_sentences  # type: ignore[operator]
    assert len({sentence_key(s) for s in sentences}) == len(sentences)  # no sentence said twice
    assert not re.search(r"\[[A-Za-z]\]|Passage \d|Question:|<\|", answer.text)  # no prompt syntax
    assert answer.citations  # at least one source, from the model or from grounding
    assert_well_cited(answer, hits)
