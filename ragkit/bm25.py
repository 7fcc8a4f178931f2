"""Keyword search: a bm25s index (English stemming and stop words) derived from the catalog's chunks.

The index is rebuilt from the catalog after each write and saved as plain numpy arrays and JSON in a
directory named by the catalog generation; ``bm25.json`` points at the current one and is replaced
atomically, so a reader always loads a complete index.
"""

from __future__ import annotations

import json
import os
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
        results = []
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
        """The saved index, or None when there is none yet."""
        pointer = directory / POINTER
        if not pointer.exists():
            return None
        try:
            info = json.loads(pointer.read_text())
            folder = directory / info["dir"]
            chunk_ids = json.loads((folder / "chunk_ids.json").read_text())
            retriever = bm25s.BM25.load(str(folder), allow_pickle=False) if chunk_ids else None
        except (OSError, ValueError, KeyError) as exc:
            raise IndexFormatError(f"{pointer}: BM25 index is unreadable ({exc}); delete it to rebuild") from None
        return cls(retriever, chunk_ids, int(info["generation"]))
