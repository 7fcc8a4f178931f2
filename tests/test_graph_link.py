"""Query entity linking: a phrase inside a longer linked phrase of the question links nothing of its own."""

from __future__ import annotations

import sqlite3

from ragkit.graph.link import QueryPhrase, link_entities
from ragkit.graph.matrices import compile_matrices
from ragkit.graph.model import ChunkExtraction, EntityMention
from ragkit.graph.normalize import normalize_name
from ragkit.graph.settings import GraphSettings
from ragkit.graph.store import GraphStore


def mention(surface: str, label: str = "PERSON") -> EntityMention:
    return EntityMention(normalize_name(surface), surface, label, "entity")


def matrices(settings: GraphSettings):  # type: ignore[no-untyped-def]
    store = GraphStore(sqlite3.connect(":memory:"))
    store.add(
        [
            ChunkExtraction("c1", "d1", (mention("Sergio Tolento Hernández"), mention("Mexico", "GPE")), ()),
            ChunkExtraction("c2", "d2", (mention("Sergio"), mention("Italy", "GPE")), ()),
            ChunkExtraction("c3", "d3", (mention("1920 Summer Olympics", "EVENT"), mention("Antwerp", "GPE")), ()),
            ChunkExtraction("c4", "d4", (mention("Summer Olympics", "EVENT"), mention("Olympia", "GPE")), ()),
        ]
    )
    return compile_matrices(store.snapshot(), settings)


def linked(question: str, phrases: list[QueryPhrase], settings: GraphSettings) -> set[str]:
    m = matrices(settings)
    return {str(m.names[link.row]) for link in link_entities(phrases, question, m, settings)}


def phrase(surface: str) -> QueryPhrase:
    return QueryPhrase(surface, normalize_name(surface), True)


def test_a_name_inside_a_longer_linked_name_is_not_linked_on_its_own() -> None:
    question = "Which party does Sergio Tolento Hernández belong to?"
    phrases = [phrase("Sergio Tolento Hernández"), phrase("Sergio")]
    assert linked(question, phrases, GraphSettings()) == {"Sergio Tolento Hernández"}
    assert linked(question, phrases, GraphSettings(link_longest=False)) == {"Sergio Tolento Hernández", "Sergio"}


def test_an_n_gram_inside_a_longer_linked_n_gram_is_dropped_and_other_names_stay() -> None:
    question = "Which city held the 1920 Summer Olympics where Sergio ran?"
    found = linked(question, [phrase("Sergio")], GraphSettings())
    assert found == {"1920 Summer Olympics", "Sergio"}  # "summer olympics" is inside "1920 summer olympics"
    assert "Summer Olympics" in linked(question, [phrase("Sergio")], GraphSettings(link_longest=False))


def test_a_longer_phrase_linked_less_surely_leaves_the_shorter_link() -> None:
    from ragkit.graph.link import EntityLink, _longest_matches

    words = normalize_name("Which European country did King Albert rule?").split(" ")
    links = [
        EntityLink(0, "European", 1.0, "name"),
        EntityLink(1, "European country", 0.87, "embedding"),  # "Europe", by the cosine of the names
        EntityLink(2, "king albert", 1.0, "name"),
        EntityLink(3, "Albert", 1.0, "name"),
    ]
    assert [link.row for link in _longest_matches(links, words)] == [0, 1, 2]


def test_a_lower_case_common_noun_links_no_alias() -> None:
    """An alias is a name's short form ("Tucson" for "Tucson, Arizona"): "state", written in lower case, is the
    common noun and links no name it begins, though a document called State Route 7 "the State"; the same word
    as a name, or capitalized, still links through the alias."""
    store = GraphStore(sqlite3.connect(":memory:"))
    route = "state route"
    store.add([ChunkExtraction("c1", "d1", (EntityMention(route, "State Route", "FAC", "entity"),
                                            EntityMention(route, "State", "FAC", "entity")), ())])
    settings = GraphSettings()
    m = compile_matrices(store.snapshot(), settings)
    assert "state" in m.alias_rows
    question = "Which state has jousting as its official sport?"

    def names(p: QueryPhrase) -> set[str]:
        return {str(m.names[link.row]) for link in link_entities([p], question, m, settings)}

    assert names(QueryPhrase("state", "state", False)) == set()
    assert names(QueryPhrase("State", "state", True)) == {"State Route"}
    assert names(QueryPhrase("State", "state", False)) == {"State Route"}  # a sentence's first word: may be a name
