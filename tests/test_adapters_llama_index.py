"""LlamaIndex adapter: a ragkit retriever inside a real ``RetrieverQueryEngine`` over a MiniLM index.

The index, the embedder and the retrieval are real; the LLM is llama_index's ``MockLLM``, which answers with
the prompt it was given, so the test can see the retrieved context reach the LLM.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeRelationship, NodeWithScore, TextNode

from ragkit import Document, Index, Settings
from ragkit.connectors.adapters.llama_index import RagkitLlamaRetriever
from ragkit.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
HAS_GRAPH_QUERY = importlib.util.find_spec("ragkit.pipelines.graph_query") is not None
MODES = ("dense", "bm25", "hybrid") + (("graph", "multihop", "graph_hybrid") if HAS_GRAPH_QUERY else ())

TEXTS = {
    "danube": "The Danube river flows through Vienna and Budapest before it reaches the Black Sea.",
    "thames": "The river Thames flows through London, under Tower Bridge, and out to the North Sea.",
    "volcano": "Magma rises through the crust and erupts as lava from a volcano.",
    "glacier": "Glaciers carve valleys as the ice slowly moves downhill and grinds the rock.",
    "chess": "A chess opening such as the Sicilian Defence shapes the middle game.",
}
TOPICS = {
    "danube": "rivers",
    "thames": "rivers",
    "volcano": "geology",
    "glacier": "geology",
    "chess": "games",
}
QUERY = "Which river flows through Vienna?"


@pytest.fixture(scope="session")
def llama_index_dir(tmp_path_factory: pytest.TempPathFactory, minilm: Any) -> Index:
    """A real MiniLM index at ``<tmp>/my-index``, documents tagged by topic."""
    settings = Settings().merged(graph={"enabled": HAS_GRAPH_QUERY})
    index = Index.create(tmp_path_factory.mktemp("llama") / "my-index", settings, embedder=minilm)
    for topic in sorted(set(TOPICS.values())):
        docs = [
            Document(id=i, text=TEXTS[i], source=f"notes/{i}.md", title=i.title(), meta={"author": "ada"})
            for i, t in TOPICS.items()
            if t == topic
        ]
        index.add_documents(docs, meta={"topic": topic})
    return index


@pytest.mark.parametrize("mode", MODES)
def test_nodes_carry_chunk_ids_offsets_sources_and_scores(llama_index_dir: Index, mode: str) -> None:
    nodes = RagkitLlamaRetriever(llama_index_dir, mode=mode, k=3).retrieve(QUERY)
    assert len(nodes) == 3 and all(
        isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes
    )
    assert nodes[0].node.metadata["doc_id"] == "danube"
    assert [n.score for n in nodes] == sorted((n.score for n in nodes), reverse=True)
    for scored in nodes:
        node, meta = scored.node, scored.node.metadata
        assert node.id_ == meta["chunk_id"] and meta["score"] == scored.score and meta["mode"] == mode
        assert node.relationships[NodeRelationship.SOURCE].node_id == meta["doc_id"] == node.ref_doc_id
        assert TEXTS[meta["doc_id"]][node.start_char_idx : node.end_char_idx] == node.text
        assert (meta["source"], meta["title"], meta["author"]) == (
            f"notes/{meta['doc_id']}.md",
            meta["doc_id"].title(),
            "ada",
        )
        shown = node.get_content(metadata_mode=MetadataMode.LLM)
        assert meta["source"] in shown and meta["chunk_id"] not in shown


@pytest.mark.parametrize("mode", MODES)
def test_where_filters_and_async_retrieval(llama_index_dir: Index, mode: str) -> None:
    retriever = RagkitLlamaRetriever(llama_index_dir, mode=mode, k=5, where={"topic": "geology"})
    nodes = retriever.retrieve("river valleys and lava")
    assert nodes and {n.node.metadata["doc_id"] for n in nodes} <= {"volcano", "glacier"}


async def test_aretrieve_matches_retrieve(llama_index_dir: Index) -> None:
    retriever = RagkitLlamaRetriever(llama_index_dir, mode="hybrid", k=3)
    sync = [(n.node.id_, n.score) for n in retriever.retrieve(QUERY)]
    assert [(n.node.id_, n.score) for n in await retriever.aretrieve(QUERY)] == sync


def test_query_engine_answers_from_ragkit_nodes(llama_index_dir: Index) -> None:
    retriever = RagkitLlamaRetriever(llama_index_dir, mode="hybrid", k=2)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    response = engine.query(QUERY)
    expected = [(n.node.id_, n.score) for n in retriever.retrieve(QUERY)]
    assert [(n.node.id_, n.score) for n in response.source_nodes] == expected
    prompt = str(response)  # MockLLM answers with the prompt it received
    assert TEXTS["danube"] in prompt and QUERY in prompt and "source: notes/danube.md" in prompt
    assert "chunk_id" not in prompt


def test_bad_arguments_are_named(llama_index_dir: Index) -> None:
    with pytest.raises(ConfigError, match="graph_hybrid"):
        RagkitLlamaRetriever(llama_index_dir, mode="semantic")
    with pytest.raises(ConfigError, match="k must be"):
        RagkitLlamaRetriever(llama_index_dir, k=0)
    with pytest.raises(TypeError, match="ragkit.Index"):
        RagkitLlamaRetriever(3.14)  # type: ignore[arg-type]


def test_docs_query_engine_runs(llama_index_dir: Index, minilm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import ragkit.index

    real = ragkit.index.make_embedder
    monkeypatch.setattr(
        ragkit.index, "make_embedder", lambda name, **kw: minilm if name == minilm.name else real(name, **kw)
    )
    monkeypatch.chdir(llama_index_dir.path.parent)
    match = re.search(
        r"<!-- tested: llamaindex-query-engine -->\n```python\n(.*?)```", DOCS.read_text(), re.S
    )
    assert match, f"{DOCS}: no snippet marked 'llamaindex-query-engine'"
    printed: list[tuple[Any, ...]] = []
    namespace: dict[str, Any] = {"llm": MockLLM(), "print": lambda *args: printed.append(args)}
    exec(compile(match.group(1), str(DOCS), "exec"), namespace)
    sources = namespace["response"].source_nodes
    assert len(sources) == 4 and sources[0].node.metadata["doc_id"] == "danube"
    assert printed[1][1] == "notes/danube.md" and len(printed) == 1 + len(sources)


def test_missing_llama_index_core_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "ragkit.connectors.adapters.llama_index")
    monkeypatch.setitem(sys.modules, "llama_index.core.base.base_retriever", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'ragkit[llamaindex]'")):
        importlib.import_module("ragkit.connectors.adapters.llama_index")
