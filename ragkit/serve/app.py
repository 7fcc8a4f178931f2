"""The ``ragkit serve`` application: retrieve, ask, OpenAI-compatible chat, documents, feedback, health, metrics.

>>> index = open_index(Path("my-index"), load_settings())
>>> app = create_app(index, keyring=KeyRing.load(Path("keys.toml")))     # then: uvicorn.run(app)

Every ``/v1`` request is authenticated (:func:`authorize`: a key bound to a tenant, or the keyless loopback
server's ``LOCAL_PRINCIPAL``), admitted by the fair limiter (``ragkit.serve.limits``), and every retrieval is
confined to the key's tenant (``tenant_where``), whatever ``where`` the request sent. Concurrent retrievals are
coalesced into ``Index.retrieve_many`` batches on one thread (``ragkit.serve.batching``); answers are generated
on a bounded pool of threads. Every error is the OpenAI error body ``{"error": {"message", "type", "code"}}``
with a 4xx status for the client's mistakes; nothing answers with a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragkit.config import Settings
from ragkit.connectors.embedders import make_embedder
from ragkit.connectors.generators import from_settings, resolve_name
from ragkit.connectors.generators.fallback import FallbackGenerator
from ragkit.connectors.generators.prompt import approx_token_count
from ragkit.errors import ConfigError, GeneratorError, IndexClosedError, IndexFormatError, RagkitError
from ragkit.index import Index
from ragkit.manifest import Manifest
from ragkit.pipelines import query
from ragkit.protocols import Generator
from ragkit.registry import retrieval_modes
from ragkit.serve.auth import (
    LOCAL_PRINCIPAL,
    TENANT_TAG,
    KeyRing,
    Principal,
    confine_explains,
    explained_chunks,
    tenant_where,
)
from ragkit.serve.batching import MicroBatcher, SerializedEmbedder
from ragkit.serve.documents import documents_router
from ragkit.serve.jobs import JobManager
from ragkit.serve.limits import FairLimiter, RateLimited
from ragkit.serve.metrics import ServeMetrics
from ragkit.serve.schemas import (
    AskRequest,
    ChatCompletionRequest,
    FeedbackRequest,
    RetrieveRequest,
    answer_json,
    citations_json,
    error_body,
    hits_json,
)
from ragkit.types import Answer, Hit, vector_id

logger = logging.getLogger("ragkit.serve")

MODEL_PREFIX = "ragkit"
REMEMBERED_ANSWERS = 10_000  # answer ids kept for /v1/feedback
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ApiError(Exception):
    """A client-facing error: its status, message and machine-readable code (the JSON error body)."""

    def __init__(self, status: int, message: str, code: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


def open_index(path: Path, settings: Settings) -> Index:
    """The index at ``path``, opened for serving: its embedder is loaded on first use (or by the warm-up) and
    used by one thread at a time (:class:`~ragkit.serve.batching.SerializedEmbedder`). A missing or unreadable
    index is an IndexFormatError naming the directory."""
    path = Path(path)
    if not path.is_dir():
        raise IndexFormatError(f"{path}: no index here (create one with `ragkit index SOURCES --index {path}`)")
    manifest = Manifest.load(path)
    device, batch_size = settings.embedder.device, settings.embedder.batch_size
    embedder = SerializedEmbedder(
        manifest.embedder,
        manifest.dimension,
        lambda: make_embedder(manifest.embedder, device=device, batch_size=batch_size),
    )
    return Index.open(path, settings, embedder=embedder)  # type: ignore[arg-type]  # max_tokens: read-only


# -- the state of one app -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalKey:
    """What the queries of one ``retrieve_many`` batch share."""

    mode: str
    k: int
    where: tuple[tuple[str, Any], ...]
    rerank: bool | None


class ServeState:
    """Everything the routes share: the index, limits, batchers, thread pools, metrics and readiness."""

    def __init__(self, index: Index, keyring: KeyRing | None, generator: Generator | None) -> None:
        self.index = index
        self.settings = index.settings
        self.serve = index.settings.serve
        self.keyring = keyring
        self.started = int(time.time())
        self.ready = False
        self.not_ready = "loading the embedder and running a warm-up query"
        serve = self.serve
        self.metrics = ServeMetrics(self._index_counts)
        self.limiter = FairLimiter(
            max_concurrent=serve.max_concurrent,
            default_rate_per_s=serve.rate_per_s,
            default_max_concurrent_per_key=serve.max_concurrent_per_key,
            max_queue=serve.max_queue,
        )
        self.metrics.waiting.set_function(lambda: self.limiter.queue_depth)
        self.retriever: MicroBatcher[str, list[Hit]] = MicroBatcher(
            self._retrieve_batch,
            max_batch=serve.max_batch,
            max_wait_ms=serve.max_wait_ms,
            name="ragkit-retrieve",
            observe=self.metrics.batch,
            depth=self.metrics.queue_depth.set,
        )
        self.generation = ThreadPoolExecutor(serve.generation_concurrency, thread_name_prefix="ragkit-generate")
        self.generator: Generator = generator if generator is not None else from_settings(self.settings.generator)
        self.local_batcher: MicroBatcher[tuple[str, list[Hit]], Answer] | None = None
        if generator is None and resolve_name(self.settings.generator) == "local":
            # a local model answers a batch in about the time of one answer: batch them as queries are
            self.local_batcher = MicroBatcher(
                self._answer_batch, max_batch=serve.max_batch, max_wait_ms=serve.max_wait_ms, name="ragkit-local"
            )
        self.answers: OrderedDict[str, tuple[str | None, frozenset[str]]] = OrderedDict()
        self._answers_lock = threading.Lock()
        self.data_dir = Path(serve.data_dir) if serve.data_dir else index.path / "serve"
        self.jobs = JobManager(index, self.data_dir)

    # -- index work (the batcher's thread) ------------------------------------------------------------------

    def _retrieve_batch(self, key: RetrievalKey, queries: list[str]) -> list[list[Hit]]:
        where = dict(key.where) or None
        return self.index.retrieve_many(queries, key.k, key.mode, where, rerank=key.rerank)

    def _answer_batch(self, _: Hashable, items: list[tuple[str, list[Hit]]]) -> list[Answer]:
        questions, hits = [q for q, _ in items], [h for _, h in items]
        return query.answer_many(self.index.store, questions, hits, self.generator)

    def _index_counts(self) -> dict[str, int]:
        catalog = self.index.catalog
        return {**catalog.counts(), "generation": catalog.generation}

    def warm_up(self) -> None:
        """Load the embedder and answer one query, so that the first request is not the slow one."""
        embedder = self.index.embedder
        load = getattr(embedder, "load", None)
        if load is not None:
            load()
        self.index.retrieve_many(["warm-up query"], 1, self.settings.retrieval.mode)

    # -- requests -------------------------------------------------------------------------------------------

    def principal(self, request: Request) -> Principal:
        """Who the request acts for; 401 without a valid key (when the server has keys)."""
        if self.keyring is None:
            return LOCAL_PRINCIPAL
        secret = ""
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            secret = token.strip()
        elif request.headers.get("x-api-key"):
            secret = request.headers["x-api-key"].strip()
        challenge = {"WWW-Authenticate": 'Bearer realm="ragkit"'}
        if not secret:
            raise ApiError(
                401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'", "missing_api_key",
                challenge,
            )
        principal = self.keyring.authenticate(secret)
        if principal is None:
            raise ApiError(401, "invalid API key", "invalid_api_key", challenge)
        return principal

    def check_ready(self) -> None:
        if not self.ready:
            raise ApiError(503, f"the server is not ready: {self.not_ready}", "not_ready", {"Retry-After": "1"})

    def k(self, k: int | None) -> int:
        if k is None:
            return self.settings.retrieval.k
        if not 1 <= k <= self.serve.max_k:
            raise ApiError(400, f"k must be between 1 and {self.serve.max_k} (got {k})", "k_out_of_range")
        return k

    def mode(self, mode: str | None) -> str:
        if mode is None:
            return self.settings.retrieval.mode
        if mode not in retrieval_modes.names():
            valid = ", ".join(retrieval_modes.names())
            raise ApiError(400, f"unknown retrieval mode {mode!r} (valid: {valid})", "unknown_mode")
        return mode

    async def retrieve(
        self,
        principal: Principal,
        queries: Sequence[str],
        *,
        k: int | None,
        mode: str | None,
        where: Mapping[str, Any] | None,
        rerank: bool | None = None,
    ) -> list[list[Hit]]:
        """Hits for each query, confined to the principal's tenant, through the micro-batcher; graph explanations
        are confined too (:meth:`confine_explanations`)."""
        if len(queries) > self.serve.max_queries:
            raise ApiError(
                400, f"at most {self.serve.max_queries} queries per request (got {len(queries)})", "too_many_queries"
            )
        confined = tenant_where(principal, where)
        key = RetrievalKey(
            self.mode(mode), self.k(k), tuple(sorted((confined or {}).items(), key=lambda kv: kv[0])), rerank
        )
        found = await self.retriever.submit_many(key, list(queries))
        if principal.tenant is None or not any(hit.explain for hits in found for hit in hits):
            return found
        return await asyncio.to_thread(self.confine_explanations, principal, found)

    def confine_explanations(self, principal: Principal, found: list[list[Hit]]) -> list[list[Hit]]:
        """``found`` with explanations that name only what the principal's tenant may see: a graph walk is
        filtered by tenant only at its end, so its seed entities and path can come from other tenants' chunks."""
        hits = [hit for row in found for hit in row]
        own = {hit.chunk.id for hit in hits}
        named = explained_chunks(hit.explain for hit in hits) - own
        visible = own | (self.visible_chunks(principal, named) if named else set())
        explains = iter(confine_explains([hit.explain for hit in hits], visible))
        return [[replace(hit, explain=next(explains)) for hit in row] for row in found]

    def generator_for(self, history: Sequence[dict[str, str]] = ()) -> Generator:
        """The generator of one request: a fresh fallback wrapper (its stream state is per request) around the
        shared model client, given the conversation so far when it can take it."""
        base = self.generator
        if not isinstance(base, FallbackGenerator):
            return base
        primary = base.primary
        with_history = getattr(primary, "with_history", None)
        if history and with_history is not None:
            primary = with_history(history)
        return FallbackGenerator(primary, base.fallback, timeout_s=base.timeout_s)

    async def answer(self, question: str, hits: list[Hit], history: Sequence[dict[str, str]] = ()) -> Answer:
        """The grounded answer to ``question`` from ``hits`` (degraded to extractive when the generator fails)."""
        if self.local_batcher is not None and not history:
            answer = await self.local_batcher.submit(None, (question, hits))
        else:
            generator = self.generator_for(history)
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(
                self.generation, lambda: query.answer_many(self.index.store, [question], [hits], generator)[0]
            )
        self.metrics.answer(answer)
        return answer

    async def stream(
        self, question: str, hits: list[Hit], history: Sequence[dict[str, str]] = ()
    ) -> AsyncIterator[tuple[str, Any]]:
        """``("delta", text)`` as the generator writes, then ``("answer", Answer)`` (or ``("error", exc)``).

        The whole ``AnswerStream`` runs on one generation thread; when the client goes away the thread stops
        at the next delta and closes the stream."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()
        stream = query.stream_answer(self.index.store, question, hits, self.generator_for(history))

        def put(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))
            except RuntimeError:  # the loop is gone (shutdown)
                stop.set()

        def run() -> None:
            try:
                for delta in stream:
                    if stop.is_set():
                        stream.close()
                        return
                    put("delta", delta)
                if not stop.is_set():
                    put("answer", stream.answer)
            except Exception as exc:  # handed to the response, which reports it in the stream
                put("error", exc)

        loop.run_in_executor(self.generation, run)
        try:
            while True:
                kind, value = await events.get()
                if kind == "answer":
                    self.metrics.answer(value)
                yield kind, value
                if kind != "delta":
                    return
        finally:
            stop.set()

    def remember(self, answer_id: str, principal: Principal, answer: Answer) -> None:
        """Keep an answer's cited chunks so that feedback can name the answer by its id."""
        with self._answers_lock:
            self.answers[answer_id] = (principal.tenant, frozenset(h.chunk.id for h in answer.citations))
            while len(self.answers) > REMEMBERED_ANSWERS:
                self.answers.popitem(last=False)

    def recalled(self, answer_id: str, principal: Principal) -> frozenset[str] | None:
        with self._answers_lock:
            entry = self.answers.get(answer_id)
        if entry is None or entry[0] != principal.tenant:
            return None
        return entry[1]

    def visible_chunks(self, principal: Principal, chunk_ids: set[str]) -> set[str]:
        """Those of ``chunk_ids`` that exist and that the principal's tenant may see."""
        catalog = self.index.catalog
        chunks = catalog.chunks_by_ids(sorted(chunk_ids))
        if principal.tenant is None:
            return set(chunks)
        tags = catalog.vector_tags([vector_id(cid) for cid in chunks])
        return {
            cid for cid in chunks
            if tags.get(vector_id(cid), {}).get(TENANT_TAG) == principal.tenant
        }

    async def aclose(self) -> None:
        await self.retriever.aclose()
        if self.local_batcher is not None:
            await self.local_batcher.aclose()
        await asyncio.to_thread(self.jobs.close, self.serve.shutdown_grace_s)
        self.generation.shutdown(wait=False, cancel_futures=True)


def _state(request: Request) -> ServeState:
    state: ServeState = request.app.state.ragkit
    return state


def authorize(scope: str) -> Callable[[Request], AsyncIterator[Principal]]:
    """A FastAPI dependency: the request's Principal, holding a slot of the fair limiter while the request (and
    its streamed response) lasts.

    401 for a missing or unknown key (``Authorization: Bearer <key>`` or ``X-API-Key``), 403 when the key lacks
    ``scope`` (``read`` or ``write``), 503 until the server is ready, 429 (with Retry-After) over the key's limits.
    Without a key file every request is ``LOCAL_PRINCIPAL`` (the server then listens on loopback only).
    """

    async def dependency(request: Request) -> AsyncIterator[Principal]:
        state = _state(request)
        principal = state.principal(request)
        if not principal.allows(scope):
            raise ApiError(403, f"this API key lacks the {scope!r} scope", "insufficient_scope")
        state.check_ready()
        async with state.limiter.slot(principal):
            yield principal

    return dependency


async def _within(state: ServeState, work: Any) -> Any:
    """``await work``, or a 504 after ``serve.request_timeout_s``."""
    try:
        return await asyncio.wait_for(work, state.serve.request_timeout_s)
    except TimeoutError:
        raise ApiError(
            504, f"the request took longer than {state.serve.request_timeout_s:g} s (serve.request_timeout_s)",
            "timeout",
        ) from None


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _error_event(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, RagkitError) and not isinstance(exc, IndexFormatError):
        return error_body(500, f"{type(exc).__name__}: {exc}", "generation_failed")
    logger.error("streamed answer failed", exc_info=exc)
    return error_body(500, "the answer failed; see the server log", "internal_error")


# -- the application ------------------------------------------------------------------------------------------


def create_app(index: Index, *, keyring: KeyRing | None = None, generator: Generator | None = None) -> FastAPI:
    """The FastAPI application serving ``index`` with the settings it was opened with (``[serve]`` included).

    ``keyring``: the API keys (None: every request is ``LOCAL_PRINCIPAL``; bind to loopback only).
    ``generator``: an instance to answer with instead of the configured one (tests).
    The index is not closed by the app: whoever opened it closes it.
    """
    state = ServeState(index, keyring, generator)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warm = asyncio.create_task(_warm_up(state))
        try:
            yield
        finally:
            warm.cancel()
            await state.aclose()

    app = FastAPI(
        title="ragkit",
        summary="Retrieval, cited answers and OpenAI-compatible chat over a ragkit index",
        lifespan=lifespan,
        openapi_url="/openapi.json",
    )
    app.state.ragkit = state
    _install_error_handlers(app)
    app.add_middleware(RequestMetrics, metrics=state.metrics)  # type: ignore[arg-type]
    app.add_middleware(BodyLimit, max_bytes=state.serve.max_body_bytes)  # type: ignore[arg-type]
    _add_routes(app, state)
    _add_web_routes(app, state)
    app.include_router(documents_router(index=index, jobs=state.jobs, authorize=authorize))
    return app


async def _warm_up(state: ServeState) -> None:
    try:
        await asyncio.get_running_loop().run_in_executor(None, state.warm_up)
    except Exception as exc:  # readyz says why; the operator sees it in the log
        state.not_ready = f"the warm-up failed: {type(exc).__name__}: {exc}"
        logger.error("ragkit serve: %s", state.not_ready, exc_info=exc)
        return
    state.ready = True
    logger.info("ragkit serve: ready")


def _add_routes(app: FastAPI, state: ServeState) -> None:
    read = Depends(authorize("read"))

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: 200 while the process is up (even while the embedder is still loading)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Readiness: 200 once the index is open, the embedder loaded and a warm-up query answered; 503 before
        (or when the warm-up failed, saying why)."""
        if not state.ready:
            return JSONResponse(error_body(503, state.not_ready, "not_ready"), 503, {"Retry-After": "1"})
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["health"])
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (text exposition; OpenMetrics when the scraper asks for it). They include
        index-wide counts, so with ``serve.metrics_access = "loopback"`` (the default) only loopback clients may
        read them."""
        if state.serve.metrics_access == "loopback" and not _loopback(request):
            raise ApiError(403, "metrics are served to loopback clients only (serve.metrics_access)", "forbidden")
        body, content_type = await asyncio.to_thread(state.metrics.render, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.post("/v1/retrieve", tags=["retrieval"])
    async def retrieve(body: RetrieveRequest, request: Request, principal: Principal = read) -> dict[str, Any]:
        """The top ``k`` chunks for ``query``, or for each of ``queries``, in ``mode``, filtered by ``where``
        (and always by the key's tenant). Hits have the fields of ``ragkit ask --json``'s hits.

        ``{"query": "who founded it?", "k": 5, "mode": "hybrid"}`` -> ``{"query", "mode", "k", "hits": [...]}``;
        ``{"queries": [...]}`` -> ``{"mode", "k", "results": [{"query", "hits": [...]}, ...]}``.
        """
        mode, k = state.mode(body.mode), state.k(body.k)
        request.state.mode = mode
        queries = [body.query] if body.query is not None else list(body.queries or [])
        found = await _within(
            state, state.retrieve(principal, queries, k=k, mode=mode, where=body.where, rerank=body.rerank)
        )
        if body.query is not None:
            return {"query": body.query, "mode": mode, "k": k, "hits": hits_json(found[0])}
        return {
            "mode": mode,
            "k": k,
            "results": [{"query": q, "hits": hits_json(h)} for q, h in zip(queries, found, strict=True)],
        }

    @app.post("/v1/ask", tags=["answers"], response_model=None)
    async def ask(body: AskRequest, request: Request, principal: Principal = read) -> dict[str, Any] | Response:
        """A cited answer: ``{"id", "question", "answer", "citations", "hits", "degraded", "reason",
        "unsupported", "generator", "mode", "timings_ms"}`` (``[n]`` in ``answer`` is ``citations[n-1]``).

        With ``"stream": true``: server-sent events, ``data: {"delta": "..."}`` as the generator writes, then
        ``data: {"answer": {...}}`` (the object above; its text checked against the sources, so it may differ
        from the joined deltas), then ``data: [DONE]``. A generator that fails or is too slow gives the
        extractive answer, ``degraded: true`` with the ``reason``.
        """
        mode = state.mode(body.mode)
        request.state.mode = mode
        started = time.perf_counter()
        hits = (await _within(state, state.retrieve(principal, [body.question], k=body.k, mode=mode,
                                                    where=body.where, rerank=body.rerank)))[0]
        retrieved = time.perf_counter()
        answer_id = f"ans_{uuid.uuid4().hex}"

        def payload(answer: Answer) -> dict[str, Any]:
            state.remember(answer_id, principal, answer)
            timings = {"retrieve": (retrieved - started) * 1000, "answer": (time.perf_counter() - retrieved) * 1000}
            return {"id": answer_id, **answer_json(body.question, answer, hits), "mode": mode,
                    "timings_ms": {key: round(value, 2) for key, value in timings.items()}}

        if not body.stream:
            return payload(await _within(state, state.answer(body.question, hits)))

        async def events() -> AsyncIterator[str]:
            async for kind, value in state.stream(body.question, hits):
                if kind == "delta":
                    yield _sse({"delta": value})
                elif kind == "answer":
                    yield _sse({"answer": payload(value)})
                else:
                    yield _sse(_error_event(value))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.get("/v1/models", tags=["openai"])
    async def models(principal: Principal = read) -> dict[str, Any]:
        """OpenAI-compatible model list: ``ragkit`` (the index's default retrieval mode) and ``ragkit-<mode>``
        for every retrieval mode."""
        names = [MODEL_PREFIX] + [f"{MODEL_PREFIX}-{mode}" for mode in retrieval_modes.names()]
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": state.started, "owned_by": "ragkit"} for name in names],
        }

    @app.post("/v1/chat/completions", tags=["openai"], response_model=None)
    async def chat(
        body: ChatCompletionRequest, request: Request, principal: Principal = read
    ) -> dict[str, Any] | Response:
        """OpenAI-compatible chat completions over the index: point any OpenAI client's base URL here.

        The model picks the retrieval mode (``ragkit``: the index's default; ``ragkit-hybrid``...). The last
        user message is the question; the earlier user and assistant turns go to the generator as conversation
        (when it takes one: the extractive generator does not). Citations ride in the text as ``[n]``, in
        ``message.citations`` (``[n]`` is entry n), and ``ragkit`` holds the hits, ``degraded`` and
        ``unsupported``. ``k`` and ``where`` may be sent as extra body fields. Sampling options are ignored.
        With ``stream: true``: ``chat.completion.chunk`` events, the last one carrying ``citations`` in its delta
        and the ``ragkit`` object, then ``data: [DONE]``.
        """
        mode = _model_mode(state, body.model)
        request.state.mode = mode
        question, history = _conversation(body)
        hits = (await _within(state, state.retrieve(principal, [question], k=body.k, mode=mode,
                                                    where=body.where)))[0]
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        prompt_tokens = approx_token_count(question) + sum(approx_token_count(t["content"]) for t in history)

        def extra(answer: Answer) -> dict[str, Any]:
            state.remember(completion_id, principal, answer)
            details = answer_json(question, answer, hits)
            return {key: details[key] for key in ("degraded", "reason", "unsupported", "generator", "hits")}

        if not body.stream:
            answer = await _within(state, state.answer(question, hits, history))
            completion_tokens = approx_token_count(answer.text)
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": body.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text, "citations": citations_json(answer)},
                    "finish_reason": "stop",
                    "logprobs": None,
                }],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "ragkit": extra(answer),
            }

        def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> str:
            return _sse({
                "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **more,
            })

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            async for kind, value in state.stream(question, hits, history):
                if kind == "delta":
                    yield chunk({"content": value})
                elif kind == "answer":
                    yield chunk({"citations": citations_json(value)}, "stop", ragkit=extra(value))
                else:
                    yield _sse(_error_event(value))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post("/v1/feedback", tags=["answers"])
    async def feedback(body: FeedbackRequest, principal: Principal = read) -> dict[str, Any]:
        """Which chunks of an answer were relevant: feeds the live hit-rate metric
        (``ragkit_feedback_hit_rate``: the share of feedback where a cited chunk was relevant).

        ``{"answer_id": "ans_...", "relevant": ["<chunk id>"]}`` (the answer's cited chunks are remembered), or
        ``{"query": "...", "cited": [...], "relevant": [...]}``. A chunk id the key's tenant cannot see is
        unknown (404), exactly as one that does not exist.
        """
        cited: set[str] = set(body.cited or ())
        if body.answer_id is not None:
            remembered = state.recalled(body.answer_id, principal)
            if remembered is None:
                raise ApiError(404, f"unknown answer id {body.answer_id!r}", "unknown_answer")
            if body.cited is None:
                cited = set(remembered)
        wanted = cited | set(body.relevant)
        visible = await asyncio.to_thread(state.visible_chunks, principal, wanted)
        unknown = sorted(wanted - visible)
        if unknown:
            shown = ", ".join(repr(cid) for cid in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise ApiError(404, f"unknown chunk id(s): {shown}", "unknown_chunk")
        relevant_cited = cited & set(body.relevant)
        state.metrics.record_feedback(cited, body.relevant)
        return {"recorded": True, "cited": len(cited), "relevant_cited": len(relevant_cited)}


# -- the web page (issue 19) ------------------------------------------------------------------------------------

WEB_DIR = Path(__file__).parent / "web"
"""The page's static files (``index.html``, ``app.js``, ``style.css``): package data, served by ragkit itself."""

WEB_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
"""Content types by suffix, fixed here rather than guessed from the platform's MIME table (which maps ``.js`` to
``text/plain`` on some systems, and then browsers refuse the script)."""

WEB_FILE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")  # one name in WEB_DIR: no folders, no ``..``
PAGE_HEADERS = {
    # everything comes from the server itself; the eval plot is fetched with the key and shown as a blob: URL
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
REPORTS_DIR = "reports"
REPORT_FILE = "report.json"
REPORT_PLOT = "recall_at_k.png"
PLOT_URL = "/v1/index/report/plot"


def latest_report(index_dir: Path) -> Path | None:
    """The newest ``report.json`` under ``<index>/reports/`` (``reports/report.json`` or
    ``reports/<run>/report.json``, as ``ragkit eval --report <index>/reports/<run>`` writes it), by modification
    time; None when there is none. A link that leads out of ``reports/`` is ignored: the page serves nothing from
    outside the index directory."""
    root = index_dir / REPORTS_DIR
    if not root.is_dir():
        return None
    base = root.resolve()
    found: list[tuple[float, str, Path]] = []
    for path in [root / REPORT_FILE, *root.glob(f"*/{REPORT_FILE}")]:
        try:
            real = path.resolve(strict=True)
            if real.is_relative_to(base) and real.is_file():
                found.append((real.stat().st_mtime, str(path), real))
        except OSError:
            continue
    return max(found)[2] if found else None


def report_summary(report: Path, index_dir: Path, *, tenant: str | None) -> dict[str, Any]:
    """What ``GET /v1/index`` says of an eval report: its place under the index directory, when it was written,
    the dataset, and the per-mode ``results`` (the report's main table), or ``error`` when it cannot be read.

    A tenant's key is not shown ``passages`` (for a gold file evaluated against the served index, that is the
    index-wide count) nor ``unmatched_gold`` (ids that may be another tenant's); the metrics are aggregates."""
    shown = report.relative_to(index_dir.resolve()).as_posix()
    try:
        # NaN and Infinity (a hand-edited file) become null: the response must stay valid JSON
        data = json.loads(report.read_text(encoding="utf-8"), parse_constant=lambda _: None)
        modified = report.stat().st_mtime
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return {"path": shown, "error": f"the report could not be read ({type(exc).__name__})"}
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        return {"path": shown, "error": "not a ragkit eval report (no 'results' object)"}
    summary: dict[str, Any] = {
        "path": shown,
        "modified": datetime.fromtimestamp(modified, UTC).isoformat(timespec="seconds"),
        "dataset": data.get("dataset"),
        "queries": data.get("queries"),
        "results": data["results"],
        "plot": PLOT_URL if (report.parent / REPORT_PLOT).is_file() else None,
    }
    if tenant is None:
        summary["passages"] = data.get("passages")
        summary["unmatched_gold"] = len(data.get("unmatched_gold") or ())
    return summary


def _shown_name(name: str | None) -> str | None:
    """A model name as the page shows it: a local path is reduced to its last part (the server's own folders are
    none of the client's business); a hub name such as ``sentence-transformers/all-MiniLM-L6-v2`` stays."""
    if name is None:
        return None
    if name.startswith(("/", "~", ".", "\\")) or re.match(r"[A-Za-z]:[\\/]", name):
        return Path(name.replace("\\", "/")).name or name
    return name


def public_settings(state: ServeState) -> dict[str, Any]:
    """The settings the page shows, chosen field by field: never an API key, a token, a server URL or a path."""
    manifest, settings = state.index.manifest, state.settings
    chunking = manifest.chunking
    return {
        "embedder": {"model": _shown_name(manifest.embedder), "dimension": manifest.dimension},
        "chunking": {key: chunking.get(key) for key in ("strategy", "max_tokens", "overlap", "max_chars")},
        "vectors": {key: manifest.vectors.get(key) for key in ("backend", "kind", "shards")},
        "graph": manifest.graph,
        "retrieval": {
            "mode": settings.retrieval.mode,
            "k": settings.retrieval.k,
            "max_k": state.serve.max_k,
            "rerank": _shown_name(settings.retrieval.rerank),
            "modes": retrieval_modes.names(),
        },
        "generator": {"name": state.generator.name},
        "grounding": {"enabled": settings.grounding.enabled},
    }


def index_overview(state: ServeState, principal: Principal) -> dict[str, Any]:
    """The body of ``GET /v1/index`` (see the route); runs on a worker thread (SQLite, files)."""
    index = state.index
    tenant = principal.tenant
    if tenant is None:
        counts: dict[str, int | None] = dict(index.catalog.counts())
        graph = index.graph_stats()
        counts["entities"] = graph["entities"] if graph is not None else None
        counts["relations"] = graph["relations"] if graph is not None else None
    else:
        # entities and relations are index-wide (one graph over every tenant's documents): their counts would
        # tell a tenant about the others' documents, so a tenant's key is not shown them
        counts = {**index.catalog.count_documents({TENANT_TAG: tenant}), "entities": None, "relations": None}
    report = latest_report(index.path)
    return {
        "tenant": tenant,
        "key": principal.name if state.keyring is not None else None,
        "counts": counts,
        "counts_scope": "index" if tenant is None else "tenant",
        "settings": public_settings(state),
        "report": report_summary(report, index.path, tenant=tenant) if report is not None else None,
    }


def _add_web_routes(app: FastAPI, state: ServeState) -> None:
    """``/`` (the page), ``/static/<file>`` (its script and style), ``GET /v1/index`` and the eval plot. The page
    and its files need no key (they hold no data); everything under ``/v1`` does, as every other route."""
    read = Depends(authorize("read"))

    @app.get("/", tags=["web"], include_in_schema=False)
    async def page() -> FileResponse:
        """The web page: ask, documents, index (``ragkit/serve/web/index.html``)."""
        return FileResponse(WEB_DIR / "index.html", media_type=WEB_TYPES[".html"], headers=PAGE_HEADERS)

    @app.get("/static/{name:path}", tags=["web"], include_in_schema=False)
    async def static(name: str) -> FileResponse:
        """One file of the page's folder, by its plain name; anything else (a folder, ``..``, an unknown
        suffix, a missing file) is a 404."""
        path = WEB_DIR / name
        media = WEB_TYPES.get(path.suffix)
        if not WEB_FILE.fullmatch(name) or media is None or not path.is_file():
            raise ApiError(404, f"no such file: /static/{name}", "not_found")
        return FileResponse(path, media_type=media, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/web/auth", tags=["web"], include_in_schema=False)
    async def web_auth() -> dict[str, bool]:
        """Whether ``/v1`` needs a key: the page asks for one before its first request rather than after a 401
        (which browsers log as an error). It tells nothing that a 401 would not."""
        return {"keys": state.keyring is not None}

    @app.get("/v1/index", tags=["web"])
    async def index_info(principal: Principal = read) -> dict[str, Any]:
        """What the page's Index tab shows: ``counts`` (documents, chunks, entities, relations), the index's
        ``settings`` (models, chunking, vector backend, retrieval and generator: no keys, tokens, URLs or paths)
        and ``report``, the latest ``ragkit eval`` report found under ``<index>/reports/`` (None when there is
        none; write one with ``ragkit eval GOLD --index DIR --report DIR/reports/RUN``).

        With a tenant's key the counts are that tenant's documents and chunks; ``entities`` and ``relations``
        (one graph over every tenant) are null, as are the report's index-wide figures.

        curl -H "Authorization: Bearer $KEY" $URL/v1/index
        """
        return await asyncio.to_thread(index_overview, state, principal)

    @app.get(PLOT_URL, tags=["web"], response_class=FileResponse)
    async def report_plot(principal: Principal = read) -> FileResponse:
        """The recall@k plot (PNG) of the report ``GET /v1/index`` names; 404 when there is none."""
        report = await asyncio.to_thread(latest_report, state.index.path)
        plot = report.parent / REPORT_PLOT if report is not None else None
        if plot is None or not plot.is_file():
            raise ApiError(404, "no eval report with a plot under the index's reports/ folder", "not_found")
        return FileResponse(plot, media_type="image/png", headers={"Cache-Control": "no-cache"})


def _model_mode(state: ServeState, model: str) -> str:
    """The retrieval mode a chat model name picks; 404 ``model_not_found`` (as OpenAI answers) otherwise."""
    if model == MODEL_PREFIX:
        return state.settings.retrieval.mode
    mode = model.removeprefix(f"{MODEL_PREFIX}-")
    if model.startswith(f"{MODEL_PREFIX}-") and mode in retrieval_modes.names():
        return mode
    names = ", ".join([MODEL_PREFIX] + [f"{MODEL_PREFIX}-{m}" for m in retrieval_modes.names()])
    raise ApiError(404, f"the model {model!r} does not exist (models: {names})", "model_not_found")


def _conversation(body: ChatCompletionRequest) -> tuple[str, list[dict[str, str]]]:
    """The question (the last user message) and the user and assistant turns before it."""
    last = next((i for i in range(len(body.messages) - 1, -1, -1) if body.messages[i].role == "user"), None)
    if last is None:
        raise ApiError(400, "messages: no user message to answer", "no_user_message")
    question = body.messages[last].text().strip()
    if not question:
        raise ApiError(400, f"messages[{last}]: the last user message is empty", "empty_question")
    history = [
        {"role": message.role, "content": message.text()}
        for message in body.messages[:last]
        if message.role in ("user", "assistant") and message.text().strip()
    ]
    return question, history


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return host == "localhost" or ip_address(host).is_loopback
    except ValueError:
        return False


# -- errors -----------------------------------------------------------------------------------------------------

HTTP_CODES = {
    400: "invalid_request", 401: "invalid_api_key", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "body_too_large", 415: "unsupported_media_type", 422: "invalid_request",
    429: "rate_limited", 503: "not_ready",
}


def _error(status: int, message: str, code: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status, dict(headers or {}))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, *_describe_validation(request, exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, default=str)
        cause = exc.__cause__
        if isinstance(cause, UnicodeDecodeError):
            message = f"the request body is not valid UTF-8 ({cause.reason} at byte {cause.start})"
        elif exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return _error(exc.status_code, message, HTTP_CODES.get(exc.status_code, "error"), exc.headers)

    @app.exception_handler(RateLimited)
    async def rate_limited(request: Request, exc: RateLimited) -> JSONResponse:
        retry = max(1, math.ceil(exc.retry_after))
        return _error(429, str(exc), f"rate_limited_{exc.reason}", {"Retry-After": str(retry)})

    @app.exception_handler(RagkitError)
    async def ragkit_error(request: Request, exc: RagkitError) -> JSONResponse:
        if isinstance(exc, ConfigError):  # the server's own paths are none of the client's business
            where = str(_state(request).index.path)
            message = str(exc).replace(f"{where}: ", "").replace(where, "the index")
            return _error(400, message, "invalid_request")
        if isinstance(exc, IndexClosedError):
            return _error(503, "the index is closed (the server is shutting down)", "index_closed")
        if isinstance(exc, GeneratorError):
            return _error(502, str(exc), "generator_failed")
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "the index could not answer; see the server log", "index_error")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error; see the server log", "internal_error")


def _describe_validation(request: Request, errors: Sequence[Any]) -> tuple[str, str]:
    """A validation failure as (message, code): which field, what is wrong; the input is not echoed."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "malformed")
        return f"the request body is not valid JSON ({reason} at character {first['loc'][-1]})", "invalid_json"
    content_type = request.headers.get("content-type", "")
    if first.get("loc") == ("body",) and "json" not in content_type:
        return (
            "the request body must be a JSON object sent with 'Content-Type: application/json' "
            f"(got {content_type or 'no content type'})",
            "invalid_request",
        )
    problems = []
    for error in errors[:10]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        problems.append(f"{location}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return "invalid request: " + "; ".join(problems) + more, "invalid_request"


# -- middleware -------------------------------------------------------------------------------------------------


class BodyLimit:
    """413 with the JSON error body for a request body over ``max_bytes``: at once when ``Content-Length`` says
    so, else as soon as the bytes read pass it (a chunked upload)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"the request body is larger than {self.max_bytes} bytes (serve.max_body_bytes)"
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _error(400, "Content-Length is not a number", "invalid_request")(scope, receive, send)
                return
            if length > self.max_bytes:
                await _error(413, too_large, "body_too_large", {"Connection": "close"})(scope, receive, send)
                return
        read = 0

        async def limited() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_bytes:  # an HTTPException: FastAPI lets it through its body parsing
                    raise StarletteHTTPException(413, too_large)
            return message

        await self.app(scope, limited, send)


class RequestMetrics:
    """Every request's latency, by endpoint (the route's path template), mode (set by the route) and status,
    timed to the end of its response body (a streamed answer included)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        shared = scope.setdefault("state", {})

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            mode = shared.get("mode", "") if isinstance(shared, dict) else ""
            self.metrics.request(endpoint, str(mode), status, time.perf_counter() - started)

