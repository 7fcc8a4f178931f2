"""graph_hybrid's (and so the default mode's) last step: the question's words that no kept hit contains move the
hits below the kept ones (pipelines/retrievers.py, ``order_by_unmatched_words``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ragkit import Index
from ragkit.bm25 import BM25Index
from ragkit.config import Settings
from ragkit.pipelines.graph_query import describe
from ragkit.pipelines.retrievers import order_by_unmatched_words
from ragkit.protocols import Scored
from ragkit.testing import HashingEmbedder
from ragkit.types import Chunk, Document

TEXTS = {
    "p0": "Velmora Quintrell is a novelist from Ostravia. Her mother was Dariela Fenwoch, a painter.",
    "m0": "Dariela Fenwoch was a painter of river landscapes and the mother of a novelist.",
    "a": "Dariela Fenwoch exhibited river landscapes in Karsk with other painters.",
    "b": "Dariela Fenwoch taught painting at the Karsk academy of arts.",
    "c": "Dariela Fenwoch died in the year 1911 in Karsk.",
    "d": "Karsk is a town on the river Ostra.",
}
QUESTION = "In which year did Velmora Quintrell's mother die?"


@pytest.fixture(scope="module")
def bm25() -> BM25Index:
    chunks = [Chunk(cid, cid, text, 0, len(text), {}) for cid, text in TEXTS.items()]
    return BM25Index.build(chunks, generation=1)


def texts(chunk_ids: Sequence[str]) -> dict[str, str]:
    return {cid: TEXTS[cid] for cid in chunk_ids}


def ranking() -> list[Scored]:
    """Two kept hits, then four by falling fused score; "c" (the one that says when she died) is third of them."""
    return [
        ("p0", 9.0, {"mode": "graph_hybrid", "kept_path": True, "path_rank": 0}),
        ("m0", 8.0, {"mode": "graph_hybrid", "kept_dense": True, "dense_rank": 0}),
        ("a", 1.0, {"mode": "graph_hybrid"}),
        ("b", 0.9, {"mode": "graph_hybrid"}),
        ("c", 0.8, {"mode": "graph_hybrid"}),
        ("d", 0.7, {"mode": "graph_hybrid"}),
    ]


def test_the_hit_holding_the_unmatched_words_moves_up_below_the_kept_ones(bm25: BM25Index) -> None:
    ordered = order_by_unmatched_words(QUESTION, ranking(), bm25, texts, weight=2.0, depth=30)
    assert [cid for cid, _, _ in ordered] == ["p0", "m0", "c", "a", "b", "d"]
    assert ordered[:2] == ranking()[:2]  # the kept hits, untouched
    scores = [score for _, score, _ in ordered]
    assert scores == sorted(scores, reverse=True)
    residual = ordered[2][2]["residual"]
    assert residual["words"] == ["which", "year", "did", "die"]  # not "velmora", "quintrell", "mother": kept
    assert residual["moved"] == 2 and residual["bm25"] > 0
    assert [why["residual"]["moved"] for _, _, why in ordered[3:]] == [-1, -1, 0]
    assert all(why["residual"]["bm25"] == 0 for _, _, why in ordered[3:])
    assert ordered[2][2]["mode"] == "graph_hybrid"  # the hit's own explanation is kept


def test_hits_past_the_depth_keep_their_places_below_the_moved_ones(bm25: BM25Index) -> None:
    ordered = order_by_unmatched_words(QUESTION, ranking(), bm25, texts, weight=2.0, depth=5)
    assert [cid for cid, _, _ in ordered] == ["p0", "m0", "c", "a", "b", "d"]
    assert ordered[-1] == ranking()[-1]  # "d": past the window, untouched
    scores = [score for _, score, _ in ordered]
    assert scores == sorted(scores, reverse=True) and scores[-2] > scores[-1]


def test_a_small_weight_moves_a_hit_less(bm25: BM25Index) -> None:
    ordered = order_by_unmatched_words(QUESTION, ranking(), bm25, texts, weight=0.5, depth=30)
    assert [cid for cid, _, _ in ordered] == ["p0", "m0", "a", "c", "b", "d"]


def test_nothing_moves_without_unmatched_words_or_kept_hits_in_front(bm25: BM25Index) -> None:
    covered = "Was Velmora Quintrell's mother a painter?"  # every word is in a kept hit
    assert order_by_unmatched_words(covered, ranking(), bm25, texts, weight=2.0, depth=30) == ranking()
    filtered = ranking()[1:] + ranking()[:1]  # a where filter dropped chunks ahead of a kept hit
    assert order_by_unmatched_words(QUESTION, filtered, bm25, texts, weight=2.0, depth=30) == filtered
    unknown = "In which decade did Velmora Quintrell's mother marry?"  # "decade", "marri": in no text
    assert order_by_unmatched_words(unknown, ranking(), bm25, texts, weight=2.0, depth=30) == ranking()


PEOPLE = [
    ("Velmora Quintrell", "Dariela Fenwoch", "Karsk", "1911"),
    ("Tobin Arkwright", "Ysolde Maberly", "Venlow", "1874"),
]


def documents() -> list[Document]:
    docs = []
    for i, (person, mother, town, year) in enumerate(PEOPLE):
        docs.append(Document(f"p{i}", f"{person} is a novelist from Ostravia. Her mother was {mother}, a painter.",
                             f"people/p{i}.md", title=person))
        docs.append(Document(f"m{i}", f"{mother} was a painter of river landscapes from {town}.",
                             f"people/m{i}.md", title=mother))
        death = f" where {mother} died in {year}" if i == 0 else ""  # only the asked-about mother's death is told
        docs.append(Document(f"t{i}", f"{town} is a river town{death}.", f"people/t{i}.md", title=town))
        docs.append(Document(f"x{i}", f"{mother} exhibited river landscapes in {town} with other painters.",
                             f"people/x{i}.md"))
    return docs


def build(path: Path, weight: float | None, depth: int | None = None) -> Index:
    options: dict[str, Any] = {"n_process": 1}
    if weight is not None:
        options["fusion_residual_weight"] = weight
    if depth is not None:
        options["fusion_residual_depth"] = depth
    settings = Settings.model_validate({"chunking": {"strategy": "none"}, "graph": {"options": options}})
    index = Index.create(path, settings, embedder=HashingEmbedder(64))
    index.add_documents(documents())
    return index


@pytest.mark.slow
def test_the_default_mode_reorders_below_the_kept_hits_and_explains_it(tmp_path: Path) -> None:
    question = "In which year did Velmora Quintrell's mother die?"
    with build(tmp_path / "off", weight=0.0) as off:
        before = off.retrieve(question, k=8)
        assert not any("residual" in h.explain["graph"] for h in before)
        bm25, catalog = off.bm25, off.catalog
        found = [(h.chunk.id, h.score, dict(h.explain["graph"])) for h in before]
        expected = order_by_unmatched_words(
            question, found, bm25, lambda ids: {c: ch.text for c, ch in catalog.chunks_by_ids(ids).items()}, 2.0, 30
        )
    with build(tmp_path / "on", weight=None) as on:  # the default weight
        after = on.retrieve(question, k=8)
        assert [h.chunk.id for h in after] == [cid for cid, _, _ in expected]  # the same chunk ids: same content
        rank_before, rank_after = ([h.chunk.doc_id for h in hits].index("t0") for hits in (before, after))
        assert rank_after < rank_before  # the passage that says when she died
        kept = [h for h in after if h.explain["graph"].get("kept_path") or h.explain["graph"].get("kept_dense")]
        below = after[len(kept):]
        assert kept and below and all("residual" in h.explain["graph"] for h in below)
        words = below[0].explain["graph"]["residual"]["words"]
        assert "year" in words and "velmora" not in words
        lines = [describe(h.explain) for h in below if h.explain["graph"]["residual"]["bm25"] > 0]
        assert lines and all("the question's words no kept hit has (" in line for line in lines)
        assert on.retrieve(question, k=8, mode="graph_hybrid")[0].chunk.id == after[0].chunk.id


@pytest.mark.slow
def test_the_top_hits_do_not_depend_on_how_many_are_asked_for(tmp_path: Path) -> None:
    question = "In which year did Velmora Quintrell's mother die?"
    with build(tmp_path / "idx", weight=None, depth=7) as index:
        many = index.retrieve(question, k=8)
        assert any(h.explain["graph"].get("residual", {}).get("moved") for h in many[:7])  # the step ran
        assert not any("residual" in h.explain["graph"] for h in many[7:])  # past the depth
        for k in (3, 5):
            assert [h.chunk.id for h in index.retrieve(question, k=k)] == [h.chunk.id for h in many[:k]]
