"""Milvus vector backend: milvus-lite in a local ``.db`` path by default, or any Milvus server by URI.

One collection holds int64 primary keys ``id``, a float vector ``vector`` searched by inner product, the
vector's metadata as JSON ``meta``, and ``doc_id`` / ``source`` copied into scalar VARCHAR fields so a server
can index them. A ``where`` filter becomes a Milvus boolean expression (every value escaped, never pasted
raw), so it is applied inside the search, before the top-k. Milvus spreads a collection over ``shards_num``
shards itself; milvus-lite keeps one.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ragkit.errors import DimensionMismatchError, IndexFormatError, RagkitError, missing_extra
from ragkit.fusion import empty_result

MilvusIndexType = Literal["FLAT", "HNSW", "IVF_FLAT", "AUTOINDEX"]
MILVUS_INDEX_TYPES: tuple[str, ...] = ("FLAT", "HNSW", "IVF_FLAT", "AUTOINDEX")
MAX_TOPK = 16384  # Milvus refuses larger limits (search top-k, query limit)
SCALAR_FIELDS: tuple[str, ...] = ("doc_id", "source")
_VARCHAR_MAX = 65535
_WRITE_BATCH = 1000
_QUERY_BATCH = 256

# milvus-lite runs one in-process server per .db path and keeps it until exit; several MilvusIndex objects may
# share a path, so the last one to close stops the server (and releases the path's lock for a later reopen).
_lite_users: dict[str, int] = {}
_lite_lock = threading.Lock()


def escape_string(value: str) -> str:
    """``value`` as a double-quoted Milvus expression string literal (backslash escapes, no raw newlines)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def literal(value: Any, key: str) -> str:
    """A Python metadata value as a Milvus expression literal; anything but str/int/float/bool is refused."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"where[{key!r}]: {value} cannot be matched (only finite numbers)")
        return repr(value)
    if isinstance(value, str):
        return escape_string(value)
    raise ValueError(
        f"where[{key!r}]: only str, int, float and bool values can be matched (got {type(value).__name__})"
    )


def filter_expression(where: Mapping[str, Any] | None) -> str:
    """A Milvus boolean expression that is true when every ``where`` key equals its value in ``meta``.

    A key missing from a vector's metadata never matches. ``doc_id`` and ``source`` string values use the
    scalar fields of the same name (same rows, indexable on a server).

    >>> filter_expression({"tenant": "acme", "n": 3})
    '(meta["tenant"] == "acme") and (meta["n"] == 3)'
    """
    if not where:
        return ""
    clauses = []
    for key, value in where.items():
        if not isinstance(key, str):
            raise ValueError(f"where keys must be strings (got {key!r})")
        if key in SCALAR_FIELDS and isinstance(value, str):
            clauses.append(f"({key} == {literal(value, key)})")
        else:
            clauses.append(f"(meta[{escape_string(key)}] == {literal(value, key)})")
    return " and ".join(clauses)


def _clean_meta(row: Mapping[str, Any], vector_id: int) -> dict[str, Any]:
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
    return clean


class MilvusIndex:
    """A Milvus collection implementing ``ragkit.protocols.VectorIndex``.

    ``uri`` ending in ``.db`` is a milvus-lite database inside the index directory (no server to run);
    anything else (``http://host:19530``, a Zilliz Cloud endpoint) is a Milvus server, with ``token``.
    ``index_type`` ``FLAT`` (the default) is exact; ``HNSW``, ``IVF_FLAT`` and ``AUTOINDEX`` trade exactness
    for speed on large collections. Call ``close()`` (or use ``with``) when done.

    >>> store = MilvusIndex(str(index_dir / "milvus.db"), dim=384)
    >>> store.add(ids, vectors, [{"doc_id": "a", "tenant": "acme"}, ...])
    >>> scores, ids = store.search(queries, k=10, where={"tenant": "acme"})
    >>> store.close()
    """

    def __init__(
        self,
        uri: str | Path,
        dim: int,
        collection: str = "ragkit",
        token: str | None = None,
        shards_num: int = 1,
        *,
        index_type: MilvusIndexType = "FLAT",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        nlist: int = 128,
        nprobe: int = 16,
    ) -> None:
        try:
            from pymilvus import DataType, MilvusClient
        except ImportError:
            raise missing_extra("pymilvus", "milvus") from None
        if index_type not in MILVUS_INDEX_TYPES:
            raise ValueError(
                f"unknown Milvus index_type {index_type!r} (valid: {', '.join(MILVUS_INDEX_TYPES)})"
            )
        if dim < 1:
            raise ValueError(f"dim must be at least 1 (got {dim})")
        if shards_num < 1:
            raise ValueError(f"shards_num must be at least 1 (got {shards_num})")
        uri = str(uri)
        self.dim, self.collection, self.index_type = dim, collection, index_type
        self._ef_search, self._nprobe, self._nlist = ef_search, nprobe, nlist
        self._lite_path: str | None = None
        if uri.endswith(".db"):
            try:
                import milvus_lite  # noqa: F401
            except ImportError:
                raise missing_extra("milvus-lite", "milvus") from None
            uri = os.path.abspath(uri)
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            self._lite_path = uri
        self.uri = uri
        self._lock = threading.RLock()
        self._client: Any = MilvusClient(uri=uri, token=token or "")
        if self._lite_path is not None:
            with _lite_lock:
                _lite_users[self._lite_path] = _lite_users.get(self._lite_path, 0) + 1
        try:
            if self._client.has_collection(collection):
                self._check_existing()
                self._client.load_collection(collection)
            else:
                self._create(DataType, shards_num, hnsw_m, ef_construction, nlist)
        except BaseException:
            self.close()
            raise

    def _create(self, data_type: Any, shards_num: int, hnsw_m: int, ef_construction: int, nlist: int) -> None:
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", data_type.INT64, is_primary=True)
        schema.add_field("vector", data_type.FLOAT_VECTOR, dim=self.dim)
        for name in SCALAR_FIELDS:
            schema.add_field(name, data_type.VARCHAR, max_length=_VARCHAR_MAX, nullable=True)
        schema.add_field("meta", data_type.JSON)
        params = {"HNSW": {"M": hnsw_m, "efConstruction": ef_construction}, "IVF_FLAT": {"nlist": nlist}}
        index_params = self._client.prepare_index_params()
        index_params.add_index(
            field_name="vector",
            index_type=self.index_type,
            metric_type="IP",
            params=params.get(self.index_type, {}),
        )
        self._client.create_collection(
            self.collection,
            schema=schema,
            index_params=index_params,
            shards_num=shards_num,
            consistency_level="Strong",
        )

    def _check_existing(self) -> None:
        described = self._client.describe_collection(self.collection)
        fields = {field["name"]: field for field in described.get("fields", [])}
        missing = [name for name in ("id", "vector", "meta", *SCALAR_FIELDS) if name not in fields]
        if missing:
            raise IndexFormatError(
                f"Milvus collection {self.collection!r} at {self.uri} lacks the fields {missing}: it was not "
                "made by ragkit; choose another collection name"
            )
        stored_dim = int(fields["vector"].get("params", {}).get("dim", -1))
        if stored_dim != self.dim:
            raise DimensionMismatchError(
                f"Milvus collection {self.collection!r} at {self.uri}: vectors have dimension {stored_dim}, "
                f"but {self.dim} was asked for"
            )

    @property
    def client(self) -> Any:
        """The underlying ``pymilvus.MilvusClient`` (for administration: compaction, aliases, replicas)."""
        if self._client is None:
            raise RagkitError(f"MilvusIndex({self.uri!r}, collection={self.collection!r}) is closed")
        return self._client

    def _check_dim(self, vectors: np.ndarray, what: str) -> np.ndarray:
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"{what} have dimension {vectors.shape[-1]}, the Milvus index has {self.dim}"
            )
        return vectors

    def __len__(self) -> int:
        return self._count()

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
        last: dict[int, int] = {int(vid): row for row, vid in enumerate(ids.tolist())}
        rows = []
        for vid, row in last.items():
            clean = _clean_meta(meta[row], vid)
            record: dict[str, Any] = {"id": vid, "vector": vectors[row].tolist(), "meta": clean}
            for name in SCALAR_FIELDS:
                value = clean.get(name)
                record[name] = value if isinstance(value, str) else None
            rows.append(record)
        with self._lock:
            for start in range(0, len(rows), _WRITE_BATCH):
                self.client.upsert(self.collection, rows[start : start + _WRITE_BATCH])
            self.client.flush(self.collection)

    def delete(self, ids: np.ndarray) -> None:
        """Remove these ids; ids that are not stored are ignored."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if not len(ids):
            return
        with self._lock:
            for start in range(0, len(ids), _WRITE_BATCH):
                self.client.delete(self.collection, ids=ids[start : start + _WRITE_BATCH].tolist())
            self.client.flush(self.collection)

    def search(
        self, queries: np.ndarray, k: int, where: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = self._check_dim(queries, "queries")
        if k < 1:
            raise ValueError(f"k must be at least 1 (got {k})")
        expression = filter_expression(where)
        limit = min(k, MAX_TOPK)
        if k > MAX_TOPK and len(self) > MAX_TOPK:
            raise ValueError(f"k={k} is above Milvus's largest top-k ({MAX_TOPK}); ask for fewer results")
        scores, ids = empty_result(len(queries), k)
        widen = 1.0
        if expression and self._lite_path is not None and self.index_type != "FLAT":
            # milvus-lite filters HNSW / IVF candidates during the walk, so a selective filter starves the
            # top-k; widen the walk by the inverse selectivity (a Milvus server falls back to brute force).
            matching = self._count(expression)
            if matching == 0:
                return scores, ids
            widen = len(self) / matching
        params = self._search_params(limit, widen)
        step = max(1, min(_QUERY_BATCH, 100_000 // limit))
        for start in range(0, len(queries), step):
            batch = queries[start : start + step]
            results = self.client.search(
                self.collection,
                data=[row.tolist() for row in batch],
                limit=limit,
                filter=expression,
                output_fields=["id"],
                search_params=params,
                anns_field="vector",
                consistency_level="Strong",
            )
            for offset, hits in enumerate(results):
                row = start + offset
                for rank, hit in enumerate(hits):
                    ids[row, rank] = int(hit["id"])
                    scores[row, rank] = float(hit["distance"])
        return scores, ids

    def _count(self, expression: str = "") -> int:
        rows = self.client.query(
            self.collection, filter=expression, output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(rows[0]["count(*)"])

    def _search_params(self, limit: int, widen: float) -> dict[str, Any]:
        params: dict[str, Any] = {"metric_type": "IP"}
        if self.index_type == "HNSW" or (self.index_type == "AUTOINDEX" and self._lite_path is not None):
            params["params"] = {"ef": math.ceil(min(max(self._ef_search, limit) * widen, 2**31 - 1))}
        elif self.index_type == "IVF_FLAT":
            params["params"] = {"nprobe": math.ceil(min(self._nprobe * widen, self._nlist))}
        return params

    def ids(self) -> np.ndarray:
        """Every stored id (in no particular order)."""
        count = len(self)
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        if count <= MAX_TOPK:
            rows = self.client.query(
                self.collection, filter="", output_fields=["id"], limit=MAX_TOPK, consistency_level="Strong"
            )
            return np.array([row["id"] for row in rows], dtype=np.int64)
        found: list[int] = []
        iterator = self.client.query_iterator(
            self.collection, batch_size=MAX_TOPK // 2, filter="", output_fields=["id"]
        )
        try:
            while batch := iterator.next():
                found.extend(row["id"] for row in batch)
        finally:
            iterator.close()
        return np.array(found, dtype=np.int64)

    def save(self) -> None:
        """Make every write durable (Milvus persists flushed segments itself)."""
        with self._lock:
            self.client.flush(self.collection)

    def close(self) -> None:
        """Release the connection; with milvus-lite, stop its server once no MilvusIndex uses the path."""
        with self._lock:
            if self._client is None:
                return
            client, self._client = self._client, None
            client.close()
            if self._lite_path is not None:
                with _lite_lock:
                    users = _lite_users.get(self._lite_path, 1) - 1
                    if users > 0:
                        _lite_users[self._lite_path] = users
                        return
                    _lite_users.pop(self._lite_path, None)
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self._lite_path)

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
