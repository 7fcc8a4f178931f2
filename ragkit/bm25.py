"""Keyword search: a bm25s index (English stemming and stop words) derived from the catalog's chunks.

The index is rebuilt from the catalog after each write and saved as plain numpy arrays and JSON in a
directory named by the catalog generation; ``bm25.json`` points at the current one and is replaced
atomically, so a reader always loads a complete index.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

from ragkit.errors import IndexFormatError
from ragkit.types import Chunk

POINTER = "bm25.json"


class BM25Index:
    """BM25 over chunk texts (title included). ``k1``/``b`` default to Anserini's 0.9/0.4, as BEIR reports."""

    def __init__(self, retriever: bm25s.BM25 | None, chunk_ids: list[str], generation: int) -> None:
        self._retriever = retriever
        self.chunk_ids = chunk_ids
        self.generation = generation
        self._stemmer = Stemmer.Stemmer("english")

    @classmethod
    def build(cls, chunks: Iterable[Chunk], generation: int, k1: float = 0.9, b: float = 0.4) -> BM25Index:
        ids, texts = [], []
        for chunk in chunks:
            ids.append(chunk.id)
            texts.append(chunk.embed_text)
        if not texts:
            return cls(None, [], generation)
        stemmer = Stemmer.Stemmer("english")
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(tokens, show_progress=False)
        return cls(retriever, ids, generation)

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def _tokens(self, queries: Sequence[str]) -> list[list[str]]:
        return bm25s.tokenize(
            list(queries), stopwords="en", stemmer=self._stemmer, show_progress=False, return_ids=False
        )

    def search(
        self, queries: Sequence[str], k: int, mask: np.ndarray | None = None
    ) -> list[list[tuple[str, float]]]:
        """Top ``k`` (chunk id, score) per query; chunks with no matching term are never returned.

        ``mask`` (one 0/1 weight per chunk, in ``chunk_ids`` order) restricts the search to some chunks.
        """
        if self._retriever is None:
            return [[] for _ in queries]
        results: list[list[tuple[str, float]]] = []
        for tokens in self._tokens(queries):
            scores = self._retriever.get_scores(tokens) if tokens else np.zeros(len(self.chunk_ids))
            if mask is not None:
                scores = scores * mask
            top = min(k, int(np.count_nonzero(scores > 0)))
            if top == 0:
                results.append([])
                continue
            best = np.argpartition(-scores, top - 1)[:top]
            best = best[np.lexsort((best, -scores[best]))]
            results.append([(self.chunk_ids[i], float(scores[i])) for i in best])
        return results

    # -- persistence -----------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write into ``directory/bm25-<generation>/`` and point ``bm25.json`` at it; remove older copies."""
        name = f"bm25-{self.generation}"
        target = directory / name
        staging = directory / f"{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if self._retriever is not None:
            self._retriever.save(str(staging), allow_pickle=False)
        (staging / "chunk_ids.json").write_text(json.dumps(self.chunk_ids))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        pointer = directory / POINTER
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(json.dumps({"dir": name, "generation": self.generation}))
        os.replace(tmp, pointer)
        for old in directory.glob("bm25-*"):
            if old.name != name and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def saved_generation(directory: Path) -> int | None:
        """The catalog generation of the saved index, without loading it."""
        try:
            return int(json.loads((directory / POINTER).read_text())["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @classmethod
    def load(cls, directory: Path) -> BM25Index | None:
        """The saved index, or None when there is none; IndexFormatError (naming the file) when damaged."""
        pointer = directory / POINTER
        for attempt in range(10):
            raw = _read_or_none(pointer)
            if raw is None:
                return None
            try:
                info = json.loads(raw)
                if not isinstance(info, dict) or not _FOLDER.fullmatch(str(info.get("dir"))):
                    raise ValueError(f"expected {{'dir': 'bm25-N', 'generation': N}}, got {info!r:.80}")
                generation = int(info["generation"])
            except (ValueError, KeyError, TypeError) as exc:
                message = f"{pointer}: not a valid BM25 pointer ({exc}); delete it to rebuild"
                raise IndexFormatError(message) from None
            try:
                return cls._load_folder(directory / info["dir"], generation)
            except _Damaged as damaged:
                # a writer may have saved a newer copy and removed this folder: follow the new pointer
                if attempt < 9 and _read_or_none(pointer) != raw:
                    continue
                raise IndexFormatError(
                    f"{damaged.path}: BM25 index is unreadable ({damaged.reason}); "
                    f"delete {pointer} to rebuild it"
                ) from None
        raise AssertionError("unreachable")

    @classmethod
    def _load_folder(cls, folder: Path, generation: int) -> BM25Index:
        ids_path = folder / "chunk_ids.json"
        try:
            chunk_ids = json.loads(ids_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise _Damaged(ids_path, exc) from None
        if not isinstance(chunk_ids, list) or not all(isinstance(c, str) for c in chunk_ids):
            raise _Damaged(ids_path, "not a list of chunk ids")
        if not chunk_ids:
            return cls(None, [], generation)
        try:  # numpy arrays and JSON only (allow_pickle=False): nothing in the folder can run code
            retriever = bm25s.BM25.load(str(folder), allow_pickle=False, show_progress=False)
        except Exception as exc:  # whatever a damaged file makes bm25s raise
            raise _Damaged(_unreadable_file(folder) or folder, exc) from None
        problem = _inconsistency(retriever, len(chunk_ids))
        if problem is not None:
            raise _Damaged(folder / problem[0], problem[1])
        return cls(retriever, chunk_ids, generation)


_FOLDER = re.compile(r"bm25-\d+")
_JSON_FILES = ("params.index.json", "vocab.index.json")
_ARRAY_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy")


class _Damaged(Exception):
    def __init__(self, path: Path, reason: object) -> None:
        super().__init__(path, reason)
        self.path, self.reason = path, reason


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _unreadable_file(folder: Path) -> Path | None:
    """The first file of a saved bm25s index that does not parse (only looked for after a failed load)."""
    for name in _JSON_FILES:
        try:
            value = json.loads((folder / name).read_bytes())
        except (OSError, ValueError):
            return folder / name
        if not isinstance(value, dict):
            return folder / name
        if name == "params.index.json":
            known = set(inspect.signature(bm25s.BM25).parameters) | {"version", "num_docs"}
            if set(value) - known:
                return folder / name
    for name in _ARRAY_FILES:
        try:
            np.load(folder / name, allow_pickle=False)
        except Exception:
            return folder / name
    return None


def _inconsistency(retriever: bm25s.BM25, count: int) -> tuple[str, str] | None:
    """(file, what is wrong) when the loaded arrays are not a BM25 index of ``count`` chunks, else None."""
    scores = retriever.scores
    data, indices, indptr = (np.asarray(scores.get(k)) for k in ("data", "indices", "indptr"))
    if scores.get("num_docs") != count:
        return "params.index.json", f"num_docs {scores.get('num_docs')!r}, chunk_ids.json has {count} chunks"
    try:
        if np.dtype(retriever.dtype).kind != "f" or np.dtype(retriever.int_dtype).kind not in "iu":
            return "params.index.json", f"dtype {retriever.dtype!r} / int_dtype {retriever.int_dtype!r}"
    except TypeError as exc:
        return "params.index.json", str(exc)
    if indptr.ndim != 1 or indptr.dtype.kind not in "iu" or not len(indptr) or indptr[0] != 0:
        return "indptr.csc.index.npy", "not an index pointer array"
    if (np.diff(indptr) < 0).any() or indptr[-1] != len(data):
        return "indptr.csc.index.npy", f"does not match the {len(data)} scores of data.csc.index.npy"
    if data.ndim != 1 or data.dtype.kind != "f":
        return "data.csc.index.npy", "not a float array"
    if indices.shape != data.shape or indices.dtype.kind not in "iu" or (
        len(indices) and (indices.min() < 0 or indices.max() >= count)
    ):
        return "indices.csc.index.npy", f"not {len(data)} chunk numbers below {count}"
    vocab = retriever.vocab_dict
    if not isinstance(vocab, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and 0 <= v < len(indptr) for k, v in vocab.items()
    ):
        return "vocab.index.json", f"not a map of tokens to ids below {len(indptr)}"
    return None
