"""LangChain adapters: a ragkit index as a retriever or a vector store, and embedders both ways.

- :class:`RagkitRetriever`: a ``BaseRetriever`` over any ragkit index, in any retrieval mode (dense, bm25,
  hybrid, graph...). Each hit is a ``Document`` whose ``id`` is the chunk id and whose metadata carries the
  source, document id, chunk id, score, offsets and mode (plus the document's own metadata).
- :class:`RagkitVectorStore`: a ``VectorStore`` kept in a ragkit index (FAISS, Milvus or Chroma), embedding
  through any LangChain ``Embeddings``; each LangChain document is one ragkit document of one chunk.
- :class:`RagkitEmbeddings`: ragkit's embedder (the packaged MiniLM by default) as LangChain ``Embeddings``.
- :class:`LangChainEmbedder`: any LangChain ``Embeddings`` as a ragkit ``Embedder``, to build ragkit indexes.

>>> retriever = RagkitRetriever(index="my-index", mode="hybrid", k=4)
>>> docs = retriever.invoke("how are chunk ids kept stable?")
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragkit.errors import ConfigError, DimensionMismatchError, RagkitError, missing_extra

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.documents import Document as LCDocument
    from langchain_core.embeddings import Embeddings
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables.config import run_in_executor
    from langchain_core.vectorstores import VectorStore
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
    from pydantic import ConfigDict, Field, field_validator
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("langchain-core", "langchain") from exc

from ragkit.config import Settings
from ragkit.index import Index
from ragkit.protocols import Embedder
from ragkit.registry import retrieval_modes
from ragkit.types import Document, Hit

IndexLike = Index | str | os.PathLike
_RAW_TEXT = "_langchain_page_content"  # stored only when the text has surrounding whitespace ragkit strips
_DEFAULT_SOURCE = "langchain"
_SCALARS = (str, int, float, bool)


# -- reading an index -------------------------------------------------------------------------------------


def _document_meta(index: Index, doc_ids: Iterable[str]) -> dict[str, Mapping[str, Any]]:
    """The metadata each document was indexed with (``ragkit.Document.meta``), by document id."""
    return {doc_id: doc.meta for doc_id, doc in index.documents(doc_ids).items()}


def open_index(index: IndexLike) -> Index:
    """An ``Index`` as given, or the one at a path (its embedder loads on first query)."""
    if isinstance(index, Index):
        return index
    if isinstance(index, str | os.PathLike):
        return Index.open(index)
    raise TypeError(f"index: expected a ragkit.Index or the path of one, got {type(index).__name__}")


def hit_metadata(hit: Hit, document_meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a hit keeps when it leaves ragkit: the document's metadata, then ragkit's own keys."""
    chunk = hit.chunk
    meta = {k: v for k, v in document_meta.items() if k != _RAW_TEXT}
    meta.update(
        source=hit.source,
        doc_id=chunk.doc_id,
        chunk_id=chunk.id,
        score=hit.score,
        start=chunk.start,
        end=chunk.end,
        mode=hit.retriever,
    )
    if chunk.meta.get("title"):
        meta["title"] = chunk.meta["title"]
    if hit.explain is not None:
        meta["explain"] = dict(hit.explain)
    return meta


# -- embedders, both ways ---------------------------------------------------------------------------------


class LangChainEmbedder:
    """Any LangChain ``Embeddings`` as a ragkit ``Embedder``: L2-normalized float32 vectors.

    The dimension is found by embedding a probe string unless ``dim`` is given. The name, recorded in the
    index manifest, is ``langchain:<class>[:<model>]``: reopening the index with another model is an error.

    >>> index = Index.create("idx", embedder=LangChainEmbedder(OllamaEmbeddings(model="nomic-embed-text")))
    """

    def __init__(
        self, embedding: Embeddings, *, name: str | None = None, dim: int | None = None, max_tokens: int = 512
    ) -> None:
        self.embedding = embedding
        model = getattr(embedding, "model", None) or getattr(embedding, "model_name", None)
        self.name = name or f"langchain:{type(embedding).__name__}" + (
            f":{model}" if isinstance(model, str) else ""
        )
        self.max_tokens = max_tokens
        self.dim = int(dim) if dim is not None else len(embedding.embed_query("dimension probe"))

    def _normalized(self, rows: Sequence[Sequence[float]]) -> np.ndarray:
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
        if vectors.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"embedder {self.name!r} returned vectors of dimension {vectors.shape[1]}, expected "
                f"{self.dim}; pass dim= to LangChainEmbedder if the probe was wrong"
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1.0), dtype=np.float32)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._normalized(self.embedding.embed_documents(list(texts)))

    def embed_query(self, text: str) -> np.ndarray:
        return self._normalized([self.embedding.embed_query(text)])[0]

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._normalized([self.embedding.embed_query(text) for text in texts])

    def count_tokens(self, text: str) -> int:
        """Whitespace words: an estimate, since a LangChain model does not expose its tokenizer."""
        return len(text.split())

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


class RagkitEmbeddings(Embeddings):
    """ragkit's embedder as LangChain ``Embeddings`` (the packaged all-MiniLM-L6-v2 by default, offline).

    >>> RagkitEmbeddings().embed_query("hello")[:3]     # 384 floats, L2-normalized
    """

    def __init__(self, embedder: Embedder | str | None = None, *, device: str = "auto") -> None:
        if embedder is None or isinstance(embedder, str):
            from ragkit.config import DEFAULT_EMBEDDER
            from ragkit.connectors.embedders import make_embedder

            self.embedder: Embedder = make_embedder(embedder or DEFAULT_EMBEDDER, device=device)
        else:
            self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return np.asarray(self.embedder.embed_documents(texts), dtype=np.float32).tolist()

    def embed_query(self, text: str) -> list[float]:
        return np.asarray(self.embedder.embed_query(text), dtype=np.float32).tolist()


# -- retriever --------------------------------------------------------------------------------------------


class RagkitRetriever(BaseRetriever):
    """A LangChain retriever over a ragkit index, in any of its retrieval modes.

    ``k``, ``mode`` and ``where`` can also be given per call: ``retriever.invoke(q, k=2, where={...})``.

    >>> retriever = RagkitRetriever(index=Index.open("my-index"), mode="hybrid", k=4, where={"lang": "en"})
    >>> chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any = Field(description="a ragkit.Index, or the path of one")
    mode: str | None = Field(None, description="a retrieval mode; None: the index's default (retrieval.mode)")
    k: int = Field(4, ge=1)
    where: dict[str, Any] | None = None

    @field_validator("index", mode="before")
    @classmethod
    def _open(cls, value: Any) -> Index:
        return open_index(value)

    @field_validator("mode")
    @classmethod
    def _registered_mode(cls, value: str | None) -> str | None:
        if value is not None and value not in retrieval_modes:
            raise retrieval_modes.unknown(value)
        return value

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        mode: str | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[LCDocument]:
        index: Index = self.index
        hits = index.retrieve(
            query,
            k if k is not None else self.k,
            mode if mode is not None else self.mode,
            where if where is not None else self.where,
        )
        meta = _document_meta(index, (h.chunk.doc_id for h in hits))
        return [
            LCDocument(
                id=h.chunk.id,
                page_content=h.chunk.text,
                metadata=hit_metadata(h, meta.get(h.chunk.doc_id, {})),
            )
            for h in hits
        ]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[LCDocument]:
        return await run_in_executor(
            None, self._get_relevant_documents, query, run_manager=run_manager.get_sync(), **kwargs
        )


# -- vector store -----------------------------------------------------------------------------------------


def _close_and_remove(index: Index, directory: str | None) -> None:
    index.close()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


class RagkitVectorStore(VectorStore):
    """A LangChain vector store kept in a ragkit index; each text is one ragkit document of one chunk.

    ``embedding``: any LangChain ``Embeddings`` (vectors are L2-normalized, scores are cosine similarities);
    ``RagkitEmbeddings`` or ``None`` use ragkit's own embedder, so the CLI can open the index too.
    ``path``: where the index lives (``None``: a temporary directory removed with the store).
    ``backend``: a name of ``ragkit.registry.vector_backends`` (``"faiss"``, ``"milvus"``, ``"chroma"`` or a
    plugin's; checked with the settings). ``filter_keys``: metadata keys that ``filter=``
    can match, besides ``doc_id`` (the LangChain id) and ``source``. Metadata is stored as JSON.
    Adding a known id replaces that document (an upsert).

    >>> store = RagkitVectorStore(embedding=OpenAIEmbeddings(), path="lc-index", filter_keys=["topic"])
    >>> store.add_texts(["Magma rises through the crust."], [{"topic": "geology"}], ids=["v1"])
    >>> store.similarity_search("volcano", k=1, filter={"topic": "geology"})
    """

    def __init__(
        self,
        embedding: Embeddings | None = None,
        path: str | os.PathLike[str] | None = None,
        backend: str = "faiss",
        *,
        filter_keys: Sequence[str] = (),
    ) -> None:
        if isinstance(embedding, RagkitEmbeddings):
            embedder: Embedder | None = embedding.embedder
        else:
            embedder = LangChainEmbedder(embedding) if embedding is not None else None
        temporary: str | None = None
        if path is None:
            temporary = tempfile.mkdtemp(prefix="ragkit-langchain-")
        location = Path(temporary or path)  # type: ignore[arg-type]  # one of them is set
        settings = Settings().merged(
            graph={"enabled": False}, vectors={"backend": backend}, chunking={"strategy": "none"}
        )
        self.index = Index.create(location, settings, embedder=embedder, exist_ok=True)
        self._finalizer = weakref.finalize(self, _close_and_remove, self.index, temporary)
        strategy = self.index.manifest.chunking.get("strategy")
        if strategy != "none":
            self.close()
            raise ConfigError(
                f"{path}: this index splits documents into chunks (chunking strategy {strategy!r}); a "
                "RagkitVectorStore keeps one chunk per document. Use RagkitRetriever over it, or a new path"
            )
        self._embedding = embedding
        self.filter_keys = tuple(filter_keys)
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the index (and remove it when it was temporary)."""
        self._finalizer()

    @property
    def embeddings(self) -> Embeddings:
        if self._embedding is None:
            self._embedding = RagkitEmbeddings(self.index.embedder)
        return self._embedding

    # -- writing ---------------------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"add_texts: {len(texts)} texts but {len(metadatas)} metadatas")
        metas = metadatas if metadatas is not None else [{} for _ in texts]
        documents = [
            LCDocument(page_content=text, metadata=meta) for text, meta in zip(texts, metas, strict=True)
        ]
        return self.add_documents(documents, ids=ids)

    def add_documents(self, documents: list[LCDocument], **kwargs: Any) -> list[str]:
        """Upsert documents; ids come from ``ids=``, else ``Document.id``, else new UUIDs. Returns the ids."""
        given = kwargs.get("ids") or [d.id for d in documents]
        if len(given) != len(documents):
            raise ValueError(f"add_documents: {len(documents)} documents but {len(given)} ids")
        ids = [str(i) if i else str(uuid.uuid4()) for i in given]
        latest = dict(zip(ids, documents, strict=True))  # a repeated id: the last document wins
        groups: dict[tuple[tuple[str, Any], ...], list[Document]] = {}
        for doc_id, doc in latest.items():
            tags = self._tags(doc.metadata)
            groups.setdefault(tuple(sorted(tags.items())), []).append(self._to_ragkit(doc_id, doc))
        with self._lock:
            self._drop_changed_metadata([doc for batch in groups.values() for doc in batch])
            for group, batch in groups.items():
                report = self.index.add_documents(batch, meta=dict(group))
                if report.errors:
                    raise RagkitError(f"{self.index.path}: could not add {report.errors[0]}")
        return ids

    def _tags(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        tags = {key: metadata[key] for key in self.filter_keys if key in metadata}
        for key, value in tags.items():
            if not isinstance(value, _SCALARS):
                raise ConfigError(
                    f"metadata[{key!r}]: a filter key needs a str, int, float or bool value, got {value!r}"
                )
        return tags

    @staticmethod
    def _to_ragkit(doc_id: str, doc: LCDocument) -> Document:
        meta = dict(doc.metadata)
        if doc.page_content.strip() != doc.page_content:
            meta[_RAW_TEXT] = doc.page_content
        source = meta.get("source")
        source = source if isinstance(source, str) and source else _DEFAULT_SOURCE
        return Document(id=doc_id, text=doc.page_content, source=source, meta=meta)

    def _drop_changed_metadata(self, documents: Sequence[Document]) -> None:
        """Delete documents whose metadata alone changed (ragkit skips unchanged text and tags)."""
        stored = _document_meta(self.index, (d.id for d in documents))
        for doc in documents:
            if doc.id in stored and json.loads(json.dumps(doc.meta, default=str)) != stored[doc.id]:
                self.index.delete(doc.id)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete documents by id; unknown ids are ignored."""
        if ids is None:
            raise ValueError(
                "delete: pass the ids to delete (deleting everything is not supported; use a new store)"
            )
        with self._lock:
            known = self.index.documents(ids)
            for doc_id in dict.fromkeys(ids):
                if doc_id in known:  # never a source path: Index.delete would take one
                    self.index.delete(doc_id)
        return True

    # -- reading ---------------------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[LCDocument]:
        """The stored documents with these ids, in the order asked, skipping unknown ids."""
        found = self.index.documents(ids)
        return [self._to_langchain(i, found[i].text, found[i].meta) for i in dict.fromkeys(ids) if i in found]

    @staticmethod
    def _to_langchain(doc_id: str, chunk_text: str, meta: Mapping[str, Any]) -> LCDocument:
        metadata = dict(meta)
        text = metadata.pop(_RAW_TEXT, chunk_text)
        return LCDocument(id=doc_id, page_content=text, metadata=metadata)

    def _where(self, filter: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if not filter:
            return None
        allowed = ("doc_id", "source", *self.filter_keys)
        for key, value in filter.items():
            if key not in allowed:
                raise ConfigError(
                    f"filter key {key!r}: RagkitVectorStore filters on {', '.join(allowed)}; create the "
                    f"store with filter_keys=[{key!r}, ...] and add the documents again to filter on it"
                )
            if not isinstance(value, _SCALARS):
                raise ConfigError(
                    f"filter[{key!r}]: only equality with a str, int, float or bool value is supported"
                )
        return dict(filter)

    def _search(
        self, embedding: Sequence[float] | np.ndarray, k: int, filter: Mapping[str, Any] | None
    ) -> list[Hit]:
        """Exact (or the backend's) inner-product search with the normalized query vector, best first."""
        query = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        norm = float(np.linalg.norm(query))
        return self.index.search_by_vector(query / (norm or 1.0), k, self._where(filter))[0]

    def _with_documents(self, hits: list[Hit]) -> list[tuple[LCDocument, float]]:
        meta = _document_meta(self.index, (h.chunk.doc_id for h in hits))
        return [(self._to_langchain(h.chunk.doc_id, h.chunk.text, meta.get(h.chunk.doc_id, {})), h.score) for h in hits]

    def _embed_query(self, query: str) -> np.ndarray:
        return self.index.embedder.embed_query(query)

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[LCDocument]:
        return [doc for doc, _ in self._with_documents(self._search(embedding, k, filter))]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[LCDocument, float]]:
        """Documents with their cosine similarity to the query (higher is closer), best first."""
        return self._with_documents(self._search(self._embed_query(query), k, filter))

    def similarity_search(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[LCDocument]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda score: min(1.0, max(0.0, (1.0 + score) / 2.0))  # cosine [-1, 1] -> [0, 1]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[LCDocument]:
        """``fetch_k`` nearest documents, then ``k`` of them chosen for relevance and diversity."""
        found = self._search(embedding, max(k, fetch_k), filter)
        if not found:
            return []
        vectors = self.index.embedder.embed_documents([h.chunk.embed_text for h in found])
        query = np.asarray(embedding, dtype=np.float32)
        chosen = maximal_marginal_relevance(query / (np.linalg.norm(query) or 1.0), vectors.tolist(), lambda_mult, k)
        documents = self._with_documents(found)
        return [documents[i][0] for i in chosen]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[LCDocument]:
        return self.max_marginal_relevance_search_by_vector(
            self._embed_query(query).tolist(), k, fetch_k, lambda_mult, filter
        )

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        path: str | os.PathLike[str] | None = None,
        backend: str = "faiss",
        filter_keys: Sequence[str] = (),
        **kwargs: Any,
    ) -> RagkitVectorStore:
        """A new store (temporary unless ``path``) holding ``texts``."""
        store = cls(embedding, path, backend, filter_keys=filter_keys)
        store.add_texts(texts, metadatas, ids=ids)
        return store


__all__ = [
    "LangChainEmbedder",
    "RagkitEmbeddings",
    "RagkitRetriever",
    "RagkitVectorStore",
    "hit_metadata",
    "open_index",
]
