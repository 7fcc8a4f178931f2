"""The OpenAI-compatible generator against a real server (``transformers serve`` with SmolLM2) and faults.

Generation tests talk to a real OpenAI-compatible server process on 127.0.0.1 serving the packaged
SmolLM2-135M-Instruct (converted from its GGUF, loaded offline). Retries, timeouts and error paths use a
scripted ``http.server`` (``FaultServer``), since a real server cannot be made to fail on cue.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from servers import (
    FaultServer,
    Reply,
    ServerProcess,
    chat_completion,
    shared_cache_root,
    start_transformers_serve,
    unused_url,
)

from ragkit.connectors.generators.extractive import ExtractiveGenerator
from ragkit.connectors.generators.fallback import FallbackGenerator
from ragkit.connectors.generators.local import converted_model_dir
from ragkit.connectors.generators.openai import OpenAIGenerator, backoff_seconds, retry_after_seconds
from ragkit.connectors.generators.prompt import parse_citations
from ragkit.errors import GeneratorError
from ragkit.types import Answer, Chunk, Hit


def make_hit(index: int, text: str, source: str) -> Hit:
    chunk = Chunk(id=f"chunk-{index}", doc_id=f"doc-{index}", text=text, start=0, end=len(text))
    return Hit(chunk=chunk, score=1.0 / (index + 1), retriever="test", source=source)


HITS = [
    make_hit(0, "Paris is the capital and largest city of France.", "paris.md"),
    make_hit(1, "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.", "eiffel.md"),
    make_hit(2, "Berlin is the capital of Germany. The Brandenburg Gate stands there.", "berlin.md"),
]


FRANCE = "What is the capital of France?"


def assert_well_cited(answer: Answer, hits: list[Hit]) -> None:
    numbers = [int(n) for group in re.findall(r"\[([\d, ]+)\]", answer.text) for n in group.split(",")]
    assert list(dict.fromkeys(numbers)) == list(range(1, len(answer.citations) + 1))
    assert all(any(c is h for h in hits) for c in answer.citations)


# -- a real OpenAI-compatible server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model_dir = converted_model_dir(cache_dir=shared_cache_root(tmp_path_factory))
    with start_transformers_serve(model_dir) as process:
        yield process


@pytest.fixture(scope="module")
def served(server: ServerProcess) -> Iterator[OpenAIGenerator]:
    with OpenAIGenerator(
        base_url=server.base_url, api_key="unused", max_new_tokens=32, timeout=300
    ) as generator:
        yield generator


@pytest.mark.slow
def test_model_is_discovered_from_the_server(served: OpenAIGenerator, server: ServerProcess) -> None:
    listed = httpx.get(f"{server.base_url}/models").json()["data"]
    assert served.model == listed[0]["id"]


@pytest.fixture(scope="module")
def france(served: OpenAIGenerator) -> Answer:
    return served.generate(FRANCE, HITS)


@pytest.mark.slow
def test_real_server_generates_a_cited_answer(france: Answer) -> None:
    answer = france
    assert answer.generator == "openai" and not answer.degraded
    assert "Paris" in answer.text
    assert_well_cited(answer, HITS)
    assert answer.meta["passages"] == tuple(h.chunk.id for h in HITS)
    assert answer.meta["usage"].get("completion_tokens", 0) > 0


@pytest.mark.slow
def test_real_server_streams_server_sent_events(served: OpenAIGenerator, france: Answer) -> None:
    pieces = list(served.stream(FRANCE, HITS))
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)
    streamed, _ = parse_citations("".join(pieces).strip(), HITS)
    assert streamed == france.text  # greedy (temperature 0): the same tokens either way


@pytest.mark.slow
def test_real_server_answers_a_batch(served: OpenAIGenerator) -> None:
    questions = ["What is the capital of Germany?", FRANCE]
    answers = served.generate_many(questions, [HITS[2:], HITS[:1]])
    assert [a.generator for a in answers] == ["openai", "openai"]
    assert "Berlin" in answers[0].text and "Paris" in answers[1].text
    assert_well_cited(answers[0], HITS[2:])
    assert_well_cited(answers[1], HITS[:1])


# -- retries, timeouts, errors (scripted loopback server) ---------------------------------------------------


def scripted(server: FaultServer, sleeps: list[float], **options: object) -> OpenAIGenerator:
    return OpenAIGenerator(base_url=server.base_url, model="m", sleep=sleeps.append, **options)  # type: ignore[arg-type]


def test_retries_on_503_then_succeeds_with_growing_backoff() -> None:
    replies = [Reply(503, {"error": {"message": "busy"}})] * 2 + [Reply(200, chat_completion("Paris [1]."))]
    sleeps: list[float] = []
    with FaultServer(replies) as server:
        answer = scripted(server, sleeps, max_retries=3, backoff_s=0.5).generate("Capital?", HITS)
    assert answer.text == "Paris [1]." and answer.citations == (HITS[0],)
    assert [(method, path) for method, path, _, _ in server.requests] == [
        ("POST", "/v1/chat/completions")
    ] * 3
    assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


def test_retry_after_is_honoured_on_429() -> None:
    replies = [Reply(429, {"error": "slow down"}, {"Retry-After": "1.5"}), Reply(200, chat_completion("ok"))]
    sleeps: list[float] = []
    with FaultServer(replies) as server:
        assert scripted(server, sleeps).generate("q", HITS).text == "ok"
    assert sleeps == [1.5]


def test_retries_are_bounded_and_the_error_names_the_url() -> None:
    sleeps: list[float] = []
    with FaultServer([Reply(503, {"error": {"message": "overloaded"}})]) as server:
        with pytest.raises(GeneratorError) as caught:
            scripted(server, sleeps, max_retries=2).generate("q", HITS)
    message = str(caught.value)
    assert (
        f"{server.base_url}/chat/completions" in message and "HTTP 503" in message and "overloaded" in message
    )
    assert len(server.requests) == 3 and len(sleeps) == 2


def test_client_errors_are_not_retried() -> None:
    sleeps: list[float] = []
    with FaultServer([Reply(401, {"error": {"message": "bad key"}})]) as server:
        with pytest.raises(GeneratorError, match="HTTP 401: bad key; check OPENAI_API_KEY"):
            scripted(server, sleeps).generate("q", HITS)
    assert len(server.requests) == 1 and sleeps == []


def test_unreachable_server_error_names_the_url() -> None:
    url = unused_url()
    sleeps: list[float] = []
    generator = OpenAIGenerator(base_url=url, model="m", max_retries=2, sleep=sleeps.append)
    with pytest.raises(GeneratorError) as caught:
        generator.generate("q", HITS)
    assert f"{url}/chat/completions" in str(caught.value) and "ConnectError" in str(caught.value)
    assert "3 attempt(s)" in str(caught.value) and len(sleeps) == 2


def test_a_slow_server_times_out() -> None:
    with FaultServer([Reply(200, chat_completion("late"), delay_s=3.0)]) as server:
        generator = OpenAIGenerator(base_url=server.base_url, model="m", timeout=0.3, max_retries=0)
        with pytest.raises(GeneratorError, match="ReadTimeout"):
            generator.generate("q", HITS)


def test_stream_retries_then_parses_sse() -> None:
    events = [
        ": keep-alive comment",
        'data: {"choices": [{"delta": {"role": "assistant"}, "index": 0}]}',
        'data: {"choices": [{"delta": {"content": "Paris"}, "index": 0}]}',
        'data: {"choices": [{"delta": {"content": " [1]."}, "index": 0}]}',
        "data: [DONE]",
        'data: {"choices": [{"delta": {"content": "after done"}, "index": 0}]}',
    ]
    sse = Reply(200, "\n\n".join(events) + "\n\n", {"content-type": "text/event-stream"})
    sleeps: list[float] = []
    with FaultServer([Reply(502, "bad gateway"), sse]) as server:
        pieces = list(scripted(server, sleeps).stream("q", HITS))
    assert pieces == ["Paris", " [1]."] and len(sleeps) == 1
    assert server.requests[-1][2]["stream"] is True


def test_environment_variables_configure_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    with FaultServer([Reply(200, chat_completion("fine"))]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("RAGKIT_OPENAI_MODEL", "my-model")
        generator = OpenAIGenerator()
        assert generator.generate("q", HITS).text == "fine"
        _, path, body, headers = server.requests[0]
        assert path == "/v1/chat/completions" and body["model"] == "my-model"
        assert headers["authorization"] == "Bearer sk-test"
        assert body["messages"][0]["role"] == "system" and "[1] (paris.md)" in body["messages"][1]["content"]
        assert (
            OpenAIGenerator(base_url="http://127.0.0.1:1/v1", model="x").base_url == "http://127.0.0.1:1/v1"
        )


def test_retry_helpers() -> None:
    import random

    response = httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert retry_after_seconds(response) == 0.0  # a date in the past: retry now
    assert retry_after_seconds(httpx.Response(429, headers={"retry-after-ms": "250"})) == 0.25
    assert retry_after_seconds(httpx.Response(429)) is None
    rng = random.Random(0)
    assert all(4.0 <= backoff_seconds(10, 0.5, 8.0, rng) <= 8.0 for _ in range(20))  # capped


# -- degradation -------------------------------------------------------------------------------------------


def test_unreachable_server_degrades_to_the_extractive_answer() -> None:
    url = unused_url()
    primary = OpenAIGenerator(base_url=url, model="m", max_retries=1, backoff_s=0.01)
    answer = FallbackGenerator(primary).generate("What is the capital of Germany?", HITS)
    expected = ExtractiveGenerator().generate("What is the capital of Germany?", HITS)
    assert answer.degraded and answer.text == expected.text and answer.citations == expected.citations
    assert url in answer.reason and "openai" in answer.reason
    streamed = "".join(FallbackGenerator(primary).stream("What is the capital of Germany?", HITS))
    assert streamed == expected.text


def test_slow_server_degrades_after_the_timeout() -> None:
    with FaultServer([Reply(200, chat_completion("late"), delay_s=3.0)]) as server:
        primary = OpenAIGenerator(base_url=server.base_url, model="m", max_retries=0)
        answer = FallbackGenerator(primary, timeout_s=0.3).generate("capital of France?", HITS)
    assert answer.degraded and "TimeoutError" in answer.reason and answer.citations[0] is HITS[0]
