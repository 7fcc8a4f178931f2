"""``ragkit serve`` through HTTP: the real server in a child process on loopback, over a tiny two-tenant index.

Checked: health and readiness; /v1/retrieve (one query, a batch, every mode, ``where``) with hits exactly as
``ragkit ask --json`` writes them; /v1/ask (cited, streamed as server-sent events); OpenAI-shaped chat with the
extractive generator; hostile requests answered with a 4xx JSON error naming the problem, the server answering
correctly afterwards; the body limit; feedback and the Prometheus metrics; concurrent queries coalesced into
batches; an index changed by ``ragkit index`` in another process served without a restart; API keys, scopes and
tenants; refusing a public address without keys.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_run import run_ragkit
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_helpers import ACME, CORPUS, GLOBEX, build_index, metric_value, sse_payloads, start_ragkit_serve
from servers import ServerProcess

from ragkit import Index
from ragkit.errors import EmbedderMismatchError
from ragkit.serve.batching import MicroBatcher, SerializedEmbedder
from ragkit.testing import HashingEmbedder

SETTINGS = {"serve": {"max_wait_ms": 25, "max_body_bytes": 65536, "max_k": 20}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-api")


@pytest.fixture(scope="module")
def index_dir(workdir: Path) -> Path:
    return build_index(workdir / "index")


@pytest.fixture(scope="module")
def server(index_dir: Path, workdir: Path) -> Iterator[ServerProcess]:
    with start_ragkit_serve(index_dir, workdir, settings=SETTINGS) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        yield http


def doc_ids(hits: list[dict[str, Any]]) -> list[str]:
    return [hit["doc_id"] for hit in hits]


def assert_error(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """A JSON error body of the OpenAI shape with this status, whose message names ``words``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert "Traceback" not in error["message"]
    for word in words:
        assert word.lower() in error["message"].lower(), error["message"]
    return dict(error)


# -- health, retrieve, ask --------------------------------------------------------------------------------------


def test_health_readiness_and_model_list(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    models = client.get("/v1/models").json()
    ids = [model["id"] for model in models["data"]]
    assert models["object"] == "list" and ids[0] == "ragkit"
    assert {"ragkit-dense", "ragkit-bm25", "ragkit-hybrid", "ragkit-multihop"} <= set(ids)


def test_retrieve_hits_are_those_of_ragkit_ask_json(client: httpx.Client, index_dir: Path, workdir: Path) -> None:
    question = "When was the Eiffel Tower in Paris completed?"
    served = client.post("/v1/retrieve", json={"query": question}).json()
    cli = run_ragkit("ask", question, "--json", "--index", index_dir, "--config", next(workdir.glob("ragkit-*.toml")),
                     cwd=workdir)
    assert cli.returncode == 0, cli.stderr
    asked = json.loads(cli.stdout)["hits"]
    assert doc_ids(served["hits"])[0] == "eiffel"
    assert served["k"] == len(asked) == 5 and served["mode"] == "auto"
    # the same hits, field for field (``cited`` says whether the CLI's answer cited it; a retrieval cites nothing)
    assert [{**h, "cited": False} for h in asked] == served["hits"]


def test_retrieve_a_batch_in_every_mode_and_with_where(client: httpx.Client) -> None:
    queries = ["sourdough wild yeast ferment", "active volcanoes Sicily", "sunlight chemical energy leaves"]
    for mode in ("dense", "bm25", "hybrid", "auto"):
        response = client.post("/v1/retrieve", json={"queries": queries, "k": 2, "mode": mode})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["query"] for r in results] == queries
        assert [doc_ids(r["hits"])[0] for r in results] == ["sourdough", "etna", "photosynthesis"], mode
        assert all(1 <= len(r["hits"]) <= 2 for r in results)  # bm25 leaves out chunks sharing no word
    only = client.post("/v1/retrieve", json={"query": "Eiffel Tower", "where": {"tenant": GLOBEX}}).json()
    assert set(doc_ids(only["hits"])) <= {"photosynthesis", "vault"} and doc_ids(only["hits"])[0] == "vault"
    one = client.post("/v1/retrieve", json={"query": "Eiffel Tower", "where": {"doc_id": "etna"}}).json()
    assert doc_ids(one["hits"]) == ["etna"]


def test_ask_answers_with_citations_and_streams_the_same_answer(client: httpx.Client) -> None:
    question = "Which volcano on Sicily is active?"
    answer = client.post("/v1/ask", json={"question": question, "k": 3}).json()
    assert answer["id"].startswith("ans_") and answer["question"] == question
    assert "Etna" in answer["answer"] and "[1]" in answer["answer"]
    assert answer["citations"][0] == {"number": 1, "chunk_id": answer["hits"][0]["chunk_id"], "doc_id": "etna",
                                      "source": "etna.txt"}
    assert answer["degraded"] is False and answer["generator"] == "extractive"
    assert [h["cited"] for h in answer["hits"]][0] is True

    with client.stream("POST", "/v1/ask", json={"question": question, "k": 3, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_payloads(response.iter_lines())
    deltas = [e["delta"] for e in events if "delta" in e]
    final = events[-1]["answer"]
    assert deltas and "".join(deltas) == final["answer"] == answer["answer"]
    assert final["citations"] == answer["citations"] and final["hits"] == answer["hits"]
    assert all("delta" in e for e in events[:-1])


def test_chat_completions_with_the_extractive_generator(client: httpx.Client) -> None:
    body = {"model": "ragkit-bm25", "messages": [{"role": "user", "content": "Where is Mount Etna?"}]}
    completion = client.post("/v1/chat/completions", json=body).json()
    message = completion["choices"][0]["message"]
    assert completion["object"] == "chat.completion" and completion["model"] == "ragkit-bm25"
    assert "Etna" in message["content"] and message["citations"][0]["doc_id"] == "etna"
    assert completion["ragkit"]["hits"][0]["retriever"] == "bm25"
    assert_error(client.post("/v1/chat/completions", json={**body, "model": "gpt-4"}), 404, "gpt-4", "ragkit-bm25")


# -- hostile requests -------------------------------------------------------------------------------------------

BAD_REQUESTS = [
    ("/v1/retrieve", b'{"query": ', "not valid JSON"),
    ("/v1/retrieve", b'{"query": "x", "k": "5"}', "k"),
    ("/v1/retrieve", b'{"query": "x", "k": 0}', "k must be between 1 and 20"),
    ("/v1/retrieve", b'{"query": "x", "k": 21}', "k must be between 1 and 20"),
    ("/v1/retrieve", b'{"query": "x", "k": true}', "k"),
    ("/v1/retrieve", b'{"query": "x", "mode": "telepathy"}', "unknown retrieval mode 'telepathy'"),
    ("/v1/retrieve", b'{"query": "x", "mode": "graph"}', "without a knowledge graph"),
    ("/v1/retrieve", b'{"query": "x", "top_k": 3}', "top_k"),
    ("/v1/retrieve", b'{"query": "x", "queries": ["y"]}', "not both"),
    ("/v1/retrieve", b'{"query": ""}', "query"),
    ("/v1/retrieve", b'{"queries": []}', "queries"),
    ("/v1/retrieve", b'{"query": "x", "where": {"tenant": ["a"]}}', "where"),
    ("/v1/retrieve", b'{"query": "x", "where": "tenant=a"}', "where"),
    ("/v1/retrieve", b"[1, 2, 3]", "body"),
    ("/v1/retrieve", b'"just a string"', "body"),
    ("/v1/retrieve", b'{"query": "\xff\xfe caf\xe9"}', "UTF-8"),
    ("/v1/retrieve", b'{"query": "x"}' + b" " * 10 + b"}", "not valid JSON"),
    ("/v1/ask", b'{"question": 42}', "question"),
    ("/v1/ask", b'{"question": "x", "stream": "yes"}', "stream"),
    ("/v1/ask", b"{}", "question"),
    ("/v1/chat/completions", b'{"model": "ragkit", "messages": []}', "messages"),
    ("/v1/chat/completions", b'{"model": "ragkit", "messages": [{"role": "system", "content": "hi"}]}',
     "no user message"),
    ("/v1/chat/completions", b'{"model": "ragkit", "messages": [{"role": "wizard", "content": "hi"}]}', "role"),
    ("/v1/feedback", b'{"relevant": []}', "answer_id"),
    ("/v1/feedback", b'{"answer_id": "ans_nope", "relevant": []}', "unknown answer id"),
]


@pytest.mark.parametrize(("path", "body", "named"), BAD_REQUESTS, ids=[f"{p}:{b[:30]!r}" for p, b, _ in BAD_REQUESTS])
def test_hostile_requests_get_a_4xx_json_error_naming_the_problem(
    client: httpx.Client, path: str, body: bytes, named: str
) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert_error(response, response.status_code, named)


def test_wrong_content_type_method_and_path(client: httpx.Client) -> None:
    assert_error(client.post("/v1/retrieve", content=b'{"query": "x"}',
                             headers={"content-type": "application/x-www-form-urlencoded"}), 400, "application/json")
    assert_error(client.get("/v1/retrieve"), 405, "GET")
    assert_error(client.get("/v1/nothing-here"), 404, "/v1/nothing-here")


def test_bodies_over_the_limit_get_413_and_the_server_goes_on(client: httpx.Client) -> None:
    huge = json.dumps({"query": "x" * 70_000}).encode()
    assert_error(client.post("/v1/retrieve", content=huge, headers={"content-type": "application/json"}), 413,
                 "65536 bytes")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"query": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}'

    response = client.post("/v1/retrieve", content=chunked(), headers={"content-type": "application/json"})
    assert_error(response, 413, "larger than")
    after = client.post("/v1/retrieve", json={"query": "sourdough bread"})
    assert after.status_code == 200 and doc_ids(after.json()["hits"])[0] == "sourdough"


# -- feedback, metrics, batching ---------------------------------------------------------------------------------


def test_feedback_feeds_the_hit_rate_and_unknown_chunks_are_404(client: httpx.Client, index_dir: Path) -> None:
    answer = client.post("/v1/ask", json={"question": "How does sourdough bread rise?", "k": 2}).json()
    cited = [c["chunk_id"] for c in answer["citations"]]
    assert cited
    recorded = client.post("/v1/feedback", json={"answer_id": answer["id"], "relevant": cited[:1]})
    assert recorded.json() == {"recorded": True, "cited": len(cited), "relevant_cited": 1}
    missed = client.post("/v1/feedback", json={"query": "q", "cited": cited, "relevant": []})
    assert missed.status_code == 200
    assert_error(client.post("/v1/feedback", json={"query": "q", "cited": ["f" * 20], "relevant": []}), 404,
                 "unknown chunk")
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "ragkit_feedback_hit_rate") == pytest.approx(0.5)
    assert metric_value(metrics, "ragkit_feedback_total") == 2


def test_metrics_cover_latency_index_size_and_answers(client: httpx.Client, index_dir: Path) -> None:
    client.post("/v1/retrieve", json={"query": "Paris", "mode": "dense"})
    client.post("/v1/retrieve", json={"query": "x", "k": 0})
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    ok = {"endpoint": "/v1/retrieve", "mode": "dense", "status": "200"}
    assert metric_value(text, "ragkit_request_duration_seconds_count", ok) >= 1
    assert metric_value(text, "ragkit_request_duration_seconds_count", {"endpoint": "/v1/retrieve", "status": "400"})
    with Index.open(index_dir) as index:
        counts, generation = index.catalog.counts(), index.catalog.generation
    assert metric_value(text, "ragkit_index_documents") == counts["documents"]
    assert metric_value(text, "ragkit_index_chunks") == counts["chunks"]
    assert metric_value(text, "ragkit_index_generation") == generation
    assert metric_value(text, "ragkit_answers_total", {"generator": "extractive"}) >= 1
    assert metric_value(text, "ragkit_generated_tokens_total") > 0
    assert metric_value(text, "ragkit_retrieve_batch_size_count") >= 1
    assert metric_value(text, "ragkit_retrieve_queue_depth") == 0


def test_concurrent_queries_are_coalesced_into_batches(client: httpx.Client, server: ServerProcess) -> None:
    before = client.get("/metrics").text
    batches_before = metric_value(before, "ragkit_retrieve_batch_size_count")
    queries_before = metric_value(before, "ragkit_retrieve_batch_size_sum")
    texts = [text for _, _, text in CORPUS]

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            return await asyncio.gather(*(
                http.post("/v1/retrieve", json={"query": texts[i % len(texts)], "k": 1, "mode": "hybrid"})
                for i in range(50)
            ))

    responses = asyncio.run(flood())
    assert all(r.status_code == 200 for r in responses)
    for i, response in enumerate(responses):  # each answer is its own query's, batched or not
        assert doc_ids(response.json()["hits"]) == [CORPUS[i % len(CORPUS)][0]]
    after = client.get("/metrics").text
    batches = metric_value(after, "ragkit_retrieve_batch_size_count") - batches_before
    queries = metric_value(after, "ragkit_retrieve_batch_size_sum") - queries_before
    assert queries == 50
    assert batches < 50, "no two concurrent queries shared a batch"
    print(f"50 concurrent retrieves: {int(batches)} batches, {queries / batches:.1f} queries a batch on average")


def test_an_index_written_by_another_process_is_served_without_a_restart(
    client: httpx.Client, index_dir: Path, workdir: Path
) -> None:
    source = workdir / "zeppelin.txt"
    source.write_text("The Hindenburg zeppelin burned at Lakehurst in 1937.")
    query = {"query": "Hindenburg zeppelin Lakehurst", "k": 1, "mode": "bm25"}
    assert "zeppelin" not in json.dumps(client.post("/v1/retrieve", json=query).json()["hits"])
    generation = metric_value(client.get("/metrics").text, "ragkit_index_generation")
    result = run_ragkit("index", source, "--index", index_dir, "--meta", f"tenant={ACME}",
                        "--config", next(workdir.glob("ragkit-*.toml")), cwd=workdir)
    assert result.returncode == 0, result.stderr
    for mode in ("bm25", "dense"):
        hits = client.post("/v1/retrieve", json={**query, "mode": mode}).json()["hits"]
        assert "Hindenburg" in hits[0]["text"], mode
    assert metric_value(client.get("/metrics").text, "ragkit_index_generation") > generation


# -- keys, scopes, tenants ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(workdir: Path) -> dict[str, str]:
    """Keys written by ``ragkit serve keys add``: the secret alone on stdout, only its hash in the file."""
    path = workdir / "keys.toml"
    secrets = {}
    for name, tenant, scope in (("alice", ACME, "read,write"), ("bob", GLOBEX, "read")):
        added = run_ragkit("serve", "keys", "add", name, "--tenant", tenant, "--scope", scope, "--keys", path,
                           cwd=workdir)
        assert added.returncode == 0, added.stderr
        secrets[name] = added.stdout.strip()
        assert secrets[name].startswith("rk_") and "\n" not in secrets[name]
        assert name in added.stderr and tenant in added.stderr
    assert not any(secret in path.read_text() for secret in secrets.values())
    return {**secrets, "file": str(path)}


@pytest.fixture(scope="module")
def keyed(index_dir: Path, workdir: Path, keys: dict[str, str]) -> Iterator[httpx.Client]:
    with start_ragkit_serve(index_dir, workdir, settings=SETTINGS, keys=Path(keys["file"])) as process:
        with httpx.Client(base_url=process.base_url, timeout=30) as http:
            yield http


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_keys_are_required_and_scopes_enforced(keyed: httpx.Client, keys: dict[str, str]) -> None:
    query = {"query": "Eiffel Tower"}
    missing = assert_error(keyed.post("/v1/retrieve", json=query), 401, "missing API key")
    assert missing["type"] == "authentication_error"
    assert_error(keyed.post("/v1/retrieve", json=query, headers=bearer("rk_" + "x" * 43)), 401, "invalid API key")
    assert keyed.post("/v1/retrieve", json=query, headers={"X-API-Key": keys["alice"]}).status_code == 200
    assert keyed.get("/healthz").status_code == 200 and keyed.get("/readyz").status_code == 200
    assert_error(keyed.delete("/v1/documents/photosynthesis", headers=bearer(keys["bob"])), 403, "write")


def test_a_tenant_never_sees_another_tenants_chunks(keyed: httpx.Client, keys: dict[str, str]) -> None:
    alice, bob = bearer(keys["alice"]), bearer(keys["bob"])
    globex_docs = {doc_id for doc_id, tenant, _ in CORPUS if tenant == GLOBEX}
    sneaky = {"query": "Globex quarterly revenue forecast vault Eiffel", "k": 10, "where": {"tenant": GLOBEX}}
    for mode in ("dense", "bm25", "hybrid"):
        hits = keyed.post("/v1/retrieve", json={**sneaky, "mode": mode}, headers=alice).json()["hits"]
        assert hits and not set(doc_ids(hits)) & globex_docs, mode
    answer = keyed.post("/v1/ask", json={"question": sneaky["query"], "where": {"tenant": GLOBEX}}, headers=alice)
    assert answer.status_code == 200 and not set(doc_ids(answer.json()["hits"])) & globex_docs
    assert "vault" not in answer.json()["answer"].lower()
    chat = keyed.post("/v1/chat/completions", headers=alice, json={
        "model": "ragkit-hybrid", "messages": [{"role": "user", "content": sneaky["query"]}], "where": sneaky["where"]})
    assert chat.status_code == 200 and not set(doc_ids(chat.json()["ragkit"]["hits"])) & globex_docs
    assert "vault" not in chat.json()["choices"][0]["message"]["content"].lower()
    # bob's chunk is as unknown to alice as a chunk that does not exist: same status, same kind of message
    bobs = keyed.post("/v1/retrieve", json={"query": "revenue forecast vault", "k": 1}, headers=bob).json()["hits"]
    assert doc_ids(bobs) == ["vault"]
    theirs = assert_error(keyed.post("/v1/feedback", headers=alice, json={
        "query": "q", "cited": [bobs[0]["chunk_id"]], "relevant": []}), 404, "unknown chunk")
    nobody = assert_error(keyed.post("/v1/feedback", headers=alice, json={
        "query": "q", "cited": ["0" * 20], "relevant": []}), 404, "unknown chunk")
    assert theirs["code"] == nobody["code"]
    asked = keyed.post("/v1/ask", json={"question": "revenue forecast vault"}, headers=bob).json()
    assert_error(keyed.post("/v1/feedback", json={"answer_id": asked["id"], "relevant": []}, headers=alice), 404,
                 "unknown answer id")


def test_uploads_go_through_the_mounted_documents_routes_to_their_tenant_only(
    keyed: httpx.Client, keys: dict[str, str]
) -> None:
    alice, bob = bearer(keys["alice"]), bearer(keys["bob"])
    text = "Kiwifruit vines in Otago are pruned in winter by the orchard crew."
    uploaded = keyed.post("/v1/documents", json={"documents": [{"id": "kiwi", "text": text}]}, headers=alice)
    assert uploaded.status_code == 201, uploaded.text
    query = {"query": "kiwifruit vines Otago orchard", "k": 3, "mode": "bm25"}
    assert keyed.post("/v1/retrieve", json=query, headers=alice).json()["hits"][0]["text"] == text
    assert "Kiwifruit" not in json.dumps(keyed.post("/v1/retrieve", json=query, headers=bob).json()["hits"])


def test_a_public_address_without_keys_is_refused(index_dir: Path, workdir: Path) -> None:
    started = time.monotonic()
    result = run_ragkit("serve", "--index", index_dir, "--host", "0.0.0.0", "--port", "9", cwd=workdir)
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in result.stderr and "--keys" in result.stderr
    assert time.monotonic() - started < 30
    missing = run_ragkit("serve", "--index", workdir / "no-such-index", "--port", "9", cwd=workdir)
    assert missing.returncode == 1 and "no index here" in missing.stderr


# -- a generated corpus of hostile bodies -------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ("query", "queries", "k", "mode", "where", "rerank", "question", "stream", "model", "messages", "cited")


@settings(max_examples=60, deadline=None)
@given(
    path=st.sampled_from(["/v1/retrieve", "/v1/ask", "/v1/chat/completions", "/v1/feedback"]),
    body=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=5)
    | json_values
    | st.binary(max_size=40),  # raw bytes: truncated JSON, invalid UTF-8
)
def test_generated_hostile_bodies_never_get_a_5xx(client: httpx.Client, path: str, body: Any) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "code"}


def test_the_server_answers_correctly_after_the_hostile_corpus(client: httpx.Client) -> None:
    hits = client.post("/v1/retrieve", json={"query": "active volcano Sicily", "k": 1}).json()["hits"]
    assert doc_ids(hits) == ["etna"]
    assert client.get("/readyz").status_code == 200


# -- the micro-batcher and the embedder lock, in process -----------------------------------------------------------


async def test_micro_batcher_groups_by_key_and_caps_the_batch() -> None:
    calls: list[tuple[Any, list[int]]] = []

    def run(key: Any, items: list[int]) -> list[int]:
        calls.append((key, list(items)))
        time.sleep(0.02)  # a batch takes a while: the next requests queue meanwhile
        return [item * 10 for item in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=4, max_wait_ms=30)
    results = await asyncio.gather(*(batcher.submit("odd" if i % 2 else "even", i) for i in range(12)))
    await batcher.aclose()
    assert results == [i * 10 for i in range(12)]
    assert all(len(items) <= 4 for _, items in calls) and len(calls) < 12
    assert all(all(i % 2 == (key == "odd") for i in items) for key, items in calls)


async def test_micro_batcher_fails_only_the_failing_batch() -> None:
    def run(key: str, items: list[str]) -> list[str]:
        if key == "bad":
            raise ValueError("no such mode")
        return [item.upper() for item in items]

    batcher: MicroBatcher[str, str] = MicroBatcher(run, max_batch=8, max_wait_ms=5)
    good, bad = await asyncio.gather(batcher.submit("good", "a"), batcher.submit("bad", "b"), return_exceptions=True)
    assert good == "A" and isinstance(bad, ValueError)
    assert await batcher.submit("good", "c") == "C"  # the batcher lives on
    await batcher.aclose()


def test_serialized_embedder_lets_one_thread_in_at_a_time() -> None:
    inside, overlaps = [0], [0]

    class Fussy(HashingEmbedder):  # like a Hugging Face fast tokenizer: breaks when two threads share it
        def embed_documents(self, texts: Sequence[str]) -> Any:
            inside[0] += 1
            overlaps[0] += inside[0] > 1
            time.sleep(0.002)
            inside[0] -= 1
            return super().embed_documents(texts)

    embedder = SerializedEmbedder("hashing-64", 64, lambda: Fussy(64))
    assert not embedder.loaded
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: embedder.embed_queries([f"query {i}"]), range(64)))
    assert overlaps == [0] and embedder.loaded and embedder.max_tokens == 128
    with pytest.raises(EmbedderMismatchError):
        SerializedEmbedder("hashing-64", 32, lambda: Fussy(64)).load()
