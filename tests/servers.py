"""Loopback HTTP servers for generator tests: a real OpenAI-compatible model server, and a fault injector.

``start_transformers_serve`` runs ``transformers serve`` (a real OpenAI-compatible server: FastAPI + uvicorn,
real model, real SSE streaming) as a child process on 127.0.0.1 with no hub access. ``FaultServer`` is a tiny
``http.server`` that replays scripted replies (503s, slow answers) to test retries and timeouts only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def unused_url() -> str:
    """A loopback base URL where nothing listens, for unreachable-server tests."""
    return f"http://{LOOPBACK}:{free_port()}/v1"


@dataclass
class ServerProcess:
    """A server child process; ``stop()`` (or leaving the ``with`` block) terminates it."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminate the server (kill it after 15 s) and delete its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_server(
    argv: Sequence[str],
    *,
    base_url: str,
    ready_url: str,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 180.0,
) -> ServerProcess:
    """Start ``argv`` and wait until ``ready_url`` answers 200; on failure, stop it and show its log."""
    log = tempfile.NamedTemporaryFile(prefix="ragkit-server-", suffix=".log", delete=False)
    process = subprocess.Popen(
        list(argv),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    server = ServerProcess(process, base_url, Path(log.name))
    log.close()
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = server.log_tail()
            server.stop()  # nothing left to terminate: this removes the log, already read
            raise RuntimeError(f"server exited with code {process.returncode} before it was ready:\n{tail}")
        try:
            if httpx.get(ready_url, timeout=2.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    tail = server.log_tail()
    server.stop()
    raise RuntimeError(f"server not ready at {ready_url} after {ready_timeout_s:g} s:\n{tail}")


def start_transformers_serve(model_dir: Path, *, ready_timeout_s: float = 180.0) -> ServerProcess:
    """``transformers serve <model_dir>`` on a free loopback port, CPU, offline; the model is preloaded."""
    port = free_port()
    argv = [
        sys.executable,
        "-c",
        "import sys; from transformers.cli.transformers import main; sys.exit(main())",
        "serve",
        str(model_dir),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    root = f"http://{LOOPBACK}:{port}"
    return start_server(
        argv, base_url=f"{root}/v1", ready_url=f"{root}/health", env=env, ready_timeout_s=ready_timeout_s
    )


@dataclass(frozen=True)
class Reply:
    """One scripted reply: status, JSON (or raw text) body, headers, and a delay before answering."""

    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class FaultServer:
    """A loopback HTTP server that answers requests with ``replies`` in order (the last one repeats).

    It records every request as ``(method, path, json_body, headers)`` in ``requests``. For retry, timeout and
    error-path tests only; the real generation tests use :func:`start_transformers_serve`.
    """

    def __init__(self, replies: Sequence[Reply]) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[str, str, Any, dict[str, str]]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                with owner._lock:
                    body = json.loads(raw) if raw else None
                    headers = {key.lower(): value for key, value in self.headers.items()}
                    owner.requests.append((self.command, self.path, body, headers))
                    index = min(len(owner.requests), len(owner.replies)) - 1
                reply = owner.replies[index]
                time.sleep(reply.delay_s)
                data = reply.body.encode() if isinstance(reply.body, str) else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", reply.headers.get("content-type", "application/json"))
                    self.send_header("content-length", str(len(data)))
                    for key, value in reply.headers.items():
                        if key.lower() != "content-type":
                            self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            do_GET = do_POST = _handle

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://{LOOPBACK}:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def chat_completion(content: str, model: str = "scripted") -> dict[str, Any]:
    """A minimal chat-completions response body, as the OpenAI API documents it."""
    return {
        "id": "scripted",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
    }


def shared_cache_root(tmp_path_factory: Any) -> Path:
    """One ragkit cache for the whole test session, so every module reuses the same converted SmolLM2."""
    return Path(tmp_path_factory.getbasetemp()) / "ragkit-cache"
