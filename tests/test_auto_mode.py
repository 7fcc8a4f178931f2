"""The default retrieval mode, ``auto``: questions go to graph_hybrid, statements to BM25 fused with PageRank, and an
index without a graph to hybrid; every hit says which route and signals ranked it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ragkit import Index
from ragkit.config import Settings
from ragkit.pipelines.graph_query import describe
from ragkit.pipelines.retrievers import is_question
from ragkit.testing import HashingEmbedder
from ragkit.types import Document

PEOPLE = [
    ("Velmora Quintrell", "Dariela Fenwoch", "Karsk", "1911"),
    ("Tobin Arkwright", "Ysolde Maberly", "Venlow", "1874"),
]


def documents() -> list[Document]:
    docs = []
    for i, (person, mother, town, year) in enumerate(PEOPLE):
        docs.append(Document(f"p{i}", f"{person} is a novelist from Ostravia. Her mother was {mother}, a painter.",
                             f"people/p{i}.md", title=person))
        docs.append(Document(f"m{i}", f"{mother} was a painter of river landscapes who died in {year} in {town}.",
                             f"people/m{i}.md", title=mother))
    docs.append(Document("v", "Vitamin D deficiency raises the risk of bone fractures in older adults.", "notes/v.md"))
    return docs


@pytest.mark.parametrize(
    ("text", "question"),
    [
        ("Who was the mother of Velmora Quintrell?", True),
        ("In which year did Tobin Arkwright's mother die?", True),
        ("Are Karsk and Venlow both towns?", True),
        ("how are chunk ids kept stable", True),
        ("Vitamin D deficiency raises fracture risk.", False),
        ("river landscapes painter", False),
        ("The cells which divide fastest are most exposed.", False),  # "which" inside a statement
    ],
)
def test_questions_are_told_from_statements_and_keywords(text: str, question: bool) -> None:
    assert is_question(text) is question


def test_auto_is_the_default_mode() -> None:
    assert Settings().retrieval.mode == "auto"


@pytest.fixture(scope="module")
def graph_index(tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = Settings.model_validate({"chunking": {"strategy": "none"}, "graph": {"options": {"n_process": 1}}})
    index = Index.create(tmp_path_factory.mktemp("auto") / "idx", settings, embedder=HashingEmbedder(64))
    index.add_documents(documents())
    yield index
    index.close()


@pytest.mark.slow
def test_a_question_goes_to_graph_hybrid_and_explains_its_path(graph_index: Any) -> None:
    hits = graph_index.retrieve("In which year did Velmora Quintrell's mother die?", k=3)
    assert hits and all(h.retriever == "auto" for h in hits)
    assert all(h.explain["route"] == "question" and h.explain["graph"]["mode"] == "graph_hybrid" for h in hits)
    assert "m0" in {h.chunk.doc_id for h in hits}  # the mother's page: reached through her name
    assert all(describe(h.explain).startswith("a question, so graph_hybrid: ") for h in hits)
    same = graph_index.retrieve("In which year did Velmora Quintrell's mother die?", k=3, mode="graph_hybrid")
    assert [h.chunk.id for h in hits] == [h.chunk.id for h in same]


@pytest.mark.slow
def test_a_statement_fuses_bm25_with_pagerank(graph_index: Any) -> None:
    hits = graph_index.retrieve("vitamin D deficiency fractures", k=3)
    assert hits[0].chunk.doc_id == "v"
    assert all(h.explain["route"] == "statement" for h in hits)
    assert hits[0].explain["bm25_rank"] == 0
    line = describe(hits[0].explain)
    assert line.startswith("a statement, so BM25 fused with PageRank: BM25 #1")


def test_without_a_graph_auto_is_hybrid(tmp_path: Path) -> None:
    with Index.create(tmp_path / "idx", embedder=HashingEmbedder(64), graph=False) as index:
        index.add_documents(documents())
        for text in ("Who was the mother of Velmora Quintrell?", "river landscapes painter"):
            auto = index.retrieve(text, k=4)
            hybrid = index.retrieve(text, k=4, mode="hybrid")
            assert [h.chunk.id for h in auto] == [h.chunk.id for h in hybrid]
            assert all(h.explain == {"mode": "auto", "route": "hybrid"} for h in auto)


@pytest.mark.slow
def test_cli_ask_explains_the_default_mode(tmp_path: Path) -> None:
    folder = tmp_path / "people"
    folder.mkdir()
    for doc in documents():
        (folder / f"{doc.id}.md").write_text(f"# {doc.title}\n\n{doc.text}\n" if doc.title else doc.text)
    (tmp_path / "ragkit.toml").write_text('[embedder]\nmodel = "hashing-64"\n[graph]\noptions = { n_process = 1 }\n')
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "ragkit.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run("index", "people", "--index", "idx").returncode == 0
    result = run("ask", "Who was the mother of Tobin Arkwright?", "--index", "idx", "--explain",
                 "--generator", "extractive")
    assert result.returncode == 0, result.stderr
    assert "why: a question, so graph_hybrid" in result.stdout
    result = run("ask", "river landscapes painter", "--index", "idx", "--json", "--generator", "extractive")
    hits = json.loads(result.stdout)["hits"]
    assert hits and all(h["retriever"] == "auto" and h["explain"]["route"] == "statement" for h in hits)
