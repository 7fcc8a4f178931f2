"""Entity names reduced to the key that decides which mentions are the same entity.

Two surface forms name the same entity when their keys are equal: case, diacritics, possessives, leading
determiners, punctuation, hyphen spacing ("Person - centered" as MuSiQue writes it) and a trailing
disambiguation in parentheses ("Paris (band)") are ignored. Pure functions, no model.
"""

from __future__ import annotations

import functools
import re
import unicodedata

DETERMINERS = frozenset(
    "the a an this that these those his her its their our my your whose which some any each every".split()
)
# Words that carry no identity on their own: a key made only of these is not an entity.
STOPWORDS = DETERMINERS | frozenset(
    "i me we us you he him she they them it one ones who whom what where when why how there here "
    "of and or for to in on at by with from as is was be been are were other such same own".split()
)
ACRONYM_SKIP = frozenset("of the and for in on at to a an de du des la le von van der".split())

_PAREN_SUFFIX = re.compile(r"\s*\([^()]*\)\s*$")
_POSSESSIVE = re.compile(r"(?<=\w)['’]s\b|(?<=s)['’](?!\w)")
_DASHES = re.compile(r"[\u2010-\u2015\-_/]+")
_NON_WORD = re.compile(r"[^\w\s&+]")
_SPACES = re.compile(r"\s+")
_INITIALS = re.compile(r"\b\w(?: \w\b)+")  # "u s a" (from "U.S.A.") -> "usa"


def strip_diacritics(text: str) -> str:
    """``"Zoë Saldaña"`` -> ``"Zoe Saldana"``: decompose and drop combining marks."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@functools.lru_cache(maxsize=1 << 16)  # names recur across chunks; the index's main process normalizes them all
def normalize_name(name: str) -> str:
    """The resolution key of a name: ``"The Beatles' "`` and ``"beatles"`` both give ``"beatles"``.

    Returns ``""`` when nothing identifying is left (a bare determiner or pronoun).
    """
    text = _PAREN_SUFFIX.sub("", name) or name
    text = strip_diacritics(text).casefold()
    text = _POSSESSIVE.sub("", text)
    text = _DASHES.sub(" ", text)
    text = _NON_WORD.sub(" ", text)
    words = _SPACES.sub(" ", text).strip().split(" ")
    while words and words[0] in DETERMINERS:
        words.pop(0)
    if not words or all(w in STOPWORDS or not w for w in words):
        return ""
    return _INITIALS.sub(lambda m: m.group(0).replace(" ", ""), " ".join(words))


def name_tokens(name: str) -> list[str]:
    """Words of a name with case kept (for acronyms), possessives and punctuation removed."""
    text = _POSSESSIVE.sub("", strip_diacritics(_PAREN_SUFFIX.sub("", name) or name))
    text = _NON_WORD.sub(" ", _DASHES.sub(" ", text))
    return [w for w in text.split() if w]


@functools.lru_cache(maxsize=1 << 16)
def acronym_of(name: str) -> str:
    """Initials of a long name's significant words: ``"National Aeronautics and Space Administration"`` ->
    ``"NASA"``. ``""`` for names of fewer than two significant words."""
    words = [w for w in name_tokens(name) if w.casefold() not in ACRONYM_SKIP]
    if len(words) < 2:
        return ""
    return "".join(w[0] for w in words).upper()


def looks_like_acronym(surface: str) -> bool:
    """``"NASA"``, ``"U.S.A."``, ``"APA"``: 2 to 8 capitals, optionally dotted, nothing else."""
    compact = surface.replace(".", "").strip()
    return 2 <= len(compact) <= 8 and compact.isalpha() and compact.isupper()
