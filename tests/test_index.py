"""Index behaviour on the hashing fake embedder: incremental runs, deletes, shards, interrupted writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ragkit import Document, Index, Settings
from ragkit.errors import ConfigError, EmbedderMismatchError, IndexFormatError
from ragkit.testing import HashingEmbedder

TOPICS = {
    "apples.md": "# Apples\n\nApples grow on trees in orchards. Red apples are sweet and crisp.",
    "rivers.txt": "The Danube flows through Vienna and Budapest before reaching the Black Sea.",
    "volcano.md": "# Volcanoes\n\nMagma rises through the crust and erupts as lava from a volcano.",
    "chess.txt": "A chess opening such as the Sicilian Defence shapes the middle game.",
}


def settings(**vectors) -> Settings:
    return Settings().merged(graph={"enabled": False}, vectors=vectors, chunking={"max_tokens": 16, "overlap": 4})


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for name, text in TOPICS.items():
        (root / name).write_text(text)
    return root


def make(tmp_path: Path, name: str = "idx", **vectors) -> Index:
    return Index.create(tmp_path / name, settings(**vectors), embedder=HashingEmbedder(64))


def chunk_ids(index: Index) -> set[str]:
    return {c.id for batch in index.catalog.iter_chunks() for c in batch}


def test_add_then_retrieve_every_mode(tmp_path, corpus):
    index = make(tmp_path)
    report = index.add([corpus])
    assert (report.added, report.failed) == (4, 0)
    assert len(index.vectors) == index.catalog.counts()["chunks"] == len(chunk_ids(index))
    for mode in ("dense", "bm25", "hybrid"):
        hits = index.retrieve("lava erupts from the volcano", k=3, mode=mode)
        assert hits and hits[0].source.endswith("volcano.md"), mode
        assert hits[0].chunk.text in TOPICS["volcano.md"]


def test_reindex_unchanged_is_a_no_op_with_stable_ids(tmp_path, corpus):
    index = make(tmp_path)
    index.add([corpus])
    before = chunk_ids(index)
    generation = index.catalog.generation
    again = index.add([corpus])
    assert (again.added, again.updated, again.unchanged, again.embedded) == (0, 0, 4, 0)
    assert chunk_ids(index) == before
    assert index.catalog.generation == generation


def test_changed_file_replaces_only_its_chunks(tmp_path, corpus):
    index = make(tmp_path)
    index.add([corpus])
    before = chunk_ids(index)
    (corpus / "chess.txt").write_text("Checkers is played on the dark squares of the board.")
    report = index.add([corpus])
    assert (report.updated, report.unchanged) == (1, 3)
    after = chunk_ids(index)
    assert len(before - after) >= 1 and len(after - before) >= 1
    assert set(index.vectors.ids().tolist()) == index.catalog.vector_ids()
    assert not index.retrieve("Sicilian Defence", k=5, mode="bm25")
    assert index.retrieve("checkers dark squares", k=1, mode="bm25")[0].source.endswith("chess.txt")


def test_delete_by_id_and_by_source(tmp_path, corpus):
    index = make(tmp_path)
    index.add([corpus])
    apples = index.retrieve("apples orchards", k=1, mode="bm25")[0].chunk.doc_id
    assert index.delete(apples) == [apples]
    assert all(h.chunk.doc_id != apples for h in index.retrieve("apples orchards", k=10, mode="hybrid"))
    removed = index.delete(str(corpus / "rivers.txt"))
    assert len(removed) == 1
    assert index.catalog.counts()["documents"] == 2
    assert set(index.vectors.ids().tolist()) == index.catalog.vector_ids()


def test_sync_removes_documents_whose_files_are_gone(tmp_path, corpus):
    index = make(tmp_path)
    index.add([corpus])
    (corpus / "rivers.txt").unlink()
    assert index.add([corpus]).removed == 0  # without --sync nothing is removed
    report = index.add([corpus], sync=True)
    assert report.removed == 1
    assert index.catalog.counts()["documents"] == 3


def test_sharded_search_equals_unsharded_exact_search(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rng = np.random.default_rng(0)
    words = [f"w{n}" for n in range(400)]
    lines = [
        f'{{"_id": "d{i}", "title": "", "text": "{" ".join(rng.choice(words, 12))}"}}' for i in range(300)
    ]
    rows.write_text("\n".join(lines))
    one = make(tmp_path, "one", shards=1)
    four = make(tmp_path, "four", shards=4)
    one.add([rows])
    four.add([rows])
    for query in ["w1 w2 w3", "w10 w200 w399", "w7"]:
        a = [(h.chunk.id, round(h.score, 5)) for h in one.retrieve(query, k=20, mode="dense")]
        b = [(h.chunk.id, round(h.score, 5)) for h in four.retrieve(query, k=20, mode="dense")]
        assert [s for _, s in a] == [s for _, s in b]
        # The hashing embedder produces tied scores; which tied chunk fills the last places is arbitrary,
        # everything ranked above the last score must be identical, in the same order.
        last = a[-1][1]
        assert [x for x in a if x[1] > last] == [x for x in b if x[1] > last]


def test_interrupted_write_is_repaired_on_open(tmp_path, corpus, monkeypatch):
    index = make(tmp_path)
    index.add([corpus])
    (corpus / "new.txt").write_text("Glaciers carve valleys over thousands of years.")
    from ragkit.connectors.vectors.faiss import FaissShardedIndex

    def crash(self):
        raise KeyboardInterrupt("killed before the vectors were saved")

    monkeypatch.setattr(FaissShardedIndex, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        index.add([corpus])
    monkeypatch.undo()
    reopened = Index.open(tmp_path / "idx", settings(), embedder=HashingEmbedder(64))
    assert reopened.catalog.counts()["documents"] == 5  # the catalog committed
    assert set(reopened.vectors.ids().tolist()) == reopened.catalog.vector_ids()
    assert reopened.retrieve("glaciers carve valleys", k=1, mode="dense")[0].source.endswith("new.txt")
    assert reopened.retrieve("glaciers carve valleys", k=1, mode="bm25")[0].source.endswith("new.txt")
    assert reopened.add([corpus]).unchanged == 5


def test_where_filters_by_tag_in_every_mode(tmp_path, corpus):
    index = make(tmp_path)
    index.add([corpus / "apples.md", corpus / "rivers.txt"], meta={"tenant": "acme"})
    index.add([corpus / "volcano.md", corpus / "chess.txt"], meta={"tenant": "globex"})
    for mode in ("dense", "bm25", "hybrid"):
        hits = index.retrieve("apples volcano lava orchards", k=10, mode=mode, where={"tenant": "globex"})
        assert hits and {Path(h.source).name for h in hits} <= {"volcano.md", "chess.txt"}, mode


def test_open_errors_are_clear(tmp_path, corpus):
    with pytest.raises(IndexFormatError, match="no index here"):
        Index.open(tmp_path / "missing")
    index = make(tmp_path)
    index.add([corpus])
    with pytest.raises(EmbedderMismatchError, match="hashing-64"):
        Index.open(tmp_path / "idx", embedder=HashingEmbedder(32))
    (tmp_path / "idx" / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="manifest.json"):
        Index.open(tmp_path / "idx")
    with pytest.raises(ConfigError, match="valid: .*dense"):
        make(tmp_path, "other").retrieve("x", mode="fuzzy")


def test_no_pickle_on_disk(tmp_path, corpus):
    index = make(tmp_path)
    index.add([corpus])
    index.retrieve("apples", mode="hybrid")
    for path in (tmp_path / "idx").rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:2]
            assert head not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"), path
            assert path.suffix not in (".pkl", ".pickle"), path


def test_k_below_one_raises_and_a_closed_index_says_so(tmp_path: Path, corpus: Path) -> None:
    from ragkit.errors import IndexClosedError

    index = make(tmp_path)
    index.add([corpus])
    for k in (0, -1):
        with pytest.raises(ConfigError, match="k must be a positive integer"):
            index.retrieve("apples", k=k)
    index.close()
    with pytest.raises(IndexClosedError, match="the index was closed"):
        index.retrieve("apples")
    with pytest.raises(IndexClosedError):
        index.stats()


class _CountingTokens(HashingEmbedder):
    """The hashing fake with a batch tokenizer that counts its calls (the runtime embedders have one)."""

    def __init__(self) -> None:
        super().__init__(64)
        self.batches = 0

    def token_offsets_batch(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        self.batches += 1
        return [self.token_offsets(t) for t in texts]


@pytest.mark.parametrize(("strategy", "tokenized"), [("none", False), ("tokens", True), ("auto", True)])
def test_documents_are_tokenized_ahead_only_for_a_chunker_that_counts_tokens(
    tmp_path: Path, strategy: str, tokenized: bool
) -> None:
    embedder = _CountingTokens()
    index = Index.create(tmp_path / "idx", settings().merged(chunking={"strategy": strategy}), embedder=embedder)
    docs = [Document(id=f"d{i}", text=f"passage {i} " * 40, source=f"s{i}.txt", title=f"T{i}") for i in range(5)]
    report = index.add_documents(docs)
    assert report.failed == 0 and report.chunks >= 5
    assert (embedder.batches > 0) is tokenized
    assert len(index.retrieve("passage 3", k=3, mode="dense")) == 3
    index.close()
