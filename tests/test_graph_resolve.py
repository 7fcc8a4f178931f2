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
    ("tucson", "tucson arizona", [("Tucson, Arizona", "TITLE"), ("Tucson", "GPE")]),  # a place's qualified name
    ("honolulu county", "honolulu county hawaii", [("Honolulu County, Hawaii", "GPE"), ("Honolulu County", "GPE")]),
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
    # a longer name that begins with a place names something in or of it
    ("ohio", [("Ohio River", "GPE"), ("Ohio", "GPE")]),
    ("los angeles", [("Los Angeles County", "GPE"), ("Los Angeles", "GPE")]),
    ("kuwait", [("Kuwait International Airport", "FAC"), ("Kuwait", "GPE")]),
    ("sweden", [("Sweden at the 1920 Summer Olympics", "TITLE"), ("Sweden", "GPE")]),
    ("windhoek", [("Windhoek Country Club Resort", "ORG"), ("Windhoek", "GPE"), ("Windhoek", "ORG")]),  # ever a place
    ("australian", [("the Australian Institute of Sport", "ORG"), ("Australian", "NORP")]),  # a nationality
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


def _all_pairs_alias_map(names: list[NameForm]) -> dict[str, str]:
    """alias_map as first written: every name against every longer one (the oracle for the indexed version)."""
    from ragkit.graph.model import type_class
    from ragkit.graph.resolve import _SUFFIX_ALIAS_CLASSES, qualifies

    forms: dict[str, NameForm] = {}
    classes: dict[str, set[str]] = {}
    for name in names:
        forms.setdefault(name.key, name)
        cls = type_class(name.label)
        classes.setdefault(name.key, set())
        if cls is not None:
            classes[name.key].add(cls)
    modifiers = {name.key for name in names if name.label in ("GPE", "LOC", "FAC", "NORP")}
    words = {key: key.split(" ") for key in forms}
    acronyms = {key: acronym_of(form.surface) for key, form in forms.items()}
    mapping: dict[str, str] = {}
    for short, short_form in forms.items():
        short_words, short_classes, candidates = words[short], classes[short], set()
        is_acronym = looks_like_acronym(short_form.surface)
        compact = short_form.surface.replace(".", "").strip().upper()
        for long, long_words in words.items():
            if long == short or len(long_words) <= len(short_words):
                continue
            long_classes = classes[long]
            if is_acronym and acronyms[long] == compact and "person" not in short_classes | long_classes:
                candidates.add(long)
                continue
            shared = short_classes & long_classes
            if (short_classes and long_classes and not shared) or (not short_classes and not long_classes):
                continue
            n = len(short_words)
            cls = min(shared or short_classes or long_classes)
            prefix = long_words[:n] == short_words
            if prefix and short in modifiers and not qualifies(forms[long].surface, short):
                prefix = False
            if prefix or (long_words[-n:] == short_words and cls in _SUFFIX_ALIAS_CLASSES):
                candidates.add(long)
        if len(candidates) == 1:
            mapping[short] = candidates.pop()
    for short in list(mapping):
        seen, target = {short}, mapping[short]
        while target in mapping and target not in seen:
            seen.add(target)
            target = mapping[target]
        mapping[short] = target
    return mapping


def test_alias_map_equals_every_pair_compared() -> None:
    import random

    rng = random.Random(11)
    pool = ["Sherlock", "Holmes", "Mycroft", "National", "Aeronautics", "and", "Space", "Administration", "NASA",
            "N.A.S.A.", "Washington", "Washington,", "George", "Baker", "Street", "S", "H", "Microsoft", "Corporation",
            "MC", "SH"]
    labels = ["PERSON", "ORG", "GPE", "TITLE", "HEADING", "NOUN", "FAC", "NORP"]
    for _ in range(400):
        names = []
        for _ in range(rng.randint(1, 25)):
            surface = " ".join(rng.sample(pool, rng.randint(1, 4)))
            names.append(NameForm(normalize_name(surface), surface, rng.choice(labels)))
        assert alias_map(names) == _all_pairs_alias_map(names), names
