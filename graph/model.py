"""The knowledge graph's plain data: what extraction finds in one chunk, before it is stored.

An entity is identified by its key (``ragkit.graph.normalize.normalize_name`` of its name, after in-document
alias resolution), so every mention of the same key, in any document, is the same graph node. That is what
makes a document's title, mentioned in another document, a bridge between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MentionKind = Literal["title", "heading", "entity", "noun_phrase"]
RelationKind = Literal["svo", "prep", "appos", "cooccur"]

MENTION_KINDS: tuple[str, ...] = ("title", "heading", "entity", "noun_phrase")
RELATION_KINDS: tuple[str, ...] = ("svo", "prep", "appos", "cooccur")

# spaCy labels grouped into classes for the type constraints of entity resolution. Titles, headings and noun
# phrases carry no type ("TITLE", "HEADING", "NOUN") and are compatible with every class.
TYPE_CLASSES: dict[str, str] = {
    "PERSON": "person",
    "ORG": "group",
    "NORP": "group",
    "GPE": "place",
    "LOC": "place",
    "FAC": "place",
    "WORK_OF_ART": "work",
    "PRODUCT": "work",
    "EVENT": "work",
    "LAW": "work",
    "LANGUAGE": "work",
    "DATE": "value",
    "TIME": "value",
    "PERCENT": "value",
    "MONEY": "value",
    "QUANTITY": "value",
    "ORDINAL": "value",
    "CARDINAL": "value",
}
UNTYPED_LABELS = frozenset({"TITLE", "HEADING", "NOUN"})


def type_class(label: str) -> str | None:
    """The resolution class of a label; ``None`` for untyped mentions (titles, headings, noun phrases)."""
    if label in UNTYPED_LABELS:
        return None
    return TYPE_CLASSES.get(label, label.lower())


def types_compatible(a: str, b: str) -> bool:
    """Two labels may name the same entity: same class, or at least one side untyped."""
    ca, cb = type_class(a), type_class(b)
    return ca is None or cb is None or ca == cb


@dataclass(frozen=True)
class EntityMention:
    """One mention of an entity in a chunk. ``start``/``end`` index the chunk text (-1 for a title/heading)."""

    key: str
    surface: str
    label: str
    kind: MentionKind
    start: int = -1
    end: int = -1
    sentence: int = -1


@dataclass(frozen=True)
class RelationMention:
    """A typed link between two entity keys found in one chunk: ``(source) -label-> (target)``."""

    source: str
    target: str
    label: str
    kind: RelationKind


@dataclass(frozen=True)
class ChunkExtraction:
    """Everything extraction found in one chunk; the unit the GraphStore adds and deletes by document."""

    chunk_id: str
    doc_id: str
    mentions: tuple[EntityMention, ...]
    relations: tuple[RelationMention, ...]
