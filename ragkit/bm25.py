"""Keyword search: a bm25s index (English stemming and stop words) derived from the catalog's chunks.

The index is rebuilt from the catalog after each write and saved as plain numpy arrays and JSON in a
directory named by the catalog generation; ``bm25.json`` points at the current one and is replaced
atomically, so a reader always loads a complete index.

``BM25Index.build`` streams: it reads the chunks twice, a batch at a time (vocabulary, document frequencies and
lengths, then the scores, written straight into their place in the CSC arrays), so its memory is the index
itself plus one batch, and the index is exactly the one ``bm25s.BM25.index`` builds from all texts at once.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from ragkit.errors import IndexFormatError
from ragkit.types import Chunk

POINTER = "bm25.json"

ChunkSource = Iterable[Chunk] | Callable[[], Iterable[Chunk]]
"""Chunks to index, or (better for large inputs) a callable returning a fresh iterator over them."""
BATCH_SIZE = 5_000  # texts tokenized at once while building (the catalog reads 5,000 chunks at a time)


class BM25Index:
    """BM25 over chunk texts (title included). ``k1``/``b`` default to Anserini's 0.9/0.4, as BEIR reports."""

    def __init__(self, retriever: bm25s.BM25 | None, chunk_ids: list[str], generation: int) -> None:
        self._retriever = retriever
        self.chunk_ids = chunk_ids
        self.generation = generation
        self._stemmer = Stemmer.Stemmer("english")
        self._positions: dict[str, int] | None = None  # chunk id -> row, built on first use

    @classmethod
    def build(
        cls,
        chunks: ChunkSource,
        generation: int,
        k1: float = 0.9,
        b: float = 0.4,
        batch_size: int = BATCH_SIZE,
    ) -> BM25Index:
        """The index of ``chunks``, built in memory bounded by the index itself (not by the corpus).

        ``chunks`` is best a callable returning a fresh iterator over the same chunks each time it is called
        (the texts are read twice, ``batch_size`` at a time); a list or other re-iterable collection works too,
        and a one-shot iterator is read into a list first. Should the chunks change between the two passes
        (a writer committing meanwhile), the build starts again, and after a few tries indexes a list of them.
        The result is the index ``bm25s.BM25.index`` builds from ``bm25s.tokenize`` of all texts: the same
        vocabulary (ids included), the same float32 scores in the same order.
        """
        if callable(chunks):
            source: Callable[[], Iterable[Chunk]] = chunks
        else:
            items = chunks if iter(chunks) is not chunks else list(chunks)  # a one-shot iterator: keep it
            source = lambda: items  # noqa: E731
        batch_size = max(1, batch_size)
        for _ in range(_ATTEMPTS):
            try:
                return cls._build(source, generation, k1, b, batch_size)
            except _CorpusChanged:
                continue  # the chunks changed between the two passes (a writer committed): read them again
        snapshot = list(source())  # they keep changing: index one reading of them, held in memory
        return cls._build(lambda: snapshot, generation, k1, b, batch_size)

    @classmethod
    def _build(
        cls, source: Callable[[], Iterable[Chunk]], generation: int, k1: float, b: float, batch_size: int
    ) -> BM25Index:
        retriever = bm25s.BM25(k1=k1, b=b)
        if retriever.method != "lucene" or retriever.idf_method != "lucene":  # what the scores below compute
            raise AssertionError(f"bm25s's default BM25 method is now {retriever.method!r}, not 'lucene'")
        # pass 1: vocabulary (stem -> id in order of first occurrence), document frequencies, document lengths
        encoder = _Encoder()
        ids: list[str] = []
        lengths: list[np.ndarray] = []
        df = np.zeros(0, dtype=np.int64)
        for batch in _batches(source(), batch_size):
            ids.extend(chunk.id for chunk in batch)
            terms, doc_lengths = encoder.encode([chunk.embed_text for chunk in batch], grow=True)
            lengths.append(doc_lengths.astype(np.int32))
            pairs, _ = _term_doc_pairs(terms, doc_lengths)
            counts = np.bincount(pairs // len(batch), minlength=len(encoder.ids))
            if len(df) < len(counts):
                df = np.concatenate([df, np.zeros(len(counts) - len(df), dtype=np.int64)])
            df += counts
        if not ids:
            return cls(None, [], generation)
        n_docs = len(ids)
        doc_lengths = np.concatenate(lengths)
        del lengths

        # bm25s numbers the stems in the iteration order of a set built from them in order of first occurrence
        # (``tokenize``: ``set(stemmed)``, then ``enumerate``); ``iter`` keeps CPython from presizing the set
        # from a dict's size, so the set (and its order) is the one bm25s builds in this process
        vocab = {token: i for i, token in enumerate(set(iter(encoder.ids)))}
        n_vocab = len(vocab)
        renumber = np.fromiter(map(vocab.__getitem__, encoder.ids), dtype=np.int64, count=n_vocab)
        doc_freqs = np.zeros(n_vocab, dtype=np.int64)
        doc_freqs[renumber] = df
        del df
        if not n_vocab:
            # no chunk has a searchable word (bm25s itself fails here): an index in which "" matches nothing
            vocab = {"": 0}
            doc_freqs = np.zeros(1, dtype=np.int64)
        elif "" not in vocab:
            vocab[""] = n_vocab  # what ``BM25.index(create_empty_token=True)`` adds, with no column of its own
        indptr = np.zeros(len(doc_freqs) + 1, dtype=np.int64)
        np.cumsum(doc_freqs, out=indptr[1:])
        data = np.empty(int(indptr[-1]), dtype=np.float32)
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        idf = _lucene_idf(doc_freqs, n_docs)
        avg_doc_len = doc_lengths.mean()  # as bm25s: float64 mean of the token counts
        del doc_freqs

        # pass 2: tokenize again and write each (term, doc) score at its term's cursor (a counting sort by term)
        cursor = indptr[:-1].copy()
        end = 0
        for batch in _batches(source(), batch_size):
            start, end = end, end + len(batch)
            if [chunk.id for chunk in batch] != ids[start:end]:
                raise _CorpusChanged
            try:
                terms, batch_lengths = encoder.encode([chunk.embed_text for chunk in batch], grow=False)
            except KeyError:  # a stem pass 1 did not see
                raise _CorpusChanged from None
            if not np.array_equal(batch_lengths, doc_lengths[start:end]):
                raise _CorpusChanged
            pairs, tf = _term_doc_pairs(renumber[terms], batch_lengths)  # sorted by term, then by doc
            if not len(pairs):
                continue  # no searchable word in this batch
            term = pairs // len(batch)
            doc = pairs - term * len(batch)
            first = np.flatnonzero(np.concatenate(([True], term[1:] != term[:-1])))  # each term's first pair
            group_terms = term[first]
            group_sizes = np.diff(np.append(first, len(term)))
            if (cursor[group_terms] + group_sizes > indptr[group_terms + 1]).any():
                raise _CorpusChanged
            at = np.repeat(cursor[group_terms] - first, group_sizes) + np.arange(len(term))
            cursor[group_terms] += group_sizes
            # bm25s (method "lucene"): idf * tf / (k1 * (1 - b + b * |d| / avgdl) + tf), in float64 from the
            # float32 idf and float32 tf, stored as float32: the same operations in the same order, so the same bits
            # (in place: IEEE addition and multiplication commute exactly, so only the grouping matters)
            tf64 = tf.astype(np.float32).astype(np.float64)
            del tf
            norm = batch_lengths[doc].astype(np.float64)  # |d|
            norm *= b
            norm /= avg_doc_len
            norm += 1 - b
            norm *= k1
            norm += tf64
            np.divide(tf64, norm, out=norm)
            norm *= idf[term]
            data[at] = norm
            indices[at] = doc + start
        if end != n_docs or not np.array_equal(cursor, indptr[1:]):
            raise _CorpusChanged

        retriever.scores = {"data": data, "indices": indices, "indptr": indptr, "num_docs": n_docs}
        retriever.vocab_dict = vocab
        retriever.nonoccurrence_array = None
        retriever.unique_token_ids_set = set(vocab.values())
        return cls(retriever, ids, generation)

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def _tokens(self, queries: Sequence[str]) -> list[list[str]]:
        """``bm25s.tokenize(queries, stopwords="en", stemmer=..., return_ids=False)``'s stems, without its
        per-call set-up (a third of a short query's BM25 time): lower-cased, split and stop-worded as
        :class:`_Encoder` does for the corpus, then stemmed."""
        stem = self._stemmer.stemWords
        return [stem(_words(query)) for query in queries]

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

    def stems(self, text: str) -> list[str]:
        """The stems BM25 matches in ``text`` (lower-cased, split, stop words dropped, stemmed), in order."""
        return self._tokens([text])[0]

    def terms(self, text: str) -> list[tuple[str, str]]:
        """``text``'s words that BM25 matches, each with its stem, in order."""
        words = _words(text)
        return list(zip(words, self._stemmer.stemWords(words), strict=True))

    def score_chunks(self, stems: Sequence[str], chunk_ids: Sequence[str]) -> np.ndarray:
        """BM25 scores of a query of ``stems`` for the given chunks, in their order (0 for one not indexed)."""
        if self._retriever is None or not stems:
            return np.zeros(len(chunk_ids))
        scores = self._retriever.get_scores(list(stems))
        if self._positions is None:
            self._positions = {cid: i for i, cid in enumerate(self.chunk_ids)}
        positions = self._positions
        return np.array([scores[positions[c]] if c in positions else 0.0 for c in chunk_ids], dtype=np.float64)

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


# -- building ---------------------------------------------------------------------------------------------

_ATTEMPTS = 3  # streaming builds tried while the chunks keep changing between the two passes
# bm25s.tokenize's default pattern is r"(?u)\b\w\w+\b": every maximal run of two or more word characters
# (\b is defined by \w); this pattern finds the same runs about twice as fast
_SPLIT = re.compile(r"\w{2,}").findall
_STOPWORDS = frozenset(STOPWORDS_EN)  # bm25s.tokenize(stopwords="en")


def _words(text: str) -> list[str]:
    """``text``'s words as BM25 reads a query: lower-cased, split, stop words dropped (not yet stemmed)."""
    return [word for word in _SPLIT(text.lower()) if word not in _STOPWORDS]


class _CorpusChanged(Exception):
    """The second pass over the chunks did not see what the first one saw."""


class _Encoder:
    """``bm25s.tokenize(texts, stopwords="en", stemmer=<English PyStemmer>)`` a batch at a time, as numbers.

    Lower-cases, splits on the same pattern, drops stop words before stemming and stems each distinct word
    once, as bm25s does; the stems get ids in order of first occurrence across all batches (``ids``)."""

    def __init__(self) -> None:
        self.stemmer = Stemmer.Stemmer("english")
        self.ids: dict[str, int] = {}

    def encode(self, texts: Sequence[str], grow: bool) -> tuple[np.ndarray, np.ndarray]:
        """(stem id of every kept token, the texts one after another; kept tokens per text), both int64.

        KeyError for a stem not seen before unless ``grow``."""
        counts: list[int] = []

        def split() -> Iterator[list[str]]:
            for text in texts:
                words = _SPLIT(text.lower())
                counts.append(len(words))
                yield words

        numbers: defaultdict[str, int] = defaultdict(itertools.count().__next__)  # word -> first-occurrence id
        tokens = np.fromiter(map(numbers.__getitem__, itertools.chain.from_iterable(split())), dtype=np.int64)
        words = [word for word in numbers if word not in _STOPWORDS]
        stems = self.stemmer.stemWords(words)
        if grow:
            stem_ids = [self.ids.setdefault(stem, len(self.ids)) for stem in stems]
        else:
            stem_ids = [self.ids[stem] for stem in stems]
        table = np.full(len(numbers), -1, dtype=np.int64)
        table[[numbers[word] for word in words]] = stem_ids
        tokens = table[tokens]
        kept = tokens >= 0
        doc = np.repeat(np.arange(len(texts), dtype=np.int64), np.asarray(counts, dtype=np.int64))
        return tokens[kept], np.bincount(doc[kept], minlength=len(texts))


def _term_doc_pairs(terms: np.ndarray, doc_lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``term * n_docs + doc`` of a batch (sorted: by term, then doc) and how often each occurs."""
    n_docs = len(doc_lengths)
    doc = np.repeat(np.arange(n_docs, dtype=np.int64), doc_lengths)
    pairs, tf = np.unique(terms * n_docs + doc, return_counts=True)
    return pairs, tf


def _lucene_idf(doc_freqs: np.ndarray, n_docs: int) -> np.ndarray:
    """float32 ``log(1 + (N - df + 0.5) / (df + 0.5))`` per term (0 where df is 0), with ``math.log`` as bm25s."""
    values, where = np.unique(doc_freqs, return_inverse=True)
    logs = [math.log(1 + (n_docs - df + 0.5) / (df + 0.5)) if df else 0.0 for df in values.tolist()]
    return np.asarray(logs, dtype=np.float32)[where.reshape(-1)]


def _batches(chunks: Iterable[Chunk], size: int) -> Iterator[list[Chunk]]:
    iterator = iter(chunks)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


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
