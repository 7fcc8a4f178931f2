"""``/v1/documents`` and ``/v1/jobs`` over FastAPI's TestClient: uploads small (201) and large (a job with
progress), paging, tenant isolation on list, delete and jobs, hostile file names, bad files beside good ones,
shutdown and restart of the job manager.

The app is assembled here from the documents router and a tiny ``authorize`` (an ``X-API-Key`` header naming a
principal), so these tests need neither the full server nor a key file. The index uses the hashing embedder:
orchestration is the point, not retrieval quality.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient

from ragkit import Index
from ragkit.connectors.loaders.text import load_text
from ragkit.registry import loaders
from ragkit.serve.auth import Principal
from ragkit.serve.documents import documents_router
from ragkit.serve.jobs import INTERRUPTED, Job, JobManager, safe_file_name
from ragkit.testing import HashingEmbedder

RW = frozenset({"read", "write"})
PRINCIPALS = {
    "acme": Principal("acme-key", "acme", RW),
    "globex": Principal("globex-key", "globex", RW),
    "acme-reader": Principal("acme-reader", "acme", frozenset({"read"})),
    "admin": Principal("local", None, RW),
}
GATE_SUFFIX = ".gated"  # a loader that waits on GATE before each file: a job caught mid-way, on purpose
GATE = threading.Event()
LOADING = threading.Event()


def authorize(scope: str) -> Callable[[Request], Principal]:
    def dependency(request: Request) -> Principal:
        principal = PRINCIPALS.get(request.headers.get("x-api-key", ""))
        if principal is None:
            raise HTTPException(401, detail="missing or unknown API key")
        if not principal.allows(scope):
            raise HTTPException(403, detail=f"this key lacks the {scope!r} scope")
        return principal

    return dependency


def key(name: str) -> dict[str, str]:
    return {"X-API-Key": name}


def gated_loader(path: Path, fields: Any, max_file_bytes: int | None) -> Iterator[Any]:
    LOADING.set()
    assert GATE.wait(30), "the test never opened the gate"
    yield from load_text(path, max_file_bytes)


@pytest.fixture(scope="module", autouse=True)
def gated_suffix() -> Iterator[None]:
    loaders.register(GATE_SUFFIX, gated_loader)
    yield
    loaders.unregister(GATE_SUFFIX)


class Server:
    """An index, a JobManager over ``data`` and a TestClient of an app with the documents router."""

    def __init__(self, root: Path, **limits: Any) -> None:
        self.root = root
        self.index = Index.create(root / "index", embedder=HashingEmbedder(64), graph=False, exist_ok=True)
        self.data = root / "data"
        self.jobs = JobManager(self.index, self.data, **limits)
        app = FastAPI()
        app.include_router(documents_router(index=self.index, jobs=self.jobs, authorize=authorize))
        self.client = TestClient(app)

    def close(self) -> None:
        self.client.close()
        self.jobs.close(5)
        self.index.close()

    def upload(self, who: str, documents: list[dict[str, Any]]) -> Any:
        return self.client.post("/v1/documents", json={"documents": documents}, headers=key(who))

    def upload_files(self, who: str, files: list[tuple[str, bytes]]) -> Any:
        parts = [("files", (name, content, "application/octet-stream")) for name, content in files]
        return self.client.post("/v1/documents", files=parts, headers=key(who))

    def listing(self, who: str, **params: Any) -> dict[str, Any]:
        response = self.client.get("/v1/documents", params=params, headers=key(who))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def all_ids(self, who: str, limit: int = 7) -> list[str]:
        ids, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor:
                params["cursor"] = cursor
            page = self.listing(who, **params)
            ids += [d["id"] for d in page["documents"]]
            cursor = page["next_cursor"]
            if not cursor:
                return ids

    def wait(self, who: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.client.get(f"/v1/jobs/{job_id}", headers=key(who)).json()["job"]
            if job["status"] in ("done", "failed"):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish in {timeout}s")


def text(word: str, n: int = 40) -> str:
    return " ".join(f"{word} sentence number {i} about {word}." for i in range(n))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = Server(tmp_path_factory.mktemp("serve-docs"), sync_max_items=5, sync_max_bytes=64 * 1024)
    yield instance
    instance.close()


# -- uploads ----------------------------------------------------------------------------------------------------


def test_small_json_upload_is_indexed_before_the_reply_and_tagged_with_the_tenant(server: Server) -> None:
    response = server.upload(
        "acme",
        [
            {"id": "handbook", "text": text("zebrafinch"), "title": "Handbook", "metadata": {"lang": "en"}},
            {"id": "faq", "text": text("okapi")},
        ],
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["job"]["status"] == "done" and body["errors"] == []
    listed = {d["id"]: d for d in body["documents"]}
    assert set(listed) == {"handbook", "faq"} and all(d["chunks"] > 0 for d in listed.values())
    # retrievable right away, only inside the tenant
    hits = server.index.retrieve("zebrafinch", k=3, mode="bm25", where={"tenant": "acme"})
    assert hits and hits[0].chunk.doc_id == listed["handbook"]["doc_id"]
    assert not server.index.retrieve("zebrafinch", k=3, mode="bm25", where={"tenant": "globex"})
    stored = server.index.documents([listed["handbook"]["doc_id"]])[listed["handbook"]["doc_id"]]
    assert stored.meta == {"lang": "en"} and stored.title == "Handbook"


def test_metadata_cannot_choose_the_tenant(server: Server) -> None:
    before = server.listing("globex")["total"]
    response = server.upload("acme", [{"id": "x", "text": "hi there", "metadata": {"tenant": "globex"}}])
    assert response.status_code == 400 and "tenant" in response.json()["detail"]
    assert server.listing("globex")["total"] == before


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"documents": [{"id": "a", "text": "\xff\xfe"}]}', 400, "UTF-8"),
        (b'{"documents": [{"id": 5, "text": "t"}]}', 422, "documents.0.id"),
        (b'{"documents": []}', 422, "documents"),
        (b'{"documents": [{"id": "a", "text": "t", "colour": 1}]}', 422, "colour"),
        (b'["a"]', 422, "body"),
    ],
)
def test_bad_json_bodies_are_4xx_naming_the_problem(server: Server, body: bytes, status: int, needle: str) -> None:
    headers = {**key("acme"), "Content-Type": "application/json"}
    response = server.client.post("/v1/documents", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert needle in response.json()["detail"]


def test_other_content_types_and_missing_scopes_are_refused(server: Server) -> None:
    response = server.client.post("/v1/documents", content=b"x", headers={**key("acme"), "Content-Type": "text/plain"})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]
    assert server.upload("acme-reader", [{"id": "r", "text": "read only"}]).status_code == 403
    assert server.client.get("/v1/documents").status_code == 401


def test_a_bad_file_is_reported_and_the_others_land(server: Server) -> None:
    response = server.upload_files(
        "acme",
        [
            ("good-one.md", b"# Good one\n\n" + text("capybara").encode()),
            ("broken.txt", b"\x00\x01\x02 binary garbage \x00" * 50),
            ("good-two.txt", text("axolotl").encode()),
            ("program.exe", b"MZ...."),
        ],
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert sorted(d["source"] for d in body["documents"]) == ["good-one.md", "good-two.txt"]
    assert {e["source"]: e["stage"] for e in body["errors"]} == {"broken.txt": "load", "program.exe": "load"}
    assert "binary" in next(e["reason"] for e in body["errors"] if e["source"] == "broken.txt")
    assert str(server.root) not in response.text  # no server path, in documents or errors
    assert body["job"]["progress"]["files"] == {"done": 4, "total": 4}
    hits = server.index.retrieve("capybara", k=1, mode="bm25", where={"tenant": "acme"})
    assert hits[0].chunk.meta.get("title") == "Good one"
    assert server.index.catalog.document_sources([hits[0].chunk.doc_id]) == {hits[0].chunk.doc_id: "good-one.md"}
    assert list((server.data / "uploads").rglob("*.*")) == []  # staged files are gone once the job ended


def test_uploading_a_file_again_updates_its_document(server: Server) -> None:
    first = server.upload_files("globex", [("notes.txt", text("pangolin").encode())]).json()
    again = server.upload_files("globex", [("notes.txt", text("quokka").encode())]).json()
    assert first["documents"][0]["id"] == again["documents"][0]["id"]
    assert again["job"]["report"]["updated"] == 1
    assert server.index.retrieve("quokka", k=1, mode="bm25", where={"tenant": "globex"})
    assert not server.index.retrieve("pangolin", k=1, mode="bm25", where={"tenant": "globex"})


def test_a_large_upload_is_a_job_with_progress(server: Server) -> None:
    GATE.clear()
    LOADING.clear()
    files = [(f"part{i:02d}{GATE_SUFFIX}", text(f"ibex{i}", 20).encode()) for i in range(8)]
    response = server.upload_files("acme", files)
    assert response.status_code == 202, response.text
    job = response.json()["job"]
    assert job["status"] in ("queued", "running") and response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert LOADING.wait(30)
    running = server.client.get(f"/v1/jobs/{job['id']}", headers=key("acme")).json()["job"]
    assert running["status"] == "running"
    assert running["progress"]["files"] == {"done": 0, "total": 8}
    # nothing of a running job is visible: it commits once, at the end
    assert not server.index.retrieve("ibex1", k=1, mode="bm25", where={"tenant": "acme"})
    GATE.set()
    done = server.wait("acme", job["id"])
    assert done["status"] == "done", done
    assert done["progress"]["files"] == {"done": 8, "total": 8}
    assert done["progress"]["chunks"]["done"] == done["progress"]["chunks"]["total"] > 0
    assert done["report"]["added"] == 8 and len(done["documents"]) == 8
    assert server.index.retrieve("ibex7", k=1, mode="bm25", where={"tenant": "acme"})
    # another tenant cannot see the job, and gets the answer an unknown job gets
    other = server.client.get(f"/v1/jobs/{job['id']}", headers=key("globex"))
    unknown = server.client.get(f"/v1/jobs/{'0' * 32}", headers=key("globex"))
    assert other.status_code == unknown.status_code == 404
    assert other.json()["detail"].replace(job["id"], "X") == unknown.json()["detail"].replace("0" * 32, "X")


def test_large_json_upload_is_a_job(server: Server) -> None:
    docs = [{"id": f"bulk-{i}", "text": text(f"walrus{i}", 2)} for i in range(150)]
    response = server.upload("globex", docs)
    assert response.status_code == 202
    done = server.wait("globex", response.json()["job"]["id"])
    assert done["status"] == "done" and done["progress"]["documents"] == {"done": 150, "total": 150}
    assert {d["id"] for d in done["documents"]} == {f"bulk-{i}" for i in range(150)}


def test_a_job_commits_once_however_many_batches_it_spans(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import ragkit.pipelines.indexing as indexing
    from ragkit.catalog import Catalog

    monkeypatch.setattr(indexing, "BATCH_CHUNKS", 4)  # 30 one-chunk documents: 8 batches
    transactions = []
    original = Catalog.transaction

    def counted(self: Catalog) -> Any:
        transactions.append(self.path)
        return original(self)

    monkeypatch.setattr(Catalog, "transaction", counted)
    docs = [{"id": f"batch-{i}", "text": f"dugong number {i}"} for i in range(30)]
    response = server.upload("globex", docs)
    assert response.status_code == 202
    done = server.wait("globex", response.json()["job"]["id"])
    assert done["status"] == "done" and done["report"]["added"] == 30 and done["progress"]["chunks"]["done"] == 30
    assert len(transactions) == 1


# -- hostile file names -----------------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "../../escape-up.txt",
    "/tmp/absolute.txt",
    "..\\..\\windows.txt",
    "a/../../../nested.txt",
    "ctrl\x01\x1fname.txt",
    "\u202etxt.exe.md",
    "line\u2028break\u200b.txt",
    "....txt",
    "..",
    ".",
    "",
    "x" * 400 + ".txt",
    "../" * 50,
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_safe_file_name_keeps_a_plain_base_name(name: str) -> None:
    safe = safe_file_name(name, "fallback")
    assert safe and "/" not in safe and "\\" not in safe and "\x00" not in safe
    assert not safe.startswith(".") and safe == safe.strip()
    assert all(ch.isprintable() and ch not in "\u202e" for ch in safe)
    assert len(safe.encode("utf-8")) <= 120
    if name.endswith(".txt") and not name.rsplit("/", 1)[-1].startswith("."):
        assert safe.endswith(".txt")


def test_path_tricks_in_file_names_stay_under_the_data_dir(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    staged: list[Path] = []
    original = server.jobs.stage_file

    def record(job: Job, name: str | None, content: Any, taken: set[str]) -> Any:
        result = original(job, name, content, taken)
        staged.append(result.path)
        return result

    monkeypatch.setattr(server.jobs, "stage_file", record)
    def outside_files() -> list[Path]:  # everything near the server but its data dir and its index
        return sorted(p for p in server.root.parent.rglob("*") if not {server.data, server.index.path} & set(p.parents))

    outside = outside_files()
    names = [n for n in HOSTILE_NAMES if n.endswith(".txt")] + ["", "..", "../" * 50, "nul\x00byte.txt"]
    # written by hand: an HTTP client would drop an empty filename and escape the control characters
    boundary = "hostile-boundary-1234"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n\r\n'.encode()
        + text(f"marmot{i}", 3).encode()
        + b"\r\n"
        for i, name in enumerate(names)
    ) + f"--{boundary}--\r\n".encode()
    headers = {**key("acme"), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = server.client.post("/v1/documents", content=body, headers=headers)
    assert response.status_code == 202, response.text  # more files than a small upload holds: a job
    job = server.wait("acme", response.json()["job"]["id"])
    assert job["status"] == "done", job
    uploads = (server.data / "uploads").resolve()
    assert len(staged) == len(names)
    for path in staged:
        assert uploads in path.resolve().parents and path.resolve().parent.parent.parent == uploads
    assert len({p.name for p in staged}) == len(names)  # equal safe names were made distinct
    assert outside_files() == outside
    assert str(server.root) not in json.dumps(job)
    sources = {d["source"] for d in job["documents"]}
    assert {"escape-up.txt", "absolute.txt", "windows.txt", "nested.txt"} <= sources
    assert all("/" not in s and not s.startswith(".") for s in sources)


# -- listing, paging, tenants and deletes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A fresh index with 23 documents of acme and 4 of globex, two of which share an id with acme's."""
    instance = Server(tmp_path_factory.mktemp("tenants"), sync_max_items=100, sync_max_bytes=2**20)
    acme = [{"id": f"a{i:02d}", "text": text(f"acme{i}", 3)} for i in range(21)] + [
        {"id": "shared", "text": text("acmeshared", 3)},
        {"id": "dir/with/slashes", "text": text("acmeslash", 3)},
    ]
    globex = [{"id": f"g{i}", "text": text(f"globex{i}", 3)} for i in range(3)] + [
        {"id": "shared", "text": text("globexshared", 3)}
    ]
    assert instance.upload("acme", acme).status_code == 201
    assert instance.upload("globex", globex).status_code == 201
    yield instance
    instance.close()


def test_list_pages_cover_the_tenant_exactly(tenants: Server) -> None:
    expected = sorted([f"a{i:02d}" for i in range(21)] + ["shared", "dir/with/slashes"])
    by_cursor = tenants.all_ids("acme", limit=7)
    assert sorted(by_cursor) == expected and len(by_cursor) == len(set(by_cursor))
    by_offset = []
    for offset in range(0, 30, 10):
        page = tenants.listing("acme", limit=10, offset=offset)
        assert page["total"] == 23
        by_offset += [d["id"] for d in page["documents"]]
    assert by_offset == by_cursor
    first = tenants.listing("acme", limit=5)
    assert [d["id"] for d in first["documents"]] == by_cursor[:5]
    assert all(d["tags"] == {"tenant": "acme"} and d["chunks"] >= 1 for d in first["documents"])
    chunks = sum(d["chunks"] for d in tenants.listing("acme", limit=100)["documents"])
    assert first["chunks"] == chunks


def test_lists_and_counts_show_only_the_callers_tenant(tenants: Server) -> None:
    globex = tenants.listing("globex", limit=100)
    assert sorted(d["id"] for d in globex["documents"]) == ["g0", "g1", "g2", "shared"]
    assert globex["total"] == 4 and "acme" not in json.dumps(globex)
    everything = tenants.listing("admin", limit=100)
    assert everything["total"] == 27
    assert {d["doc_id"] for d in everything["documents"]} >= {"acme:shared", "globex:shared"}


def test_bad_paging_parameters_are_refused(tenants: Server) -> None:
    for params in ({"limit": 0}, {"limit": 5000}, {"offset": -1}, {"limit": "many"}):
        response = tenants.client.get("/v1/documents", params=params, headers=key("acme"))
        assert response.status_code == 422, params
    response = tenants.client.get("/v1/documents", params={"cursor": "%%%"}, headers=key("acme"))
    assert response.status_code == 400 and "cursor" in response.json()["detail"]


def test_delete_reaches_only_the_callers_own_documents(tenants: Server) -> None:
    def delete(who: str, doc_id: str) -> Any:
        return tenants.client.delete(f"/v1/documents/{doc_id}", headers=key(who))

    other = delete("globex", "a03")  # acme's, by the id acme sees
    other_full = delete("globex", "acme:a04")  # acme's, by the id hits carry
    unknown = delete("globex", "no-such-doc")
    assert other.status_code == other_full.status_code == unknown.status_code == 404
    assert other.json()["detail"] == "document 'a03' not found"
    assert tenants.listing("acme", limit=1)["total"] == 23
    # the same id in two tenants: each deletes its own
    assert delete("globex", "shared").json() == {"deleted": {"id": "shared", "doc_id": "globex:shared"}}
    assert tenants.index.retrieve("acmeshared", k=1, mode="bm25", where={"tenant": "acme"})
    assert not tenants.index.retrieve("globexshared", k=1, mode="bm25")
    assert delete("acme", "dir/with/slashes").status_code == 200
    assert delete("acme", "acme:a05").json()["deleted"]["id"] == "a05"
    assert delete("acme", "a05").status_code == 404
    assert tenants.listing("acme", limit=1)["total"] == 21


def test_delete_never_treats_the_id_as_a_path(tenants: Server) -> None:
    before = tenants.listing("admin", limit=1)["total"]
    for path in (str(tenants.root), str(tenants.data), "/", ".", "..", "acme", "acme:"):
        url = "/v1/documents/" + quote(path, safe="").replace(".", "%2E")  # as it is, not as a client normalizes
        assert tenants.client.delete(url, headers=key("admin")).status_code == 404, path
        assert tenants.client.delete(url, headers=key("acme")).status_code == 404, path
    assert tenants.listing("admin", limit=1)["total"] == before


# -- restart and shutdown ---------------------------------------------------------------------------------------


def test_an_interrupted_job_is_failed_after_a_restart(tmp_path: Path) -> None:
    first = Server(tmp_path)
    job = first.jobs.create("acme", "files")
    folder = first.jobs.upload_dir(job)
    (folder / "left-behind.txt").write_text("staged but never indexed")
    record = json.loads((first.data / "jobs" / f"{job.id}.json").read_text())
    assert record["status"] == "queued"
    first.close()
    # a record written as the running job left it, then the process died
    record["status"], record["started_at"] = "running", time.time()
    (tmp_path / "data" / "jobs" / f"{job.id}.json").write_text(json.dumps(record))
    (tmp_path / "data" / "jobs" / "garbage.json").write_text("{half a rec")
    (tmp_path / "data" / "jobs" / f".{job.id}.0123.tmp").write_text("{half a rec")  # killed mid-write
    second = Server(tmp_path)
    try:
        shown = second.client.get(f"/v1/jobs/{job.id}", headers=key("acme")).json()["job"]
        assert shown["status"] == "failed" and shown["error"] == INTERRUPTED
        assert not folder.exists()
        assert json.loads((tmp_path / "data" / "jobs" / f"{job.id}.json").read_text())["status"] == "failed"
        assert sorted(os.listdir(tmp_path / "data" / "jobs")) == [f"{job.id}.json", "garbage.json"]
    finally:
        second.close()


def test_close_cancels_a_running_job_and_leaves_no_trace(tmp_path: Path) -> None:
    instance = Server(tmp_path, sync_max_items=1)
    GATE.clear()
    LOADING.clear()
    files = [(f"c{i}{GATE_SUFFIX}", text(f"narwhal{i}", 5).encode()) for i in range(4)]
    response = instance.upload_files("acme", files)
    assert response.status_code == 202
    job_id = response.json()["job"]["id"]
    assert LOADING.wait(30)
    threading.Timer(0.3, GATE.set).start()  # the job goes on after close() began waiting, then is cancelled
    started = time.monotonic()
    instance.jobs.close(0.1)
    assert time.monotonic() - started < 5
    record = json.loads((tmp_path / "data" / "jobs" / f"{job_id}.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("cancelled")
    assert instance.index.catalog.count_documents() == {"documents": 0, "chunks": 0}
    refused = instance.upload("acme", [{"id": "late", "text": "after close"}])
    assert refused.status_code == 503
    instance.client.close()
    instance.index.close()


def test_job_records_are_written_atomically(tmp_path: Path) -> None:
    instance = Server(tmp_path)
    try:
        response = instance.upload("acme", [{"id": "one", "text": text("lemur", 3)}])
        job_id = response.json()["job"]["id"]
        names = os.listdir(tmp_path / "data" / "jobs")
        assert names == [f"{job_id}.json"]  # no temporary file left behind
        record = json.loads((tmp_path / "data" / "jobs" / names[0]).read_text())
        assert record["status"] == "done" and record["tenant"] == "acme"
    finally:
        instance.close()


# -- through the real `ragkit serve` ----------------------------------------------------------------------------


def test_uploads_through_the_real_server_stay_inside_their_tenant(tmp_path: Path) -> None:
    """``ragkit serve`` in a subprocess with two tenants' keys: an upload is retrievable by its tenant at once,
    invisible to the other, and deleted only by its own tenant."""
    import httpx
    from serve_helpers import build_index, start_ragkit_serve

    from ragkit.serve.auth import add_key

    index = build_index(tmp_path / "index")
    keys = tmp_path / "keys.toml"
    alice = {"Authorization": f"Bearer {add_key(keys, 'alice', tenant='acme', scopes=['read', 'write'])}"}
    bob = {"Authorization": f"Bearer {add_key(keys, 'bob', tenant='globex', scopes=['read', 'write'])}"}
    with start_ragkit_serve(index, tmp_path, keys=keys) as server, httpx.Client(base_url=server.base_url) as http:
        notes = b"# Wombats\n\n" + text("wombat", 10).encode()
        files = [
            ("files", ("../../../tmp/wombat-notes.md", notes, "text/markdown")),
            ("files", ("broken.pdf", b"%PDF-1.4 this is not a pdf at all", "application/pdf")),
        ]
        uploaded = http.post("/v1/documents", files=files, headers=alice, timeout=60)
        assert uploaded.status_code == 201, uploaded.text
        body = uploaded.json()
        assert [d["source"] for d in body["documents"]] == ["wombat-notes.md"]
        assert [e["source"] for e in body["errors"]] == ["broken.pdf"]
        assert str(tmp_path) not in uploaded.text
        doc_id = body["documents"][0]["doc_id"]

        def hits(who: dict[str, str]) -> list[dict[str, Any]]:
            response = http.post("/v1/retrieve", json={"query": "wombat", "k": 3, "mode": "bm25"}, headers=who)
            assert response.status_code == 200, response.text
            assert str(tmp_path) not in response.text
            found: list[dict[str, Any]] = response.json()["hits"]
            return found

        assert hits(alice)[0]["doc_id"] == doc_id and hits(alice)[0]["source"] == "wombat-notes.md"
        assert all(hit["doc_id"] != doc_id for hit in hits(bob))
        listed = http.get("/v1/documents", headers=bob).json()
        assert listed["total"] == 2 and doc_id not in json.dumps(listed)  # globex's two documents of the corpus
        job_id = body["job"]["id"]
        assert http.get(f"/v1/jobs/{job_id}", headers=bob).status_code == 404
        assert http.delete(f"/v1/documents/{body['documents'][0]['id']}", headers=bob).status_code == 404
        assert hits(alice)[0]["doc_id"] == doc_id
        # a large JSON upload: a job, followed to the end
        docs = [{"id": f"kiwi-{i}", "text": text(f"kiwi{i}", 3)} for i in range(25)]
        accepted = http.post("/v1/documents", json={"documents": docs}, headers=alice)
        assert accepted.status_code == 202, accepted.text
        deadline = time.monotonic() + 60
        while (job := http.get(accepted.headers["location"], headers=alice).json()["job"])["status"] not in (
            "done",
            "failed",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job["status"] == "done" and job["report"]["added"] == 25
        assert http.get("/v1/documents", headers=alice).json()["total"] == 3 + 1 + 25
        assert http.delete(f"/v1/documents/{body['documents'][0]['id']}", headers=alice).status_code == 200
        assert all(hit["doc_id"] != doc_id for hit in hits(alice))
