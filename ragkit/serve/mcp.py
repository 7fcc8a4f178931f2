"""``ragkit mcp``: an index as an MCP server over stdio, with ``retrieve`` and ``ask`` tools.

An MCP client (Claude Desktop, an IDE agent, the ``mcp`` SDK's own ``ClientSession``) starts
``ragkit mcp --index DIR`` as a subprocess and speaks JSON-RPC over its stdin and stdout, so stdout carries the
protocol and nothing else: logs and any stray output go to stderr. Built on the official SDK's ``MCPServer``.

Tools (each returns structured content for programs and a text block for the model):

- ``retrieve(query, k, mode, where)``: the hits, exactly as ``ragkit ask --json`` writes them
  (``ragkit.serve.schemas.hit_json``);
- ``ask(question, k, mode, where)``: the grounded answer with ``[n]`` citations (``Index.ask`` with the
  configured generator; a failing model degrades to the extractive answer, flagged).

and a resource, ``ragkit://index/stats`` (``Index.stats()`` as JSON). Bad arguments (``k`` out of range, an unknown
mode, an empty query) come back as tool errors naming the problem; the session goes on.

Example client configuration (Claude Desktop's ``mcpServers``)::

    {"ragkit": {"command": "ragkit", "args": ["mcp", "--index", "/path/to/index"]}}
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from ragkit import __version__, registry
from ragkit.config import Settings
from ragkit.errors import RagkitError
from ragkit.index import Index
from ragkit.protocols import Generator
from ragkit.serve.schemas import citations_json, hits_json
from ragkit.types import Answer, Hit

MAX_K = 100  # a tool result is read by a model: more passages than this only fill its context
STATS_URI = "ragkit://index/stats"

T = TypeVar("T")


# -- what the tools return (their output schemas) ------------------------------------------------------------


class RetrievedHit(BaseModel):
    """One passage, in the fields of a ``ragkit ask --json`` hit."""

    rank: int = Field(description="1 for the best passage")
    chunk_id: str
    doc_id: str
    source: str = Field(description="the file or URL the passage comes from")
    score: float = Field(description="the retriever's score (higher is better; scales differ between modes)")
    retriever: str = Field(description="the retrieval mode that found it")
    text: str
    start: int = Field(description="character offset of the passage in its document")
    end: int
    cited: bool = Field(description="whether an answer cites it (always false for retrieve)")
    explain: dict[str, Any] | None = Field(None, description="why a graph mode chose it (entities, path)")


class RetrieveResult(BaseModel):
    query: str
    mode: str
    hits: list[RetrievedHit]


class Citation(BaseModel):
    number: int = Field(description="[number] in the answer text")
    chunk_id: str
    doc_id: str
    source: str
    text: str = Field(description="the cited passage")


class AskResult(BaseModel):
    question: str
    answer: str = Field(description="the answer text; [n] refers to citations[n-1]")
    generator: str
    degraded: bool = Field(description="true when the configured generator failed and the extractive answer was used")
    reason: str = Field(description="why the answer is degraded (empty when it is not)")
    citations: list[Citation]
    unsupported: list[str] = Field(description="sentences of the answer that no retrieved passage supports")


# -- tool arguments: schemas a model can act on, checked in code so that errors read well -------------------

Query = Annotated[str, Field(description="what to search for, in natural language or keywords")]
Question = Annotated[str, Field(description="the question to answer from the indexed documents")]
K = Annotated[
    int, Field(description=f"how many passages (1 to {MAX_K})", json_schema_extra={"minimum": 1, "maximum": MAX_K})
]
Mode = Annotated[str | None, Field(description="retrieval mode; leave out for the index's default")]
Where = Annotated[
    dict[str, str] | None,
    Field(description='only passages of documents tagged with every KEY: VALUE given, e.g. {"team": "docs"}'),
]


def build_server(index: Index, generator: Generator) -> MCPServer:
    """The MCP server for an open index; ``generator`` answers ``ask`` (built once, so a local model loads once).

    Calls into the index are serialized: the SDK runs each tool call on a worker thread, and one stdio client
    gains nothing from parallel reads of one index, while a lock makes thread safety a non-question.
    """
    settings = index.settings
    modes = registry.retrieval_modes.names()
    default_k, default_mode = settings.retrieval.k, settings.retrieval.mode
    counts = index.catalog.counts()
    lock = threading.Lock()
    server = MCPServer(
        "ragkit",
        title="ragkit index",
        version=__version__,
        instructions=(
            f"Searches and answers questions from a ragkit index of {counts.get('documents', 0)} documents "
            f"({counts.get('chunks', 0)} passages) at {index.path}. Use `retrieve` to find passages to read or "
            "quote (with their sources), `ask` for a short answer that cites its sources as [n]. The resource "
            f"{STATS_URI} describes the index."
        ),
        log_level="WARNING",
    )
    mode_help = (
        f"`mode`: one of {', '.join(modes)} (default {default_mode}): dense finds passages by meaning, bm25 by exact "
        "words (names, codes, error messages), hybrid combines both, graph/multihop/graph_hybrid follow entities "
        "across documents (multi-hop questions), auto picks per query."
    )
    read_only = ToolAnnotations(read_only_hint=True, idempotent_hint=True, destructive_hint=False)

    def locked(call: Callable[[], T]) -> T:
        """Run ``call`` on the index under the lock; a ragkit error (bad mode, bad filter) becomes a tool error."""
        with lock:
            try:
                return call()
            except RagkitError as exc:
                raise ToolError(str(exc)) from None

    @server.tool(
        title="Search the index",
        description=(
            "Search the indexed documents and return the passages most relevant to `query`, best first, each with "
            "its source, document id, chunk id, score and text. Use it to gather evidence or quote sources; use "
            f"`ask` for a ready-made cited answer. `k` (1 to {MAX_K}, default {default_k}): how many passages. "
            f"{mode_help} `where`: only passages of documents tagged with every KEY: VALUE given."
        ),
        annotations=read_only,
    )
    def retrieve(
        query: Query, k: K = default_k, mode: Mode = None, where: Where = None
    ) -> Annotated[CallToolResult, RetrieveResult]:
        _check(query, "query", k)
        hits = locked(lambda: index.retrieve(query, k, mode, where))
        result = RetrieveResult.model_validate({"query": query, "mode": mode or default_mode, "hits": hits_json(hits)})
        return _result(result, _hits_text(query, hits))

    @server.tool(
        title="Answer from the index",
        description=(
            "Answer `question` from the indexed documents. The answer cites passages as [n]; `citations[n-1]` is the "
            "source of [n], with its text. `degraded` is true when the configured "
            f"generator ({generator.name}) failed and an extractive answer (sentences quoted from the passages) "
            "was given instead; `unsupported` lists answer sentences no passage supports: do not rely on them. "
            f"`k` (1 to {MAX_K}, default {default_k}): how many passages to answer from. {mode_help} `where`: only "
            "passages of documents tagged with every KEY: VALUE given."
        ),
        annotations=read_only,
    )
    def ask(
        question: Question, k: K = default_k, mode: Mode = None, where: Where = None
    ) -> Annotated[CallToolResult, AskResult]:
        _check(question, "question", k)
        answer = locked(lambda: index.ask(question, k, mode, generator, where))
        return _result(_ask_result(question, answer), _answer_text(answer))

    @server.resource(STATS_URI, name="index-stats", title="Index statistics", mime_type="application/json",
                     description="Documents, chunks, embedder, vector backend and graph size of the served index.")
    def stats() -> str:
        with lock:
            return json.dumps(index.stats(), indent=2, default=str)

    return server


def run_stdio(index_dir: Path, settings: Settings) -> None:
    """Serve the index at ``index_dir`` over stdin/stdout until the client closes stdin.

    The index is opened read-only and its embedder and generator are built before the first message is read, so a
    missing index or a broken model is one clear error at start (``ragkit mcp: error: ...``), not a failing tool.
    Anything printed meanwhile goes to stderr: stdout belongs to the protocol (while serving, the SDK points
    file descriptor 1 at stderr itself).
    """
    from ragkit.connectors.generators import from_settings

    with _stdout_to_stderr():
        index = Index.open(index_dir, settings)
        try:
            _ = index.embedder  # the model loads now, not during the first tool call
            generator = from_settings(settings.generator)
            server = build_server(index, generator)
        except BaseException:
            index.close()
            raise
    with index:
        server.run("stdio")


# -- helpers -------------------------------------------------------------------------------------------------


def _check(text: str, name: str, k: int) -> None:
    """The checks a JSON schema states but the SDK does not enforce, with messages a model can act on."""
    if not text.strip():
        raise ToolError(f"{name} is empty")
    if not 1 <= k <= MAX_K:
        raise ToolError(f"k must be between 1 and {MAX_K} (got {k})")


def _ask_result(question: str, answer: Answer) -> AskResult:
    """``ragkit ask --json``'s answer fields (less the hits: ``Index.ask`` keeps them), each citation with its text."""
    cited = zip(citations_json(answer), answer.citations, strict=True)
    return AskResult.model_validate({
        "question": question,
        "answer": answer.text,
        "generator": answer.generator,
        "degraded": answer.degraded,
        "reason": answer.reason,
        "citations": [{**citation, "text": hit.chunk.text} for citation, hit in cited],
        "unsupported": list(answer.unsupported),
    })


def _result(structured: BaseModel, text: str) -> CallToolResult:
    """Structured content for programs (``explain`` left out when the mode gave none, as in ``ask --json``) and
    a text block for the model."""
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=structured.model_dump(mode="json", exclude_none=True),
    )


def _hits_text(query: str, hits: list[Hit]) -> str:
    """The hits as a model reads them: numbered passages, each under its source."""
    if not hits:
        return f"No passage matches {query!r}."
    blocks = [f"{len(hits)} passage{'s' if len(hits) > 1 else ''} for {query!r}, best first:"]
    for rank, hit in enumerate(hits, start=1):
        blocks.append(
            f"[{rank}] {hit.source}:{hit.chunk.start}-{hit.chunk.end} (doc {hit.chunk.doc_id}, chunk {hit.chunk.id}, "
            f"{hit.retriever} score {hit.score:.3f})\n{hit.chunk.text.strip()}"
        )
    return "\n\n".join(blocks)


def _answer_text(answer: Answer) -> str:
    """The answer, then who answered (and whether it is degraded), the unsupported sentences and the sources."""
    lines = [answer.text.strip() or "(no answer)", ""]
    note = f"answered by {answer.generator}"
    if answer.degraded:
        note += f" (degraded: {answer.reason})" if answer.reason else " (degraded)"
    lines.append(note)
    lines += [f"unsupported by any source: {sentence}" for sentence in answer.unsupported]
    if answer.citations:
        lines.append("Sources:")
        lines += [
            f"[{n}] {h.source}:{h.chunk.start}-{h.chunk.end} (doc {h.chunk.doc_id})"
            for n, h in enumerate(answer.citations, start=1)
        ]
    return "\n".join(lines)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (by Python or by native code) to stderr while the block runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
