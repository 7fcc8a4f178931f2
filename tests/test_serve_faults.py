"""``ragkit serve`` when its generator backend fails, and when it is told to stop.

The server's generator is ``openai`` with a short ``timeout_s``, pointed at a backend that is down (nothing
listens), slow (answers after the timeout), answers garbage, or asks to be retried later (429 + Retry-After). Each
answer must come within a bounded time, as the extractive answer marked degraded with the reason (or, after a
Retry-After, as the backend's answer, no sooner than it asked), and the server must keep answering. SIGTERM
must let an in-flight request finish, then exit 0.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import build_index, metric_value, sse_payloads, start_ragkit_serve
from servers import FaultServer, Reply, ServerProcess, chat_completion, unused_url

QUESTION = "When was the Eiffel Tower in Paris completed?"
TIMEOUT_S = 1.5  # generator.timeout_s of the servers that must degrade
BOUND_S = 12.0  # how long a degraded answer may take on a busy 2-core machine (timeout + retrieval + slack)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-faults")


@pytest.fixture(scope="module")
def index_dir(workdir: Path) -> Path:
    return build_index(workdir / "index")


def serve_with_backend(index_dir: Path, workdir: Path, base_url: str, timeout_s: float) -> ServerProcess:
    generator = {"name": "openai", "base_url": base_url, "model": "scripted", "timeout_s": timeout_s}
    return start_ragkit_serve(index_dir, workdir, settings={"generator": generator, "serve": {"shutdown_grace_s": 20}})


def ask(server: ServerProcess, **body: Any) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    response = httpx.post(f"{server.base_url}/v1/ask", json={"question": QUESTION, "k": 3, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json(), time.monotonic() - started


def assert_degraded(answer: dict[str, Any], *causes: str) -> None:
    """The extractive answer, flagged degraded, its reason naming one of ``causes``."""
    assert answer["degraded"] is True and answer["generator"] == "extractive"
    assert "openai generator failed" in answer["reason"]
    assert any(cause in answer["reason"] for cause in causes), answer["reason"]
    assert "1889" in answer["answer"] and answer["citations"][0]["doc_id"] == "eiffel"


@pytest.mark.parametrize("scenario", ["down", "slow", "garbage"])
def test_a_failing_backend_gives_a_degraded_extractive_answer_in_bounded_time(
    scenario: str, index_dir: Path, workdir: Path
) -> None:
    replies = {
        "slow": [Reply(body=chat_completion("Too late [1]."), delay_s=8)],
        "garbage": [Reply(body="<html>502 bad gateway, or so</html>", headers={"content-type": "text/html"})],
    }
    backend = FaultServer(replies[scenario]) if scenario in replies else None
    url = backend.base_url if backend else unused_url()
    try:
        with serve_with_backend(index_dir, workdir, url, TIMEOUT_S) as server:
            answer, seconds = ask(server)
            # down: refused connections are retried with backoff, so the timeout may come first
            causes = {"down": ("ConnectError", "TimeoutError"), "slow": ("TimeoutError",), "garbage": ("malformed",)}
            assert_degraded(answer, *causes[scenario])
            assert seconds < BOUND_S
            with httpx.stream("POST", f"{server.base_url}/v1/ask", timeout=60,
                              json={"question": QUESTION, "k": 3, "stream": True}) as response:
                events = sse_payloads(response.iter_lines())
            streamed = events[-1]["answer"]
            assert streamed["degraded"] is True and "".join(e.get("delta", "") for e in events) == streamed["answer"]
            # the server keeps answering, and counts what happened
            retrieved = httpx.post(f"{server.base_url}/v1/retrieve", json={"query": "Eiffel Tower"}, timeout=30)
            assert retrieved.json()["hits"][0]["doc_id"] == "eiffel"
            metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
            assert metric_value(metrics, "ragkit_degraded_answers_total", {"generator": "openai"}) == 2
            assert httpx.get(f"{server.base_url}/readyz", timeout=30).status_code == 200
    finally:
        if backend:
            backend.close()


def test_retry_after_is_honoured_before_the_backends_answer(index_dir: Path, workdir: Path) -> None:
    replies = [
        Reply(status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "2"}),
        Reply(body=chat_completion("The Eiffel Tower was completed in 1889 [1].")),
    ]
    with FaultServer(replies) as backend, serve_with_backend(index_dir, workdir, backend.base_url, 30) as server:
        answer, seconds = ask(server)
        assert answer["degraded"] is False and answer["generator"] == "openai"
        assert answer["answer"] == "The Eiffel Tower was completed in 1889 [1]."
        assert len(backend.requests) == 2
        assert seconds >= 2.0  # without Retry-After the first backoff is at most 0.5 s


def test_sigterm_drains_the_request_in_flight_then_exits_0(index_dir: Path, workdir: Path) -> None:
    replies = [Reply(body=chat_completion("The Eiffel Tower was completed in 1889 [1]."), delay_s=3)]
    with FaultServer(replies) as backend, serve_with_backend(index_dir, workdir, backend.base_url, 30) as server:
        outcome: dict[str, Any] = {}

        def in_flight() -> None:
            try:
                outcome["answer"], outcome["seconds"] = ask(server)
            except BaseException as exc:  # reported by the main thread
                outcome["error"] = exc

        thread = threading.Thread(target=in_flight)
        thread.start()
        deadline = time.monotonic() + 30
        while not backend.requests and time.monotonic() < deadline:  # the answer is being generated
            time.sleep(0.05)
        assert backend.requests, "the request never reached the generator backend"
        os.kill(server.process.pid, signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(f"{server.base_url}/healthz", timeout=5)
        thread.join(timeout=30)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["answer"]["degraded"] is False and outcome["answer"]["generator"] == "openai"
        assert server.process.wait(timeout=30) == 0, server.log_tail()
        assert "Traceback" not in server.log_tail()


def test_request_timeout_and_a_vanished_client_free_their_slot(index_dir: Path, workdir: Path) -> None:
    """With one request admitted at a time, a request past serve.request_timeout_s gets a 504 and a streaming
    client that goes away releases its slot at once: the next request is not kept waiting for the backend."""
    replies = [Reply(body=chat_completion("The Eiffel Tower was completed in 1889 [1]."), delay_s=5)]
    generator = {"name": "openai", "base_url": "", "model": "scripted", "timeout_s": 30}
    with FaultServer(replies) as backend:
        generator["base_url"] = backend.base_url
        settings = {"generator": generator, "serve": {"max_concurrent": 1, "request_timeout_s": 1.0}}
        with start_ragkit_serve(index_dir, workdir, settings=settings) as server:
            started = time.monotonic()
            late = httpx.post(f"{server.base_url}/v1/ask", json={"question": QUESTION}, timeout=30)
            assert late.status_code == 504 and "longer than 1 s" in late.json()["error"]["message"]
            assert time.monotonic() - started < 4
            body = {"question": QUESTION, "stream": True}
            with pytest.raises(httpx.ReadTimeout):  # the client gives up before the first delta, and hangs up
                with httpx.stream("POST", f"{server.base_url}/v1/ask", json=body, timeout=1.0) as response:
                    list(response.iter_lines())
            started = time.monotonic()
            retrieved = httpx.post(f"{server.base_url}/v1/retrieve", json={"query": "Eiffel Tower"}, timeout=30)
            assert retrieved.status_code == 200 and time.monotonic() - started < 2.5
