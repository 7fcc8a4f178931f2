"""The web page of ``ragkit serve`` in a real browser (issue 19): headless Chromium, driven by Playwright's Python
API, against ``ragkit serve`` processes this module starts on loopback.

What a user does, checked against what the API itself answers for the same request (the extractive generator
and the hashing embedder are deterministic, so the page must show exactly that): ask and read a cited answer;
upload a file, find it in an answer, delete it; see a graph hit's path drawn; read the index's counts, settings
and eval report; with a key file, give a tenant's key and see nothing of the other tenant. Every page is also
watched for console errors, uncaught exceptions and failed requests, and must be usable by keyboard and fit a
phone's width.

The browser is Debian's ``chromium`` (``make browser`` installs it); without it these tests skip locally and
fail when ``CI`` is set. With ``RAGKIT_WEB_SCREENSHOTS=DIR`` they save the screenshots of docs/web.md in DIR
(``bench/web_screenshots.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from cli_run import run_ragkit
from serve_helpers import ACME, CORPUS, GLOBEX, build_index, start_ragkit_serve
from servers import ServerProcess
from web_helpers import PageLog, launch_chromium, require_browser, screenshot

from ragkit import Index
from ragkit.serve.auth import add_key
from ragkit.testing import HashingEmbedder
from ragkit.types import Document

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

TIMEOUT_MS = 30_000
SETTINGS: dict[str, dict[str, Any]] = {"serve": {"max_wait_ms": 5}, "retrieval": {"k": 5}}

# Marie Curie's document names Warsaw, and Warsaw's names the Vistula: the river is two hops from her name
GRAPH_DOCS: dict[str, str] = {
    "curie": "Marie Curie was born in Warsaw and studied radioactivity in Paris.",
    "warsaw": "Warsaw lies on the Vistula river and is the capital of Poland.",
    "eiffel": "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
    "etna": "Mount Etna on Sicily is one of the most active volcanoes in Europe.",
    "sourdough": "Sourdough bread rises because wild yeast and lactic bacteria ferment the dough overnight.",
}
TWO_HOP_QUESTION = "What river runs through the birthplace of Marie Curie?"
GOLD = (  # the eval report the Index tab shows
    ("When was the Eiffel Tower completed?", "eiffel"),
    ("Which volcano is on Sicily?", "etna"),
    ("Why does sourdough bread rise?", "sourdough"),
    (TWO_HOP_QUESTION, "warsaw"),  # the second hop: dense and BM25 rank Marie Curie's own document first
)
# the uploaded file: its made-up words appear in no other document
UPLOAD_NAME = "quillonbay-notes.txt"
UPLOAD_TEXT = "The Quillonbay lighthouse keeper feeds seventeen cats named after comets every evening.\n"
UPLOAD_QUESTION = "Who feeds the cats at the Quillonbay lighthouse?"

# the tenants' server: serve_helpers.CORPUS, whose globex documents hold words no acme document has
GLOBEX_WORDS = ("Globex", "vault", "Photosynthesis", "photosynthesis.txt", "vault.txt", "sunlight")
GLOBEX_QUESTION = "Where does Globex keep its quarterly revenue forecast?"


@dataclass
class Site:
    """A running server, its index directory and an HTTP client speaking to its API (with ``headers``)."""

    server: ServerProcess
    index: Path
    http: httpx.Client

    @property
    def url(self) -> str:
        return self.server.base_url

    def ask(self, question: str, mode: str, k: int = 5, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """The API's own answer to what the page asks (not streamed): what the page must show."""
        response = self.http.post(
            "/v1/ask", json={"question": question, "mode": mode, "k": k}, headers=headers or {}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def expect(target: Any) -> Any:
    """Playwright's auto-waiting assertions (imported late: without Playwright this module still collects and
    its tests skip, or fail under CI, with the reason)."""
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=TIMEOUT_MS)
    return playwright_expect(target)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_browser()
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The keyless loopback server over a tiny index with a knowledge graph and one eval report."""
    root = tmp_path_factory.mktemp("web")
    index = root / "index"
    with Index.create(index, embedder=HashingEmbedder(64)) as created:  # graph on: spaCy extracts entities
        created.add_documents([Document(id=i, text=t, source=f"{i}.txt", title="") for i, t in GRAPH_DOCS.items()])
    gold = root / "gold.jsonl"
    gold.write_text("".join(json.dumps({"query": q, "gold": [doc]}) + "\n" for q, doc in GOLD))
    evaluated = run_ragkit("eval", gold, "--index", index, "--modes", "dense,bm25,multihop", "--k", "1,3,5",
                           "--report", index / "reports" / "run-1", cwd=root)
    assert evaluated.returncode == 0, evaluated.stderr
    with start_ragkit_serve(index, root, settings=SETTINGS) as server:
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            yield Site(server, index, http)


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, dict[str, str]]]:
    """A server with a key file: one key for acme, one for globex (serve_helpers.CORPUS's two tenants)."""
    root = tmp_path_factory.mktemp("web-tenants")
    index = build_index(root / "index")
    keys = root / "keys.toml"
    secrets = {tenant: add_key(keys, tenant, tenant=tenant, scopes=["read", "write"]) for tenant in (ACME, GLOBEX)}
    with start_ragkit_serve(index, root, settings=SETTINGS, keys=keys) as server:
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            yield Site(server, index, http), secrets


def open_page(browser: Browser, url: str, **context: Any) -> tuple[Page, PageLog]:
    """A new page (its own context: empty sessionStorage) at ``url``, watched from its first request."""
    ctx = browser.new_context(viewport=context.pop("viewport", {"width": 1100, "height": 800}), **context)
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    log = PageLog()
    log.watch(page)
    page.goto(url)
    return page, log


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[tuple[Page, PageLog]]:
    """The keyless site's page, ready (the mode list filled from /v1/models)."""
    opened, log = open_page(browser, site.url)
    wait_ready(opened)
    yield opened, log
    opened.context.close()


def wait_ready(page: Page) -> None:
    """Until start() has run: the key status is no longer the placeholder and the modes are listed."""
    page.wait_for_function(
        "() => document.querySelector('#key-status').textContent !== 'checking the server…'"
        " && document.querySelectorAll('#mode option').length > 1"
    )


def ask(page: Page, question: str, mode: str, k: int = 5, submit: str = "click") -> None:
    """Ask on the page and wait for the final answer (``#answer-meta`` is cleared on submit and written when
    the stream's final event has been rendered)."""
    page.click("#tab-ask")
    page.fill("#question", question)
    page.select_option("#mode", mode)
    page.fill("#k", str(k))
    if submit == "enter":
        page.press("#question", "Enter")
    else:
        page.click("#ask-button")
    expect(page.locator("#answer-meta")).to_contain_text("generator")
    expect(page.locator("#ask-button")).to_be_enabled()


def words(text: str) -> str:
    return " ".join(text.split())


def shown_sources(page: Page) -> list[str]:
    return [words(text) for text in page.locator("#sources li.source .source-file").all_inner_texts()]


def expected_sources(answer: dict[str, Any]) -> list[str]:
    """The page's order: the cited hits in citation order, then the other hits by rank."""
    cited = [c["source"] for c in answer["citations"]]
    cited_ids = {c["chunk_id"] for c in answer["citations"]}
    return cited + [h["source"] for h in answer["hits"] if h["chunk_id"] not in cited_ids]


def source_item(page: Page, source: str) -> Locator:
    item = page.locator("#sources li.source").filter(
        has=page.locator(".source-file", has_text=re.compile(rf"^{re.escape(source)}$"))
    )
    assert item.count() == 1, f"{source} is shown {item.count()} times among {shown_sources(page)}"
    return item


def document_sources(page: Page) -> list[str]:
    return [words(text) for text in page.locator("#documents-table tbody tr.document td:first-child").all_inner_texts()]


def show_documents(page: Page, expected_rows: int) -> None:
    page.click("#tab-documents")
    expect(page.locator("#documents-table tr.document")).to_have_count(expected_rows)


def assert_clean(log: PageLog, allowed_status: tuple[int, ...] = ()) -> None:
    problems = log.problems(allowed_status)
    assert not problems, "the page reported:\n" + "\n".join(problems)


# -- 1. ask and read a cited answer ---------------------------------------------------------------------------


def test_ask_shows_the_cited_answer_and_its_sources(page: tuple[Page, PageLog], site: Site) -> None:
    tab, log = page
    question, mode = "When was the Eiffel Tower in Paris completed?", "hybrid"
    expected = site.ask(question, mode)
    assert expected["citations"], expected  # the API cites: so must the page
    ask(tab, question, mode)
    screenshot(tab, "ask")

    assert words(tab.inner_text("#answer")) == words(expected["answer"])
    meta = tab.inner_text("#answer-meta")
    assert f"generator: {expected['generator']}" in meta and "degraded: no" in meta, meta

    # [n] links to #source-n, and source n is the n-th citation
    links = tab.locator("#answer a.citation")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    cited = len(expected["citations"])
    numbers = [int(n) for n in re.findall(r"\[(\d+)\]", expected["answer"]) if 1 <= int(n) <= cited]
    assert hrefs == [f"#source-{n}" for n in numbers] and hrefs, (hrefs, expected["answer"])
    assert shown_sources(tab) == expected_sources(expected)
    for citation in expected["citations"]:
        number = citation["number"]
        assert words(tab.inner_text(f"#source-{number} .source-file")) == citation["source"]
        assert "cited" in (tab.get_attribute(f"#source-{number}", "class") or "")

    # each source: its file, its score (as the API gives it, to 3 places), the retriever that ranked it
    hits = {h["source"]: h for h in expected["hits"]}
    for source in shown_sources(tab):
        item = source_item(tab, source)
        hit = hits[source]
        score = re.search(r"-?\d+\.\d+", item.locator(".source-score").inner_text())
        assert score is not None and abs(float(score.group()) - hit["score"]) <= 0.0005 + 1e-9, (source, hit["score"])
        assert f"retriever: {hit['retriever']}" in item.locator(".source-retrievers").inner_text()
        assert words(hit["text"]) in words(item.locator(".source-text").text_content() or "")

    # clicking the last citation brings its source into view (and makes it the :target)
    last = links.nth(links.count() - 1)
    target = last.get_attribute("href") or ""
    tab.evaluate("() => window.scrollTo(0, 0)")
    last.click()
    expect(tab).to_have_url(re.compile(re.escape(target) + "$"))
    assert tab.evaluate("() => document.querySelector(':target')?.id") == target[1:]
    expect(tab.locator(target)).to_be_in_viewport()
    assert_clean(log)


def test_a_dense_hit_draws_no_graph_path(page: tuple[Page, PageLog], site: Site) -> None:
    """The path drawing belongs to graph hits only: a dense answer's sources have none."""
    tab, log = page
    ask(tab, "Which volcano is on Sicily?", "dense", k=3)
    assert tab.locator("#sources li.source").count() == 3
    assert tab.locator("#sources svg.path-graph").count() == 0
    assert tab.locator("#sources .path-text").count() == 0
    assert_clean(log)


# -- 2. upload, find, delete ------------------------------------------------------------------------------------


def test_upload_find_and_delete_a_document(page: tuple[Page, PageLog], site: Site, tmp_path: Path) -> None:
    tab, log = page
    before = site.http.get("/v1/documents").json()
    show_documents(tab, before["total"])
    assert sorted(document_sources(tab)) == sorted(d["source"] for d in before["documents"])

    upload = tmp_path / UPLOAD_NAME
    upload.write_text(UPLOAD_TEXT)
    tab.set_input_files("#upload-input", str(upload))
    expect(tab.locator("#job-status")).to_have_text(re.compile(r"^done"))
    assert "1 document(s) indexed" in tab.inner_text("#job-status")
    expect(tab.locator("#documents-table tr.document")).to_have_count(before['total'] + 1)
    assert UPLOAD_NAME in document_sources(tab)
    screenshot(tab, "documents")

    # the filter keeps only the matching rows
    tab.fill("#filter-source", "quillon")
    expect(tab.locator("#documents-table tr.document")).to_have_count(1)
    assert document_sources(tab) == [UPLOAD_NAME]
    tab.fill("#filter-source", "")
    expect(tab.locator("#documents-table tr.document")).to_have_count(before['total'] + 1)

    # only the new file answers the question: the page's answer cites it
    ask(tab, UPLOAD_QUESTION, "bm25", k=3)
    assert shown_sources(tab)[0] == UPLOAD_NAME, shown_sources(tab)
    assert "cited" in (source_item(tab, UPLOAD_NAME).get_attribute("class") or "")
    assert "Quillonbay" in tab.inner_text("#answer")

    # delete it: a confirm() first, then the row, the document and its answers are gone; nothing else is
    show_documents(tab, before["total"] + 1)
    asked: list[str] = []

    def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    tab.once("dialog", accept)
    row = tab.locator("#documents-table tr.document").filter(has_text=UPLOAD_NAME)
    row.locator("button.delete-button").click()
    expect(tab.locator("#documents-table tr.document")).to_have_count(before['total'])
    assert asked and UPLOAD_NAME in asked[0], asked
    assert UPLOAD_NAME not in document_sources(tab)
    assert site.http.get("/v1/documents").json() == before
    ask(tab, UPLOAD_QUESTION, "bm25", k=3)
    assert UPLOAD_NAME not in shown_sources(tab) and "Quillonbay" not in tab.inner_text("#answer")
    assert_clean(log)


def test_a_declined_confirm_deletes_nothing(page: tuple[Page, PageLog], site: Site) -> None:
    tab, log = page
    before = site.http.get("/v1/documents").json()
    show_documents(tab, before["total"])
    deletes: list[str] = []
    tab.on("request", lambda request: deletes.append(request.url) if request.method == "DELETE" else None)
    tab.once("dialog", lambda dialog: dialog.dismiss())
    tab.locator("#documents-table tr.document button.delete-button").first.click()
    tab.wait_for_timeout(500)  # a delete, had one been sent, answers in milliseconds
    assert deletes == []
    assert site.http.get("/v1/documents").json() == before
    assert tab.locator("#documents-table tr.document").count() == before["total"]
    assert_clean(log)


# -- 3. a graph hit's path --------------------------------------------------------------------------------------


def path_entities(hit: dict[str, Any]) -> list[str]:
    explain = hit.get("explain") or {}
    steps = (explain.get("graph") or explain).get("path") or []
    return list(dict.fromkeys(step["entity"] for step in steps if step.get("entity")))


def test_a_graph_hit_shows_its_path(page: tuple[Page, PageLog], site: Site) -> None:
    tab, log = page
    expected = site.ask(TWO_HOP_QUESTION, "multihop")
    two_hops = [h for h in expected["hits"] if len(path_entities(h)) >= 2]
    assert two_hops, f"no multihop hit went through two entities: {[h.get('explain') for h in expected['hits']]}"
    ask(tab, TWO_HOP_QUESTION, "multihop")
    assert shown_sources(tab) == expected_sources(expected)

    for hit in two_hops:
        item = source_item(tab, hit["source"])
        drawing = item.locator("svg.path-graph")
        assert drawing.count() == 1
        labels = [words(t) for t in drawing.locator("g.node.entity text").all_text_contents()]
        entities = path_entities(hit)
        assert all(entity in labels for entity in entities), (entities, labels)
        assert len(set(labels)) >= 2
        assert drawing.locator("line.edge").count() >= 2  # the hops, drawn
        text = item.locator(".path-text").inner_text()
        steps = (hit["explain"].get("graph") or hit["explain"])["path"]
        # the relation labels between entities (the steps into and out of chunks are drawn as plain links)
        plain = ("mentioned in", "about", "linked from question", "dense hit", "mentions", "related to")
        relations = [s["relation"] for s in steps if s.get("entity") and s["relation"] not in plain]
        assert relations, steps  # "born in": the label the parser read between Marie Curie and Warsaw
        assert all(entity in text for entity in entities) and all(r in text for r in relations), (text, steps)
        # the drawing's labels go in the path's order
        assert [e for e in labels if e in entities] == entities
    tab.locator(f"#sources li.source:has-text('{two_hops[0]['source']}')").scroll_into_view_if_needed()
    screenshot(tab, "graph-path")
    assert_clean(log)


# -- the index tab ------------------------------------------------------------------------------------------------


def test_index_tab_shows_counts_settings_and_the_eval_report(page: tuple[Page, PageLog], site: Site) -> None:
    tab, log = page
    info = site.http.get("/v1/index").json()
    with Index.open(site.index, embedder=HashingEmbedder(64)) as index:
        catalog = index.catalog.counts()
        graph = index.graph_stats()
    assert graph is not None and graph["entities"] > 0
    tab.click("#tab-index")
    tab.wait_for_selector("#eval-plot")
    tab.wait_for_function("() => document.querySelector('#eval-plot').naturalWidth > 0")  # the PNG decoded
    for name, value in (("documents", catalog["documents"]), ("chunks", catalog["chunks"]),
                        ("entities", graph["entities"]), ("relations", graph["relations"])):
        shown = tab.inner_text(f'#stats [data-stat="{name}"]').replace(",", "")
        assert shown == str(value) == str(info["counts"][name]), (name, shown, value)
    settings = tab.inner_text("#settings")
    assert "hashing-64" in settings and info["settings"]["generator"]["name"] in settings
    report = tab.inner_text("#eval-report")
    assert all(name in report for name in ("dense", "bm25", "multihop", "recall@3")), report
    recall = json.loads((site.index / "reports" / "run-1" / "report.json").read_text())["results"]["bm25"]["recall@3"]
    assert f"{recall:.3f}" in report
    screenshot(tab, "index")
    assert_clean(log)


# -- 4. keys and tenants ----------------------------------------------------------------------------------------


def test_the_page_asks_for_a_key_and_shows_one_tenant(browser: Browser, tenants: tuple[Site, dict[str, str]]) -> None:
    site, secrets = tenants
    acme_sources = sorted(f"{doc_id}.txt" for doc_id, owner, _ in CORPUS if owner == ACME)
    # the positive control: with globex's own key, this question finds the vault
    own = site.ask(GLOBEX_QUESTION, "dense", headers={"Authorization": f"Bearer {secrets[GLOBEX]}"})
    assert own["hits"][0]["source"] == "vault.txt", own["hits"]

    tab, log = open_page(browser, site.url)
    try:
        form = tab.locator("#key-form")
        form.wait_for(state="visible")
        assert tab.locator("#documents-table tr.document").count() == 0
        screenshot(tab, "key")
        # a wrong key: the API's message, and the form again
        tab.fill("#key-input", "rk_not-a-key")
        tab.press("#key-input", "Enter")
        expect(tab.locator("#key-status")).to_contain_text("invalid API key")
        form.wait_for(state="visible")

        tab.fill("#key-input", secrets[ACME])
        tab.click("#key-form button[type=submit]")
        expect(tab.locator("#key-status")).to_have_text(f"tenant: {ACME}")
        assert form.is_hidden()

        show_documents(tab, len(acme_sources))
        assert sorted(document_sources(tab)) == acme_sources
        ask(tab, GLOBEX_QUESTION, "dense", k=5)
        shown = " ".join([tab.inner_text("#answer"), tab.inner_text("#sources"), *document_sources(tab)])
        assert tab.locator("#sources li.source").count() > 0
        for word in GLOBEX_WORDS:
            assert word.lower() not in shown.lower(), word
        tab.click("#tab-index")
        expect(tab.locator('[data-stat="documents"]')).not_to_have_text("–")
        assert tab.inner_text('[data-stat="documents"]') == str(len(acme_sources))
        assert tab.inner_text('[data-stat="entities"]') == "–"  # index-wide: not shown to a tenant

        # the key stays for the tab's session: a reload asks for nothing
        tab.reload()
        expect(tab.locator("#key-status")).to_have_text(f"tenant: {ACME}")
        assert tab.locator("#key-form").is_hidden()
        # the only errors allowed are the wrong key's 401 and the line Chromium logs for it
        assert_clean(log, allowed_status=(401,))
        assert any(" 401 " in f" {line} " for line in log.error_responses)
    finally:
        tab.context.close()


# -- 5. no console errors, a phone's width ------------------------------------------------------------------------


def test_every_tab_loads_without_errors_and_fits_a_phone(browser: Browser, site: Site) -> None:
    tab, log = open_page(browser, site.url, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        wait_ready(tab)
        ask(tab, TWO_HOP_QUESTION, "auto")
        for name in ("documents", "index", "ask"):
            tab.click(f"#tab-{name}")
            tab.wait_for_load_state("networkidle")
            assert tab.is_visible(f"#{name}") and tab.get_attribute(f"#tab-{name}", "aria-selected") == "true"
            overflow = tab.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"the {name} tab is {overflow}px wider than a phone's screen"
        screenshot(tab, "phone")
        assert_clean(log)
    finally:
        tab.context.close()


def test_an_api_error_shows_its_message(page: tuple[Page, PageLog], site: Site) -> None:
    """A k over the server's limit: the API's message in #error (role=alert), and nothing else breaks."""
    tab, log = page
    limit = site.http.get("/v1/index").json()["settings"]["retrieval"]["max_k"]
    tab.fill("#question", "Which volcano is on Sicily?")
    tab.evaluate(f"() => {{ document.querySelector('#k').max = '{limit + 10}'; }}")  # past the form's own check
    tab.fill("#k", str(limit + 1))
    tab.click("#ask-button")
    tab.wait_for_selector("#error:not([hidden])")
    assert tab.get_attribute("#error", "role") == "alert"
    assert f"k must be between 1 and {limit}" in tab.inner_text("#error")
    assert_clean(log, allowed_status=(400,))


# -- 6. keyboard ----------------------------------------------------------------------------------------------------


def test_keyboard_only(page: tuple[Page, PageLog], site: Site) -> None:
    tab, log = page
    question = "Which volcano is on Sicily?"
    expected = site.ask(question, "bm25", k=3)
    tab.select_option("#mode", "bm25")
    tab.fill("#k", "3")
    # Tab from the top of the page reaches the tab list (the selected tab), and the arrow keys move along it
    tab.evaluate("() => document.activeElement && document.activeElement.blur()")
    reached = []
    for _ in range(10):
        tab.keyboard.press("Tab")
        reached.append(tab.evaluate("() => document.activeElement.id"))
        if reached[-1] == "tab-ask":
            break
    assert reached[-1] == "tab-ask", reached
    tab.keyboard.press("ArrowRight")
    assert tab.evaluate("() => document.activeElement.id") == "tab-documents"
    assert tab.is_visible("#documents") and tab.is_hidden("#ask")
    tab.keyboard.press("ArrowRight")
    assert tab.evaluate("() => document.activeElement.id") == "tab-index" and tab.is_visible("#index")
    tab.keyboard.press("Home")
    assert tab.evaluate("() => document.activeElement.id") == "tab-ask" and tab.is_visible("#ask")

    # from the tab list, Tab goes to the question, which is sent with Enter alone
    tab.keyboard.press("Tab")
    assert tab.evaluate("() => document.activeElement.id") == "question"
    tab.keyboard.type(question)
    tab.keyboard.press("Enter")
    expect(tab.locator("#answer-meta")).to_contain_text("generator")
    assert words(tab.inner_text("#answer")) == words(expected["answer"])
    assert tab.locator("#answer a.citation").count() >= 1
    assert_clean(log)

