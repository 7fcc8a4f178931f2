"""Where a multi-hop path starts: the question's named entity, or a dense hit.

Real spaCy pipeline and the real MiniLM embedder on two small synthetic corpora of the shapes measured on MuSiQue
(docs/benchmarks.md, "Paths start at what the question names"):
- a two-hop question whose second passage (the singer's birthplace) shares no word with the question, among
  hotel passages that read like the question; each hotel, a dense hit, reaches itself through its own name, so a
  path from a dense hit restates its dense score;
- a three-hop question (book -> author -> mother), whose last passage is three hops from the named book.
"""

from __future__ import annotations

from typing import Any

import pytest
from graph_corpus import DenseSearch, graph_and_dense, titled_chunks

from ragkit.graph.retrieve import HybridGraphRetriever, MultiHopRetriever
from ragkit.graph.settings import GraphSettings
from ragkit.graph.store import GraphStore

pytestmark = pytest.mark.slow

SINGERS = [("Velmora Quintrell", "Karsk"), ("Tobin Arkwright", "Venlow"), ("Corvin Halloway", "Pellham"),
           ("Anselm Brackett", "Ostwick")]
HOTELS = [("Hotel Vosk", "Brantley"), ("The Camberwell", "Tressock"), ("Keffle House", "Dunmere"),
          ("Marrowby Grand", "Quenton"), ("Stroud Palace", "Harrowgate"), ("Olsworth Lodge", "Lindqvist"),
          ("Swaine Court", "Abermoor"), ("Pellow Inn", "Fairhaven")]
# (author, mother, town of the mother's death, year, book)
AUTHORS = [("Velmora Quintrell", "Dariela Fenwoch", "Karsk", "1911", "The Glass Orchard"),
           ("Tobin Arkwright", "Ysolde Maberly", "Venlow", "1874", "Winter at Harrow Mill"),
           ("Corvin Halloway", "Mirela Dunstable", "Pellham", "1902", "The Salt Cartographer"),
           ("Anselm Brackett", "Noemi Farrowdale", "Ostwick", "1899", "A Lantern for Edda")]
PAINTERS = [("Henrietta Vosk", "Brantley", "1893"), ("Odile Camberwell", "Tressock", "1921"),
            ("Rosamund Keffle", "Dunmere", "1888"), ("Ilse Marrowby", "Quenton", "1915"),
            ("Philippa Stroud", "Harrowgate", "1907"), ("Beatrix Olsworth", "Lindqvist", "1869")]

Question = tuple[str, list[str]]  # the question and its chain of passages, first hop first


def hotels_corpus() -> tuple[list[tuple[str, str, str]], list[Question]]:
    passages, questions = [], []
    for i, (singer, town) in enumerate(SINGERS):
        passages.append((f"s{i}", singer, f"{singer} is a folk singer. {singer} was born in {town}."))
        passages.append((f"t{i}", town, f"{town} is a market town on the river Ulm, known for its old guild houses."))
        questions.append((f"What is the most popular hotel in {singer}'s city of birth?", [f"s{i}", f"t{i}"]))
    for j, (hotel, town) in enumerate(HOTELS):
        passages.append((f"h{j}", hotel, f"{hotel} is the most popular hotel in {town}, a city famous for its spa."))
    return passages, questions


def books_corpus() -> tuple[list[tuple[str, str, str]], list[Question]]:
    passages, questions = [], []
    for i, (author, mother, town, year, book) in enumerate(AUTHORS):
        passages.append((f"b{i}", book, f"{book} is a novel by {author}, published in Ostravia."))
        passages.append((f"a{i}", author, f"{author} is a novelist from Ostravia. Her mother was {mother}, a painter."))
        passages.append((f"m{i}", mother, f"{mother} was a painter of river landscapes who died in {year} in {town}."))
        questions.append((f"In which year did the mother of the author of {book} die?", [f"b{i}", f"a{i}", f"m{i}"]))
    for j, (painter, town, year) in enumerate(PAINTERS):
        text = f"{painter} was a painter of river landscapes who died in {year} in {town}."
        passages.append((f"x{j}", painter, text))
    return passages, questions


def build(passages: list[tuple[str, str, str]], minilm: Any) -> tuple[GraphStore, DenseSearch]:
    return graph_and_dense(titled_chunks(passages), minilm)


@pytest.fixture(scope="module")
def hotels(minilm: Any) -> dict[str, Any]:
    passages, questions = hotels_corpus()
    store, dense = build(passages, minilm)
    return {"store": store, "dense": dense, "questions": questions}


@pytest.fixture(scope="module")
def books(minilm: Any) -> dict[str, Any]:
    passages, questions = books_corpus()
    store, dense = build(passages, minilm)
    return {"store": store, "dense": dense, "questions": questions}


def ranks(retriever: MultiHopRetriever, questions: list[Question], k: int = 20) -> list[list[int]]:
    """Per question, the rank (1-based; k + 1 when missing) of each passage of its chain."""
    out = []
    for question, chain in questions:
        found = [cid for cid, _, _ in retriever.retrieve_chunks(question, k)]
        out.append([found.index(p) + 1 if p in found else k + 1 for p in chain])
    return out


def test_the_hotels_read_like_the_question_and_the_birthplace_does_not(hotels: dict[str, Any]) -> None:
    for question, (singer, town) in hotels["questions"]:
        top = [cid for cid, _ in hotels["dense"](question, 6)]
        assert singer in top and town not in top, (question, top)
        assert sum(cid.startswith("h") for cid in top) >= 4


def test_a_path_from_the_named_singer_beats_the_hotels_own_paths(hotels: dict[str, Any], minilm: Any) -> None:
    """With the defaults, every birthplace is in the multi-hop top 3 (and graph_hybrid's top 4, below its two kept
    paths and one kept dense hit); counting a dense hit's paths at full weight (``path_dense_seed_weight = 1``, the
    earlier default with ``path_weight = 1``) lets the hotels' paths through their own names push some birthplace
    below them."""
    store, dense, questions = hotels["store"], hotels["dense"], hotels["questions"]
    settings = GraphSettings(n_process=1)
    assert settings.path_dense_seed_weight < 1.0
    now = ranks(MultiHopRetriever(store, minilm, dense, settings), questions)
    assert all(r[0] <= 2 and r[1] <= 3 for r in now), now
    fused = ranks(HybridGraphRetriever(store, minilm, dense, settings), questions)
    assert all(r[1] <= 4 for r in fused), fused
    for earlier in (settings.replace(path_dense_seed_weight=1.0, path_weight=1.0),
                    settings.replace(path_dense_seed_weight=1.0)):
        before = ranks(MultiHopRetriever(store, minilm, dense, earlier), questions)
        assert max(r[1] for r in before) > 3, before


def test_a_hit_explains_the_path_from_the_named_entity(hotels: dict[str, Any], minilm: Any) -> None:
    question, (singer, town) = hotels["questions"][0]
    retriever = MultiHopRetriever(hotels["store"], minilm, hotels["dense"], GraphSettings(n_process=1))
    hit = next(h for h in retriever.retrieve_chunks(question, 5) if h[0] == town)
    steps = hit[2]["path"]
    assert steps[0]["relation"] == "linked from question" and steps[0]["entity"] == SINGERS[0][0]
    assert steps[-1]["chunk"] == town and hit[2]["hops"] == 2


def test_only_linked_entities_start_paths_at_weight_zero(hotels: dict[str, Any], minilm: Any) -> None:
    """``path_dense_seed_weight = 0``: every path starts at an entity the question links to (the singer, or a
    common noun such as "hotel"), none at a dense hit; the birthplace is still reached, from the named singer."""
    question, (singer, town) = hotels["questions"][0]
    settings = GraphSettings(n_process=1, path_dense_seed_weight=0.0)
    retriever = MultiHopRetriever(hotels["store"], minilm, hotels["dense"], settings)
    hits = {cid: explain for cid, _, explain in retriever.retrieve_chunks(question, 20)}
    assert hits[town]["hops"] == 2 and hits[town]["path"][0]["entity"] == SINGERS[0][0]
    starts = [explain["path"][0]["relation"] for explain in hits.values() if explain["hops"]]
    assert starts and set(starts) == {"linked from question"}
    full = MultiHopRetriever(hotels["store"], minilm, hotels["dense"], settings.replace(path_dense_seed_weight=1.0))
    assert "dense hit" in {e["path"][0]["relation"] for _, _, e in full.retrieve_chunks(question, 20) if e["hops"]}


def test_the_third_hop_is_reached_from_the_named_book(books: dict[str, Any], minilm: Any) -> None:
    """Book -> author -> mother: three hops from the named book. With the default ``max_hops = 3`` the whole chain
    is the multi-hop top 3; with two hops the mother's passage falls below the painters that read like it."""
    store, dense, questions = books["store"], books["dense"], books["questions"]
    settings = GraphSettings(n_process=1)
    assert settings.max_hops == 3
    assert all(r == [1, 2, 3] for r in ranks(MultiHopRetriever(store, minilm, dense, settings), questions))
    two = ranks(MultiHopRetriever(store, minilm, dense, settings.replace(max_hops=2)), questions)
    assert all(r[2] > 5 for r in two), two


def test_path_dense_seed_weight_is_validated() -> None:
    from ragkit.errors import ConfigError

    with pytest.raises(ConfigError, match="path_dense_seed_weight"):
        GraphSettings.from_options({"path_dense_seed_weight": -0.5})
