"""``ragkit serve`` as an OpenAI-compatible server, with the official ``openai`` SDK (and LangChain's ChatOpenAI when
``langchain-openai`` is installed) as the client.

The server's generator is ``openai`` pointed at a scripted OpenAI-compatible backend on loopback
(``serve_helpers.ChatBackend``), so the tests also see what ragkit sends it: the passages, the question and the
conversation's earlier turns. Checked: the model list; chat completions, streaming and not, with ``[n]``
citations that map to the retrieved chunks (``message.citations``) and the ``ragkit`` extra; the model name
picking the retrieval mode; earlier turns forwarded as conversation; OpenAI-shaped errors raising the SDK's own
exception classes; ``/v1/ask`` streamed through the same backend delta by delta.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from serve_helpers import ChatBackend, build_index, sse_payloads, start_ragkit_serve
from servers import ServerProcess

ANSWER = "The Eiffel Tower was completed in 1889 [1]."


@pytest.fixture(scope="module")
def backend() -> Iterator[ChatBackend]:
    with ChatBackend(ANSWER) as chat_backend:
        yield chat_backend


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: ChatBackend) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("serve-openai")
    index = build_index(workdir / "index")
    generator = {"name": "openai", "base_url": backend.base_url, "model": "scripted", "timeout_s": 20}
    with start_ragkit_serve(index, workdir, settings={"generator": generator}) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed-on-loopback", max_retries=0) as sdk:
        yield sdk


QUESTION = "When was the Eiffel Tower in Paris completed?"


def test_models_are_listed_through_the_sdk(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list()}
    assert {"ragkit", "ragkit-dense", "ragkit-bm25", "ragkit-hybrid", "ragkit-graph_hybrid"} <= set(models)
    assert models["ragkit"].object == "model" and models["ragkit"].owned_by == "ragkit"


def test_chat_completion_cites_the_retrieved_chunk(client: openai.OpenAI, backend: ChatBackend) -> None:
    completion = client.chat.completions.create(
        model="ragkit-dense", messages=[{"role": "user", "content": QUESTION}]
    )
    message = completion.choices[0].message
    assert completion.object == "chat.completion" and completion.model == "ragkit-dense"
    assert completion.choices[0].finish_reason == "stop"
    assert message.role == "assistant" and message.content == ANSWER
    extra = message.model_extra or {}
    assert extra["citations"][0]["doc_id"] == "eiffel" and extra["citations"][0]["number"] == 1
    ragkit = (completion.model_extra or {})["ragkit"]
    assert ragkit["degraded"] is False and ragkit["hits"][0]["retriever"] == "dense"
    assert ragkit["hits"][0]["chunk_id"] == extra["citations"][0]["chunk_id"]
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    sent = backend.requests[-1].body  # what ragkit asked its generator: the passages and the question
    assert sent["model"] == "scripted" and "1889" in sent["messages"][-1]["content"]
    assert QUESTION in sent["messages"][-1]["content"]


def test_earlier_turns_go_to_the_generator_as_conversation(client: openai.OpenAI, backend: ChatBackend) -> None:
    history = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Tell me about landmarks in Paris."},
        {"role": "assistant", "content": "Paris has the Eiffel Tower [1]."},
    ]
    completion = client.chat.completions.create(
        model="ragkit", messages=[*history, {"role": "user", "content": QUESTION}]
    )
    assert completion.choices[0].message.content == ANSWER
    messages = backend.requests[-1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1:3] == history[1:]  # the client's own system prompt is not forwarded: ragkit's cites
    assert "pirate" not in str(messages) and QUESTION in messages[-1]["content"]


def test_streamed_chat_completion(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="ragkit-bm25", messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == ANSWER
    assert sum(1 for chunk in chunks if chunk.choices[0].delta.content) > 3  # word by word, as the backend wrote
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert (last.choices[0].delta.model_extra or {})["citations"][0]["doc_id"] == "eiffel"
    assert (last.model_extra or {})["ragkit"]["hits"][0]["retriever"] == "bm25"


def test_errors_raise_the_sdks_own_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": QUESTION}])
    assert "gpt-4o" in unknown.value.message and unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as no_question:
        client.chat.completions.create(model="ragkit", messages=[{"role": "assistant", "content": "hello"}])
    assert "no user message" in no_question.value.message
    assert client.models.list().data  # and the server answers on


def test_ask_streams_the_backends_deltas_then_the_checked_answer(server: ServerProcess) -> None:
    body = {"question": QUESTION, "k": 3, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/ask", json=body, timeout=30) as response:
        events = sse_payloads(response.iter_lines())
    deltas = [event["delta"] for event in events if "delta" in event]
    answer = events[-1]["answer"]
    assert len(deltas) > 3 and "".join(deltas) == ANSWER
    assert answer["generator"] == "openai" and answer["citations"][0]["doc_id"] == "eiffel"
    assert not answer["degraded"]


def test_langchain_chat_openai_as_a_client(server: ServerProcess, tmp_path: Path) -> None:
    langchain_openai = pytest.importorskip(
        "langchain_openai", reason="langchain-openai is not installed (pip install langchain-openai)"
    )
    chat = langchain_openai.ChatOpenAI(model="ragkit", base_url=f"{server.base_url}/v1", api_key="unused")
    assert chat.invoke(QUESTION).content == ANSWER
    assert "".join(chunk.content for chunk in chat.stream(QUESTION)) == ANSWER
