"""The JSON that ``ragkit ask --json`` and ``ragkit serve`` speak: hits, answers, requests and the error body.

:func:`hit_json` and :func:`answer_json` are the one definition of a hit and an answer in JSON, so that a hit of
``POST /v1/retrieve`` has exactly the fields of a hit of ``ragkit ask --json``. The request models are pydantic
models in strict mode: a string where a number belongs, an unknown field or an empty question is a 400 naming
the field, never a silent conversion. Only pydantic is imported here (no FastAPI), so the CLI can use it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from ragkit.types import Answer, Hit

MAX_TEXT_CHARS = 20_000  # a query, a question or a chat message; longer is a 400 (embedders truncate anyway)
MAX_MESSAGES = 200
MAX_IDS = 1000  # chunk ids in one feedback

# -- hits and answers -------------------------------------------------------------------------------------------


def hit_json(rank: int, hit: Hit, cited: bool = False) -> dict[str, Any]:
    """One hit as ``ragkit ask --json`` and ``/v1/retrieve`` write it; ``explain`` only when the mode gave one."""
    return {
        "rank": rank,
        "chunk_id": hit.chunk.id,
        "doc_id": hit.chunk.doc_id,
        "source": hit.source,
        "score": hit.score,
        "retriever": hit.retriever,
        "text": hit.chunk.text,
        "start": hit.chunk.start,
        "end": hit.chunk.end,
        "cited": cited,
        **({"explain": dict(hit.explain)} if hit.explain else {}),
    }


def hits_json(hits: Sequence[Hit], cited: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Hits ranked from 1, each marked ``cited`` when its chunk id is in ``cited``."""
    return [hit_json(rank, hit, hit.chunk.id in cited) for rank, hit in enumerate(hits, start=1)]


def citations_json(answer: Answer) -> list[dict[str, Any]]:
    """``[n]`` of the answer's text is entry ``n`` here (``number`` n)."""
    return [
        {"number": n, "chunk_id": h.chunk.id, "doc_id": h.chunk.doc_id, "source": h.source}
        for n, h in enumerate(answer.citations, start=1)
    ]


def answer_json(question: str, answer: Answer, hits: Sequence[Hit]) -> dict[str, Any]:
    """An answer with its citations and the hits it was written from (``ragkit ask --json`` less its timings)."""
    return {
        "question": question,
        "answer": answer.text,
        "generator": answer.generator,
        "degraded": answer.degraded,
        "reason": answer.reason,
        "citations": citations_json(answer),
        "unsupported": list(answer.unsupported),
        "hits": hits_json(hits, frozenset(h.chunk.id for h in answer.citations)),
    }


# -- the error body ---------------------------------------------------------------------------------------------

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "rate_limit_error",
    "server_error",
    "service_unavailable",
    "timeout_error",
]

ERROR_TYPES: dict[int, ErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "code"}}``: the OpenAI API's error shape, which its SDKs parse."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": code}}


# -- requests ---------------------------------------------------------------------------------------------------

Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
TagValue = str | int | float | bool
Where = dict[Annotated[str, StringConstraints(min_length=1, max_length=200)], TagValue]


class _Request(BaseModel):
    """Strict: no type coercion ("5" is not 5), unknown fields are errors that name them."""

    model_config = ConfigDict(extra="forbid", strict=True)


class RetrieveRequest(_Request):
    """``POST /v1/retrieve``: ``query`` (one) or ``queries`` (a batch), not both."""

    query: Text | None = None
    queries: list[Text] | None = Field(None, min_length=1)
    k: int | None = Field(None, description="hits per query (default retrieval.k); 1 to serve.max_k")
    mode: str | None = Field(None, description="a retrieval mode (default retrieval.mode)")
    where: Where | None = Field(None, description="only chunks whose document has these tags")
    rerank: bool | None = Field(None, description="re-score with retrieval.rerank's cross-encoder; None: as set")

    @model_validator(mode="after")
    def _one_of_query_or_queries(self) -> RetrieveRequest:
        if (self.query is None) == (self.queries is None):
            raise ValueError("give either 'query' (one string) or 'queries' (a list of strings), not both")
        return self


class AskRequest(_Request):
    """``POST /v1/ask``."""

    question: Text
    k: int | None = None
    mode: str | None = None
    where: Where | None = None
    rerank: bool | None = None
    stream: bool = Field(False, description="server-sent events: text deltas, then the answer, then [DONE]")


class TextPart(BaseModel):
    """A part of a chat message's content list; only text parts are read."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One turn of an OpenAI chat; fields other clients send (``name``, ``tool_calls``...) are ignored."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)] | list[TextPart] | None = None

    def text(self) -> str:
        """The message's text: the content string, or its text parts joined."""
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content if part.type == "text" and part.text)
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``, as the OpenAI SDKs send it. Sampling options (temperature, max_tokens...)
    are accepted and ignored: the index's generator settings decide them. ``k`` and ``where`` are ragkit's."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = Field(False, strict=True)
    k: int | None = Field(None, strict=True)
    where: Where | None = Field(None, strict=True)


class FeedbackRequest(_Request):
    """``POST /v1/feedback``: which of the chunks an answer cited were relevant.

    Name the answer by ``answer_id`` (the ``id`` of a /v1/ask or chat answer: its cited chunks are known) or by
    ``query``, with ``cited`` listing the chunk ids shown. ``relevant`` lists the chunk ids the user found useful.
    """

    answer_id: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    query: Text | None = None
    cited: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = Field(
        None, max_length=MAX_IDS
    )
    relevant: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(max_length=MAX_IDS)

    @model_validator(mode="after")
    def _names_the_answer(self) -> FeedbackRequest:
        if self.answer_id is None and self.query is None:
            raise ValueError("give 'answer_id' (from /v1/ask or chat) or 'query' with 'cited'")
        if self.answer_id is None and self.cited is None:
            raise ValueError("without 'answer_id', 'cited' must list the chunk ids that were shown")
        return self
