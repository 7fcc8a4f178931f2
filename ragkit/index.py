"""``ragkit.Index``: one directory holding a catalog, vector shards, a BM25 index and a knowledge graph.

>>> index = Index.create("my-index")                  # packaged MiniLM, FAISS exact search, one shard
>>> report = index.add(["docs/"])                     # loads, chunks, embeds, builds BM25 and the graph
>>> hits = index.retrieve("how are chunk ids kept stable?", k=5, mode="hybrid")
>>> print(index.ask("how are chunk ids kept stable?").text)

``Index`` is a thin facade: the state lives in ``ragkit.store.IndexStore``, the work in ``ragkit.pipelines``
(``indexing`` writes, ``query`` reads); see docs/architecture.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragkit.bm25 import BM25Index
from ragkit.catalog import Catalog
from ragkit.config import Settings
from ragkit.connectors.embedders import make_embedder
from ragkit.errors import ConfigError, DimensionMismatchError, EmbedderMismatchError, IndexFormatError
from ragkit.manifest import EXTERNAL_BACKEND, MANIFEST, Manifest
from ragkit.pipelines import indexing, query
from ragkit.pipelines.indexing import IndexReport
from ragkit.protocols import Embedder, Generator, VectorIndex
from ragkit.store import CATALOG, IndexStore
from ragkit.types import Answer, Document, Hit

Progress = Callable[[str, int, int], None]


class Index:
    """A ragkit index on disk. Create it once with :meth:`create`, reopen it with :meth:`open`.

    ``vectors``: your own ``ragkit.protocols.VectorIndex`` instance, used instead of the backend the manifest
    names (pass the same one again to :meth:`open`).
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        settings: Settings,
        embedder: Embedder | None = None,
        *,
        vectors: VectorIndex | None = None,
    ) -> None:
        if manifest.vectors.get("backend") == EXTERNAL_BACKEND and vectors is None:
            raise IndexFormatError(
                f"{path / MANIFEST}: this index keeps its vectors in your own VectorIndex "
                f"({manifest.vectors.get('class', '?')}); pass it again: Index.open(path, vectors=...)"
            )
        if vectors is not None and getattr(vectors, "dim", manifest.dimension) != manifest.dimension:
            raise DimensionMismatchError(
                f"vectors: the VectorIndex has dimension {vectors.dim}, the index {manifest.dimension}"
            )
        self.store = IndexStore(path, manifest, settings, embedder=embedder, vectors=vectors)

    # -- lifecycle ---------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        settings: Settings | None = None,
        *,
        backend: str | None = None,
        uri: str | None = None,
        kind: str | None = None,
        shards: int | None = None,
        embedder: Embedder | str | None = None,
        graph: bool | None = None,
        vectors: VectorIndex | None = None,
        exist_ok: bool = False,
    ) -> Index:
        """Create an empty index at ``path`` (or open it when it exists and ``exist_ok``).

        The common choices are keyword arguments; anything else goes in ``settings``::

            Index.create("idx", backend="milvus", uri="http://localhost:19530", shards=4)
            Index.create("idx", embedder="all-MiniLM-L6-v2", graph=False)
            Index.create("idx", vectors=MyVectorIndex(dim=384))      # your own VectorIndex instance

        ``embedder`` is a model name (a registered embedder or any sentence-transformers model) or an instance.
        """
        path = Path(path)
        settings = _with_choices(settings or Settings(), backend, uri, kind, shards, embedder, graph)
        instance = embedder if embedder is not None and not isinstance(embedder, str) else None
        if (path / MANIFEST).exists():
            if not exist_ok:
                raise FileExistsError(f"{path}: an index already exists here")
            return cls.open(path, settings=settings, embedder=instance, vectors=vectors)
        model = instance or make_embedder(
            settings.embedder.model, device=settings.embedder.device, batch_size=settings.embedder.batch_size,
            backend=settings.embedder.backend, precision=settings.embedder.precision,
        )
        vector_settings = settings.vectors.model_dump()
        vector_settings["shards"] = vector_settings["shards"] or 1
        if vectors is not None:
            vector_settings = {"backend": EXTERNAL_BACKEND, "class": _qualified_name(vectors), "shards": 1}
        manifest = Manifest(
            embedder=model.name,
            dimension=model.dim,
            max_tokens=model.max_tokens,
            chunking=settings.chunking.model_dump(),
            vectors=vector_settings,
            graph=settings.graph.enabled,
        )
        path.mkdir(parents=True, exist_ok=True)
        Catalog(path / CATALOG, create=True).close()
        manifest.save(path)
        return cls(path, manifest, settings, model, vectors=vectors)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        settings: Settings | None = None,
        *,
        embedder: Embedder | None = None,
        vectors: VectorIndex | None = None,
        repair: bool = False,
    ) -> Index:
        """Open an existing index; the embedder must be the one it was built with.

        Opening and querying never write to the directory. ``repair=True`` first brings every derived
        structure (vectors, BM25) up to the catalog and saves it, as ``ragkit repair`` does.
        """
        path = Path(path)
        if not path.is_dir():
            raise IndexFormatError(f"{path}: no index here (create one with `ragkit index SOURCES --index {path}`)")
        manifest = Manifest.load(path)
        if embedder is not None and (embedder.name, embedder.dim) != (manifest.embedder, manifest.dimension):
            raise EmbedderMismatchError(
                f"{path / MANIFEST}: index was built with embedder {manifest.embedder!r} "
                f"(dimension {manifest.dimension}), not {embedder.name!r} (dimension {embedder.dim})"
            )
        index = cls(path, manifest, settings or Settings(), embedder, vectors=vectors)
        if repair:
            index.repair()
        return index

    def repair(self) -> dict[str, Any]:
        """Bring the saved vectors and BM25 index up to the catalog (after a crash); returns the generations
        each was at before."""
        return self.store.repair()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what it is made of (read-only views; none of them writes) ----------------------------------------

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def manifest(self) -> Manifest:
        return self.store.manifest

    @property
    def settings(self) -> Settings:
        return self.store.settings

    @property
    def catalog(self) -> Catalog:
        return self.store.catalog

    @property
    def embedder(self) -> Embedder:
        return self.store.embedder

    @property
    def vectors(self) -> VectorIndex:
        """The vector backend, in step with the catalog (brought up to date in memory when a crash or a writer
        in another process left the saved copy behind)."""
        return self.store.vectors()

    @property
    def bm25(self) -> BM25Index:
        """The keyword index, in step with the catalog."""
        return self.store.bm25()

    # -- writing -----------------------------------------------------------------------------------------

    def add(
        self,
        sources: Iterable[str | os.PathLike[str]],
        *,
        meta: Mapping[str, Any] | None = None,
        sync: bool = False,
        progress: Progress | None = None,
    ) -> IndexReport:
        """Index files, directories or rows; only documents whose content changed are processed again.

        ``meta`` tags every chunk of these documents (e.g. ``{"tenant": "acme"}``) for ``where`` filters.
        ``sync`` also removes documents whose files are gone.
        """
        return indexing.add_sources(
            self.store, [str(s) for s in sources], tags=dict(meta or {}), sync=sync, progress=progress
        )

    def add_documents(
        self,
        documents: Iterable[Document],
        *,
        meta: Mapping[str, Any] | None = None,
        atomic: bool = False,
        progress: Progress | None = None,
    ) -> IndexReport:
        """Index documents built in code (ids are kept: a known id with new text is an update).

        ``atomic``: all of them commit in one transaction, so a crash leaves all or none (``ragkit serve``'s
        upload jobs); otherwise they commit batch by batch as they stream through.
        """
        return indexing.add_items(self.store, documents, tags=dict(meta or {}), atomic=atomic, progress=progress)

    def delete(self, doc_id_or_source: str) -> list[str]:
        """Delete a document by id, or every document a source (file path) produced; returns the ids removed."""
        return indexing.delete_documents(self.store, doc_id_or_source)

    # -- reading -----------------------------------------------------------------------------------------

    def retrieve(
        self,
        query: str,
        k: int | None = None,
        mode: str | None = None,
        where: Mapping[str, Any] | None = None,
        *,
        rerank: bool | None = None,
    ) -> list[Hit]:
        """The top ``k`` chunks for ``query`` in ``mode`` (dense, bm25, hybrid, a graph mode, or a plugin's).

        ``rerank``: re-score the mode's top ``retrieval.rerank_candidates`` hits with the cross-encoder that
        ``retrieval.rerank`` names and keep the best ``k`` (None: whenever ``retrieval.rerank`` is set).
        """
        return self.retrieve_many([query], k, mode, where, rerank=rerank)[0]

    def retrieve_many(
        self,
        queries: Sequence[str],
        k: int | None = None,
        mode: str | None = None,
        where: Mapping[str, Any] | None = None,
        *,
        rerank: bool | None = None,
    ) -> list[list[Hit]]:
        """Batched :meth:`retrieve`: one embedding batch (and one reranking batch) for all queries."""
        return query.retrieve_many(
            self.store, list(queries), self._k(k), mode or self.settings.retrieval.mode, where, rerank=rerank
        )

    def search_by_vector(
        self, vectors: np.ndarray, k: int | None = None, where: Mapping[str, Any] | None = None
    ) -> list[list[Hit]]:
        """Dense search by query vectors you embedded: ``(nq, dim)`` float32, L2-normalized; hits best first."""
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.manifest.dimension:
            raise DimensionMismatchError(
                f"query vectors have shape {queries.shape}, the index at {self.path} has dimension "
                f"{self.manifest.dimension}"
            )
        return query.search_by_vector(self.store, queries, self._k(k), where)

    def documents(self, doc_ids: Iterable[str]) -> dict[str, Document]:
        """The stored documents with these ids (unknown ids are left out), their text rebuilt from the chunks."""
        return self.catalog.documents(doc_ids)

    def ask(
        self,
        question: str,
        k: int | None = None,
        mode: str | None = None,
        generator: Generator | str | None = None,
        where: Mapping[str, Any] | None = None,
        *,
        rerank: bool | None = None,
    ) -> Answer:
        """Retrieve, then answer with citations; falls back to the extractive answer if the generator fails.

        Every sentence of the answer is checked against the retrieved passages (``ragkit.grounding``): missing or
        wrong citations are repaired, and the sentences no passage supports are listed in ``answer.unsupported``.
        ``rerank`` is :meth:`retrieve`'s.
        """
        return self.ask_many([question], k, mode, generator, where, rerank=rerank)[0]

    def stream(
        self,
        question: str,
        k: int | None = None,
        mode: str | None = None,
        generator: Generator | str | None = None,
        where: Mapping[str, Any] | None = None,
        *,
        rerank: bool | None = None,
    ) -> query.AnswerStream:
        """:meth:`ask`, streamed: iterate for the answer's text as it is generated, then read ``.answer``.

        Retrieval runs now, generation as the text is read. ``.answer`` is checked like :meth:`ask`'s; a generator
        that fails mid-stream is followed by a separator and the extractive answer (``.answer.degraded``). See
        ``ragkit.pipelines.query.AnswerStream``.

        >>> stream = index.stream("how are chunk ids kept stable?")
        >>> for delta in stream:
        ...     print(delta, end="", flush=True)
        >>> stream.answer.citations
        """
        hits = self.retrieve(question, k, mode, where, rerank=rerank)
        return query.stream_answer(self.store, question, hits, generator)

    def ask_many(
        self,
        questions: Sequence[str],
        k: int | None = None,
        mode: str | None = None,
        generator: Generator | str | None = None,
        where: Mapping[str, Any] | None = None,
        *,
        rerank: bool | None = None,
    ) -> list[Answer]:
        """Batched :meth:`ask`: one retrieval batch and one generation batch."""
        hits = self.retrieve_many(questions, k, mode, where, rerank=rerank)
        return query.answer_many(self.store, list(questions), hits, generator)

    def _k(self, k: int | None) -> int:
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"k must be a positive integer (got {k!r})")
        return k or self.settings.retrieval.k

    # -- describing --------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        counts = self.catalog.counts()
        vectors = self.manifest.vectors
        stats: dict[str, Any] = {
            "path": str(self.path),
            **counts,
            "shards": vectors.get("shards", 1),
            "backend": vectors.get("backend", "faiss"),
            "vector_kind": vectors.get("kind", "flat"),
            "embedder": self.manifest.embedder,
            "dimension": self.manifest.dimension,
            "chunking": self.manifest.chunking,
            "generation": self.catalog.generation,
            "sources": len(self.catalog.sources()),
        }
        graph = self.graph_stats()
        if graph is not None:
            stats["graph"] = graph
        return stats

    @property
    def graph(self) -> Any:
        """The knowledge graph as a ``networkx.MultiDiGraph`` (a fresh copy; entity keys are the nodes).

        Nodes carry ``name``, ``label``, ``aliases``, ``chunks`` and ``documents``; edges ``label``, ``kind``,
        ``chunks`` and ``weight``. Raises ConfigError for an index built with ``--no-graph``.
        """
        if not self.manifest.graph:
            raise ConfigError(f"{self.path}: this index was built without a knowledge graph (--no-graph)")
        return self.store.graph().store.to_networkx()

    def graph_stats(self) -> dict[str, int] | None:
        if not self.manifest.graph:
            return None
        stats: dict[str, int] = self.store.graph().store.stats()
        return stats


def _with_choices(
    settings: Settings,
    backend: str | None,
    uri: str | None,
    kind: str | None,
    shards: int | None,
    embedder: Embedder | str | None,
    graph: bool | None,
) -> Settings:
    """``settings`` with the keyword choices of :meth:`Index.create` applied (validated like ragkit.toml)."""
    sections: dict[str, dict[str, Any]] = {}
    vectors = {"backend": backend, "uri": uri, "kind": kind, "shards": shards}
    if any(v is not None for v in vectors.values()):
        sections["vectors"] = vectors
    if isinstance(embedder, str):
        sections["embedder"] = {"model": embedder}
    if graph is not None:
        sections["graph"] = {"enabled": graph}
    return settings.merged(**sections) if sections else settings


def _qualified_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
