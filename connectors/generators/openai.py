"""Generation through any OpenAI-compatible chat-completions server: vLLM, TGI, llama.cpp, hosted APIs.

Speaks the HTTP API with httpx (no ``openai`` package needed): ``POST {base_url}/chat/completions``, with
``stream=True`` read as server-sent events. Settings follow the openai client's environment variables
(``OPENAI_BASE_URL``, ``OPENAI_API_KEY``) plus ``RAGKIT_OPENAI_MODEL``; arguments override them. Transient
failures (connection errors, timeouts, 408/409/429/5xx) are retried with exponential backoff and jitter,
honouring ``Retry-After``; every error names the URL and the cause.
"""

from __future__ import annotations

import copy
import email.utils
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from ragkit.connectors.generators.prompt import (
    SYSTEM_PROMPT,
    Messages,
    TokenCounter,
    approx_token_count,
    build_messages,
    fit_history,
    parse_citations,
)
from ragkit.errors import GeneratorError
from ragkit.types import Answer, Hit

DEFAULT_BASE_URL = "http://localhost:8000/v1"
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The server's ``Retry-After`` (seconds or an HTTP date) in seconds; None when absent or unparsable."""
    value = response.headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def backoff_seconds(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: ``base * 2**attempt`` capped at ``max_s``, scaled by 0.5 to 1."""
    return min(max_s, base_s * 2**attempt) * (0.5 + 0.5 * rng.random())


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(message, dict):
            message = message.get("message", message)
        return str(message)[:300]
    except (ValueError, json.JSONDecodeError):
        return response.text[:300]


class OpenAIGenerator:
    """Answers through an OpenAI-compatible chat-completions endpoint.

    >>> generator = OpenAIGenerator(base_url="http://127.0.0.1:8000/v1")   # model: the server's first
    >>> generator.generate("Who wrote Hamlet?", hits).text
    'Shakespeare wrote Hamlet [1].'
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        context_tokens: int = 1536,
        count_tokens: TokenCounter = approx_token_count,
        system_prompt: str = SYSTEM_PROMPT,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        concurrency: int = 8,
        extra_body: dict[str, Any] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        history: Sequence[dict[str, str]] = (),
    ) -> None:
        self.name = "openai"
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._model = model or os.environ.get("RAGKIT_OPENAI_MODEL") or None
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.context_tokens = context_tokens
        self.count_tokens = count_tokens
        self.system_prompt = system_prompt
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.concurrency = max(1, concurrency)
        self.extra_body = dict(extra_body or {})
        self.history: tuple[dict[str, str], ...] = tuple(dict(turn) for turn in history)
        self._sleep = sleep
        self._rng = random.Random()
        self._model_lock = threading.Lock()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )

    # -- plumbing -------------------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    def _fail(self, path: str, cause: str) -> GeneratorError:
        return GeneratorError(
            f"OpenAI-compatible server at {self._url(path)}: {cause} "
            "(check OPENAI_BASE_URL / generator.base_url, and that the server is running)"
        )

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None = None, stream: bool = False
    ) -> httpx.Response:
        """One request, retried on transient failures (bounded); a 2xx response, left open when streaming."""
        attempt = 0
        while True:
            wait: float | None = None
            try:
                request = self._client.build_request(method, path, json=body)
                response = self._client.send(request, stream=stream)
            except httpx.TransportError as exc:  # connect errors, timeouts, dropped connections
                cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if attempt >= self.max_retries:
                    raise self._fail(path, f"{cause} after {attempt + 1} attempt(s)") from exc
            else:
                if response.status_code < 400:
                    return response
                if stream:
                    response.read()
                response.close()
                detail = f"HTTP {response.status_code}: {_error_detail(response)}"
                if response.status_code not in RETRYABLE_STATUS:
                    hint = {401: "; check OPENAI_API_KEY", 404: "; check the base URL (often ends in /v1)"}
                    raise self._fail(path, detail + hint.get(response.status_code, ""))
                if attempt >= self.max_retries:
                    raise self._fail(path, f"{detail} after {attempt + 1} attempt(s)")
                wait = retry_after_seconds(response)
            if wait is None or wait > MAX_RETRY_AFTER_S:
                wait = backoff_seconds(attempt, self.backoff_s, self.max_backoff_s, self._rng)
            self._sleep(wait)
            attempt += 1

    @property
    def model(self) -> str:
        """The model asked for, else the first one the server's ``/models`` lists (asked once)."""
        with self._model_lock:
            if self._model is None:
                response = self._send("GET", "models")
                try:
                    models = [entry["id"] for entry in response.json()["data"]]
                except (ValueError, KeyError, TypeError) as exc:
                    raise self._fail("models", f"unexpected response {response.text[:200]!r}") from exc
                if not models:
                    raise self._fail("models", "the server lists no models; set RAGKIT_OPENAI_MODEL")
                self._model = str(models[0])
            return self._model

    def _body(self, messages: Messages, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "stream": stream,
        }
        body.update(self.extra_body)
        return body

    def _messages(self, question: str, hits: Sequence[Hit]) -> tuple[Messages, tuple[Hit, ...]]:
        """System prompt, the conversation so far (``history``, at most half the token budget, latest turns
        first), then the passages and the question in the budget left."""
        turns = fit_history(self.history, self.context_tokens // 2, self.count_tokens) if self.history else []
        budget = self.context_tokens - sum(self.count_tokens(turn["content"]) + 4 for turn in turns)
        messages, used = build_messages(question, hits, budget, self.count_tokens, self.system_prompt)
        return [*messages[:1], *turns, *messages[1:]], used

    def with_history(self, history: Sequence[dict[str, str]]) -> OpenAIGenerator:
        """This generator for one turn of a conversation: the same server, client and settings, with the earlier
        ``{"role", "content"}`` turns sent before the question (the caller's own instance is unchanged).

        >>> generator.with_history([{"role": "user", "content": "Who wrote Hamlet?"},
        ...                         {"role": "assistant", "content": "Shakespeare [1]."}]).generate("When?", hits)
        """
        turn = copy.copy(self)
        turn.history = tuple(dict(message) for message in history)
        return turn

    # -- the Generator protocol -----------------------------------------------------------------------------

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:
        messages, used = self._messages(question, hits)
        response = self._send("POST", "chat/completions", self._body(messages, stream=False))
        try:
            payload = response.json()
            choice = payload["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise self._fail("chat/completions", f"malformed response {response.text[:200]!r}") from exc
        body, citations = parse_citations(text.strip(), used)
        meta = {
            "model": payload.get("model", self.model),
            "passages": tuple(hit.chunk.id for hit in used),
            "finish_reason": choice.get("finish_reason"),
            "usage": payload.get("usage") or {},
        }
        return Answer(text=body, citations=citations, generator=self.name, meta=meta)

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
        """Text deltas as the server sends them; ``[n]`` is the prompt's n-th passage (not renumbered)."""
        messages, _ = self._messages(question, hits)
        response = self._send("POST", "chat/completions", self._body(messages, stream=True), stream=True)
        events = 0
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, "event:" and "id:" fields
                events += 1
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except json.JSONDecodeError as exc:
                    raise self._fail("chat/completions", f"malformed stream event {data[:200]!r}") from exc
                if event.get("error"):
                    raise self._fail("chat/completions", f"error in stream: {event['error']}")
                for choice in event.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece
            if not events:  # a 200 that is no event stream at all (an HTML error page from a proxy)
                kind = response.headers.get("content-type", "no content type")
                raise self._fail("chat/completions", f"malformed stream: no server-sent events in a {kind} body")
        except httpx.TransportError as exc:
            raise self._fail("chat/completions", f"stream interrupted: {type(exc).__name__}: {exc}") from exc
        finally:
            response.close()

    def answer_from_stream(self, question: str, hits: Sequence[Hit], text: str) -> Answer:
        """The answer for the whole text :meth:`stream` produced, its ``[n]`` renumbered as :meth:`generate` does."""
        _, used = self._messages(question, hits)
        body, citations = parse_citations(text.strip(), used)
        meta = {"model": self.model, "passages": tuple(hit.chunk.id for hit in used)}
        return Answer(text=body, citations=citations, generator=self.name, meta=meta)

    def generate_many(
        self, questions: Sequence[str], hits_per_question: Sequence[Sequence[Hit]]
    ) -> list[Answer]:
        """Answers for many questions, sent concurrently so the server can batch them (vLLM, TGI do)."""
        if len(questions) != len(hits_per_question):
            raise ValueError(f"{len(questions)} questions but {len(hits_per_question)} hit lists")
        self.model  # noqa: B018 - resolve the model once, before the requests fan out
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(questions)))) as pool:
            return list(pool.map(self.generate, questions, hits_per_question))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
