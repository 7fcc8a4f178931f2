"""``IndexStore``: everything one index directory holds, and the one rule that keeps it consistent.

The catalog (``catalog.sqlite``) is the source of truth: documents, chunks, their tags and the knowledge graph's
facts, written in transactions that each bump its ``generation``. Every other structure is *derived* from it
and implements :class:`DerivedState`: it knows the catalog generation its in-memory copy matches, can load its
last saved copy, can bring that copy up to date from the catalog in memory, and (writers only) can save it.

=================  ==========================================  ======================================
derived state      saved as                                     brought up to date from the catalog by
=================  ==========================================  ======================================
vectors            the backend's files + ``vectors.json``       deleting and adding the changed chunks
BM25               ``bm25-<generation>/`` + ``bm25.json``       rebuilding it (two streaming passes)
graph matrices     never (compiled in memory)                   compiling the graph tables
=================  ==========================================  ======================================

Writers (:meth:`IndexStore.writer`) hold the index's file lock, commit to the catalog batch by batch, apply the
same changes to their own copy of the vectors, and at the end save the derived states in this order: vectors
(then ``vectors.json`` records the generation), BM25. A crash anywhere leaves every saved state at or behind
the catalog, never ahead of it in a way that matters: the next writer (or ``ragkit repair``) brings them up to
date and saves them.

Readers never write. A reader that finds a saved state behind the catalog (a crash, or a writer at work in
another process) brings its in-memory copy up to date and answers from that; the files stay as they were.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ragkit import linalg
from ragkit.bm25 import BM25Index
from ragkit.catalog import Catalog
from ragkit.config import Settings
from ragkit.connectors.embedders import EmbeddingCache, make_embedder
from ragkit.connectors.embedders.single_query import SingleQueryEncoder
from ragkit.connectors.vectors import open_vector_index
from ragkit.errors import EmbedderMismatchError, IndexFormatError, sqlite_damage
from ragkit.manifest import MANIFEST, Manifest
from ragkit.protocols import Embedder, VectorIndex
from ragkit.types import Chunk

CATALOG = "catalog.sqlite"
VECTOR_STATE = "vectors.json"
EMBEDDINGS = "embeddings.sqlite"
LOCK = "index.lock"
LIVE_BACKENDS = ("milvus", "chroma")  # read live from their own servers or files: nothing to reload


class DerivedState(Protocol):
    """A structure derived from the catalog (see the module docstring)."""

    name: str
    generation: int | None  # the catalog generation the in-memory copy matches; None: nothing loaded
    loaded: int | None  # the saved generation the in-memory copy was loaded from

    def saved_generation(self) -> int | None:
        """The catalog generation of the copy on disk (None: there is none)."""
        ...

    def load(self) -> None:
        """Read the saved copy into memory (no writes)."""
        ...

    def rebuild_from(self, catalog: Catalog, generation: int) -> None:
        """Bring the in-memory copy up to the catalog at ``generation`` (no writes)."""
        ...

    def save(self) -> None:
        """Persist the in-memory copy, recording its generation (writers only)."""
        ...


def bring_up_to_date(state: DerivedState, catalog: Catalog) -> None:
    """The reader's rule, the same for every derived state: reload when a newer copy was saved, then catch up
    with the catalog in memory."""
    generation = catalog.generation
    if state.generation == generation:
        return
    if state.generation is None or state.saved_generation() != state.loaded:
        state.load()
    if state.generation != generation:
        state.rebuild_from(catalog, generation)


# -- the derived states ------------------------------------------------------------------------------------


class VectorState:
    """The vector backend, with ``vectors.json`` recording the catalog generation it was saved at."""

    name = "vectors"

    def __init__(self, store: IndexStore, *, writable: bool, instance: VectorIndex | None = None) -> None:
        self.store = store
        self.writable = writable
        self.index: VectorIndex | None = instance
        self.generation: int | None = None
        self.loaded: int | None = None  # vectors.json when the copy was loaded
        self._instance = instance is not None  # a user's own VectorIndex: used as it is, never reopened

    @property
    def live(self) -> bool:
        """The backend answers from its own live store (a server, a user's instance): it is never reopened,
        and a reader cannot change it in memory."""
        return self._instance or self.store.manifest.vectors.get("backend", "faiss") in LIVE_BACKENDS

    def saved_generation(self) -> int | None:
        state = self.store.path / VECTOR_STATE
        try:
            return int(json.loads(state.read_text())["generation"]) if state.exists() else None
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"{state}: unreadable ({exc}); delete it to rebuild the vectors") from None

    def load(self) -> None:
        stamp = self.saved_generation()  # read before the backend's files: they can only be newer than it
        if self.index is not None and self.live:
            self.generation, self.loaded = stamp or 0, stamp
            return
        # not closed: searches in flight on the old copy finish on it, and it closes when they drop it
        self.index, self.generation = None, None
        manifest = self.store.manifest
        self.index = open_vector_index(
            self.store.path, manifest.dimension, manifest.vectors, read_only=not self.writable
        )
        self.generation, self.loaded = stamp or 0, stamp
        self._verify(stamp)

    def _verify(self, stamp: int | None) -> None:
        """A copy saved in step with the catalog must agree with itself (a tampered sidecar), unless a writer
        moved the catalog on meanwhile (its sidecar commits run ahead of its shard saves). A writer that finds
        only rows of vectors no shard holds drops them and catches up from the catalog (``ragkit repair``)."""
        verify = getattr(self.index, "verify", None)
        if verify is None or stamp is None or stamp != self.store.catalog.generation:
            return
        try:
            verify()
        except IndexFormatError:
            if self.store.catalog.generation != stamp:
                self.generation = None  # a writer is at work: catch up from the catalog instead
                return
            # rows of vectors no shard holds (left by an interrupted run before a writer dropped them): a writer
            # drops them and catches up from the catalog; anything else, and any reader, is refused
            prune = getattr(self.index, "prune_sidecar", None)
            if not (self.writable and prune is not None and prune()):
                raise
            verify()
            self.generation = None

    def rebuild_from(self, catalog: Catalog, generation: int) -> None:
        if self.live and not self.store.is_writer():
            return  # readers answer from it as it is; hits of chunks the catalog no longer holds are dropped
        assert self.index is not None
        prune = getattr(self.index, "prune_sidecar", None)  # FAISS: rows an interrupted run left without vectors
        if self.writable and prune is not None:
            prune()
        wanted = catalog.vector_ids()
        stored = set(self.index.ids().tolist())
        self.index.delete(np.array(sorted(stored - wanted), dtype=np.int64))
        missing = sorted(wanted - stored)
        for start in range(0, len(missing), 4096):
            batch = missing[start : start + 4096]
            chunks = catalog.chunks_of_vectors(batch)[1]
            tags = catalog.vector_tags(batch)
            # a writer in another process may delete chunks between these reads: the generation then moves on,
            # and the next call catches up again
            batch = [v for v in batch if v in chunks and v in tags]
            if not batch:
                continue
            embeddings, _ = self.store.embed([chunks[v][0].embed_text for v in batch], store=self.writable)
            self.index.add(np.array(batch, dtype=np.int64), embeddings, [tags[v] for v in batch])
        self.generation = generation

    def save(self) -> None:
        assert self.index is not None and self.generation is not None
        self.index.save()
        self.mark_saved(self.generation)

    def mark_saved(self, generation: int) -> None:
        """Record in ``vectors.json`` that the saved vectors match the catalog at ``generation``."""
        state = self.store.path / VECTOR_STATE
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"generation": generation}))
        os.replace(tmp, state)
        self.loaded = generation

    def close(self) -> None:
        if self.index is not None and not self._instance:
            close = getattr(self.index, "close", None)
            if close is not None:
                close()
            self.index = None
        self.generation = None


class BM25State:
    """The keyword index, saved under the catalog generation it was built at."""

    name = "bm25"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index: BM25Index | None = None
        self.generation: int | None = None
        self.loaded: int | None = None

    def saved_generation(self) -> int | None:
        return BM25Index.saved_generation(self.path)

    def load(self) -> None:
        self.index = BM25Index.load(self.path)
        self.generation = self.loaded = self.index.generation if self.index is not None else None

    def rebuild_from(self, catalog: Catalog, generation: int) -> None:
        self.index = BM25Index.build(lambda: all_chunks(catalog), generation)
        self.generation = generation

    def save(self) -> None:
        assert self.index is not None
        self.index.save(self.path)
        self.loaded = self.index.generation


class GraphState:
    """The knowledge graph's tables (in the catalog) compiled to matrices for search; never saved."""

    name = "graph"

    def __init__(self, catalog: Catalog, options: Any) -> None:
        self.catalog = catalog
        self.options = options
        self.generation: int | None = None
        self.loaded: int | None = None
        self.matrices: Any = None
        self._store: Any = None

    @property
    def store(self) -> Any:
        """The graph tables, read through the catalog's read-only connection."""
        if self._store is None:
            from ragkit.graph.store import GraphStore

            self._store = GraphStore.reader(self.catalog.connection)
        return self._store

    def saved_generation(self) -> int | None:
        return None

    def load(self) -> None:
        pass

    def rebuild_from(self, catalog: Catalog, generation: int) -> None:
        from ragkit.graph.matrices import compile_matrices

        while True:  # the snapshot and the generation must belong together: compile again if a writer got between
            matrices = compile_matrices(self.store.snapshot(), self.options)
            now = catalog.generation
            if now == generation:
                break
            generation = now
        self.matrices, self.generation = matrices, generation

    def save(self) -> None:
        pass

    def get(self) -> Any:
        """The compiled matrices in step with the catalog (what the graph retrievers search)."""
        bring_up_to_date(self, self.catalog)
        return self.matrices


def all_chunks(catalog: Catalog) -> Iterator[Chunk]:
    for batch in catalog.iter_chunks():
        yield from batch


# -- the store ---------------------------------------------------------------------------------------------


class IndexStore:
    """The state of one index directory: manifest, settings, catalog, embedder, and the derived states.

    Pipelines receive this object (never ``ragkit.Index``). Reads go through :meth:`vectors`, :meth:`bm25` and
    :meth:`graph`, which never write; writes go through :meth:`writer`.
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        vectors: VectorIndex | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.settings = settings
        self.catalog = Catalog(path / CATALOG)
        self._lock = threading.RLock()
        self._embedder = embedder
        self._caches: dict[bool, EmbeddingCache] = {}
        self._vectors = VectorState(self, writable=vectors is not None, instance=vectors)
        self._bm25 = BM25State(path)
        self._graph: GraphState | None = None
        self._writer_thread: int | None = None
        self._parts: dict[str, Any] = {}  # what retrieval modes build once per open index (compiled graphs)

    def close(self) -> None:
        with self._lock:
            self._vectors.close()
            for cache in self._caches.values():
                cache.close()
            self._caches.clear()
            self.catalog.close()

    # -- models ----------------------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                try:
                    embedder = make_embedder(
                        self.manifest.embedder,
                        device=self.settings.embedder.device,
                        batch_size=self.settings.embedder.batch_size,
                    )
                except OSError as exc:
                    raise IndexFormatError(
                        f"{self.path / MANIFEST}: the index's embedder {self.manifest.embedder!r} cannot be "
                        f"loaded ({exc})"
                    ) from None
                if embedder.dim != self.manifest.dimension:
                    raise EmbedderMismatchError(
                        f"{self.path / MANIFEST}: embedder {self.manifest.embedder!r} now has dimension "
                        f"{embedder.dim}, the index has {self.manifest.dimension}"
                    )
                self._embedder = embedder
            return self._embedder

    def embed(self, texts: Sequence[str], *, store: bool = True) -> tuple[np.ndarray, int]:
        """Document vectors through the on-disk cache (``store=False``: look up only, as readers do); returns
        the vectors and how many texts were actually embedded."""
        with self._lock:
            cache = self._caches.get(store)
            if cache is None:
                with self._damaged_cache():
                    cache = EmbeddingCache(
                        self.path / EMBEDDINGS, self.manifest.embedder, self.manifest.dimension, read_only=not store
                    )
                self._caches[store] = cache
        with self._damaged_cache():
            return cache.embed(texts, self.embedder.embed_documents)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors, float32. One query to a plain sentence-transformers model on the CPU skips ``encode``'s
        per-call bookkeeping (``SingleQueryEncoder``: the same vector, bit for bit); anything else goes through
        the embedder."""
        embedder = self.embedder
        linalg.products_beside(embedder)  # the query's vector products run beside this encoder's threads
        if len(queries) == 1:
            single: SingleQueryEncoder | None = self.part("single-query", lambda: SingleQueryEncoder.of(embedder))
            if single is not None and single.usable:
                return single(queries[0])
        return np.asarray(embedder.embed_queries(queries), dtype=np.float32)

    def _damaged_cache(self) -> Any:
        return sqlite_damage(self.path / EMBEDDINGS, "embedding cache is damaged; delete it (it is only a cache)")

    # -- reading: never writes -------------------------------------------------------------------------

    def vectors(self) -> VectorIndex:
        """The vector backend in step with the catalog (in memory when the saved copy is behind)."""
        with self._lock:
            state = self._vectors
            if state.writable and not state.live and state.generation != self.catalog.generation:
                # a writer's copy (of this process, at work, or moved past by another process): readers take a
                # read-only copy of their own, and searches in flight finish on the old one
                state = self._vectors = VectorState(self, writable=False)
            bring_up_to_date(state, self.catalog)
            assert state.index is not None
            return state.index

    def vectors_as_checked(self) -> tuple[VectorIndex, int] | None:
        """The vector backend as the last :meth:`vectors` left it, and the catalog generation it matches, without
        reading the catalog: for a reader that reads the generation in its own catalog look-up and calls
        :meth:`vectors` when it has moved on (dense hits). None before the first :meth:`vectors`, and for live
        backends (a server: readers never catch it up in memory)."""
        with self._lock:
            state = self._vectors
            if state.index is None or state.generation is None or state.live:
                return None
            return state.index, state.generation

    def bm25(self) -> BM25Index:
        with self._lock:
            bring_up_to_date(self._bm25, self.catalog)
            assert self._bm25.index is not None
            return self._bm25.index

    def graph(self) -> GraphState:
        """The knowledge graph: its tables (``.store``) and compiled matrices (``.get()``)."""
        with self._lock:
            if self._graph is None:
                from ragkit.graph.settings import GraphSettings

                options = GraphSettings.from_options(self.settings.graph.options, origin="ragkit.toml [graph] options")
                self._graph = GraphState(self.catalog, options)
            return self._graph

    def part(self, key: str, build: Callable[[], Any]) -> Any:
        """Something built once per open index and kept with it (a retrieval mode's compiled state)."""
        with self._lock:
            if key not in self._parts:
                self._parts[key] = build()
            return self._parts[key]

    # -- writing ---------------------------------------------------------------------------------------

    @contextmanager
    def writer(self) -> Iterator[IndexWriter]:
        """Exclusive write access, between processes and between threads (each holds the file lock through its
        own handle); commits the derived states in order when the block ends without an error."""
        if self._writer_thread == threading.get_ident():
            raise RuntimeError(f"{self.path}: this thread is already writing the index")
        with open(self.path / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._writer_thread = threading.get_ident()
            try:
                writer = IndexWriter(self, self._writable_vectors())
                yield writer
                writer.commit()
            finally:
                self._writer_thread = None
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _writable_vectors(self) -> VectorState:
        """The writer's copy of the vectors, caught up with the catalog (after an interrupted earlier run)."""
        with self._lock:
            state = self._vectors
            saved = state.saved_generation()
            in_sync = state.writable and state.index is not None and state.generation == state.loaded == saved
            if state.live:
                state.writable = True
                if state.index is None:
                    state.load()
            elif not in_sync:
                state = VectorState(self, writable=True)
                state.load()
        if state.generation != self.catalog.generation:
            state.rebuild_from(self.catalog, self.catalog.generation)
        return state

    def _committed(self, vectors: VectorState) -> None:
        """A writer saved ``vectors`` in step with the catalog: readers of this process use it from now on."""
        with self._lock:
            self._vectors = vectors

    def saved_generations(self) -> dict[str, int | None]:
        """The catalog's generation, and the one each saved derived state matches (None: never saved)."""
        return {
            "catalog": self.catalog.generation,
            "vectors": self._vectors.saved_generation(),
            "bm25": self._bm25.saved_generation(),
        }

    def repair(self) -> dict[str, Any]:
        """Bring every saved derived state up to the catalog and save it; returns the generations before."""
        before = self.saved_generations()
        with self.writer() as writer:
            writer.changed = True
        return before

    def is_writer(self) -> bool:
        return self._writer_thread == threading.get_ident()


class IndexWriter:
    """What a pipeline writes through, inside :meth:`IndexStore.writer`."""

    def __init__(self, store: IndexStore, vectors: VectorState) -> None:
        self.store = store
        self.catalog = store.catalog
        self._vectors = vectors
        self.changed = False

    @property
    def vectors(self) -> VectorIndex:
        assert self._vectors.index is not None
        return self._vectors.index

    def graph_store(self) -> Any:
        """The knowledge graph's tables, for writing inside the catalog's transactions."""
        from ragkit.graph.store import GraphStore

        return GraphStore(self.catalog.write_connection)

    def delete_documents(self, doc_ids: Iterable[str]) -> list[int]:
        """Remove documents, their chunks, graph facts and vectors; returns the vector ids removed."""
        doc_ids = list(doc_ids)
        if not doc_ids:
            return []
        with self.catalog.transaction() as conn:
            removed = self.catalog.delete_documents(conn, doc_ids)
            if self.store.manifest.graph:
                self.graph_store().delete_documents(doc_ids)
        self.vectors.delete(np.array(removed, dtype=np.int64))
        return removed

    def commit(self) -> None:
        """Save the derived states in their documented order: vectors (then ``vectors.json``), then BM25."""
        store = self.store
        generation = self.catalog.generation
        vectors = self._vectors
        vectors.generation = generation  # every change since it was caught up went through this writer
        if vectors.saved_generation() != generation or self.changed:
            vectors.save()
        store._committed(vectors)
        if BM25Index.saved_generation(store.path) != generation:
            bm25 = BM25State(store.path)
            bm25.rebuild_from(self.catalog, generation)
            bm25.save()
            with store._lock:
                store._bm25 = bm25
