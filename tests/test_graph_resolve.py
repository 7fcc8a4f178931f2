"""Entity resolution without an LLM: normalized names and document-scoped aliases, merges and non-merges."""

from __future__ import annotations

import pytest

from ragkit.graph.model import ChunkExtraction, EntityMention, RelationMention, types_compatible
from ragkit.graph.normalize import acronym_of, looks_like_acronym, normalize_name
from ragkit.graph.resolve import NameForm, alias_map, resolve_document


@pytest.mark.parametrize(
    ("surface", "key"),
    [
        ("The Beatles", "beatles"),
        ("the Beatles' ", "beatles"),
        ("Lothair II's", "lothair ii"),
        ("Holmes'", "holmes"),
        ("Zoë Saldaña", "zoe saldana"),
        ("Aschenbrödel", "aschenbrodel"),
        ("Person - centered therapy", "person centered therapy"),
        ("Person-centered therapy", "person centered therapy"),
        ("Paris (band)", "paris"),
        ("U.S.", "us"),
        ("G. Stanley Hall", "g stanley hall"),
        ("  His  mother ", "mother"),
        ("the", ""),
        ("it", ""),
    ],
)
def test_normalize_name(surface: str, key: str) -> None:
    assert normalize_name(surface) == key


def test_acronyms() -> None:
    assert acronym_of("National Aeronautics and Space Administration") == "NASA"
    assert acronym_of("American Psychological Association") == "APA"
    assert acronym_of("United States of America") == "USA"
    assert acronym_of("Paris") == ""
    assert looks_like_acronym("NASA") and looks_like_acronym("U.S.A.")
    assert not looks_like_acronym("Nasa") and not looks_like_acronym("N")


def test_type_classes() -> None:
    assert types_compatible("GPE", "LOC")  # both places
    assert types_compatible("TITLE", "PERSON")  # untyped fits anything
    assert not types_compatible("GPE", "PERSON")


def forms(*items: tuple[str, str]) -> list[NameForm]:
    return [NameForm(normalize_name(surface), surface, label) for surface, label in items]


MERGES = [
    # (short, long, names in the document)
    ("holmes", "sherlock holmes", [("Sherlock Holmes", "PERSON"), ("Holmes", "PERSON")]),
    ("sherlock", "sherlock holmes", [("Sherlock Holmes", "PERSON"), ("Sherlock", "PERSON")]),
    ("microsoft", "microsoft corporation", [("Microsoft Corporation", "ORG"), ("Microsoft", "ORG")]),
    ("nasa", "national aeronautics and space administration",
     [("National Aeronautics and Space Administration", "ORG"), ("NASA", "ORG")]),
    ("apa", "american psychological association", [("the American Psychological Association", "ORG"), ("APA", "GPE")]),
    ("usa", "united states of america", [("United States of America", "GPE"), ("U.S.A.", "GPE")]),
    ("ermengarde", "ermengarde of tours", [("Ermengarde of Tours", "TITLE"), ("Ermengarde", "PERSON")]),
]

NON_MERGES = [
    # (short, names in the document): short must stay itself
    ("washington", [("George Washington", "PERSON"), ("Washington", "GPE")]),  # types differ
    ("new york", [("New York Times", "ORG"), ("New York", "GPE")]),  # types differ
    ("paris", [("Paris Hilton", "PERSON"), ("Paris", "GPE")]),  # types differ
    ("holmes", [("Sherlock Holmes", "PERSON"), ("Mycroft Holmes", "PERSON"), ("Holmes", "PERSON")]),  # ambiguous
    ("kingdom", [("United Kingdom", "GPE"), ("Kingdom", "GPE")]),  # a trailing part only aliases a person
    ("journal", [("Journal of Physics", "TITLE"), ("journal", "NOUN")]),  # two untyped names: no evidence
    ("nba", [("National Football League", "ORG"), ("NBA", "ORG")]),  # initials differ
    ("jfk", [("John Fitzgerald Kennedy", "PERSON"), ("JFK", "PERSON")]),  # acronyms never alias people
]


@pytest.mark.parametrize(("short", "long", "names"), MERGES)
def test_alias_merges(short: str, long: str, names: list[tuple[str, str]]) -> None:
    assert alias_map(forms(*names)).get(short) == long


@pytest.mark.parametrize(("short", "names"), NON_MERGES)
def test_alias_non_merges(short: str, names: list[tuple[str, str]]) -> None:
    assert short not in alias_map(forms(*names))


def mention(surface: str, label: str, kind: str = "entity") -> EntityMention:
    return EntityMention(normalize_name(surface), surface, label, kind)  # type: ignore[arg-type]


def test_resolve_document_rewrites_mentions_and_relations_across_chunks() -> None:
    first = ChunkExtraction(
        "c1", "doc", (mention("A Study in Scarlet", "TITLE", "title"), mention("Sherlock Holmes", "PERSON")), ()
    )
    second = ChunkExtraction(
        "c2",
        "doc",
        (mention("A Study in Scarlet", "TITLE", "title"), mention("Holmes", "PERSON"), mention("London", "GPE")),
        (RelationMention("holmes", "london", "lives in", "svo"),),
    )
    resolved = resolve_document([first, second])
    assert [m.key for m in resolved[1].mentions] == ["study in scarlet", "sherlock holmes", "london"]
    assert resolved[1].mentions[1].surface == "Holmes"  # the surface form is kept as the alias
    assert resolved[1].relations == (RelationMention("sherlock holmes", "london", "lives in", "svo"),)


def test_aliases_are_document_scoped_and_titles_are_never_aliases() -> None:
    other = ChunkExtraction("c3", "other-doc", (mention("Holmes", "PERSON"),), ())
    assert resolve_document([other])[0].mentions[0].key == "holmes"  # never said "Sherlock Holmes"
    titled = ChunkExtraction(
        "c4", "lothair", (mention("Lothair II", "TITLE", "title"), mention("Lothair II of Lotharingia", "PERSON")), ()
    )
    assert resolve_document([titled])[0].mentions[0].key == "lothair ii"
