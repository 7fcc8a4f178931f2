"""Helpers of the ``ragkit serve`` tests: a tiny two-tenant index, the real server as a child process on a free
loopback port (ready when ``/readyz`` says so), a scripted OpenAI-compatible backend, and SSE reading.

>>> index = build_index(tmp_path / "idx")
>>> with start_ragkit_serve(index, tmp_path, settings={"serve": {"max_wait_ms": 20}}) as server:
...     httpx.post(f"{server.base_url}/v1/retrieve", json={"query": "Eiffel Tower"}).json()
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from servers import LOOPBACK, ServerProcess, free_port, start_server

from ragkit import Index
from ragkit.testing import HashingEmbedder
from ragkit.types import Document

ACME, GLOBEX = "acme", "globex"

# (doc id, tenant, text): words rarely shared, so a query's own document ranks first with the hashing embedder
CORPUS: tuple[tuple[str, str, str], ...] = (
    ("sourdough", ACME, "Sourdough bread rises because wild yeast and lactic bacteria ferment the dough overnight."),
    ("eiffel", ACME, "The Eiffel Tower in Paris was completed in 1889 for the World's Fair."),
    ("etna", ACME, "Mount Etna on Sicily is one of the most active volcanoes in Europe."),
    ("photosynthesis", GLOBEX, "Photosynthesis in green leaves turns sunlight into chemical energy stored as sugar."),
    ("vault", GLOBEX, "Globex keeps its quarterly revenue forecast in the vault below the Eiffel office."),
)


def build_index(path: Path, corpus: Sequence[tuple[str, str, str]] = CORPUS) -> Path:
    """An index of ``corpus`` (each document tagged ``tenant``) with the hashing embedder and no graph: built in
    well under a second, and a server process reopens it through the embedder registry (``hashing-64``)."""
    with Index.create(path, embedder=HashingEmbedder(64), graph=False) as index:
        for tenant in sorted({tenant for _, tenant, _ in corpus}):
            documents = [
                Document(id=doc_id, text=text, source=f"{doc_id}.txt", title="")
                for doc_id, owner, text in corpus
                if owner == tenant
            ]
            index.add_documents(documents, meta={"tenant": tenant})
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_config(path: Path, settings: Mapping[str, Mapping[str, Any]]) -> Path:
    """A ragkit.toml of ``{section: {key: value}}``; the generator is extractive unless set (no torch import)."""
    sections = {"generator": {"name": "extractive"}, **{k: dict(v) for k, v in settings.items()}}
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_ragkit_serve(
    index: Path,
    workdir: Path,
    *,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    keys: Path | None = None,
    args: Sequence[str] = (),
    ready_timeout_s: float = 120.0,
) -> ServerProcess:
    """``python -m ragkit.cli serve`` on a free loopback port with a ragkit.toml written in ``workdir``;
    returns once ``/readyz`` answers 200 (``base_url`` is the server's root, without ``/v1``)."""
    port = free_port()
    config = write_config(workdir / f"ragkit-{port}.toml", settings or {})
    argv = [sys.executable, "-m", "ragkit.cli", "serve", "--index", str(index), "--port", str(port),
            "--config", str(config), *(["--keys", str(keys)] if keys else []), *args]
    root = f"http://{LOOPBACK}:{port}"
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return start_server(argv, base_url=root, ready_url=f"{root}/readyz", env=env, ready_timeout_s=ready_timeout_s)


def sse_payloads(lines: Iterable[str]) -> list[Any]:
    """The JSON payloads of server-sent ``data:`` lines, up to ``data: [DONE]`` (which must come)."""
    payloads = []
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return payloads
        payloads.append(json.loads(data))
    raise AssertionError(f"the stream ended without data: [DONE] after {len(payloads)} events")


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of the samples of ``name`` in Prometheus text whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
                found = True
    if not found:
        raise AssertionError(f"no sample {name}{dict(labels or {})} in the metrics")
    return total


@dataclass
class BackendRequest:
    path: str
    body: Any


class ChatBackend:
    """A scripted OpenAI-compatible chat server on loopback: answers every chat completion with ``answer``
    (as one JSON body, or word by word as server-sent events when ``stream`` is asked) and records each
    request's body. For testing what ``ragkit serve`` sends its generator backend, not generation itself."""

    def __init__(self, answer: str, model: str = "scripted") -> None:
        self.answer = answer
        self.model = model
        self.requests: list[BackendRequest] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _json(self, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._json({"object": "list", "data": [{"id": owner.model, "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                owner.requests.append(BackendRequest(self.path, body))
                if not (isinstance(body, dict) and body.get("stream")):
                    self._json(owner.completion())
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                for piece in owner.pieces():
                    chunk = {"id": "s", "object": "chat.completion.chunk", "model": owner.model,
                             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://{LOOPBACK}:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, name="chat-backend", daemon=True)
        self._thread.start()

    def pieces(self) -> Iterator[str]:
        words = self.answer.split(" ")
        for i, word in enumerate(words):
            yield word if i == 0 else " " + word

    def completion(self) -> dict[str, Any]:
        return {
            "id": "scripted", "object": "chat.completion", "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.answer},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
        }

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ChatBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
