"""LangChain adapters: the standard langchain-tests suites, plus what they do not check.

The retriever runs over a real index embedded with the packaged MiniLM (built once per session); the vector
store runs the standard suite with LangChain's deterministic fake embeddings, and with MiniLM where meaning
matters (MMR, the docs' example).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document as LCDocument
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models import FakeListChatModel
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests, VectorStoreIntegrationTests

from ragkit import Document, Index, Settings
from ragkit.connectors.adapters.langchain import (
    LangChainEmbedder,
    RagkitEmbeddings,
    RagkitRetriever,
    RagkitVectorStore,
)
from ragkit.errors import ConfigError, DimensionMismatchError, EmbedderMismatchError
from ragkit.testing import HashingEmbedder

DOCS = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
HAS_GRAPH_QUERY = importlib.util.find_spec("ragkit.pipelines.graph_query") is not None
MODES = ("dense", "bm25", "hybrid") + (("graph", "multihop", "graph_hybrid") if HAS_GRAPH_QUERY else ())

CORPUS = {
    "rivers": {
        "danube": "The Danube river flows through Vienna and Budapest before it reaches the Black Sea.",
        "rhine": "The Rhine river rises in the Swiss Alps and flows past Cologne to the North Sea.",
        "thames": "The river Thames flows through London, under Tower Bridge, and out to the North Sea.",
        "nile": "The Nile is the longest river in Africa; it flows north through Egypt to the Mediterranean.",
    },
    "geology": {
        "volcano": "Magma rises through the crust and erupts as lava from a volcano.",
        "quake": "Earthquakes happen when stress along a fault is released and the ground shakes.",
        "glacier": "Glaciers carve valleys as the ice slowly moves downhill and grinds the rock.",
    },
    "games": {"chess": "A chess opening such as the Sicilian Defence shapes the middle game."},
}
TEXTS = {doc_id: text for group in CORPUS.values() for doc_id, text in group.items()}
QUERY = "Which river flows through Vienna?"


def small_emb(size: int = 6) -> DeterministicFakeEmbedding:
    return DeterministicFakeEmbedding(size=size)


@pytest.fixture(scope="session")
def retrieval_index(tmp_path_factory: pytest.TempPathFactory, minilm: Any) -> Index:
    """A real MiniLM index of a few small documents, tagged by topic, at ``<tmp>/my-index``."""
    settings = Settings().merged(graph={"enabled": HAS_GRAPH_QUERY})
    index = Index.create(tmp_path_factory.mktemp("langchain") / "my-index", settings, embedder=minilm)
    for topic, docs in CORPUS.items():
        items = [
            Document(id=i, text=t, source=f"corpus/{i}.txt", meta={"lang": "en"}) for i, t in docs.items()
        ]
        index.add_documents(items, meta={"topic": topic})
    return index


# -- RagkitRetriever ------------------------------------------------------------------------------------


class TestRagkitRetrieverStandard(RetrieversIntegrationTests):
    """langchain-tests' retriever suite, once per retrieval mode."""

    @pytest.fixture(autouse=True, params=MODES)
    def _mode(self, request: pytest.FixtureRequest, retrieval_index: Index) -> None:
        self.index = retrieval_index
        self.mode = request.param

    @property
    def retriever_constructor(self) -> type[RagkitRetriever]:
        return RagkitRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"index": self.index, "mode": self.mode}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


@pytest.mark.parametrize("mode", MODES)
def test_retrieved_documents_keep_source_chunk_id_score_and_offsets(
    retrieval_index: Index, mode: str
) -> None:
    docs = RagkitRetriever(index=retrieval_index, mode=mode, k=4).invoke(QUERY)
    assert docs[0].metadata["doc_id"] == "danube"
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)
    for doc in docs:
        meta = doc.metadata
        assert doc.id == meta["chunk_id"]
        assert meta["source"] == f"corpus/{meta['doc_id']}.txt"
        assert TEXTS[meta["doc_id"]][meta["start"] : meta["end"]] == doc.page_content
        assert meta["mode"] == mode and meta["lang"] == "en"  # the document's own metadata comes along


@pytest.mark.parametrize("mode", MODES)
def test_where_restricts_hits_to_tagged_documents(retrieval_index: Index, mode: str) -> None:
    retriever = RagkitRetriever(index=retrieval_index, mode=mode, k=5, where={"topic": "geology"})
    docs = retriever.invoke("river valleys and lava")
    assert docs and {d.metadata["doc_id"] for d in docs} <= set(CORPUS["geology"])
    unfiltered = RagkitRetriever(index=retrieval_index, mode=mode, k=5).invoke("river valleys and lava")
    assert {d.metadata["doc_id"] for d in unfiltered} - set(CORPUS["geology"])


async def test_per_call_arguments_override_the_constructor(retrieval_index: Index) -> None:
    retriever = RagkitRetriever(index=retrieval_index, mode="dense", k=4)
    docs = retriever.invoke(QUERY, k=2, mode="bm25", where={"doc_id": "rhine"})
    assert [(d.metadata["doc_id"], d.metadata["mode"]) for d in docs] == [("rhine", "bm25")]
    docs = await retriever.ainvoke(QUERY, k=1, where={"topic": "rivers"})
    assert [d.metadata["doc_id"] for d in docs] == ["danube"]


def test_retriever_opens_an_index_path_and_rejects_bad_arguments(tmp_path: Path) -> None:
    index = Index.create(
        tmp_path / "idx", Settings().merged(graph={"enabled": False}), embedder=HashingEmbedder(64)
    )
    index.add_documents([Document(id=i, text=t, source=i) for i, t in TEXTS.items()])
    index.close()
    retriever = RagkitRetriever(index=str(tmp_path / "idx"), mode="bm25", k=2)
    assert retriever.invoke("Sicilian Defence chess")[0].metadata["doc_id"] == "chess"
    with pytest.raises(ValueError, match="hybrid"):
        RagkitRetriever(index=retriever.index, mode="semantic")
    with pytest.raises(ValueError):
        RagkitRetriever(index=retriever.index, k=0)
    with pytest.raises(TypeError, match="ragkit.Index"):
        RagkitRetriever(index=42)


# -- RagkitVectorStore ----------------------------------------------------------------------------------


class TestRagkitVectorStoreStandard(VectorStoreIntegrationTests):
    """langchain-tests' vector store suite, sync and async, on a temporary FAISS-backed index."""

    @pytest.fixture
    def vectorstore(self) -> Iterator[VectorStore]:
        store = RagkitVectorStore(embedding=self.get_embeddings())
        try:
            yield store
        finally:
            store.close()


@pytest.fixture
def store() -> Iterator[RagkitVectorStore]:
    store = RagkitVectorStore(embedding=small_emb(16), filter_keys=["topic"])
    yield store
    store.close()


def test_scores_are_cosine_similarities_best_first(store: RagkitVectorStore) -> None:
    texts = ["alpha", "beta", "gamma", "delta", "epsilon"]
    store.add_texts(texts, ids=texts)
    found = store.similarity_search_with_score("beta gamma", k=5)
    vectors = np.array(small_emb(16).embed_documents(texts))
    query = np.array(small_emb(16).embed_query("beta gamma"))
    cosine = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    expected = sorted(zip(texts, cosine, strict=True), key=lambda pair: -pair[1])
    assert [d.id for d, _ in found] == [t for t, _ in expected]
    np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], atol=1e-5)
    relevance = store.similarity_search_with_relevance_scores("beta gamma", k=5)
    assert all(0.0 <= r <= 1.0 for _, r in relevance)
    exact = store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.999}
    )
    assert [d.id for d in exact.invoke("gamma")] == ["gamma"]


def test_metadata_only_update_replaces_the_metadata(store: RagkitVectorStore) -> None:
    store.add_texts(["same text"], [{"version": 1}], ids=["a"])
    store.add_texts(["same text"], [{"version": 2, "extra": "x"}], ids=["a"])
    assert store.get_by_ids(["a"]) == [
        LCDocument(id="a", page_content="same text", metadata={"version": 2, "extra": "x"})
    ]
    assert store.similarity_search("same text", k=5) == store.get_by_ids(["a"])
    assert {k: store.index.stats()[k] for k in ("documents", "chunks")} == {"documents": 1, "chunks": 1}


def test_text_round_trips_exactly(store: RagkitVectorStore) -> None:
    texts = ["  padded text\n", "", "plain"]
    ids = store.add_texts(texts, [{"n": 0}, {"n": 1}, {"n": 2}])
    assert [d.page_content for d in store.get_by_ids(ids)] == texts
    assert store.similarity_search("  padded text\n", k=1)[0].page_content == "  padded text\n"
    assert [d.id for d in store.get_by_ids(list(reversed(ids)) + ["missing", ids[0]])] == list(reversed(ids))


def test_filter_on_filter_keys_doc_id_and_source(store: RagkitVectorStore) -> None:
    store.add_texts(
        ["red apples", "green apples", "apple pie"],
        [{"topic": "fruit", "source": "a.txt"}, {"topic": "fruit"}, {"topic": "baking"}],
        ids=["r", "g", "p"],
    )
    assert {d.id for d in store.similarity_search("apples", k=5, filter={"topic": "fruit"})} == {"r", "g"}
    assert [d.id for d in store.similarity_search("apples", k=5, filter={"doc_id": "p"})] == ["p"]
    assert [d.id for d in store.similarity_search("apples", k=5, filter={"source": "a.txt"})] == ["r"]
    store.add_texts(["apple pie"], [{"topic": "fruit"}], ids=["p"])  # a changed tag moves the document
    assert {d.id for d in store.similarity_search("apples", k=5, filter={"topic": "fruit"})} == {
        "r",
        "g",
        "p",
    }
    assert store.similarity_search("apples", k=5, filter={"topic": "baking"}) == []
    with pytest.raises(ConfigError, match="filter_keys"):
        store.similarity_search("apples", filter={"colour": "red"})
    with pytest.raises(ConfigError, match="topic"):
        store.add_texts(["x"], [{"topic": ["a", "b"]}])


def test_persistent_store_reopens_and_checks_the_embedder(tmp_path: Path) -> None:
    path = tmp_path / "lc-index"
    first = RagkitVectorStore(embedding=small_emb(8), path=path)
    first.add_texts(["kept on disk", "another"], [{"k": 1}, {"k": 2}], ids=["1", "2"])
    first.close()
    assert path.is_dir()
    again = RagkitVectorStore(embedding=small_emb(8), path=path)
    assert again.similarity_search("kept on disk", k=1) == [
        LCDocument(id="1", page_content="kept on disk", metadata={"k": 1})
    ]
    again.close()
    with pytest.raises(EmbedderMismatchError, match="dimension 8"):
        RagkitVectorStore(embedding=small_emb(12), path=path)


def test_store_refuses_an_index_that_splits_documents(tmp_path: Path) -> None:
    Index.create(
        tmp_path / "chunked", Settings().merged(graph={"enabled": False}), embedder=HashingEmbedder(64)
    ).close()
    with pytest.raises(ConfigError, match="RagkitRetriever"):
        RagkitVectorStore(embedding=RagkitEmbeddings(HashingEmbedder(64)), path=tmp_path / "chunked")


def test_delete_without_ids_is_refused_and_unknown_ids_are_ignored(store: RagkitVectorStore) -> None:
    store.add_texts(["one"], ids=["source-like/../x"])
    with pytest.raises(ValueError, match="ids"):
        store.delete()
    assert store.delete(["langchain", "nope"]) is True  # never matched as a source path
    assert [d.id for d in store.get_by_ids(["source-like/../x"])] == ["source-like/../x"]


def test_from_texts_and_by_vector_search() -> None:
    emb = small_emb(8)
    store = RagkitVectorStore.from_texts(["north", "south"], emb, [{"d": "n"}, {"d": "s"}], ids=["n", "s"])
    try:
        assert [d.id for d in store.similarity_search_by_vector(emb.embed_query("south"), k=1)] == ["s"]
        with pytest.raises(DimensionMismatchError):
            store.similarity_search_by_vector([0.1, 0.2], k=1)
    finally:
        store.close()


def test_mmr_trades_relevance_for_diversity(minilm: Any) -> None:
    store = RagkitVectorStore(embedding=RagkitEmbeddings(minilm))
    try:
        store.add_texts(
            [
                "Lava erupts from the volcano.",
                "The volcano erupts lava.",
                "Glaciers carve deep valleys in the mountains.",
                "A chess opening shapes the middle game.",
            ],
            ids=["lava1", "lava2", "glacier", "chess"],
        )
        query = "volcanic eruptions and glaciers in mountains"
        assert {d.id for d in store.similarity_search("volcano lava eruption", k=2)} == {"lava1", "lava2"}
        picked = store.max_marginal_relevance_search(query, k=2, fetch_k=4, lambda_mult=0.3)
        assert picked[1].id == "glacier" or picked[0].id == "glacier"
        assert not {"lava1", "lava2"} <= {d.id for d in picked}
        mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 4, "lambda_mult": 0.3})
        assert [d.id for d in mmr.invoke(query)] == [d.id for d in picked]
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["chroma", "milvus"])
def test_other_vector_backends(tmp_path: Path, backend: str) -> None:
    store = RagkitVectorStore(
        embedding=small_emb(8), path=tmp_path / backend, backend=backend, filter_keys=["t"]
    )
    try:
        store.add_texts(["foo", "bar", "baz"], [{"t": "a"}, {"t": "b"}, {"t": "a"}], ids=["1", "2", "3"])
        assert store.similarity_search("bar", k=1) == [
            LCDocument(id="2", page_content="bar", metadata={"t": "b"})
        ]
        store.delete(["2"])
        assert {d.id for d in store.similarity_search("bar", k=3)} == {"1", "3"}
        assert [d.id for d in store.similarity_search("foo", k=3, filter={"t": "b"})] == []
    finally:
        store.close()


# -- embedders ------------------------------------------------------------------------------------------


def test_langchain_embedder_normalizes_and_names_the_model() -> None:
    embedder = LangChainEmbedder(small_emb(10))
    assert (embedder.name, embedder.dim) == ("langchain:DeterministicFakeEmbedding", 10)
    vectors = embedder.embed_documents(["a", "b c"])
    assert vectors.dtype == np.float32 and vectors.shape == (2, 10)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert embedder.embed_documents([]).shape == (0, 10)
    with pytest.raises(DimensionMismatchError, match="dim="):
        LangChainEmbedder(small_emb(10), dim=4).embed_query("x")


def test_ragkit_embeddings_are_the_ragkit_vectors(minilm: Any) -> None:
    embeddings = RagkitEmbeddings(minilm)
    query = embeddings.embed_query("lava")
    assert len(query) == minilm.dim and all(isinstance(x, float) for x in query)
    np.testing.assert_allclose(embeddings.embed_documents(["lava"])[0], minilm.embed_query("lava"), atol=1e-6)


def test_store_over_ragkit_embeddings_is_a_normal_index(minilm: Any) -> None:
    store = RagkitVectorStore(embedding=RagkitEmbeddings(minilm))
    try:
        store.add_texts(["The Thames flows through London."], [{"page": 3}], ids=["thames"])
        assert store.index.manifest.embedder == minilm.name  # the CLI can open it
        doc = RagkitRetriever(index=store.index, mode="bm25", k=1).invoke("London")[0]
        assert (doc.metadata["doc_id"], doc.metadata["page"], doc.metadata["source"]) == (
            "thames",
            3,
            "langchain",
        )
    finally:
        store.close()


# -- docs/integrations.md -------------------------------------------------------------------------------


def doc_snippet(name: str) -> str:
    match = re.search(rf"<!-- tested: {name} -->\n```python\n(.*?)```", DOCS.read_text(), re.S)
    assert match, f"{DOCS}: no snippet marked {name!r}"
    return match.group(1)


class PromptRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.prompts: list[str] = []

    def on_chat_model_start(self, serialized: Any, messages: list[list[Any]], **kwargs: Any) -> None:
        self.prompts += [m.content for batch in messages for m in batch]


def test_docs_langchain_chain_runs(
    retrieval_index: Index, minilm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ragkit.index

    real = ragkit.index.make_embedder
    monkeypatch.setattr(
        ragkit.index, "make_embedder", lambda name, **kw: minilm if name == minilm.name else real(name, **kw)
    )
    monkeypatch.chdir(retrieval_index.path.parent)
    recorder = PromptRecorder()
    llm = FakeListChatModel(responses=["The Danube flows through Vienna [1]."], callbacks=[recorder])
    namespace: dict[str, Any] = {"llm": llm, "print": lambda *a: None}
    exec(compile(doc_snippet("langchain-chain"), str(DOCS), "exec"), namespace)
    assert namespace["answer"] == "The Danube flows through Vienna [1]."
    (prompt,) = recorder.prompts
    assert f"[1] {TEXTS['danube']} (corpus/danube.txt)" in prompt and QUERY in prompt


def test_docs_langchain_vectorstore_runs(minilm: Any) -> None:
    namespace: dict[str, Any] = {"embeddings": RagkitEmbeddings(minilm)}
    exec(compile(doc_snippet("langchain-vectorstore"), str(DOCS), "exec"), namespace)
    store: RagkitVectorStore = namespace["store"]
    try:
        [(found, score)] = namespace["found"]
        assert found.id == "volcano" and found.metadata == {"topic": "geology"} and 0 < score <= 1
        assert namespace["keyword"][0].metadata["doc_id"] == "danube"
        assert store.get_by_ids(["danube", "volcano"])[0].id == "volcano"
    finally:
        store.close()


def test_missing_langchain_core_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "ragkit.connectors.adapters.langchain")
    monkeypatch.setitem(sys.modules, "langchain_core.callbacks", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'ragkit[langchain]'")):
        importlib.import_module("ragkit.connectors.adapters.langchain")
