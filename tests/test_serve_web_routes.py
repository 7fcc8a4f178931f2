"""The routes behind the web page of ``ragkit serve`` (issue 19), over FastAPI's TestClient and the real app.

Checked: ``/`` is the page and every file it names is served from the package with its content type and
nothing from elsewhere (no CDN, no path tricks); ``/web/auth`` says whether a key is needed; ``GET /v1/index``
counts a tenant's documents and chunks only (the index-wide graph counts only for the keyless server), shows
settings without keys, tokens, URLs or paths, and names the newest ``ragkit eval`` report under
``<index>/reports/`` with its plot; a broken or outside report is reported or ignored, never a 500.
The browser itself is tests/test_web.py's business; these tests need none.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import ACME, CORPUS, GLOBEX, build_index

from ragkit import Index
from ragkit.config import Settings
from ragkit.eval.report import EvalReport, ModeResult, write_report
from ragkit.serve.app import WEB_DIR, _shown_name, create_app, latest_report
from ragkit.serve.auth import KeyRing, add_key
from ragkit.testing import HashingEmbedder, ScriptedGenerator
from ragkit.types import Document

SECRETS = {
    "api_key": "sk-test-DO-NOT-SHOW-4242",
    "base_url": "http://10.9.8.7:9999/v1",
    "token": "milvus-token-DO-NOT-SHOW",
}
CONTRACT_IDS = (
    "key-form", "key-input", "key-status", "tab-ask", "tab-documents", "tab-index", "ask", "documents", "index",
    "ask-form", "question", "mode", "k", "ask-button", "answer", "answer-meta", "sources", "dropzone",
    "upload-input", "job-status", "documents-table", "filter-source", "stats", "settings", "eval-report", "error",
)


class Served:
    """An open index, its app and a TestClient that has run the app's start-up (the server is ready)."""

    def __init__(self, path: Path, *, keyring: KeyRing | None = None, settings: Settings | None = None) -> None:
        settings = settings or Settings.model_validate({"generator": {"name": "extractive"}})
        self.index = Index.open(path, settings, embedder=HashingEmbedder(64))
        self.app = create_app(self.index, keyring=keyring, generator=ScriptedGenerator())
        self.client = TestClient(self.app)

    def __enter__(self) -> Served:
        self.client.__enter__()
        for _ in range(200):
            if self.client.get("/readyz").status_code == 200:
                return self
            time.sleep(0.05)
        raise AssertionError(f"the app never became ready: {self.client.get('/readyz').text}")

    def __exit__(self, *exc_info: object) -> None:
        self.client.__exit__(*exc_info)
        self.index.close()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def assert_error(response: Any, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]["message"]
    for word in words:
        assert word in message, message


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-web")


@pytest.fixture(scope="module")
def keys(workdir: Path) -> tuple[KeyRing, dict[str, str]]:
    path = workdir / "keys.toml"
    secrets = {t: add_key(path, f"{t}-key", tenant=t, scopes=["read", "write"]) for t in (ACME, GLOBEX)}
    return KeyRing.load(path), secrets


@pytest.fixture(scope="module")
def local(workdir: Path) -> Iterator[Served]:
    """The keyless loopback server over the two-tenant index of serve_helpers (no reports folder)."""
    with Served(build_index(workdir / "plain")) as served:
        yield served


@pytest.fixture(scope="module")
def tenants(workdir: Path, keys: tuple[KeyRing, dict[str, str]]) -> Iterator[Served]:
    """The same index served with two tenants' keys."""
    with Served(build_index(workdir / "tenants"), keyring=keys[0]) as served:
        yield served


# -- the page and its files -------------------------------------------------------------------------------------


def test_the_page_and_every_file_it_names_are_served_with_their_content_types(local: Served) -> None:
    page = local.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.text == (WEB_DIR / "index.html").read_text(encoding="utf-8")
    for element_id in CONTRACT_IDS:
        assert f'id="{element_id}"' in page.text, element_id
    for stat in ("documents", "chunks", "entities", "relations"):
        assert f'data-stat="{stat}"' in page.text
    named = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert sorted(named) == ["/static/app.js", "/static/style.css"]
    expected = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
    for url in named:
        name = url.rsplit("/", 1)[1]
        response = local.client.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"] == expected[name]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content == (WEB_DIR / name).read_bytes()


def test_nothing_is_loaded_from_outside_the_server() -> None:
    """No CDN, no web fonts, no third-party script: the only absolute URL is SVG's namespace name."""
    for path in sorted(WEB_DIR.iterdir()):
        text = path.read_text(encoding="utf-8")
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"'`)]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)
        assert "@import" not in text and "@font-face" not in text


@pytest.mark.parametrize(
    "path",
    [
        "/static/%2e%2e/app.py",          # ../app.py, percent-encoded so the client sends it as is
        "/static/..%2fapp.py",
        "/static/..%2F..%2Fpyproject.toml",
        "/static/%2Fetc%2Fpasswd",        # an absolute path
        "/static//etc/passwd",
        "/static/web/index.html",         # a folder
        "/static/%2e%2e",
        "/static/",
        "/static/app.py",                 # not a file of the page
        "/static/missing.js",
        "/static/app.js%00.png",
    ],
)
def test_static_refuses_paths_outside_the_page_folder(local: Served, path: str) -> None:
    response = local.client.get(path)
    assert_error(response, 404, "no such file: /static/")  # the route saw the path (no client-side clean-up)
    assert "root:" not in response.text and "[project]" not in response.text and "import" not in response.text


def test_web_auth_says_whether_a_key_is_needed(local: Served, tenants: Served) -> None:
    assert local.client.get("/web/auth").json() == {"keys": False}
    assert tenants.client.get("/web/auth").json() == {"keys": True}  # asked without a key: still answered
    assert tenants.client.get("/").status_code == 200  # the page holds no data: no key needed for it


# -- GET /v1/index: counts ----------------------------------------------------------------------------------------


def test_keyless_server_counts_the_whole_index(local: Served) -> None:
    info = local.client.get("/v1/index").json()
    assert info["tenant"] is None and info["key"] is None and info["counts_scope"] == "index"
    catalog = local.index.catalog.counts()
    assert info["counts"] == {"documents": len(CORPUS), "chunks": catalog["chunks"], "entities": None,
                              "relations": None}  # built without a graph: no graph counts to give
    assert catalog["chunks"] >= len(CORPUS)


def test_a_tenant_key_counts_only_its_tenant(tenants: Served, keys: tuple[KeyRing, dict[str, str]]) -> None:
    _, secrets = keys
    assert_error(tenants.client.get("/v1/index"), 401, "API key")
    assert_error(tenants.client.get("/v1/index", headers=bearer("rk_not-a-key")), 401, "invalid API key")
    for tenant in (ACME, GLOBEX):
        info = tenants.client.get("/v1/index", headers=bearer(secrets[tenant])).json()
        owned = [doc_id for doc_id, owner, _ in CORPUS if owner == tenant]
        chunks = sum(d.chunks for d in tenants.index.catalog.list_documents(ids=owned, limit=len(owned)))
        assert info["tenant"] == tenant and info["key"] == f"{tenant}-key" and info["counts_scope"] == "tenant"
        assert info["counts"] == {"documents": len(owned), "chunks": chunks, "entities": None, "relations": None}
    # the two tenants' counts add up to the index's: neither saw the other's documents
    seen = [tenants.client.get("/v1/index", headers=bearer(secrets[t])).json()["counts"] for t in (ACME, GLOBEX)]
    assert sum(counts["documents"] for counts in seen) == len(CORPUS)


@pytest.fixture(scope="module")
def graph_index(workdir: Path) -> Path:
    """A tiny index with a knowledge graph (real spaCy extraction, the hashing embedder), two tenants."""
    settings = Settings.model_validate({"chunking": {"strategy": "none"}, "graph": {"options": {"n_process": 1}}})
    path = workdir / "graph"
    with Index.create(path, settings, embedder=HashingEmbedder(64)) as index:
        index.add_documents([Document("p0", "Velmora Quintrell is a novelist from Ostravia. Her mother was Dariela "
                                      "Fenwoch, a painter.", "p0.md")], meta={"tenant": ACME})
        index.add_documents([Document("m0", "Dariela Fenwoch was a painter of river landscapes who died in 1911 in "
                                      "Karsk.", "m0.md")], meta={"tenant": GLOBEX})
    return path


def test_graph_counts_go_to_the_keyless_server_only(
    graph_index: Path, keys: tuple[KeyRing, dict[str, str]]
) -> None:
    with Served(graph_index) as served:
        graph = served.index.graph_stats()
        assert graph is not None and graph["entities"] > 0 and graph["relations"] > 0
        counts = served.client.get("/v1/index").json()["counts"]
        assert counts["entities"] == graph["entities"] and counts["relations"] == graph["relations"]
        assert counts["documents"] == 2
    keyring, secrets = keys
    with Served(graph_index, keyring=keyring) as served:
        info = served.client.get("/v1/index", headers=bearer(secrets[ACME])).json()
        assert info["counts"] == {"documents": 1, "chunks": 1, "entities": None, "relations": None}
        assert info["settings"]["graph"] is True


# -- GET /v1/index: settings --------------------------------------------------------------------------------------


def test_settings_show_what_shapes_the_index_and_no_secret(workdir: Path) -> None:
    settings = Settings.model_validate({
        "generator": {"name": "extractive", "api_key": SECRETS["api_key"], "base_url": SECRETS["base_url"],
                      "model": "/srv/models/private-llm"},
        "vectors": {"token": SECRETS["token"], "uri": "http://admin:hunter2@10.9.8.7:19530"},
        "retrieval": {"mode": "hybrid", "k": 7},
        "serve": {"data_dir": str(workdir / "secret-serve-data")},
    })
    path = workdir / "secrets"
    Index.create(path, settings, embedder=HashingEmbedder(64), graph=False).close()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["vectors"]["token"] == SECRETS["token"]  # the secret is there to leak, and must not
    with Served(path, settings=settings) as served:
        response = served.client.get("/v1/index")
    assert response.status_code == 200, response.text
    for secret in [*SECRETS.values(), "hunter2", "10.9.8.7", "/srv/models", str(workdir), "private-llm"]:
        assert secret not in response.text, secret
    shown = response.json()["settings"]
    assert shown["embedder"] == {"model": "hashing-64", "dimension": 64}
    assert shown["vectors"] == {"backend": "faiss", "kind": "flat", "shards": 1}
    assert shown["chunking"]["strategy"] == settings.chunking.strategy
    assert shown["chunking"]["overlap"] == settings.chunking.overlap
    assert shown["retrieval"]["mode"] == "hybrid" and shown["retrieval"]["k"] == 7
    assert {"dense", "bm25", "hybrid", "auto"} <= set(shown["retrieval"]["modes"])
    assert shown["generator"] == {"name": "scripted"}  # the generator that answers, by name only
    assert shown["graph"] is False


def test_a_model_path_is_shown_by_its_last_part_only() -> None:
    assert _shown_name("/srv/models/my-cross-encoder") == "my-cross-encoder"
    assert _shown_name("./models/reranker/") == "reranker"
    assert _shown_name("C:\\models\\ce") == "ce"
    assert _shown_name("cross-encoder/ms-marco-MiniLM-L-6-v2") == "cross-encoder/ms-marco-MiniLM-L-6-v2"
    assert _shown_name(None) is None


# -- GET /v1/index: the eval report -------------------------------------------------------------------------------


def eval_report(dataset: str, recall_at_5: float) -> EvalReport:
    result = ModeResult({"recall@1": recall_at_5 / 2, "recall@5": recall_at_5, "mrr@10": 0.5}, 1.0, 2.0, 3.0, 100.0)
    return EvalReport(dataset, queries=4, passages=5, ks=(1, 5), results={"dense": result, "hybrid": result},
                      unmatched_gold=(("q9", "nowhere.txt"),))


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    """A two-tenant index of its own, for a test that writes reports into it."""
    return build_index(tmp_path / "index")


def test_without_a_report_the_index_says_so_and_the_plot_is_404(local: Served) -> None:
    assert latest_report(local.index.path) is None
    assert local.client.get("/v1/index").json()["report"] is None
    assert_error(local.client.get("/v1/index/report/plot"), 404, "no eval report")


def test_the_newest_report_and_its_plot_are_served(fresh: Path, keys: tuple[KeyRing, dict[str, str]]) -> None:
    old = write_report(eval_report("old-run", 0.25), fresh / "reports" / "run-1")
    new = write_report(eval_report("new-run", 0.75), fresh / "reports" / "run-2")
    os.utime(old["json"], (1_000_000_000, 1_000_000_000))  # run-1 written long ago
    with Served(fresh) as served:
        report = served.client.get("/v1/index").json()["report"]
        assert report["path"] == "reports/run-2/report.json" and report["dataset"] == "new-run"
        written = json.loads(new["json"].read_text())
        assert report["results"] == written["results"] and report["results"]["dense"]["recall@5"] == 0.75
        assert report["queries"] == 4 and report["passages"] == 5 and report["unmatched_gold"] == 1
        assert report["plot"] == "/v1/index/report/plot"
        plot = served.client.get(report["plot"])
        assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
        assert plot.content == new["plot"].read_bytes() and plot.content.startswith(b"\x89PNG\r\n\x1a\n")
        # the older run is served again once it is the newest
        os.utime(old["json"])
        assert served.client.get("/v1/index").json()["report"]["dataset"] == "old-run"
    keyring, secrets = keys
    with Served(fresh, keyring=keyring) as served:
        assert_error(served.client.get("/v1/index/report/plot"), 401)
        report = served.client.get("/v1/index", headers=bearer(secrets[ACME])).json()["report"]
        assert report["dataset"] == "old-run" and report["results"]["dense"]["recall@5"] == 0.25
        assert "passages" not in report and "unmatched_gold" not in report  # index-wide: not a tenant's to see
        assert served.client.get("/v1/index/report/plot", headers=bearer(secrets[ACME])).status_code == 200


def test_a_broken_report_is_reported_and_a_link_out_of_the_index_ignored(fresh: Path, tmp_path: Path) -> None:
    outside = write_report(eval_report("outside", 1.0), tmp_path / "elsewhere")
    reports = fresh / "reports"
    (reports / "linked").mkdir(parents=True)
    (reports / "linked" / "report.json").symlink_to(outside["json"])
    (reports / "escape").symlink_to(outside["json"].parent, target_is_directory=True)
    with Served(fresh) as served:
        assert served.client.get("/v1/index").json()["report"] is None  # both lead out of reports/
        assert_error(served.client.get("/v1/index/report/plot"), 404)
        (reports / "broken").mkdir()
        (reports / "broken" / "report.json").write_text('{"results": {"dense": {"recall@5": NaN}}')
        response = served.client.get("/v1/index")
        assert response.status_code == 200
        assert response.json()["report"] == {"path": "reports/broken/report.json",
                                             "error": "the report could not be read (JSONDecodeError)"}
        (reports / "broken" / "report.json").write_text('{"dataset": "hand-edited", "results": {"dense": '
                                                       '{"recall@5": NaN, "recall@1": Infinity}}}')
        report = served.client.get("/v1/index").json()["report"]
        assert report["results"] == {"dense": {"recall@5": None, "recall@1": None}} and report["plot"] is None
        (reports / "broken" / "report.json").write_text('["not", "a", "report"]')
        assert "not a ragkit eval report" in served.client.get("/v1/index").json()["report"]["error"]
