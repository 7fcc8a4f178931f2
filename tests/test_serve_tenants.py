"""Tenants of ``ragkit serve`` over HTTP: one real server process, two tenants, and tenant A trying every endpoint
against tenant B's data (issue 14, "Tenants and security").

The server holds alpha's documents (indexed directly) and bravo's (two uploaded through bravo's key, one indexed
directly with ``tenant=bravo``), with a knowledge graph whose entities bridge the two tenants' documents, so that
graph walks have a way into bravo's chunks. Every one of bravo's documents carries the word ``zephyrquill``, and
bravo alone mentions "Zorvath Quellin" and "Kestrel Dynamics".

Checked with alpha's key: retrieve (one query and a batch, every mode, a hostile ``where``), ask and chat
(streamed and not, model names of every mode), the document list (paged every way), deletes of bravo's ids in
every spelling, feedback naming bravo's chunks and answers, and bravo's jobs. Nothing of bravo (its marker word,
entities, tenant name, document ids, sources, chunk ids, job and answer ids, counts) appears in any body or
header alpha receives, outside the fields that echo alpha's own question back; a 404 for bravo's document, job,
chunk or answer is the 404 for an unknown id of the same shape, byte for byte. After every test bravo still
sees all its documents as they were. Then: a flood from alpha does not starve bravo (fair queueing under a
small ``serve.max_concurrent``), a rate-limited key gets 429 with Retry-After, and keys and scopes are enforced.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import metric_value, sse_payloads, start_ragkit_serve
from servers import ServerProcess

from ragkit import Index
from ragkit.serve.auth import add_key, confine_explains, explained_chunks
from ragkit.testing import HashingEmbedder
from ragkit.types import Document

ALPHA, BRAVO = "alpha", "bravo"
MARKER = "zephyrquill"

# alpha's documents share entities (Lisbon, Porto, Albatross, Mira Okonkwo) with bravo's, so that a graph walk
# from alpha's question can pass through bravo's chunks and bravo-only entities
ALPHA_DOCS: dict[str, str] = {
    "ax-harbor": "Captain Mira Okonkwo sailed the ferry Albatross from Lisbon to Porto in 1921.",
    "ax-bakery": "The Lisbon bakery of Tomas Ferreira sells custard tarts every morning.",
    "ax-museum": "The Porto museum shows the sea charts drawn by Mira Okonkwo after her voyages.",
    "ax-orchard": "Apple orchards near Braga are harvested in September by local families.",
    "ax-library": "The Coimbra library lends atlases and ship logs of the Albatross to visiting students.",
}
BRAVO_DIRECT: dict[str, str] = {  # indexed with meta tenant=bravo, ids as given (no tenant prefix)
    "bx-vault-0001": f"Zorvath Quellin hid the {MARKER} ledger in Lisbon, says the crew of the Albatross.",
}
BRAVO_UPLOADED: dict[str, str] = {  # uploaded through bravo's key: stored as bravo:<id>
    "bx-ledger-0417": f"Kestrel Dynamics paid Zorvath Quellin in {MARKER} bonds for the Porto contract.",
    "bx-memo-0522": f"The {MARKER} memo of Kestrel Dynamics names Mira Okonkwo as a witness in Porto.",
}
BRAVO_WORDS = (MARKER, "Zorvath", "Quellin", "Kestrel", BRAVO)

# what alpha asks: bravo's marker, entities and ids, and questions whose graph walks can bridge into bravo's chunks
HOSTILE_QUESTIONS = (
    f"What did Zorvath Quellin hide in the {MARKER} ledger in Lisbon?",
    "Which witness does the Kestrel Dynamics memo name in Porto?",
    f"{BRAVO} bx-ledger-0417 bx-vault-0001 {MARKER} Kestrel",
    "Who sailed the ferry Albatross from Lisbon to Porto?",
)
HOSTILE_WHERES: tuple[dict[str, Any] | None, ...] = (
    None,
    {"tenant": BRAVO},
    {"tenant": ALPHA, "doc_id": "bravo:bx-ledger-0417"},
    {"doc_id": "bx-vault-0001"},
    {"source": "bx-vault-0001.txt"},
    {"Tenant": BRAVO, "tenant ": BRAVO},
)
MODES = ("dense", "bm25", "hybrid", "graph", "multihop", "graph_hybrid", "auto")

# a small global cap makes a flood queue up; every retrieval waits max_wait_ms for its batch, so requests are
# slow enough that the queue stays deep while bravo's requests go through it
SETTINGS: dict[str, dict[str, Any]] = {
    "serve": {"max_concurrent": 2, "max_wait_ms": 25, "max_queue": 1024, "max_k": 50},
    "retrieval": {"k": 5},
}
FLOOD = 120
METERED_RATE = 1.0  # requests per second of alpha's rate-limited key


@dataclass
class World:
    """The running server, its keys (as request headers) and what alpha must never learn of bravo."""

    server: ServerProcess
    http: httpx.Client
    keys_file: Path
    secrets_by_name: dict[str, str]
    alpha_chunks: dict[str, str]  # chunk id -> doc id
    bravo_chunks: dict[str, str]
    bravo_jobs: list[str]
    bravo_answers: list[str]
    bravo_snapshot: dict[str, Any] = field(default_factory=dict)

    def key(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets_by_name[name]}"}

    @property
    def alpha(self) -> dict[str, str]:
        return self.key("alpha")

    @property
    def bravo(self) -> dict[str, str]:
        return self.key("bravo")

    def bravo_secrets(self) -> list[str]:
        """Every string that would tell alpha something of bravo's data."""
        ids = [*BRAVO_DIRECT, *BRAVO_UPLOADED, *(f"{BRAVO}:{i}" for i in BRAVO_UPLOADED), "bx-vault-0001.txt"]
        return [*BRAVO_WORDS, *ids, *self.bravo_chunks, *self.bravo_jobs, *self.bravo_answers]


def bravo_state(world: World) -> dict[str, Any]:
    """What bravo sees of its own data: its full listing and every chunk its marker word finds."""
    listing = world.http.get("/v1/documents", params={"limit": 1000}, headers=world.bravo)
    assert listing.status_code == 200, listing.text
    found = world.http.post("/v1/retrieve", headers=world.bravo, json={"query": MARKER, "k": 50, "mode": "bm25"})
    assert found.status_code == 200, found.text
    hits = sorted((h["chunk_id"], h["doc_id"], h["text"]) for h in found.json()["hits"])
    return {"listing": listing.json(), "hits": hits}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("serve-tenants")
    index = root / "index"
    with Index.create(index, embedder=HashingEmbedder(64)) as created:  # with a knowledge graph: graph modes
        created.add_documents(
            [Document(id=i, text=t, source=f"{i}.txt", title="") for i, t in ALPHA_DOCS.items()], meta={"tenant": ALPHA}
        )
        created.add_documents(
            [Document(id=i, text=t, source=f"{i}.txt", title="") for i, t in BRAVO_DIRECT.items()],
            meta={"tenant": BRAVO},
        )
    keys_file = root / "keys.toml"
    names = {
        "alpha": add_key(keys_file, "alpha", tenant=ALPHA, scopes=["read", "write"]),
        "bravo": add_key(keys_file, "bravo", tenant=BRAVO, scopes=["read", "write"]),
        "alpha-reader": add_key(keys_file, "alpha-reader", tenant=ALPHA, scopes=["read"]),
        "alpha-metered": add_key(keys_file, "alpha-metered", tenant=ALPHA, scopes=["read"], rate_per_s=METERED_RATE),
    }
    with start_ragkit_serve(index, root, settings=SETTINGS, keys=keys_file) as server:
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            bravo = {"Authorization": f"Bearer {names['bravo']}"}
            jobs = []
            for doc_id, text in BRAVO_UPLOADED.items():  # one upload each: two jobs
                uploaded = http.post("/v1/documents", headers=bravo, json={"documents": [{"id": doc_id, "text": text}]})
                assert uploaded.status_code == 201, uploaded.text
                jobs.append(uploaded.json()["job"]["id"])
            chunks: dict[str, dict[str, str]] = {}
            for tenant, query in ((ALPHA, " ".join(ALPHA_DOCS.values())), (BRAVO, MARKER)):
                found = http.post("/v1/retrieve", headers={"Authorization": f"Bearer {names[tenant]}"},
                                  json={"query": query, "k": 50, "mode": "bm25"})
                assert found.status_code == 200, found.text
                chunks[tenant] = {h["chunk_id"]: h["doc_id"] for h in found.json()["hits"]}
            assert set(chunks[ALPHA].values()) == set(ALPHA_DOCS)
            assert set(chunks[BRAVO].values()) == {*BRAVO_DIRECT, *(f"{BRAVO}:{i}" for i in BRAVO_UPLOADED)}
            answers = []
            asked = http.post("/v1/ask", headers=bravo, json={"question": f"Who holds the {MARKER} ledger?"})
            assert asked.status_code == 200 and asked.json()["citations"], asked.text
            answers.append(asked.json()["id"])
            chat = http.post("/v1/chat/completions", headers=bravo, json={
                "model": "ragkit-bm25", "messages": [{"role": "user", "content": f"What are {MARKER} bonds?"}]})
            assert chat.status_code == 200, chat.text
            answers.append(chat.json()["id"])
            world = World(server, http, keys_file, names, chunks[ALPHA], chunks[BRAVO], jobs, answers)
            world.bravo_snapshot = bravo_state(world)
            listed = world.bravo_snapshot["listing"]
            assert listed["total"] == 3 and sum(d["chunks"] for d in listed["documents"]) == len(chunks[BRAVO])
            assert all(MARKER in text for _, _, text in world.bravo_snapshot["hits"])
            yield world


@pytest.fixture(autouse=True)
def bravo_unchanged(world: World) -> Iterator[None]:
    """After every test, bravo still sees all of its documents, chunks and texts exactly as before."""
    yield
    assert bravo_state(world) == world.bravo_snapshot


# -- what a response may hold ---------------------------------------------------------------------------------


ECHO_FIELDS = ("query", "question")


def without_echoes(payload: Any, sent: Sequence[str]) -> Any:
    """``payload`` without the fields that echo alpha's own question or query back (checked to be exactly that)."""
    if isinstance(payload, dict):
        kept = {}
        for key, value in payload.items():
            if key in ECHO_FIELDS and isinstance(value, str):
                assert value in sent, f"{key} {value!r} is not what was sent"
                continue
            kept[key] = without_echoes(value, sent)
        return kept
    if isinstance(payload, list):
        return [without_echoes(item, sent) for item in payload]
    return payload


def assert_reveals_nothing(world: World, response: httpx.Response, sent: Sequence[str] = ()) -> Any:
    """No string of bravo's in the headers or in the body of ``response`` (its echo fields aside); the body parsed
    (a list of event payloads for server-sent events) is returned."""
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        body: Any = sse_payloads(response.text.splitlines())
    else:
        body = response.json()
    shown = headers + "\n" + json.dumps(without_echoes(body, sent), ensure_ascii=False)
    leaked = [secret for secret in world.bravo_secrets() if secret.lower() in shown.lower()]
    assert not leaked, f"{response.request.method} {response.request.url.path} revealed {leaked}:\n{shown[:3000]}"
    assert "traceback" not in shown.lower()
    return body


def alpha_hits_only(world: World, hits: Sequence[Mapping[str, Any]]) -> None:
    """Every hit is one of alpha's chunks (a positive check: nothing else, whatever its name)."""
    for hit in hits:
        assert hit["chunk_id"] in world.alpha_chunks and hit["doc_id"] == world.alpha_chunks[hit["chunk_id"]], hit


def same_404(theirs: httpx.Response, unknown: httpx.Response, swap: Mapping[str, str]) -> None:
    """``theirs`` (about bravo's id) is byte for byte ``unknown`` (about an unknown id of the same shape) once the
    unknown id is swapped for bravo's: status, every header but Date, and body."""
    assert theirs.status_code == unknown.status_code == 404, (theirs.text, unknown.text)
    expected = unknown.content
    for unknown_id, their_id in swap.items():
        expected = expected.replace(unknown_id.encode(), their_id.encode())
    assert theirs.content == expected
    headers = [(k, v) for k, v in theirs.headers.multi_items() if k.lower() != "date"]
    unknown_headers = [(k, v) for k, v in unknown.headers.multi_items() if k.lower() != "date"]
    assert headers == unknown_headers


def same_shape(identifier: str) -> str:
    """An unknown id of the same length and alphabet as ``identifier`` (digits and lowercase hex changed)."""
    alphabet = "0123456789abcdef"
    while True:
        changed = "".join(secrets.choice(alphabet) if c in alphabet else c for c in identifier)
        if changed != identifier:
            return changed


# -- cross-tenant: retrieval and answers ----------------------------------------------------------------------


def test_bravo_sees_its_own_data_so_the_attacks_below_are_not_vacuous(world: World) -> None:
    found = world.http.post("/v1/retrieve", headers=world.bravo,
                            json={"query": HOSTILE_QUESTIONS[0], "k": 3, "mode": "bm25"})
    assert found.status_code == 200 and MARKER in found.json()["hits"][0]["text"]
    multihop = world.http.post("/v1/retrieve", headers=world.bravo,
                               json={"query": HOSTILE_QUESTIONS[1], "k": 3, "mode": "multihop"})
    assert multihop.status_code == 200 and "Kestrel" in json.dumps(multihop.json()["hits"])
    assert world.http.get(f"/v1/jobs/{world.bravo_jobs[0]}", headers=world.bravo).status_code == 200


@pytest.mark.parametrize("mode", MODES)
def test_retrieve_with_alphas_key_never_returns_bravos_chunks(world: World, mode: str) -> None:
    for where in HOSTILE_WHERES:
        for question in HOSTILE_QUESTIONS:
            body = {"query": question, "k": 20, "mode": mode, **({"where": where} if where is not None else {})}
            response = world.http.post("/v1/retrieve", headers=world.alpha, json=body)
            assert response.status_code == 200, response.text
            hits = assert_reveals_nothing(world, response, [question])["hits"]
            alpha_hits_only(world, hits)
            if (where is None or set(where) == {"tenant"}) and "Albatross" in question:
                assert hits, (mode, where, question)  # the tenant filter replaced bravo's: alpha's chunks come back
    batch = {"queries": list(HOSTILE_QUESTIONS), "k": 20, "mode": mode, "where": {"tenant": BRAVO}}
    response = world.http.post("/v1/retrieve", headers=world.alpha, json=batch)
    assert response.status_code == 200, response.text
    results = assert_reveals_nothing(world, response, HOSTILE_QUESTIONS)["results"]
    assert len(results) == len(HOSTILE_QUESTIONS)
    for result in results:
        alpha_hits_only(world, result["hits"])


@pytest.mark.parametrize("mode", ["bm25", "hybrid", "graph", "multihop", "auto"])
def test_ask_with_alphas_key_never_answers_from_bravo(world: World, mode: str) -> None:
    for question in HOSTILE_QUESTIONS:
        for stream in (False, True):
            body = {"question": question, "mode": mode, "k": 10, "where": {"tenant": BRAVO}, "stream": stream}
            response = world.http.post("/v1/ask", headers=world.alpha, json=body)
            assert response.status_code == 200, response.text
            payload = assert_reveals_nothing(world, response, [question])
            answer = payload[-1]["answer"] if stream else payload
            assert answer["hits"] or "Albatross" not in question, (mode, question)
            alpha_hits_only(world, answer["hits"])
            alpha_hits_only(world, answer["citations"])


@pytest.mark.parametrize(
    "model", ["ragkit", "ragkit-dense", "ragkit-bm25", "ragkit-hybrid", "ragkit-graph", "ragkit-multihop",
              "ragkit-graph_hybrid"]
)
def test_chat_with_alphas_key_never_answers_from_bravo(world: World, model: str) -> None:
    history = [{"role": "user", "content": f"Tell me about {MARKER}."}, {"role": "assistant", "content": "Sure."}]
    for question in HOSTILE_QUESTIONS[1:]:
        for stream in (False, True):
            body = {"model": model, "messages": [*history, {"role": "user", "content": question}],
                    "stream": stream, "k": 10, "where": {"tenant": BRAVO}}
            response = world.http.post("/v1/chat/completions", headers=world.alpha, json=body)
            assert response.status_code == 200, response.text
            payload = assert_reveals_nothing(world, response, [question])
            extra = payload[-1]["ragkit"] if stream else payload["ragkit"]
            assert extra["hits"] or "Albatross" not in question, (model, question)
            alpha_hits_only(world, extra["hits"])
            citations = payload[-1]["choices"][0]["delta"]["citations"] if stream else (
                payload["choices"][0]["message"]["citations"])
            alpha_hits_only(world, citations)


def test_graph_explanations_name_only_what_the_tenant_can_see(world: World) -> None:
    """A graph walk is filtered by tenant at its end; its explanation must not name bravo's entities on the way
    (seed entities linked from alpha's question used to list "Kestrel Dynamics", known only from bravo's memo)."""
    question = {"query": "Kestrel Dynamics witness Mira Okonkwo sea charts", "k": 5, "mode": "graph"}
    theirs = world.http.post("/v1/retrieve", headers=world.bravo, json=question).json()["hits"]
    assert any("Kestrel Dynamics" in h["explain"]["seed_entities"] for h in theirs)  # bravo's own entity: shown
    mine = world.http.post("/v1/retrieve", headers=world.alpha, json=question)
    hits = assert_reveals_nothing(world, mine, [question["query"]])["hits"]
    alpha_hits_only(world, hits)
    seeds = {name for h in hits for name in h["explain"]["seed_entities"]}
    assert "Mira Okonkwo" in seeds  # alpha's own entities are still explained
    for hit in hits:
        assert hit["explain"]["via_entities"], hit
    for mode in ("multihop", "graph_hybrid"):
        found = world.http.post("/v1/retrieve", headers=world.alpha, json={**question, "mode": mode})
        paths = [h["explain"]["path"] for h in assert_reveals_nothing(world, found, [question["query"]])["hits"]]
        assert any(paths), mode  # confined, not emptied
        assert all(step["chunk"] in world.alpha_chunks for path in paths for step in path if step["chunk"]), mode
    auto = world.http.post("/v1/retrieve", headers=world.alpha, json={**question, "mode": "auto"})  # a statement
    nested = [h["explain"]["graph"] for h in assert_reveals_nothing(world, auto, [question["query"]])["hits"]]
    assert "Mira Okonkwo" in {name for graph in nested for name in graph["seed_entities"]}


def test_confine_explains_drops_steps_through_hidden_chunks() -> None:
    """The path a walk took through another tenant's chunk: the hidden chunk, the entity only it vouches for and
    the seed linked to that entity go; steps through visible chunks stay (nested ``auto`` explains too)."""
    path = [
        {"entity": "Kestrel Dynamics", "relation": "linked from question", "chunk": None, "phrase": "Kestrel"},
        {"entity": "Kestrel Dynamics", "relation": "mentioned in", "chunk": "hidden-1"},
        {"entity": "Mira Okonkwo", "relation": "names", "chunk": "hidden-1"},
        {"entity": "Mira Okonkwo", "relation": "mentioned in", "chunk": "mine-1"},
        {"entity": "Porto", "relation": "related to", "chunk": None},
    ]
    graph = {"mode": "graph", "seed_entities": ["Kestrel Dynamics", "Porto", "Lisbon"], "via_entities": ["Porto"]}
    explains = [{"mode": "multihop", "hops": 2, "path": path}, graph, None, {"mode": "auto", "graph": {"path": path}}]
    multihop, confined_graph, nothing, auto = confine_explains(explains, {"mine-1"})
    kept = [path[3], path[4]]
    assert multihop == {"mode": "multihop", "hops": 2, "path": kept}
    assert confined_graph == {**graph, "seed_entities": ["Porto"]}
    assert nothing is None and auto == {"mode": "auto", "graph": {"path": kept}}
    assert explained_chunks(explains) == {"hidden-1", "mine-1"}
    everything = confine_explains(explains, {"mine-1", "hidden-1"})
    assert everything[0] == explains[0] and everything[1]["seed_entities"] == ["Kestrel Dynamics", "Porto"]


def test_models_list_names_no_tenant_data(world: World) -> None:
    response = world.http.get("/v1/models", headers=world.alpha)
    assert response.status_code == 200
    models = assert_reveals_nothing(world, response)["data"]
    assert {m["id"] for m in models} >= {"ragkit", "ragkit-multihop"}


# -- cross-tenant: documents, jobs, feedback ------------------------------------------------------------------


def alpha_listing_pages(world: World, **params: Any) -> Iterator[dict[str, Any]]:
    """Every page of alpha's listing, following ``next_cursor`` (or ``offset`` when ``step`` is given)."""
    step = params.pop("step", None)
    cursor: str | None = None
    offset = 0
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {}), **({"offset": offset} if step else {})}
        response = world.http.get("/v1/documents", params=query, headers=world.alpha)
        assert response.status_code == 200, response.text
        page = assert_reveals_nothing(world, response)
        yield page
        if step:
            if not page["documents"]:
                return
            offset += step
        else:
            cursor = page["next_cursor"]
            if cursor is None:
                return
    raise AssertionError("the listing never ended")


def test_listing_pages_through_alphas_documents_only(world: World) -> None:
    alpha_chunk_count = len(world.alpha_chunks)
    for params in ({"limit": 1}, {"limit": 2}, {"limit": 1000}, {"limit": 2, "step": 2}, {"limit": 3, "step": 3}):
        pages = list(alpha_listing_pages(world, **params))
        listed = [d["id"] for page in pages for d in page["documents"]]
        assert sorted(listed) == sorted(ALPHA_DOCS), params
        for page in pages:  # counts are alpha's own, on every page
            assert page["total"] == len(ALPHA_DOCS) and page["chunks"] == alpha_chunk_count, params
    # a cursor forged from bravo's ids (as next_cursor encodes them) still lists only alpha's documents after it
    for forged in ("bravo:bx-ledger-0417", "bx-vault-0001", "", "a"):
        cursor = base64.urlsafe_b64encode(forged.encode()).decode().rstrip("=") or "YQ"
        response = world.http.get("/v1/documents", params={"cursor": cursor, "limit": 1000}, headers=world.alpha)
        assert response.status_code == 200, response.text
        page = assert_reveals_nothing(world, response)
        assert {d["id"] for d in page["documents"]} <= set(ALPHA_DOCS) and page["total"] == len(ALPHA_DOCS)


# Paths that name bravo's documents: the id bravo uses, the catalog id hits carry, and encodings of them. ``{id}``
# is bravo's id (or an unknown one of the same shape); the server's 404 must not tell them apart.
DELETE_TRICKS: tuple[Callable[[str], str], ...] = (
    lambda i: i,
    lambda i: f"{BRAVO}:{i}",
    lambda i: f"{BRAVO}%3A{i}",
    lambda i: f"{BRAVO}%253A{i}",
    lambda i: f"{ALPHA}:{BRAVO}:{i}",
    lambda i: f"{ALPHA}%3A{BRAVO}%3A{i}",
    lambda i: f"%2E%2E%2F{BRAVO}:{i}",
    lambda i: f"{ALPHA}:%2E%2E%2F{BRAVO}:{i}",
    lambda i: f"{ALPHA}%3A%2E%2E%2F{i}",
    lambda i: f"{BRAVO}:{i}/",
    lambda i: f"%2F{i}",
    lambda i: f"{i}%00",
    lambda i: f"%20{BRAVO}:{i}",
    lambda i: f"{BRAVO}:{i}".upper(),
    lambda i: f"{BRAVO.upper()}%3A{i}",
)


def test_delete_of_bravos_documents_with_alphas_key_is_the_unknown_404(world: World) -> None:
    # bravo's ids: two uploaded (stored with bravo's prefix), one indexed directly, and one uploaded just now that
    # bravo then deletes itself (so the same request with bravo's key really does delete)
    scratch = "bx-scratch-0099"
    uploaded = world.http.post("/v1/documents", headers=world.bravo,
                               json={"documents": [{"id": scratch, "text": f"A {MARKER} note to delete."}]})
    assert uploaded.status_code == 201, uploaded.text
    for their_id in [*BRAVO_UPLOADED, *BRAVO_DIRECT, scratch]:
        unknown_id = same_shape(their_id)
        for trick in DELETE_TRICKS:
            theirs = world.http.delete(f"/v1/documents/{trick(their_id)}", headers=world.alpha)
            unknown = world.http.delete(f"/v1/documents/{trick(unknown_id)}", headers=world.alpha)
            same_404(theirs, unknown, {unknown_id: their_id, unknown_id.upper(): their_id.upper()})
    assert world.http.delete(f"/v1/documents/{scratch}", headers=world.bravo).status_code == 200


def test_alphas_uploads_under_bravos_ids_never_touch_bravos_documents(world: World) -> None:
    ids = [*BRAVO_UPLOADED, *BRAVO_DIRECT, f"{BRAVO}:bx-ledger-0417", f"{BRAVO}%3Abx-memo-0522"]
    documents = [{"id": i, "text": f"Alpha's own page about the harbour cranes number {n}."} for n, i in enumerate(ids)]
    response = world.http.post("/v1/documents", headers=world.alpha, json={"documents": documents})
    assert response.status_code == 201, response.text
    report = response.json()["job"]["report"]
    assert report["added"] == len(ids) and report["updated"] == 0 and report["unchanged"] == 0  # no id collided
    assert [d["id"] for d in response.json()["documents"]] == ids
    assert all(d["doc_id"] == f"{ALPHA}:{i}" for d, i in zip(response.json()["documents"], ids, strict=True))
    try:
        for doc_id in ids:  # alpha deletes its own documents of those names (and only those)
            deleted = world.http.delete(f"/v1/documents/{doc_id.replace('%', '%25')}", headers=world.alpha)
            assert deleted.status_code == 200, (doc_id, deleted.text)
            assert deleted.json() == {"deleted": {"id": doc_id, "doc_id": f"{ALPHA}:{doc_id}"}}
    finally:
        for doc_id in ids:
            world.http.delete(f"/v1/documents/{ALPHA}:{doc_id.replace('%', '%25')}", headers=world.alpha)
    assert world.http.get("/v1/documents", headers=world.alpha).json()["total"] == len(ALPHA_DOCS)


def test_bravos_jobs_are_the_unknown_404_to_alpha(world: World) -> None:
    mine = world.http.post("/v1/documents", headers=world.alpha,
                           json={"documents": [{"id": "ax-scratch", "text": "Alpha's scratch page on tides."}]})
    assert mine.status_code == 201, mine.text
    try:
        own = world.http.get(f"/v1/jobs/{mine.json()['job']['id']}", headers=world.alpha)
        assert own.status_code == 200 and own.json()["job"]["status"] == "done"
        assert_reveals_nothing(world, own)
        for job_id in world.bravo_jobs:
            for form in (job_id, job_id.upper(), f"{job_id}%00"):
                unknown_id = same_shape(job_id)
                unknown_form = form.replace(job_id, unknown_id).replace(job_id.upper(), unknown_id.upper())
                theirs = world.http.get(f"/v1/jobs/{form}", headers=world.alpha)
                unknown = world.http.get(f"/v1/jobs/{unknown_form}", headers=world.alpha)
                same_404(theirs, unknown, {unknown_id: job_id, unknown_id.upper(): job_id.upper()})
    finally:
        assert world.http.delete("/v1/documents/ax-scratch", headers=world.alpha).status_code == 200


def test_feedback_on_bravos_chunks_and_answers_is_the_unknown_404(world: World) -> None:
    def feedback(body: dict[str, Any]) -> httpx.Response:
        return world.http.post("/v1/feedback", headers=world.alpha, json=body)

    def received() -> float:
        return metric_value(world.http.get("/metrics").text, "ragkit_feedback_total")

    before = received()
    alpha_chunk = next(iter(world.alpha_chunks))
    for their_chunk in world.bravo_chunks:
        unknown_chunk = same_shape(their_chunk)
        swap = {unknown_chunk: their_chunk}
        for make in (
            lambda c: {"query": "q", "cited": [c], "relevant": []},
            lambda c: {"query": "q", "cited": [alpha_chunk], "relevant": [c]},
            lambda c: {"query": "q", "cited": [alpha_chunk, c], "relevant": [alpha_chunk, c]},
        ):
            same_404(feedback(make(their_chunk)), feedback(make(unknown_chunk)), swap)
    for answer_id in world.bravo_answers:
        unknown_answer = same_shape(answer_id)
        swap = {unknown_answer: answer_id}
        same_404(feedback({"answer_id": answer_id, "relevant": []}),
                 feedback({"answer_id": unknown_answer, "relevant": []}), swap)
        same_404(feedback({"answer_id": answer_id, "relevant": [alpha_chunk]}),
                 feedback({"answer_id": unknown_answer, "relevant": [alpha_chunk]}), swap)
    assert received() == before  # none of it was recorded
    ok = feedback({"query": "q", "cited": [alpha_chunk], "relevant": [alpha_chunk]})
    assert ok.status_code == 200 and received() == before + 1  # alpha's own chunk: recorded


# -- fair queueing and rate limits ----------------------------------------------------------------------------


@dataclass
class BravoUnderFlood:
    outstanding: int  # alpha's requests not yet answered when bravo's was sent
    overtaken: int  # alpha's requests answered while bravo's was in flight
    seconds: float
    status: int


async def test_a_flooding_tenant_does_not_starve_another(world: World) -> None:
    """Alpha sends FLOOD concurrent asks against ``serve.max_concurrent = 2``; with a deep queue of alpha's
    requests waiting, each of bravo's requests takes the next free slot: it finishes before a quarter of alpha's
    waiting requests do (first come, first served would make it wait for all of them)."""
    base = world.server.base_url
    limits = httpx.Limits(max_connections=FLOOD + 20, max_keepalive_connections=FLOOD + 20)
    bravo_body = {"question": f"Who was paid in {MARKER} bonds?", "mode": "bm25"}
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        lone = []
        for _ in range(3):
            started = time.perf_counter()
            assert (await http.post("/v1/ask", json=bravo_body, headers=world.bravo)).status_code == 200
            lone.append(time.perf_counter() - started)
        answered: list[float] = []
        statuses: list[int] = []

        async def alpha_request(n: int) -> None:
            body = {"question": f"Who sailed the Albatross to Porto, question {n}?", "mode": "bm25"}
            response = await http.post("/v1/ask", json=body, headers=world.alpha)
            statuses.append(response.status_code)
            answered.append(time.perf_counter())

        flood_started = time.perf_counter()
        flood = [asyncio.create_task(alpha_request(n)) for n in range(FLOOD)]
        deepest = 0.0
        # the server holds a quarter of the flood in its queue (15x its slots); on a slow machine the client sends
        # the flood slowly enough that the queue may never hold half of it
        while deepest < FLOOD // 4:
            assert time.perf_counter() - flood_started < 60 and len(answered) < FLOOD // 2, (
                f"the flood never queued up (deepest queue {deepest}, {len(answered)} answered)")
            deepest = max(deepest, metric_value((await http.get("/metrics")).text, "ragkit_requests_waiting"))
            await asyncio.sleep(0.005)
        bravo: list[BravoUnderFlood] = []
        for _ in range(3):
            outstanding, done_before, started = FLOOD - len(answered), len(answered), time.perf_counter()
            response = await http.post("/v1/ask", json=bravo_body, headers=world.bravo)
            seconds = time.perf_counter() - started
            bravo.append(BravoUnderFlood(outstanding, len(answered) - done_before, seconds, response.status_code))
            assert response.status_code == 200, response.text
            found = {h["doc_id"] for h in response.json()["hits"]}
            assert found and found <= set(world.bravo_chunks.values()), found  # bravo's own answer
        await asyncio.gather(*flood)
        flood_seconds = max(answered) - flood_started
    assert statuses == [200] * FLOOD  # generous per-key limits: the flood is queued, not refused
    report = (f"lone {[round(s, 3) for s in lone]} s; flood of {FLOOD} took {flood_seconds:.2f} s; "
              f"deepest queue {deepest:g}; bravo under the flood: {bravo}")
    for request in bravo:
        assert request.status == 200, report
        assert request.outstanding >= FLOOD // 4, report  # it was sent while alpha's flood was still queued
        assert request.overtaken <= request.outstanding // 4, report
        assert request.seconds < flood_seconds / 4, report


def test_a_key_over_its_rate_gets_429_with_retry_after(world: World) -> None:
    metered = world.key("alpha-metered")
    body = {"query": "Albatross Lisbon", "mode": "bm25", "k": 2}
    time.sleep(1.0 / METERED_RATE)  # a full bucket (one token: a burst of one second's worth)
    first = world.http.post("/v1/retrieve", json=body, headers=metered)
    assert first.status_code == 200, first.text
    refused = [world.http.post("/v1/retrieve", json=body, headers=metered) for _ in range(4)]
    for response in refused:
        assert response.status_code == 429, response.text
        retry_after = int(response.headers["retry-after"])
        assert 1 <= retry_after <= 1.0 / METERED_RATE + 1
        error = assert_reveals_nothing(world, response)["error"]
        assert error["code"] == "rate_limited_rate" and "alpha-metered" in error["message"]
    # the limit is the key's: alpha's other key and bravo are served meanwhile
    assert world.http.post("/v1/retrieve", json=body, headers=world.alpha).status_code == 200
    assert world.http.post("/v1/retrieve", json=body, headers=world.bravo).status_code == 200
    time.sleep(int(refused[-1].headers["retry-after"]))
    assert world.http.post("/v1/retrieve", json=body, headers=metered).status_code == 200


# -- keys and scopes ------------------------------------------------------------------------------------------


ENDPOINTS: tuple[tuple[str, str, dict[str, Any] | None], ...] = (
    ("POST", "/v1/retrieve", {"query": "Albatross"}),
    ("POST", "/v1/ask", {"question": "Who sailed the Albatross?"}),
    ("POST", "/v1/chat/completions", {"model": "ragkit", "messages": [{"role": "user", "content": "Albatross?"}]}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/documents", None),
    ("POST", "/v1/documents", {"documents": [{"id": "ax-nope", "text": "never indexed"}]}),
    ("DELETE", "/v1/documents/ax-harbor", None),
    ("GET", f"/v1/jobs/{'0' * 32}", None),
    ("POST", "/v1/feedback", {"query": "q", "cited": [], "relevant": []}),
)


def test_read_only_key_cannot_upload_delete_or_follow_jobs(world: World) -> None:
    reader = world.key("alpha-reader")
    assert world.http.post("/v1/retrieve", json={"query": "Albatross"}, headers=reader).status_code == 200
    refused = [
        world.http.post("/v1/documents", headers=reader, json={"documents": [{"id": "ax-nope", "text": "no"}]}),
        world.http.post("/v1/documents", headers=reader, files=[("files", ("nope.txt", b"no", "text/plain"))]),
        world.http.delete("/v1/documents/ax-harbor", headers=reader),
        world.http.delete(f"/v1/documents/{ALPHA}:ax-harbor", headers=reader),
        world.http.delete("/v1/documents/bx-vault-0001", headers=reader),
        world.http.get(f"/v1/jobs/{world.bravo_jobs[0]}", headers=reader),
    ]
    for response in refused:
        assert response.status_code == 403, response.text
        error = assert_reveals_nothing(world, response)["error"]
        assert error["code"] == "insufficient_scope" and "write" in error["message"]
    listed = world.http.get("/v1/documents", params={"limit": 1000}, headers=reader).json()
    assert sorted(d["id"] for d in listed["documents"]) == sorted(ALPHA_DOCS)  # nothing uploaded or deleted


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_every_endpoint_needs_a_valid_key(world: World, method: str, path: str, body: dict[str, Any] | None) -> None:
    wrong = "rk_" + secrets.token_urlsafe(32)
    attempts = {
        "none": {},
        "wrong bearer": {"Authorization": f"Bearer {wrong}"},
        "wrong x-api-key": {"X-API-Key": wrong},
        "empty bearer": {"Authorization": "Bearer"},
        "basic": {"Authorization": f"Basic {world.secrets_by_name['alpha']}"},
        "hash as key": {"Authorization": f"Bearer sha256:{hashlib.sha256(b'x').hexdigest()}"},
    }
    for what, headers in attempts.items():
        response = world.http.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (what, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        error = assert_reveals_nothing(world, response)["error"]
        assert error["type"] == "authentication_error", what
    assert world.http.get("/v1/documents", headers=world.alpha).json()["total"] == len(ALPHA_DOCS)


def test_the_key_file_holds_hashes_never_secrets(world: World) -> None:
    text = world.keys_file.read_text()
    assert stat.S_IMODE(os.stat(world.keys_file).st_mode) == 0o600
    for name, secret in world.secrets_by_name.items():
        assert secret not in text and secret[len("rk_") + 4 :] not in text, name
        assert f"sha256:{hashlib.sha256(secret.encode()).hexdigest()}" in text, name
