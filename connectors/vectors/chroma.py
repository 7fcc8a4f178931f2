"""Chroma vector backend: a persistent Chroma directory inside the index, or a Chroma server by host and port.

Chroma never embeds text here: every collection is opened with ``embedding_function=None`` and given explicit
vectors (Chroma's default embedding function would download a model). Ids are stored as decimal strings; the
metadata is Chroma metadata, so a ``where`` filter becomes a Chroma ``$and`` of ``$eq`` clauses applied inside
the search, before the top-k. ``shards`` spreads vectors over several collections by ``id % shards``; their
results are merged by ``ragkit.fusion.merge_topk``. Chroma searches an HNSW graph: results are approximate.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragkit.errors import ConfigError, DimensionMismatchError, IndexFormatError, RagkitError, missing_extra
from ragkit.fusion import empty_result, merge_topk

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.collection_configuration import CreateCollectionConfiguration
    from chromadb.api.models.Collection import Collection

_LAYOUT_KEYS = ("ragkit_dim", "ragkit_shards")
_PAGE = 10_000


def where_clause(where: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A Chroma ``where`` document requiring every key to equal its value (a missing key never matches).

    >>> where_clause({"tenant": "acme", "user": "u42"})
    {'$and': [{'tenant': {'$eq': 'acme'}}, {'user': {'$eq': 'u42'}}]}
    """
    if not where:
        return None
    clauses = []
    for key, value in where.items():
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(key, str):
            raise ValueError(f"where keys must be strings (got {key!r})")
        if not isinstance(value, (str, int, float, bool)):
            raise ValueError(
                f"where[{key!r}]: only str, int, float and bool values can be matched "
                f"(got {type(value).__name__})"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"where[{key!r}]: {value} cannot be matched (only finite numbers)")
        clauses.append({key: {"$eq": value}})
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _clean_meta(row: Mapping[str, Any], vector_id: int) -> dict[str, Any] | None:
    clean: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
            raise ValueError(
                f"metadata of vector {vector_id}: {key!r} = {value!r}; keys must be str and values str, int, "
                "float or bool"
            )
        clean[key] = value
    return clean or None  # Chroma refuses an empty dict but takes None


class ChromaIndex:
    """Chroma collections implementing ``ragkit.protocols.VectorIndex``.

    Give ``path`` for a persistent local directory, or ``host``/``port`` for a Chroma server. ``ef_search``,
    ``ef_construction`` and ``max_neighbors`` tune Chroma's HNSW graph when a collection is created.

    >>> store = ChromaIndex(index_dir / "chroma", dim=384, shards=2)
    >>> store.add(ids, vectors, [{"doc_id": "a", "tenant": "acme"}, ...])
    >>> scores, ids = store.search(queries, k=10, where={"tenant": "acme"})
    >>> store.close()
    """

    def __init__(
        self,
        path: Path | None,
        dim: int,
        collection: str = "ragkit",
        host: str | None = None,
        port: int | None = None,
        shards: int = 1,
        *,
        ef_search: int = 128,
        ef_construction: int = 200,
        max_neighbors: int = 32,
    ) -> None:
        try:
            import chromadb
            from chromadb.config import Settings
            from chromadb.errors import NotFoundError
        except ImportError:
            raise missing_extra("chromadb", "chroma") from None
        if dim < 1:
            raise ValueError(f"dim must be at least 1 (got {dim})")
        if shards < 1:
            raise ValueError(f"shards must be at least 1 (got {shards})")
        if (path is None) == (host is None):
            raise ConfigError(
                "ChromaIndex needs exactly one of path (a local Chroma directory) or host/port "
                "(a Chroma server)"
            )
        self.dim, self.num_shards, self.collection = dim, shards, collection
        settings = Settings(anonymized_telemetry=False)
        if path is not None:
            self.location = str(Path(path))
            Path(path).mkdir(parents=True, exist_ok=True)
            self._client: ClientAPI | None = chromadb.PersistentClient(path=self.location, settings=settings)
        else:
            self.location = f"{host}:{port or 8000}"
            self._client = chromadb.HttpClient(host=str(host), port=int(port or 8000), settings=settings)
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(max_workers=min(shards, 4)) if shards > 1 else None
        try:
            configuration: CreateCollectionConfiguration = {
                "hnsw": {
                    "space": "ip",
                    "ef_search": ef_search,
                    "ef_construction": ef_construction,
                    "max_neighbors": max_neighbors,
                }
            }
            layout = {"ragkit_dim": dim, "ragkit_shards": shards}
            self._collections: list[Collection] = []
            for number in range(shards):
                name = self._shard_name(number)
                try:
                    shard = self._client.get_collection(name, embedding_function=None)
                    self._check_layout(shard.metadata or {})
                except NotFoundError:
                    shard = self._client.create_collection(
                        name, embedding_function=None, configuration=configuration, metadata=layout
                    )
                self._collections.append(shard)
        except BaseException:
            self.close()
            raise

    def _shard_name(self, number: int) -> str:
        return self.collection if number == 0 else f"{self.collection}-shard{number:03d}"

    def _check_layout(self, stored: Mapping[str, Any]) -> None:
        where = f"Chroma collection {self.collection!r} at {self.location}"
        if "ragkit_dim" not in stored:
            return  # not made by ragkit: Chroma itself refuses vectors of another dimension
        if stored["ragkit_dim"] != self.dim:
            raise DimensionMismatchError(
                f"{where}: vectors have dimension {stored['ragkit_dim']}, but {self.dim} was asked for"
            )
        if stored.get("ragkit_shards") != self.num_shards:
            raise IndexFormatError(
                f"{where}: built with shards={stored.get('ragkit_shards')}, opened with "
                f"shards={self.num_shards}; open it with the same number of shards"
            )

    def _check_dim(self, vectors: np.ndarray, what: str) -> np.ndarray:
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"{what} have dimension {vectors.shape[-1]}, the Chroma index has {self.dim}"
            )
        return vectors

    @property
    def collections(self) -> list[Collection]:
        """The Chroma collections, one per shard."""
        if self._client is None:
            raise RagkitError(f"ChromaIndex({self.location!r}, collection={self.collection!r}) is closed")
        return self._collections

    def __len__(self) -> int:
        return sum(collection.count() for collection in self.collections)

    def add(self, ids: np.ndarray, vectors: np.ndarray, meta: Sequence[Mapping[str, Any]]) -> None:
        """Upsert: a stored id is replaced (vector and metadata); within one call the last row wins."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = self._check_dim(vectors, "vectors")
        if not (len(ids) == len(vectors) == len(meta)):
            raise ValueError(f"add: {len(ids)} ids, {len(vectors)} vectors and {len(meta)} metadata rows")
        if not len(ids):
            return
        if (ids < 0).any():
            raise ValueError(f"add: ids must be non-negative (got {int(ids.min())})")
        last = np.array(
            sorted({int(vid): row for row, vid in enumerate(ids.tolist())}.values()), dtype=np.int64
        )
        ids, vectors = ids[last], vectors[last]
        metadatas = [
            _clean_meta(meta[row], int(vid)) for row, vid in zip(last.tolist(), ids.tolist(), strict=True)
        ]
        with self._lock:
            batch = self._client.get_max_batch_size() if self._client is not None else _PAGE
            for number, collection in enumerate(self.collections):
                rows = np.flatnonzero(ids % self.num_shards == number)
                for start in range(0, len(rows), batch):
                    chunk = rows[start : start + batch]
                    collection.upsert(
                        ids=[str(vid) for vid in ids[chunk].tolist()],
                        embeddings=vectors[chunk],
                        metadatas=[metadatas[row] for row in chunk.tolist()],
                    )

    def delete(self, ids: np.ndarray) -> None:
        """Remove these ids; ids that are not stored are ignored."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if not len(ids):
            return
        with self._lock:
            for number, collection in enumerate(self.collections):
                chosen = ids[ids % self.num_shards == number]
                for start in range(0, len(chosen), _PAGE):
                    collection.delete(ids=[str(vid) for vid in chosen[start : start + _PAGE].tolist()])

    def _search_one(
        self, collection: Collection, queries: np.ndarray, k: int, where: dict[str, Any] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = empty_result(len(queries), k)
        result = collection.query(query_embeddings=queries, n_results=k, where=where, include=["distances"])
        distances_per_query = result["distances"]
        if distances_per_query is None:  # include=["distances"] asks for them
            raise RagkitError(f"Chroma collection {collection.name!r} returned no distances")
        for row, (found, distances) in enumerate(zip(result["ids"], distances_per_query, strict=True)):
            ids[row, : len(found)] = [int(vid) for vid in found]
            scores[row, : len(found)] = 1.0 - np.asarray(
                distances, dtype=np.float32
            )  # "ip" distance = 1 - dot
        return scores, ids

    def search(
        self, queries: np.ndarray, k: int, where: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = self._check_dim(queries, "queries")
        if k < 1:
            raise ValueError(f"k must be at least 1 (got {k})")
        clause = where_clause(where)
        collections = self.collections
        if self._pool is None:
            return self._search_one(collections[0], queries, k, clause)
        parts = list(
            self._pool.map(lambda collection: self._search_one(collection, queries, k, clause), collections)
        )
        return merge_topk(parts, k)

    def ids(self) -> np.ndarray:
        """Every stored id (in no particular order)."""
        found: list[int] = []
        for collection in self.collections:
            offset = 0
            while page := collection.get(include=[], limit=_PAGE, offset=offset)["ids"]:
                found.extend(int(vid) for vid in page)
                offset += len(page)
        return np.array(found, dtype=np.int64)

    def save(self) -> None:
        """Nothing to do: Chroma writes every change through to its directory or server."""

    def close(self) -> None:
        """Release the client (a persistent client then frees its directory for a later reopen)."""
        with self._lock:
            if self._client is None:
                return
            client, self._client = self._client, None
            if self._pool is not None:
                self._pool.shutdown()
            close = getattr(client, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> ChromaIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
