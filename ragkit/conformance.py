"""The behaviour every ``ragkit.protocols.VectorIndex`` backend must show, as one reusable pytest test class.

It ships inside ragkit (it needs pytest, which only ragkit's ``dev`` extra installs) so that a third-party
backend passes the same suite as FAISS, Milvus and Chroma. In the backend's test module::

    import pytest

    from ragkit.conformance import conformance_corpus, exact_search, shared_index  # noqa: F401 - fixtures
    from ragkit.testing import VectorIndexConformance

    from my_backend import MyIndex


    @pytest.fixture(scope="module")
    def make_index():
        return lambda directory, dim: MyIndex(directory, dim)  # opens (or reopens) the index in ``directory``


    class TestMyIndex(VectorIndexConformance):
        pass

``make_index`` is a module-scoped fixture returning a callable ``(directory: Path, dim: int) -> VectorIndex``
that opens (or reopens) the backend's index stored under ``directory``. Approximate backends also override the
module-scoped ``exact_search`` fixture to return ``False``; their results are then held to recall@10 >= 0.95
against exact search instead of equality. The module-level fixtures (``conformance_corpus``, ``shared_index``,
``exact_search``) must be visible to the test class: import them into the test module or its ``conftest.py``.
Read-only tests share one filled index per backend configuration (``shared_index``), so ``make_index`` and any
parametrized fixture it uses must be module-scoped.

Every check compares the index with ``ReferenceIndex``, a brute-force model of the contract kept alongside it
(float64 inner products over a dict of id -> vector and metadata), on clustered synthetic data from a seeded
generator.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragkit.errors import DimensionMismatchError
from ragkit.protocols import VectorIndex

DIM = 32
N_VECTORS = 2000
N_QUERIES = 40
MAX_ID = 2**60
MIN_RECALL = 0.95
SCORE_ATOL = 1e-4
TENANTS = ("acme", "globex", "initech")

IndexFactory = Callable[[Path, int], VectorIndex]


def normalize(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Corpus:
    """Clustered unit vectors, unique ids up to 2**60, filterable metadata and queries near the clusters."""

    ids: np.ndarray
    vectors: np.ndarray
    meta: list[dict[str, Any]]
    queries: np.ndarray


def make_corpus(n: int = N_VECTORS, dim: int = DIM, n_queries: int = N_QUERIES, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    centers = normalize(rng.normal(size=(max(4, n // 50), dim)))
    spread = 0.6 / np.sqrt(dim)
    vectors = normalize(centers[rng.integers(0, len(centers), n)] + spread * rng.normal(size=(n, dim)))
    queries = normalize(
        centers[rng.integers(0, len(centers), n_queries)] + spread * rng.normal(size=(n_queries, dim))
    )
    ids = np.unique(rng.integers(0, MAX_ID, size=2 * n, dtype=np.int64))
    ids = rng.permutation(ids)[:n]
    meta: list[dict[str, Any]] = []
    for i in range(n):
        row: dict[str, Any] = {
            "doc_id": f"doc-{i // 4}",
            "source": f"folder/file-{i % 50}.txt",
            "tenant": TENANTS[i % 3],
            "user": f"u{i % 7}",
            "rank": i % 10,
            "public": i % 2 == 0,
        }
        if i % 5 == 0:
            row["lang"] = "en"  # present on some vectors only: the others must never match it
        meta.append(row)
    return Corpus(ids, vectors, meta, queries)


def matches(meta: Mapping[str, Any], where: Mapping[str, Any] | None) -> bool:
    """The contract's filter: every key present and equal (a bool only equals a bool)."""
    if not where:
        return True
    for key, value in where.items():
        if key not in meta or isinstance(meta[key], bool) != isinstance(value, bool) or meta[key] != value:
            return False
    return True


class ReferenceIndex:
    """What the index should hold and answer: a brute-force model of the VectorIndex contract."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.rows: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}

    def add(self, ids: np.ndarray, vectors: np.ndarray, meta: Sequence[Mapping[str, Any]]) -> None:
        for vid, vector, row in zip(ids.tolist(), vectors, meta, strict=True):
            self.rows[int(vid)] = (np.asarray(vector, dtype=np.float64), dict(row))

    def delete(self, ids: np.ndarray) -> None:
        for vid in ids.tolist():
            self.rows.pop(int(vid), None)

    def vector(self, vid: int) -> np.ndarray:
        return self.rows[vid][0]

    def search(
        self, queries: np.ndarray, k: int, where: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        chosen = [vid for vid, (_, row) in self.rows.items() if matches(row, where)]
        scores = np.full((len(queries), k), -np.inf)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        if chosen:
            matrix = np.stack([self.rows[vid][0] for vid in chosen])
            sims = queries.astype(np.float64) @ matrix.T
            chosen_ids = np.array(chosen, dtype=np.int64)
            for row in range(len(queries)):
                order = np.argsort(-sims[row], kind="stable")[:k]
                scores[row, : len(order)] = sims[row, order]
                ids[row, : len(order)] = chosen_ids[order]
        return scores, ids


def check_search(
    index: VectorIndex,
    reference: ReferenceIndex,
    queries: np.ndarray,
    k: int,
    where: Mapping[str, Any] | None,
    exact: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Search ``index`` and hold the answer to the contract; returns the answer."""
    scores, ids = index.search(queries, k, where=where)
    want_scores, want_ids = reference.search(queries, k, where=where)
    assert scores.shape == ids.shape == (len(queries), k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    real = ids >= 0
    assert np.all(np.isneginf(scores[~real])), "padding must score -inf"
    for row in range(len(queries)):
        found = ids[row][real[row]]
        assert real[row][: len(found)].all(), f"query {row}: padding before a real result: {ids[row]}"
        assert len(set(found.tolist())) == len(found), f"query {row}: an id returned twice: {found}"
        for vid in found.tolist():
            assert vid in reference.rows, f"query {row}: id {vid} was never stored or was deleted"
            assert matches(reference.rows[vid][1], where), f"query {row}: id {vid} does not match {where}"
        assert np.all(np.diff(scores[row][: len(found)]) <= SCORE_ATOL), f"query {row}: not best first"
    if exact:
        assert np.array_equal(real, want_ids >= 0), "exact search must return min(k, matching) results"
        np.testing.assert_allclose(scores[real], want_scores[real], atol=SCORE_ATOL)
        for row, col in zip(*np.nonzero(real), strict=True):
            true_score = float(queries[row].astype(np.float64) @ reference.vector(int(ids[row, col])))
            assert abs(true_score - scores[row, col]) <= SCORE_ATOL, "a score is not the inner product"
    else:
        found_recall = recall(ids, want_ids)
        assert found_recall >= MIN_RECALL, f"recall@{k} {found_recall:.3f} < {MIN_RECALL} with where={where}"
    return scores, ids


def recall(found: np.ndarray, wanted: np.ndarray) -> float:
    """Mean over queries of |found ∩ wanted| / |wanted| (padding ignored; queries wanting nothing skipped)."""
    per_query = []
    for got, want in zip(found, wanted, strict=True):
        want_set = set(want[want >= 0].tolist())
        if want_set:
            per_query.append(len(want_set & set(got[got >= 0].tolist())) / len(want_set))
    return float(np.mean(per_query)) if per_query else 1.0


def close_index(index: VectorIndex) -> None:
    close = getattr(index, "close", None)
    if close is not None:
        close()


@functools.lru_cache(maxsize=1)
def _default_corpus() -> Corpus:
    return make_corpus()


@pytest.fixture(scope="session")
def conformance_corpus() -> Corpus:
    """The suite's data, built once (tests copy before changing it)."""
    return _default_corpus()


@pytest.fixture(scope="module")
def exact_search() -> bool:
    """Overridden (module-scoped) by approximate backends (HNSW, IVF-PQ) to return False."""
    return True


@pytest.fixture(scope="module")
def shared_index(
    make_index: IndexFactory, conformance_corpus: Corpus, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[VectorIndex, ReferenceIndex]]:
    """One index holding the whole corpus, shared by the read-only tests (one per backend configuration)."""
    index = make_index(tmp_path_factory.mktemp("shared-index"), DIM)
    reference = ReferenceIndex(DIM)
    index.add(conformance_corpus.ids, conformance_corpus.vectors, conformance_corpus.meta)
    reference.add(conformance_corpus.ids, conformance_corpus.vectors, conformance_corpus.meta)
    yield index, reference
    close_index(index)


class VectorIndexConformance:
    """Subclass in ``test_<backend>.py`` and provide the module-scoped ``make_index`` fixture (see the module)."""

    @pytest.fixture
    def open_index(self, make_index: IndexFactory, tmp_path: Path) -> Iterator[Callable[..., VectorIndex]]:
        """Open indexes through the backend's factory and close every one of them after the test."""
        opened: list[VectorIndex] = []

        def open_(directory: Path | None = None, dim: int = DIM) -> VectorIndex:
            index = make_index(directory or tmp_path / "index", dim)
            opened.append(index)
            return index

        yield open_
        for index in reversed(opened):
            close_index(index)

    @pytest.fixture
    def corpus(self, conformance_corpus: Corpus) -> Corpus:
        return conformance_corpus

    @pytest.fixture
    def filled(
        self, open_index: Callable[..., VectorIndex], corpus: Corpus
    ) -> tuple[VectorIndex, ReferenceIndex]:
        """A fresh index and its reference model holding the whole corpus, for tests that change it."""
        index, reference = open_index(), ReferenceIndex(DIM)
        index.add(corpus.ids, corpus.vectors, corpus.meta)
        reference.add(corpus.ids, corpus.vectors, corpus.meta)
        return index, reference

    # -- shape of the contract -------------------------------------------------------------------------------

    def test_implements_the_protocol(self, open_index: Callable[..., VectorIndex]) -> None:
        index = open_index()
        assert isinstance(index, VectorIndex)
        assert index.dim == DIM

    def test_empty_index_answers_with_padding(
        self, open_index: Callable[..., VectorIndex], corpus: Corpus
    ) -> None:
        index = open_index()
        assert len(index) == 0
        assert len(index.ids()) == 0
        scores, ids = index.search(corpus.queries[:3], 5)
        assert scores.shape == ids.shape == (3, 5)
        assert np.all(ids == -1) and np.all(np.isneginf(scores))
        scores, ids = index.search(corpus.queries[:3], 5, where={"tenant": "acme"})
        assert np.all(ids == -1) and np.all(np.isneginf(scores))

    def test_add_then_len_and_ids(
        self, shared_index: tuple[VectorIndex, ReferenceIndex], corpus: Corpus
    ) -> None:
        index, _ = shared_index
        assert len(index) == N_VECTORS
        stored = index.ids()
        assert stored.dtype == np.int64
        assert sorted(stored.tolist()) == sorted(corpus.ids.tolist())
        assert int(stored.max()) > 2**59, "large ids must survive (the corpus has ids up to 2**60)"

    def test_adding_nothing_is_a_no_op(self, open_index: Callable[..., VectorIndex]) -> None:
        index = open_index()
        index.add(np.zeros(0, dtype=np.int64), np.zeros((0, DIM), dtype=np.float32), [])
        index.delete(np.zeros(0, dtype=np.int64))
        assert len(index) == 0

    # -- search quality --------------------------------------------------------------------------------------

    def test_search_matches_exact_search(
        self, shared_index: tuple[VectorIndex, ReferenceIndex], corpus: Corpus, exact_search: bool
    ) -> None:
        index, reference = shared_index
        check_search(index, reference, corpus.queries, 10, None, exact_search)

    def test_a_stored_vector_finds_itself_first(
        self, shared_index: tuple[VectorIndex, ReferenceIndex], corpus: Corpus
    ) -> None:
        index, _ = shared_index
        picks = np.arange(0, N_VECTORS, N_VECTORS // 20)
        _, ids = index.search(corpus.vectors[picks], 1)
        assert np.mean(ids[:, 0] == corpus.ids[picks]) >= MIN_RECALL

    @pytest.mark.parametrize(
        "where",
        [
            {"tenant": "acme"},
            {"tenant": "globex", "user": "u3"},
            {"rank": 4},
            {"public": False},
            {"lang": "en"},
            {"doc_id": "doc-10"},
            {"source": "folder/file-7.txt", "tenant": "initech"},
        ],
        ids=["str", "two-keys", "int", "bool", "key-on-some", "doc_id", "source+tenant"],
    )
    def test_filtered_search_matches_exact_search(
        self,
        shared_index: tuple[VectorIndex, ReferenceIndex],
        corpus: Corpus,
        exact_search: bool,
        where: dict[str, Any],
    ) -> None:
        index, reference = shared_index
        check_search(index, reference, corpus.queries, 10, where, exact_search)

    def test_filter_applies_before_top_k(
        self, open_index: Callable[..., VectorIndex], corpus: Corpus
    ) -> None:
        """Five far-away matches are all found: filtering the top-k afterwards would find none."""
        index = open_index()
        meta = [dict(row) for row in corpus.meta]
        far = np.argsort(corpus.vectors @ corpus.queries[0])[:5]  # the five worst matches of query 0
        for row in far.tolist():
            meta[row]["tenant"] = "rare"
        index.add(corpus.ids, corpus.vectors, meta)
        scores, ids = index.search(corpus.queries[:1], 10, where={"tenant": "rare"})
        assert sorted(ids[0, :5].tolist()) == sorted(corpus.ids[far].tolist()), f"found {ids[0]}"
        assert np.all(ids[0, 5:] == -1) and np.all(np.isneginf(scores[0, 5:]))

    def test_filters_that_match_nothing(
        self, shared_index: tuple[VectorIndex, ReferenceIndex], corpus: Corpus
    ) -> None:
        index, _ = shared_index
        for where in ({"tenant": "nobody"}, {"no_such_key": "acme"}, {"tenant": "acme", "user": "nobody"}):
            scores, ids = index.search(corpus.queries[:2], 5, where=where)
            assert np.all(ids == -1) and np.all(np.isneginf(scores)), where

    def test_filter_values_are_matched_literally(
        self, open_index: Callable[..., VectorIndex], corpus: Corpus
    ) -> None:
        """Quotes, backslashes, newlines and non-ASCII match exactly and cannot widen a filter."""
        index, reference = open_index(), ReferenceIndex(DIM)
        tricky = ['a"b', "c'd", "back\\slash", "two\nlines", "naïve 東京", 'x" or meta["tenant"] == "acme']
        meta = [{"tenant": tricky[i % len(tricky)], "plain": "yes"} for i in range(60)]
        index.add(corpus.ids[:60], corpus.vectors[:60], meta)
        reference.add(corpus.ids[:60], corpus.vectors[:60], meta)
        for value in tricky:
            _, ids = index.search(corpus.queries[:2], 20, where={"tenant": value})
            wanted = {vid for vid, (_, row) in reference.rows.items() if row["tenant"] == value}
            assert len(wanted) == 10
            for row in ids:
                assert set(row[row >= 0].tolist()) == wanted, repr(value)
        _, ids = index.search(corpus.queries[:1], 20, where={"tenant": '" or 1 == 1 or "'})
        assert np.all(ids == -1)

    def test_k_larger_than_the_index(
        self, open_index: Callable[..., VectorIndex], corpus: Corpus, exact_search: bool
    ) -> None:
        index, reference = open_index(), ReferenceIndex(DIM)
        index.add(corpus.ids[:20], corpus.vectors[:20], corpus.meta[:20])
        reference.add(corpus.ids[:20], corpus.vectors[:20], corpus.meta[:20])
        _, ids = check_search(index, reference, corpus.queries[:4], 50, None, exact_search)
        assert np.all(ids[:, :20] >= 0) and np.all(ids[:, 20:] == -1)
        _, ids = check_search(index, reference, corpus.queries[:4], 50, {"tenant": "acme"}, exact_search)
        assert np.all(ids[:, :7] >= 0) and np.all(ids[:, 7:] == -1)  # rows 0, 3, ..., 18 are acme's

    # -- writes ----------------------------------------------------------------------------------------------

    def test_add_upserts_by_id(
        self, filled: tuple[VectorIndex, ReferenceIndex], corpus: Corpus, exact_search: bool
    ) -> None:
        index, reference = filled
        rng = np.random.default_rng(1)
        replaced = corpus.ids[:50]
        new_vectors = normalize(rng.normal(size=(50, DIM)))
        new_meta = [{"tenant": "moved", "doc_id": f"moved-{i}"} for i in range(50)]
        index.add(replaced, new_vectors, new_meta)
        reference.add(replaced, new_vectors, new_meta)
        assert len(index) == N_VECTORS
        _, ids = index.search(new_vectors, 1)
        assert np.mean(ids[:, 0] == replaced) >= MIN_RECALL
        check_search(index, reference, corpus.queries, 10, {"tenant": "acme"}, exact_search)
        check_search(index, reference, new_vectors[:10], 10, {"tenant": "moved"}, exact_search)
        _, ids = index.search(corpus.queries[:1], 10, where={"doc_id": "doc-0"})  # rows 0-3, all replaced
        assert np.all(ids == -1), "old metadata still matches after an upsert"

    def test_delete(
        self, filled: tuple[VectorIndex, ReferenceIndex], corpus: Corpus, exact_search: bool
    ) -> None:
        index, reference = filled
        gone = corpus.ids[::4]
        index.delete(
            np.concatenate([gone, np.array([7, MAX_ID - 3], dtype=np.int64)])
        )  # unknown ids: ignored
        reference.delete(gone)
        assert len(index) == N_VECTORS - len(gone)
        assert not set(index.ids().tolist()) & set(gone.tolist())
        _, ids = index.search(corpus.vectors[::4][:20], 10)
        assert not set(ids.ravel().tolist()) & set(gone.tolist())
        check_search(index, reference, corpus.queries, 10, None, exact_search)
        check_search(index, reference, corpus.queries, 10, {"tenant": "globex"}, exact_search)
        index.add(gone[:10], corpus.vectors[::4][:10], corpus.meta[::4][:10])  # deleted ids can come back
        assert len(index) == N_VECTORS - len(gone) + 10

    # -- lifecycle -------------------------------------------------------------------------------------------

    def test_persists_across_reopen(
        self, open_index: Callable[..., VectorIndex], corpus: Corpus, tmp_path: Path, exact_search: bool
    ) -> None:
        directory = tmp_path / "persisted"
        index, reference = open_index(directory), ReferenceIndex(DIM)
        index.add(corpus.ids, corpus.vectors, corpus.meta)
        index.delete(corpus.ids[:100])
        upserted = [{**row, "tenant": "moved"} for row in corpus.meta[100:110]]
        index.add(corpus.ids[100:110], corpus.vectors[100:110], upserted)
        reference.add(corpus.ids, corpus.vectors, corpus.meta)
        reference.delete(corpus.ids[:100])
        reference.add(corpus.ids[100:110], corpus.vectors[100:110], upserted)
        before = index.search(corpus.queries, 10, where={"tenant": "acme"})
        index.save()
        close_index(index)

        reopened = open_index(directory)
        assert len(reopened) == len(reference.rows)
        assert sorted(reopened.ids().tolist()) == sorted(reference.rows)
        after = check_search(reopened, reference, corpus.queries, 10, {"tenant": "acme"}, exact_search)
        assert recall(after[1], before[1]) >= MIN_RECALL
        check_search(reopened, reference, corpus.queries, 10, {"tenant": "moved"}, exact_search)
        reopened.add(corpus.ids[:5], corpus.vectors[:5], corpus.meta[:5])  # still writable
        assert len(reopened) == len(reference.rows) + 5

    def test_dimension_mismatch_is_a_clear_error(
        self, shared_index: tuple[VectorIndex, ReferenceIndex], corpus: Corpus
    ) -> None:
        index, _ = shared_index
        wrong = np.ones((2, DIM + 3), dtype=np.float32) / np.sqrt(DIM + 3)
        with pytest.raises(
            DimensionMismatchError, match=rf"(?s)(\b{DIM + 3}\b.*\b{DIM}\b|\b{DIM}\b.*\b{DIM + 3}\b)"
        ):
            index.add(np.array([1, 2], dtype=np.int64), wrong, [{}, {}])
        with pytest.raises(
            DimensionMismatchError, match=rf"(?s)(\b{DIM + 3}\b.*\b{DIM}\b|\b{DIM}\b.*\b{DIM + 3}\b)"
        ):
            index.search(wrong, 5)
        assert len(index) == N_VECTORS

    def test_reopening_with_another_dimension_is_a_clear_error(
        self, open_index: Callable[..., VectorIndex], corpus: Corpus, tmp_path: Path
    ) -> None:
        directory = tmp_path / "dims"
        index = open_index(directory)
        index.add(corpus.ids[:10], corpus.vectors[:10], corpus.meta[:10])
        index.save()
        close_index(index)
        with pytest.raises(
            DimensionMismatchError, match=rf"(?s)(\b{DIM}\b.*\b{2 * DIM}\b|\b{2 * DIM}\b.*\b{DIM}\b)"
        ):
            open_index(directory, 2 * DIM)

    def test_concurrent_searches_agree_with_serial_ones(
        self, shared_index: tuple[VectorIndex, ReferenceIndex], corpus: Corpus
    ) -> None:
        index, _ = shared_index
        wheres: list[dict[str, Any] | None] = [None, {"tenant": "acme"}, {"user": "u2"}, {"public": True}]
        jobs = [(start, wheres[start % len(wheres)]) for start in range(0, N_QUERIES, 4)] * 2
        serial = [index.search(corpus.queries[start : start + 4], 10, where=where) for start, where in jobs]
        barrier = threading.Barrier(4)

        def run(number: int) -> tuple[np.ndarray, np.ndarray]:
            start, where = jobs[number]
            if number < 4:
                barrier.wait(timeout=30)  # the first four start together
            return index.search(corpus.queries[start : start + 4], 10, where=where)

        with ThreadPoolExecutor(max_workers=4) as pool:
            parallel = list(pool.map(run, range(len(jobs))))
        for (want_scores, want_ids), (got_scores, got_ids) in zip(serial, parallel, strict=True):
            np.testing.assert_array_equal(got_ids, want_ids)
            np.testing.assert_allclose(got_scores, want_scores, atol=SCORE_ATOL)


VectorIndexSuite = VectorIndexConformance  # its name while it lived in tests/conformance/vector_index_suite.py

__all__ = [
    "Corpus",
    "DIM",
    "IndexFactory",
    "ReferenceIndex",
    "VectorIndexConformance",
    "VectorIndexSuite",
    "check_search",
    "close_index",
    "conformance_corpus",
    "exact_search",
    "make_corpus",
    "shared_index",
]
