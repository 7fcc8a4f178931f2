"""Query entity linking: which graph entities a question talks about, without an LLM.

The question is parsed with the same spaCy pipeline as the documents; its named entities and noun phrases
(``extract.extract_doc``), plus every word n-gram of the question, are looked up by normalized name and by alias
(a surface form some document used for the entity). Named phrases (entities, or phrases with a capital) are also
matched by the cosine of their embedding to entity-name embeddings, which catches spelling variants
("Aschenbrodel" / "Aschenbrödel" aside, "Tekeze River" / "Tekezé (Setit) River"). Common nouns ("country",
"name") count less than names: they say what kind of answer is wanted, not where to look.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ragkit.graph.extract import extract_doc
from ragkit.graph.matrices import GraphMatrices
from ragkit.graph.normalize import STOPWORDS, normalize_name
from ragkit.graph.settings import GraphSettings
from ragkit.linalg import inner_products

if TYPE_CHECKING:
    from spacy.language import Language

LinkMethod = Literal["name", "alias", "embedding"]


@dataclass(frozen=True)
class QueryPhrase:
    """A phrase of the question: its surface form, key, and whether it names something."""

    surface: str
    key: str
    named: bool


@dataclass(frozen=True)
class EntityLink:
    """A question phrase linked to a graph entity (``row`` in the compiled matrices)."""

    row: int
    phrase: str
    score: float  # similarity of phrase and entity name (1 for an exact name), times the phrase weight
    method: LinkMethod


def query_phrases(nlp: Language, query: str, settings: GraphSettings) -> list[QueryPhrase]:
    """Named entities and noun phrases of the question (deduplicated by key)."""
    doc = nlp(query)
    mentions, _ = extract_doc(
        doc, frozenset(settings.excluded_labels), True, settings.max_phrase_words, settings.max_cooccur_entities
    )
    out: dict[str, QueryPhrase] = {}
    for m in mentions:
        named = m.kind == "entity" or any(w[:1].isupper() for w in m.surface.split()[1:] or [""]) or (
            m.surface[:1].isupper() and m.start > 0
        )
        if m.key not in out or (named and not out[m.key].named):
            out[m.key] = QueryPhrase(m.surface, m.key, named)
    return list(out.values())


def link_entities(
    phrases: Sequence[QueryPhrase],
    query: str,
    matrices: GraphMatrices,
    settings: GraphSettings,
    entity_vectors: np.ndarray | None = None,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    vector_rows: np.ndarray | None = None,
) -> list[EntityLink]:
    """Links phrases (and the question's n-grams) to entities; the best link per entity, best first.

    ``entity_vectors[i]`` embeds the name of entity ``vector_rows[i]`` (all entities in order when omitted).
    """
    best: dict[int, EntityLink] = {}

    def offer(row: int, phrase: str, score: float, method: LinkMethod) -> None:
        if row not in best or best[row].score < score:
            best[row] = EntityLink(int(row), phrase, score, method)

    common = settings.common_noun_weight
    for p in phrases:
        weight = 1.0 if p.named else common
        row = matrices.key_row.get(p.key)
        if row is not None:
            offer(row, p.surface, weight, "name")
        if not p.named and p.surface.islower():
            continue  # an alias is a name's short form: "state" is no alias of State Route
        for alias_row in matrices.alias_rows.get(p.key, ()):
            offer(int(alias_row), p.surface, settings.alias_link_score * weight, "alias")
    words = normalize_name(query).split(" ")
    for n in range(2, min(settings.max_phrase_words, len(words)) + 1):
        for i in range(len(words) - n + 1):
            gram = words[i : i + n]
            if gram[0] in STOPWORDS or gram[-1] in STOPWORDS:
                continue
            row = matrices.key_row.get(" ".join(gram))
            if row is not None:
                offer(row, " ".join(gram), 1.0, "name")
    linked = {link.phrase for link in best.values()}
    named = [p for p in phrases if p.named and p.surface not in linked]  # embed only what names did not link
    if named and entity_vectors is not None and embed is not None and len(entity_vectors):
        vectors = np.asarray(embed([p.surface for p in named]), dtype=np.float32)
        sims = inner_products(vectors, entity_vectors)
        top = min(settings.link_top, sims.shape[1])
        for i, p in enumerate(named):
            candidates = np.argpartition(-sims[i], top - 1)[:top]
            for column in candidates:
                if sims[i, column] >= settings.link_threshold:
                    row = int(vector_rows[column]) if vector_rows is not None else int(column)
                    offer(row, p.surface, float(sims[i, column]), "embedding")
    links = list(best.values())
    if settings.link_longest:
        links = _longest_matches(links, words)
    return sorted(links, key=lambda link: (-link.score, link.row))


def _span(phrase: str, words: list[str]) -> tuple[int, int] | None:
    """Where the words of ``phrase`` (normalized) first stand in the question's ``words``, as ``(start, end)``."""
    key = normalize_name(phrase).split(" ")
    n = len(key)
    for start in range(len(words) - n + 1):
        if words[start : start + n] == key:
            return start, start + n
    return None


def _longest_matches(links: list[EntityLink], words: list[str]) -> list[EntityLink]:
    """The links whose phrase no longer linked phrase of the question holds with at least its score: in "Who
    married Sergio Tolento Hernández?" the name links and "Sergio" alone names no one the question means (nor
    "Summer Olympics" in "the 1920 Summer Olympics", nor "wind farm" in "Intrepid Wind Farm")."""
    spans = {link.phrase: _span(link.phrase, words) for link in links}
    kept = []
    for link in links:
        inner = spans[link.phrase]
        covered = inner is not None and any(
            (outer := spans[other.phrase]) is not None
            and outer[0] <= inner[0]
            and inner[1] <= outer[1]
            and outer[1] - outer[0] > inner[1] - inner[0]
            and other.score >= link.score
            for other in links
        )
        if not covered:
            kept.append(link)
    return kept
