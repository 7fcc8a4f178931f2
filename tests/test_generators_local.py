"""The local generator on the real packaged SmolLM2-135M-Instruct: conversion cache, generation, streaming."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from servers import shared_cache_root

from ragkit.connectors.generators.local import (
    LocalGenerator,
    converted_model_dir,
    packaged_gguf,
    pick_device_and_dtype,
)
from ragkit.connectors.generators.prompt import parse_citations
from ragkit.errors import ConfigError
from ragkit.types import Answer, Chunk, Hit

pytestmark = pytest.mark.slow
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
    assert all(any(c is h for h in hits) for c in answer.citations)
    assert set(answer.meta["passages"]) <= {h.chunk.id for h in hits}


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


def test_generate_answers_from_the_passages_with_citations(france: Answer) -> None:
    answer = france
    assert answer.generator == "local" and not answer.degraded
    assert answer.text.strip()
    assert "Paris" in answer.text  # the passage is in the prompt and the model reads it
    assert_well_cited(answer, HITS)
    assert answer.meta["passages"] == tuple(h.chunk.id for h in HITS)
    assert 0 < answer.meta["new_tokens"] <= MAX_NEW_TOKENS


def test_stream_yields_the_same_text_as_generate(local: LocalGenerator, france: Answer) -> None:
    pieces = list(local.stream(FRANCE, HITS))
    assert len(pieces) > 1  # really incremental
    text, _ = parse_citations("".join(pieces).strip(), HITS)
    assert text == france.text  # greedy decoding: the same tokens either way


def test_abandoned_stream_stops_generating(local: LocalGenerator) -> None:
    stream = local.stream("What is the capital of Germany?", HITS)
    assert next(stream)
    stream.close()  # stops generation after the current step and waits for the worker
    assert not [t for t in threading.enumerate() if t.name == "ragkit-local-stream"]


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
