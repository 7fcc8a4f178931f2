"""Entity resolution without an LLM.

Across documents, mentions merge when their normalized names are equal (``normalize.py``). Within one document,
a shorter name that the document uses for a longer one is an alias of it and takes the longer one's key:

* a leading or trailing part of the name, with a compatible type: "Holmes" or "Sherlock" = "Sherlock Holmes"
  (PERSON), "Microsoft" = "Microsoft Corporation" (ORG); never across types ("Washington" the GPE is not
  "George Washington"), and never when two longer names share the part ("Holmes" beside "Sherlock Holmes" and
  "Mycroft Holmes" stays itself);
* a place only of its own qualified name: "Tucson" = "Tucson, Arizona". A longer name that begins with a place
  or a nationality names something in or of it ("Ohio River", "Los Angeles County", "Kuwait International
  Airport", "Sweden at the 1920 Summer Olympics", "the Australian Institute of Sport"), so a name ever typed
  GPE, LOC, FAC or NORP is no leading part of one without the comma;
* an acronym of the longer name: "NASA" = "National Aeronautics and Space Administration", "APA" = "American
  Psychological Association" (any non-person types).

The document's title and headings count as longer names of unknown type, and are never aliases themselves: they
are the names other documents use to reach this one. Aliases are document-scoped, so
"Holmes" in another document that never says "Sherlock Holmes" stays its own entity. Synonym edges between
different names with close embeddings are added at search time (``matrices.py``), not merged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ragkit.graph.model import ChunkExtraction, EntityMention, RelationMention, type_class
from ragkit.graph.normalize import acronym_of, looks_like_acronym, normalize_name

_ALIAS_KINDS = ("entity", "title", "heading")
_SUFFIX_ALIAS_CLASSES = frozenset({"person"})  # "Holmes" for "Sherlock Holmes"; not "Kingdom" for the UK
_MODIFIER_LABELS = frozenset({"GPE", "LOC", "FAC", "NORP"})  # lead names of other things: "Ohio River"


@dataclass(frozen=True)
class NameForm:
    """A name as resolution sees it: its key, a surface form and a label (untyped: TITLE/HEADING/NOUN)."""

    key: str
    surface: str
    label: str


def alias_map(names: Iterable[NameForm]) -> dict[str, str]:
    """Which keys of one document are aliases of which longer keys: ``{"holmes": "sherlock holmes"}``."""
    forms: dict[str, NameForm] = {}
    classes: dict[str, set[str]] = {}
    modifiers: set[str] = set()  # keys ever typed a place or a nationality
    for name in names:
        forms.setdefault(name.key, name)
        if name.label in _MODIFIER_LABELS:
            modifiers.add(name.key)
        cls = type_class(name.label)
        classes.setdefault(name.key, set())
        if cls is not None:
            classes[name.key].add(cls)
    words = {key: key.split(" ") for key in forms}
    shorts_like_acronyms = any(looks_like_acronym(form.surface) for form in forms.values())
    acronyms = {key: acronym_of(form.surface) for key, form in forms.items()} if shorts_like_acronyms else {}
    # a longer name can only match by its first word (prefix), last word (suffix) or acronym: look those up
    # instead of pairing every name with every other (quadratic in the names of a document)
    by_first: dict[str, list[str]] = {}
    by_last: dict[str, list[str]] = {}
    by_acronym: dict[str, list[str]] = {}
    for key, key_words in words.items():
        by_first.setdefault(key_words[0], []).append(key)
        by_last.setdefault(key_words[-1], []).append(key)
        if shorts_like_acronyms:
            by_acronym.setdefault(acronyms[key], []).append(key)
    mapping: dict[str, str] = {}
    for short, short_form in forms.items():
        short_words = words[short]
        short_classes = classes[short]
        candidates = set()
        is_acronym = looks_like_acronym(short_form.surface)
        compact = short_form.surface.replace(".", "").strip().upper()
        longer = {*by_first.get(short_words[0], ()), *by_last.get(short_words[-1], ())}
        if is_acronym:
            longer.update(by_acronym.get(compact, ()))
        for long in longer:
            long_words = words[long]
            if long == short or len(long_words) <= len(short_words):
                continue
            long_classes = classes[long]
            if is_acronym and acronyms[long] == compact and "person" not in short_classes | long_classes:
                candidates.add(long)
                continue
            shared = short_classes & long_classes
            if short_classes and long_classes and not shared:
                continue  # typed differently: "Washington" GPE vs "George Washington" PERSON
            if not short_classes and not long_classes:
                continue  # two untyped names: no evidence they are one entity
            n = len(short_words)
            prefix = long_words[:n] == short_words
            suffix = long_words[-n:] == short_words
            cls = min(shared or short_classes or long_classes)  # min, not pop(): the same in every process
            if prefix and short in modifiers and not qualifies(forms[long].surface, short):
                prefix = False  # "Ohio" in "Ohio River"
            if prefix or (suffix and cls in _SUFFIX_ALIAS_CLASSES):
                candidates.add(long)
        if len(candidates) == 1:
            mapping[short] = candidates.pop()
    # follow chains ("Holmes" -> "Sherlock Holmes" -> ...) to their end
    for short in list(mapping):
        seen = {short}
        target = mapping[short]
        while target in mapping and target not in seen:
            seen.add(target)
            target = mapping[target]
        mapping[short] = target
    return mapping


def qualifies(surface: str, key: str) -> bool:
    """``surface`` is the name of ``key`` qualified after a comma: ``("Tucson, Arizona", "tucson")``."""
    head, comma, _ = surface.partition(",")
    return bool(comma) and normalize_name(head) == key


def resolve_document(extractions: Sequence[ChunkExtraction]) -> list[ChunkExtraction]:
    """Rewrites aliases in the chunks of one document to the keys of the longer names they stand for."""
    names = [
        NameForm(m.key, m.surface, m.label) for ex in extractions for m in ex.mentions if m.kind in _ALIAS_KINDS
    ]
    canonical = {m.key for ex in extractions for m in ex.mentions if m.kind in ("title", "heading")}
    mapping = {short: long for short, long in alias_map(names).items() if short not in canonical}
    if not mapping:
        return list(extractions)
    out = []
    for ex in extractions:
        mentions = tuple(_rekey(m, mapping) for m in ex.mentions)
        relations = []
        for r in ex.relations:
            source, target = mapping.get(r.source, r.source), mapping.get(r.target, r.target)
            if source != target:
                if r.kind == "cooccur" and source > target:
                    source, target = target, source
                relations.append(RelationMention(source, target, r.label, r.kind))
        out.append(ChunkExtraction(ex.chunk_id, ex.doc_id, mentions, tuple(dict.fromkeys(relations))))
    return out


def _rekey(mention: EntityMention, mapping: dict[str, str]) -> EntityMention:
    key = mapping.get(mention.key)
    if key is None:
        return mention
    return EntityMention(
        key, mention.surface, mention.label, mention.kind, mention.start, mention.end, mention.sentence
    )
