"""An example ragkit vector backend: exact inner-product search over one NumPy matrix, saved with ``np.savez``.

It is a complete third-party plugin in a few dozen lines. ragkit finds it through the entry point its
``pyproject.toml`` declares::

    [project.entry-points."ragkit.vector_backends"]
    numpy = "ragkit_numpy_backend:open_numpy_index"

after which ``ragkit index docs --backend numpy`` and ``backend = "numpy"`` in ``ragkit.toml`` work, and
``ragkit.conformance.VectorIndexConformance`` checks it like FAISS (see ``tests/test_plugins.py``).

>>> index = NumpyIndex(Path("vectors"), dim=4)
>>> index.add(np.array([7]), np.eye(1, 4, dtype=np.float32), [{"tenant": "acme"}])
>>> index.search(np.eye(1, 4, dtype=np.float32), 2, where={"tenant": "acme"})[1]
array([[ 7, -1]])
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragkit.errors import DimensionMismatchError, IndexFormatError

__all__ = ["NumpyIndex", "open_numpy_index"]

FILE = "vectors.npz"


def open_numpy_index(
    directory: Path, dim: int, settings: Mapping[str, Any], *, read_only: bool = False
) -> NumpyIndex:
    """The ``numpy`` entry of ``ragkit.registry.vector_backends``: the index's vectors in ``directory/numpy``."""
    return NumpyIndex(Path(directory) / "numpy", dim, read_only=read_only)


def _matches(meta: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    """Every key present and equal; a bool only equals a bool (``True == 1`` in Python, not here)."""
    for key, value in where.items():
        if key not in meta:
            return False
        stored = meta[key]
        if isinstance(stored, bool) != isinstance(value, bool) or stored != value:
            return False
    return True


class NumpyIndex:
    """Vectors in memory, ``directory/vectors.npz`` on ``save()``; searches are one matrix product (exact).

    ``read_only``: the files are never written (changes stay in memory, ``save`` refuses), as ragkit's readers
    expect.
    """

    def __init__(self, directory: Path, dim: int, *, read_only: bool = False) -> None:
        self.directory, self.dim, self.read_only = Path(directory), dim, read_only
        self._lock = threading.Lock()  # one writer at a time; searches read the current snapshot
        # (ids, vectors, metadata rows), replaced as a whole by each write, so a search never sees half of one
        self._state: tuple[np.ndarray, np.ndarray, list[dict[str, Any]]] = (
            np.zeros(0, dtype=np.int64),
            np.zeros((0, dim), dtype=np.float32),
            [],
        )
        path = self.directory / FILE
        if path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                ids, vectors, meta = data["ids"], data["vectors"], json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError) as exc:
            raise IndexFormatError(f"{path}: not a readable numpy vector file ({exc})") from None
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"{path}: vectors of dimension {vectors.shape[-1]}, but the index was opened with dimension {self.dim}"
            )
        if not (len(ids) == len(vectors) == len(meta)):
            raise IndexFormatError(f"{path}: {len(ids)} ids, {len(vectors)} vectors, {len(meta)} metadata rows")
        self._state = (ids.astype(np.int64), vectors.astype(np.float32), list(meta))

    def _check_dim(self, vectors: np.ndarray, what: str) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            got = vectors.shape[-1] if vectors.ndim else 0
            raise DimensionMismatchError(f"{what}: vectors of dimension {got}, the index has dimension {self.dim}")
        return vectors

    def add(self, ids: np.ndarray, vectors: np.ndarray, meta: Sequence[Mapping[str, Any]]) -> None:
        """Insert, or replace the vectors and metadata of ids already stored."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = self._check_dim(vectors, "add")
        if not (len(ids) == len(vectors) == len(meta)):
            raise ValueError(f"add: {len(ids)} ids, {len(vectors)} vectors and {len(meta)} metadata rows")
        rows = [json.loads(json.dumps(dict(row), default=_plain)) for row in meta]  # what save() will store
        last = {int(vid): row for row, vid in enumerate(ids.tolist())}  # a repeated id: its last row wins
        chosen = np.array(sorted(last.values()), dtype=np.int64)
        with self._lock:
            old_ids, old_vectors, old_meta = self._state
            keep = ~np.isin(old_ids, ids)
            self._state = (
                np.concatenate([old_ids[keep], ids[chosen]]),
                np.concatenate([old_vectors[keep], vectors[chosen]]),
                [row for row, kept in zip(old_meta, keep.tolist(), strict=True) if kept]
                + [rows[i] for i in chosen.tolist()],
            )

    def delete(self, ids: np.ndarray) -> None:
        """Remove ids; unknown ones are ignored."""
        with self._lock:
            old_ids, old_vectors, old_meta = self._state
            keep = ~np.isin(old_ids, np.asarray(ids, dtype=np.int64))
            kept_meta = [row for row, kept in zip(old_meta, keep.tolist(), strict=True) if kept]
            self._state = (old_ids[keep], old_vectors[keep], kept_meta)

    def search(
        self, queries: np.ndarray, k: int, where: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of shape ``(len(queries), k)``, best first, padded with ``-inf`` / ``-1``."""
        queries = self._check_dim(queries, "search")
        ids, vectors, meta = self._state
        if where:
            mask = np.fromiter((_matches(row, where) for row in meta), dtype=bool, count=len(meta))
            ids, vectors = ids[mask], vectors[mask]
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        if len(ids) and len(queries):
            sims = queries @ vectors.T
            top = min(k, len(ids))
            best = np.argsort(-sims, axis=1, kind="stable")[:, :top]
            scores[:, :top] = np.take_along_axis(sims, best, axis=1)
            found[:, :top] = ids[best]
        return scores, found

    def ids(self) -> np.ndarray:
        return self._state[0].copy()

    def save(self) -> None:
        """Write ``vectors.npz`` atomically (a temporary file, then a rename)."""
        if self.read_only:
            raise IndexFormatError(f"{self.directory}: opened read-only; only a writer saves the vectors")
        ids, vectors, meta = self._state
        buffer = io.BytesIO()
        np.savez(buffer, ids=ids, vectors=vectors, meta=np.array(json.dumps(meta)))
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / f".{FILE}.{os.getpid()}.tmp"
        temporary.write_bytes(buffer.getvalue())
        os.replace(temporary, self.directory / FILE)

    def __len__(self) -> int:
        return len(self._state[0])

    def close(self) -> None:
        """Nothing to release: the arrays go with the object."""

    def __enter__(self) -> NumpyIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(value: Any) -> Any:
    """NumPy scalars in metadata (``np.int64(3)``) as the Python values JSON stores."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"metadata values must be str, int, float or bool (got {type(value).__name__})")
