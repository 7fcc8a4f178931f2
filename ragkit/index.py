"""``ragkit.Index``: one directory holding a catalog, vector shards, a BM25 index and a knowledge graph.

>>> index = Index.create("my-index")                  # packaged MiniLM, FAISS exact search, one shard
>>> report = index.add(["docs/"])                     # loads, chunks, embeds, builds BM25 and the graph
>>> hits = index.retrieve("how are chunk ids kept stable?", k=5, mode="hybrid")
>>> print(index.ask("how are chunk ids kept stable?").text)
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from ragkit.bm25 import BM25Index
from ragkit.catalog import Catalog
from ragkit.config import Settings
from ragkit.connectors.embedders import EmbeddingCache, make_embedder
from ragkit.connectors.vectors import open_vector_index
from ragkit.errors import ConfigError, EmbedderMismatchError, IndexFormatError, sqlite_damage
from ragkit.manifest import MANIFEST, Manifest
from ragkit.protocols import Embedder, Generator, VectorIndex
from ragkit.types import Answer, Document, Hit

Progress = Callable[[str, int, int], None]

CATALOG = "catalog.sqlite"
VECTOR_STATE = "vectors.json"
EMBEDDINGS = "embeddings.sqlite"


class Index:
    """A ragkit index on disk. Create it once with :meth:`create`, reopen it with :meth:`open`."""

    def __init__(self, path: Path, manifest: Manifest, settings: Settings, embedder: Embedder | None) -> None:
        self.path = path
        self.manifest = manifest
        self.settings = settings
        self._embedder = embedder
        self.catalog = Catalog(path / CATALOG)
        self._lock = threading.RLock()
        self._vectors: VectorIndex | None = None
        self._vectors_stamp: int | None = None  # vectors.json's generation when the vectors were read
        self._vectors_generation: int | None = None  # the catalog generation they are known to match
        self._lock_owner: int | None = None  # the thread holding writer_lock through this object
        self._bm25: BM25Index | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        settings: Settings | None = None,
        *,
        embedder: Embedder | None = None,
        exist_ok: bool = False,
    ) -> Index:
        """Create an empty index at ``path`` (or open it when it exists and ``exist_ok``)."""
        path = Path(path)
        settings = settings or Settings()
        if (path / MANIFEST).exists():
            if not exist_ok:
                raise FileExistsError(f"{path}: an index already exists here")
            return cls.open(path, settings=settings, embedder=embedder)
        embedder = embedder or make_embedder(
            settings.embedder.model, device=settings.embedder.device, batch_size=settings.embedder.batch_size
        )
        path.mkdir(parents=True, exist_ok=True)
        vectors = settings.vectors.model_dump()
        vectors["shards"] = vectors["shards"] or 1
        manifest = Manifest(
            embedder=embedder.name,
            dimension=embedder.dim,
            max_tokens=embedder.max_tokens,
            chunking=settings.chunking.model_dump(),
            vectors=vectors,
            graph=settings.graph.enabled,
        )
        Catalog(path / CATALOG, create=True).close()
        manifest.save(path)
        return cls(path, manifest, settings, embedder)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], settings: Settings | None = None, *, embedder: Embedder | None = None
    ) -> Index:
        """Open an existing index; the embedder must be the one it was built with."""
        path = Path(path)
        if not path.is_dir():
            raise IndexFormatError(f"{path}: no index here (create one with `ragkit index SOURCES --index {path}`)")
        manifest = Manifest.load(path)
        if embedder is not None and (embedder.name, embedder.dim) != (manifest.embedder, manifest.dimension):
            raise EmbedderMismatchError(
                f"{path / MANIFEST}: index was built with embedder {manifest.embedder!r} "
                f"(dimension {manifest.dimension}), not {embedder.name!r} (dimension {embedder.dim})"
            )
        return cls(path, manifest, settings or Settings(), embedder)

    def close(self) -> None:
        with self._lock:
            if self._vectors is not None and hasattr(self._vectors, "close"):
                self._vectors.close()
            self._vectors = None
            self.catalog.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- parts, opened lazily so `ragkit stats` never loads a model ----------------------------------------

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                try:
                    self._embedder = make_embedder(
                        self.manifest.embedder,
                        device=self.settings.embedder.device,
                        batch_size=self.settings.embedder.batch_size,
                    )
                except OSError as exc:
                    raise IndexFormatError(
                        f"{self.path / MANIFEST}: the index's embedder {self.manifest.embedder!r} cannot be "
                        f"loaded ({exc})"
                    ) from None
                if self._embedder.dim != self.manifest.dimension:
                    raise EmbedderMismatchError(
                        f"{self.path / MANIFEST}: embedder {self.manifest.embedder!r} now has dimension "
                        f"{self._embedder.dim}, the index has {self.manifest.dimension}"
                    )
            return self._embedder

    @functools.cached_property
    def embedding_cache(self) -> EmbeddingCache:
        with self._damaged_cache():
            return EmbeddingCache(self.path / EMBEDDINGS, self.manifest.embedder, self.manifest.dimension)

    def embed(self, texts: Sequence[str]) -> tuple[Any, int]:
        """Embed through the on-disk cache; returns the vectors and how many texts were actually embedded."""
        cache = self.embedding_cache
        with self._damaged_cache():
            return cache.embed(texts, self.embedder.embed_documents)

    def _damaged_cache(self) -> AbstractContextManager[None]:
        return sqlite_damage(self.path / EMBEDDINGS, "embedding cache is damaged; delete it (it is only a cache)")

    @property
    def vectors(self) -> VectorIndex:
        """The vector backend, in step with the catalog: reloaded when another process saved a newer state, and
        brought up to date (and saved) after an interrupted run, unless a writer is at work (it does that)."""
        with self._lock:
            generation = self.catalog.generation
            if self._vectors is not None and self._vectors_generation == generation:
                return self._vectors
            stamp = self.vector_generation  # read before the shards are: they can only be newer than it
            if self._vectors is not None and stamp != self._vectors_stamp and stamp == generation:
                if self.manifest.vectors.get("backend", "faiss") == "faiss":  # Milvus and Chroma are read live
                    self._vectors = None  # searches in flight keep the old copy until they finish
                else:
                    self._vectors_stamp = self._vectors_generation = stamp
            if self._vectors is None:
                self._vectors = open_vector_index(self.path, self.manifest.dimension, self.manifest.vectors)
                verify = getattr(self._vectors, "verify", None)
                if stamp == generation and verify is not None:
                    # saved in step with the catalog, so its files must agree with one another, unless a writer
                    # is at work right now (its sidecar commits run ahead of its shard saves)
                    with self.writer_lock(blocking=False) as locked:
                        if locked and self.vector_generation == stamp == self.catalog.generation:
                            verify()
                self._vectors_stamp = stamp
                self._vectors_generation = stamp if stamp == generation else None
            if self._vectors_generation != generation and stamp != generation:
                # An interrupted run left the vectors behind the catalog, or a writer is committing right now:
                # only a writer may change the shared vector store, so repair it only when no writer runs.
                from ragkit.pipelines.indexing import reconcile_vectors

                with self.writer_lock(blocking=False) as locked:
                    if locked:
                        reconcile_vectors(self, save=True)
            return self._vectors

    @property
    def vector_generation(self) -> int:
        state = self.path / VECTOR_STATE
        try:
            return int(json.loads(state.read_text())["generation"]) if state.exists() else 0
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"{state}: unreadable ({exc}); delete it to rebuild the vectors") from None

    def mark_vectors_saved(self, generation: int) -> None:
        state = self.path / VECTOR_STATE
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"generation": generation}))
        os.replace(tmp, state)
        self._vectors_stamp = self._vectors_generation = generation  # what was saved is the in-memory copy

    @property
    def bm25(self) -> BM25Index:
        """The keyword index, rebuilt from the catalog when it is behind."""
        with self._lock:
            generation = self.catalog.generation
            if self._bm25 is None or self._bm25.generation != generation:
                loaded = BM25Index.load(self.path)
                if loaded is None or loaded.generation != generation:
                    loaded = BM25Index.build(
                        lambda: (c for batch in self.catalog.iter_chunks() for c in batch), generation
                    )
                    with self.writer_lock(blocking=False) as locked:
                        # only when no writer runs, and never over a copy readers may be loading (another
                        # reader saved this generation already) nor for a generation already outdated
                        if (
                            locked
                            and self.catalog.generation == generation
                            and BM25Index.saved_generation(self.path) != generation
                        ):
                            loaded.save(self.path)
                self._bm25 = loaded
            return self._bm25

    @contextmanager
    def writer_lock(self, blocking: bool = True) -> Iterator[bool]:
        """An exclusive lock between processes that write this index; yields whether it was acquired.

        Re-entrant for the thread that holds it through this object (a writer reconciling its own vectors)."""
        if self._lock_owner == threading.get_ident():
            yield True
            return
        with open(self.path / "index.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                acquired = False
            else:
                acquired = True
            if not acquired:
                yield False
                return
            self._lock_owner = threading.get_ident()
            try:
                yield True
            finally:
                self._lock_owner = None
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- writing -----------------------------------------------------------------------------------------

    def add(
        self,
        sources: Iterable[str | os.PathLike[str]],
        *,
        meta: Mapping[str, Any] | None = None,
        sync: bool = False,
        progress: Progress | None = None,
    ) -> Any:
        """Index files, directories or rows; only documents whose content changed are processed again.

        ``meta`` tags every chunk of these documents (e.g. ``{"tenant": "acme"}``) for ``where`` filters.
        ``sync`` also removes documents whose files are gone. Returns an ``IndexReport``.
        """
        from ragkit.pipelines.indexing import add_sources

        return add_sources(self, [str(s) for s in sources], tags=dict(meta or {}), sync=sync, progress=progress)

    def add_documents(self, documents: Iterable[Document], *, meta: Mapping[str, Any] | None = None) -> Any:
        """Index documents built in code (ids are kept: a known id with new text is an update)."""
        from ragkit.pipelines.indexing import add_items

        return add_items(self, documents, tags=dict(meta or {}))

    def delete(self, doc_id_or_source: str) -> list[str]:
        """Delete a document by id, or every document a source (file path) produced; returns the ids removed."""
        from ragkit.pipelines.indexing import delete_documents

        return delete_documents(self, doc_id_or_source)

    # -- reading -----------------------------------------------------------------------------------------

    def retrieve(
        self, query: str, k: int | None = None, mode: str | None = None, where: Mapping[str, Any] | None = None
    ) -> list[Hit]:
        """The top ``k`` chunks for ``query`` in ``mode`` (dense, bm25, hybrid, or a graph mode)."""
        return self.retrieve_many([query], k, mode, where)[0]

    def retrieve_many(
        self,
        queries: Sequence[str],
        k: int | None = None,
        mode: str | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """Batched :meth:`retrieve`: one embedding batch for all queries."""
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"k must be a positive integer (got {k!r})")
        from ragkit.pipelines.query import retrieve_many

        return retrieve_many(
            self, list(queries), k or self.settings.retrieval.k, mode or self.settings.retrieval.mode, where
        )

    def ask(
        self,
        question: str,
        k: int | None = None,
        mode: str | None = None,
        generator: Generator | str | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> Answer:
        """Retrieve, then answer with citations; falls back to the extractive answer if the generator fails.

        Every sentence of the answer is checked against the retrieved passages (``ragkit.grounding``): missing or
        wrong citations are repaired, and the sentences no passage supports are listed in ``answer.unsupported``.
        """
        return self.ask_many([question], k, mode, generator, where)[0]

    def ask_many(
        self,
        questions: Sequence[str],
        k: int | None = None,
        mode: str | None = None,
        generator: Generator | str | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[Answer]:
        """Batched :meth:`ask`: one retrieval batch and one generation batch."""
        from ragkit.pipelines.query import answer_many

        hits = self.retrieve_many(questions, k, mode, where)
        return answer_many(self, list(questions), hits, generator)

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
        from ragkit.graph.store import GraphStore

        return GraphStore(self.catalog.connection).to_networkx()

    def graph_stats(self) -> dict[str, int] | None:
        if not self.manifest.graph:
            return None
        try:
            from ragkit.graph.store import GraphStore
        except ImportError:
            return None
        return GraphStore(self.catalog.connection).stats()
