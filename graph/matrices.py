"""The graph compiled to ``scipy.sparse`` matrices for search, rebuilt only when the store's generation changes.

Rows and columns: entities ``0..E-1`` (sorted by key) and chunks ``0..C-1`` (sorted by id). ``mentions`` is the
chunk x entity matrix of mention weights (a title or heading counts ``title_weight``: the chunk is *about* that
entity), ``relations`` the symmetric entity x entity matrix of relation support. ``specificity`` weights an
entity by how few chunks mention it (an IDF), so "United States" spreads less than "Ermengarde of Tours".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ragkit.graph.settings import GraphSettings
from ragkit.graph.store import GraphSnapshot, GraphStore

_RELATION_KIND_WEIGHT = {"svo": 1.0, "prep": 1.0, "appos": 1.0, "cooccur": 0.5}


@dataclass(frozen=True)
class GraphMatrices:
    """Arrays and sparse matrices of one graph generation (see module docstring)."""

    generation: int
    keys: np.ndarray
    names: np.ndarray
    labels: np.ndarray
    chunk_ids: np.ndarray
    chunk_row: dict[str, int]
    key_row: dict[str, int]
    alias_rows: dict[str, np.ndarray]
    mentions: sp.csr_matrix  # chunk x entity, mention weights
    about: sp.csr_matrix  # chunk x entity, 1 where the entity is the chunk's title or heading
    named_mentions: sp.csr_matrix  # chunk x entity, 1 where a named-entity mention is
    phrase_mentions: sp.csr_matrix  # chunk x entity, 1 where a noun-phrase mention is
    relations: sp.csr_matrix  # entity x entity, symmetric
    typed_relations: sp.csr_matrix  # entity x entity, symmetric, 1 where a parsed (not co-occurrence) relation is
    named: np.ndarray  # bool per entity: a named entity, title or heading (not only a common-noun phrase)
    linkable: np.ndarray  # bool per entity: a title/heading, or a named entity of several chunks
    entity_chunks: np.ndarray  # number of chunks that mention each entity
    specificity: np.ndarray  # per entity, in [0, 1]

    @property
    def n_entities(self) -> int:
        return len(self.keys)

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_ids)


def compile_matrices(snapshot: GraphSnapshot, settings: GraphSettings) -> GraphMatrices:
    """Builds the search matrices from a store snapshot (vectorized; ~1 s per million mentions)."""
    n_entities = len(snapshot.keys)
    chunk_ids, chunk_of_mention = np.unique(snapshot.mention_chunk.astype(str), return_inverse=True)
    n_chunks = len(chunk_ids)
    kind = snapshot.mention_kind.astype(str)
    is_about = (kind == "title") | (kind == "heading")
    shape = (n_chunks, n_entities)

    def indicator(selected: np.ndarray) -> sp.csr_matrix:
        rows, cols = chunk_of_mention[selected], snapshot.mention_entity[selected]
        matrix = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)
        matrix.data[:] = 1.0  # duplicates were summed
        return matrix

    about = indicator(is_about)
    named_mentions = indicator(kind == "entity")
    phrase_mentions = indicator(kind == "noun_phrase")
    mentions = sp.csr_matrix(
        settings.title_weight * about + named_mentions + settings.noun_phrase_weight * phrase_mentions
    )
    named = np.zeros(n_entities, dtype=bool)
    named[snapshot.mention_entity[kind != "noun_phrase"]] = True
    binary = mentions.copy()
    binary.data[:] = 1.0
    entity_chunks = np.asarray(binary.sum(axis=0)).ravel()
    specificity = _specificity(entity_chunks, n_chunks, settings.specificity)
    linkable = np.zeros(n_entities, dtype=bool)
    linkable[snapshot.mention_entity[is_about]] = True
    linkable |= named & (entity_chunks >= 2)

    kind_weight = np.array([_RELATION_KIND_WEIGHT.get(k, 1.0) for k in snapshot.relation_kind.astype(str)])
    rel_weight = kind_weight * np.log1p(snapshot.relation_support)
    src, dst = snapshot.relation_source, snapshot.relation_target
    relations = sp.csr_matrix(
        (np.concatenate([rel_weight, rel_weight]), (np.concatenate([src, dst]), np.concatenate([dst, src]))),
        shape=(n_entities, n_entities),
    )
    relations.sum_duplicates()
    typed = snapshot.relation_kind.astype(str) != "cooccur"
    typed_relations = sp.csr_matrix(
        (
            np.ones(2 * int(typed.sum())),
            (np.concatenate([src[typed], dst[typed]]), np.concatenate([dst[typed], src[typed]])),
        ),
        shape=(n_entities, n_entities),
    )
    typed_relations.data[:] = 1.0

    alias_rows: dict[str, list[int]] = {}
    for alias, row in zip(snapshot.alias_keys, snapshot.alias_entity, strict=False):
        alias_rows.setdefault(alias, []).append(int(row))
    return GraphMatrices(
        generation=snapshot.generation,
        keys=snapshot.keys.astype(str),
        names=snapshot.names.astype(str),
        labels=snapshot.labels.astype(str),
        chunk_ids=chunk_ids,
        chunk_row={c: i for i, c in enumerate(chunk_ids.tolist())},
        key_row={k: i for i, k in enumerate(snapshot.keys.tolist())},
        alias_rows={k: np.asarray(v, dtype=np.int64) for k, v in alias_rows.items()},
        mentions=mentions,
        about=about,
        named_mentions=named_mentions,
        phrase_mentions=phrase_mentions,
        relations=relations,
        typed_relations=typed_relations,
        named=named,
        linkable=linkable,
        entity_chunks=entity_chunks,
        specificity=specificity,
    )


def _specificity(entity_chunks: np.ndarray, n_chunks: int, kind: str) -> np.ndarray:
    df = np.maximum(entity_chunks, 1.0)
    if kind == "none":
        return np.ones_like(df)
    if kind == "inverse":
        return 1.0 / df
    idf = np.log((n_chunks + 1.0) / df)
    return idf / max(math.log(n_chunks + 1.0), 1e-9)


class MatrixCache:
    """Compiled matrices of a store, recompiled only when the store's generation moved on."""

    def __init__(self, store: GraphStore, settings: GraphSettings) -> None:
        self.store = store
        self.settings = settings
        self._matrices: GraphMatrices | None = None

    def get(self) -> GraphMatrices:
        generation = self.store.generation
        if self._matrices is None or self._matrices.generation != generation:
            self._matrices = compile_matrices(self.store.snapshot(), self.settings)
        return self._matrices
