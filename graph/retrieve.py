"""Graph retrieval: Personalized PageRank ("graph"), best-path traversal ("multihop") and their fusion with
dense search ("graph_hybrid").

Every mode starts from the same two kinds of evidence: the question's linked entities (``link.py``) and the
dense retriever's top chunks. Dense scores become seed weights ``exp((s - s_max) / dense_temperature)``, so a
chunk far below the best one hardly seeds anything. The graph then reaches chunks that share no words with the
question but share an entity with the chunks that do: the second passage of a two-hop question.

Example::

    retriever = GraphRetriever(store, embedder, dense=lambda q, k: index.search(q, k), settings=GraphSettings())
    for chunk_id, score, explain in retriever.retrieve_chunks("When did Lothair II's mother die?", k=5):
        ...
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import scipy.sparse as sp

from ragkit.graph.link import EntityLink, link_entities, query_phrases
from ragkit.graph.matrices import GraphMatrices, MatrixCache
from ragkit.graph.pagerank import SparseVector, column_stochastic, sparse_max_product, sparse_personalized_pagerank
from ragkit.graph.settings import GraphSettings
from ragkit.graph.store import GraphStore

if TYPE_CHECKING:
    from spacy.language import Language

DenseSearch = Callable[[str, int], Sequence[tuple[str, float]]]
ChunkResult = tuple[str, float, dict[str, Any]]


class MatrixSource(Protocol):
    """Where a retriever gets the compiled graph: ``MatrixCache``, or an index's graph state."""

    def get(self) -> GraphMatrices: ...


class NameEmbedder(Protocol):
    """What graph search needs of an embedder (ragkit's Embedder protocol fits)."""

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class QueryEvidence:
    """Dense hits and entity links of one question, mapped onto the compiled graph."""

    matrices: GraphMatrices
    dense_ids: list[str]  # dense candidates, best first
    dense_scores: np.ndarray  # their scores
    dense_weight: SparseVector  # graph chunk rows of the dense candidates: exp((s - s_max) / T)
    links: list[EntityLink]
    entity_seed: SparseVector  # linked entities: link score x specificity


class _GraphSearchBase:
    """Shared plumbing: compiled-matrix cache, the spaCy pipeline for questions, name vectors, evidence."""

    mode = "graph"

    def __init__(
        self,
        store: GraphStore,
        embedder: NameEmbedder | None,
        dense: DenseSearch | None,
        settings: GraphSettings | None = None,
        nlp: Language | None = None,
        embedder_name: str = "",
        *,
        matrices: MatrixSource | None = None,
        shared: _GraphSearchBase | None = None,
    ) -> None:
        """``matrices``: where the compiled graph comes from (default: compiled from ``store`` when its
        generation moves on). ``shared``: another retriever of the same graph whose compiled matrices, derived
        data and question pipeline this one uses too, so switching mode costs nothing."""
        self.store = store
        self.embedder = embedder
        self.dense = dense
        self.settings = settings or GraphSettings()
        self._embedder_name = embedder_name or getattr(embedder, "name", "") or type(embedder).__name__
        self._cache: MatrixSource
        self._derived: dict[str, Any]
        self._lock: threading.Lock
        if shared is not None:
            self._cache, self._derived, self._lock = shared._cache, shared._derived, shared._lock
            self._shared: _GraphSearchBase | None = shared
            self._nlp = nlp
            return
        self._shared = None
        self._cache = matrices if matrices is not None else MatrixCache(store, self.settings)
        self._nlp = nlp
        self._lock = threading.Lock()
        self._derived = {}

    @property
    def nlp(self) -> Language:
        if self._nlp is None and self._shared is not None:
            self._nlp = self._shared.nlp
        if self._nlp is None:
            from ragkit.graph.extract import load_pipeline

            # questions are a few tokens: thinc's own blis multiplies those faster than a threaded BLAS
            self._nlp = load_pipeline(self.settings.model, fast_gemm=False)
        return self._nlp

    def matrices(self) -> GraphMatrices:
        """The compiled graph, recompiled when the store changed; derived per-generation data is reset too."""
        with self._lock:
            matrices = self._cache.get()
            if self._derived.get("generation") != matrices.generation:
                self._derived.clear()  # in place: the retrievers of one index share this dict
                self._derived["generation"] = matrices.generation
            return matrices

    def _linkable_vectors(self, matrices: GraphMatrices) -> tuple[np.ndarray, np.ndarray] | None:
        """Name vectors of the entities a question may link to by embedding (``GraphMatrices.linkable``): cached
        in the store by ``GraphStore.embed_names``; names missing there are embedded now (not stored)."""
        if self.embedder is None or self.settings.link_threshold >= 1.0:
            return None
        if "linkable_vectors" not in self._derived:
            rows = np.flatnonzero(matrices.linkable)
            keys = [str(k) for k in matrices.keys[rows]]
            found = self.store.name_vectors(self._embedder_name, keys)
            missing = [k for k in keys if k not in found]
            for i in range(0, len(missing), 1024):
                part = missing[i : i + 1024]
                found.update(zip(part, np.asarray(self.embedder.embed_documents(part), dtype=np.float32), strict=False))
            vectors = np.stack([found[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)
            self._derived["linkable_vectors"] = (np.ascontiguousarray(vectors, dtype=np.float32), rows)
        return self._derived["linkable_vectors"]

    def evidence(self, query: str) -> QueryEvidence:
        """Dense candidates and linked entities of ``query``."""
        s = self.settings
        matrices = self.matrices()
        hits = list(self.dense(query, s.dense_candidates)) if self.dense is not None and s.dense_candidates else []
        dense_ids = [cid for cid, _ in hits]
        dense_scores = np.asarray([score for _, score in hits], dtype=np.float64)
        weight: dict[int, float] = {}
        if hits:
            relative = np.exp((dense_scores - dense_scores.max()) / s.dense_temperature)
            for cid, w in zip(dense_ids, relative, strict=False):
                row = matrices.chunk_row.get(cid)
                if row is not None:
                    weight[row] = max(weight.get(row, 0.0), float(w))
        phrases = query_phrases(self.nlp, query, s)
        named = self._linkable_vectors(matrices)
        embed = self.embedder.embed_documents if self.embedder is not None else None
        links = link_entities(
            phrases, query, matrices, s,
            entity_vectors=named[0] if named else None,
            embed=(lambda texts: embed(texts)) if embed is not None else None,
            vector_rows=named[1] if named else None,
        )
        seed: dict[int, float] = {}
        for link in links:
            seed[link.row] = max(seed.get(link.row, 0.0), link.score * float(matrices.specificity[link.row]))
        return QueryEvidence(
            matrices, dense_ids, dense_scores, SparseVector.of(list(weight), list(weight.values())), links,
            SparseVector.of(list(seed), list(seed.values())),
        )

    def _walk_matrix(self, matrices: GraphMatrices) -> tuple[sp.csc_matrix, np.ndarray]:
        """Column-stochastic matrix of the entity-chunk graph: nodes are entities, then chunks."""
        if "walk" not in self._derived:
            s = self.settings
            mentions = matrices.mentions
            if s.walk_specificity:
                mentions = sp.csr_matrix(mentions @ sp.diags(matrices.specificity ** s.specificity_power))
            blocks = [[s.relation_weight * matrices.relations, mentions.T], [mentions, None]]
            adjacency = sp.bmat(blocks, format="csc")
            walk = column_stochastic(adjacency)
            self._derived["walk"] = (walk, np.diff(walk.indptr) == 0)
        return self._derived["walk"]

    def ppr_scores(self, ev: QueryEvidence) -> SparseVector | None:
        """PageRank mass of the nodes the walk reached (entities, then chunks), or None without any seed."""
        s = self.settings
        m = ev.matrices
        entities, chunks = ev.entity_seed, ev.dense_weight
        parts = []  # seed nodes and weights, only the few seeds: the graph has a million nodes
        if len(entities) and s.entity_seed_weight > 0:
            parts.append((entities.nodes, s.entity_seed_weight * entities.values / entities.values.sum()))
        if len(chunks) and s.dense_seed_weight > 0:
            parts.append((m.n_entities + chunks.nodes, s.dense_seed_weight * chunks.values / chunks.values.sum()))
        if not parts:
            return None
        seeds = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        walk, dangling = self._walk_matrix(m)
        return sparse_personalized_pagerank(
            walk, seeds, s.damping, s.iterations, s.tolerance, s.prune, dangling, self._hubs(m), s.edge_prune
        )

    def _hubs(self, m: GraphMatrices) -> np.ndarray | None:
        """Entity nodes that absorb rather than spread walk mass: those in more than ``hub_fraction`` of the
        chunks (and at least ``hub_min_chunks``)."""
        s = self.settings
        if s.hub_fraction <= 0:
            return None
        if "hubs" not in self._derived:
            limit = max(s.hub_fraction * m.n_chunks, s.hub_min_chunks)
            self._derived["hubs"] = np.concatenate([m.entity_chunks > limit, np.zeros(m.n_chunks, dtype=bool)])
        return self._derived["hubs"]

    def _dense_only(self, ev: QueryEvidence, k: int, taken: set[str]) -> list[ChunkResult]:
        """Dense candidates outside the graph (chunks without any entity), to fill a ranking."""
        return [
            (cid, float(score), {"mode": self.mode, "dense_rank": rank})
            for rank, (cid, score) in enumerate(zip(ev.dense_ids, ev.dense_scores, strict=False))
            if cid not in taken and cid not in ev.matrices.chunk_row
        ][:k]


class GraphRetriever(_GraphSearchBase):
    """Mode "graph": Personalized PageRank over the entity-chunk graph, seeded by linked entities and by the
    dense retriever's top chunks; chunks are ranked by their PageRank mass."""

    mode = "graph"

    def retrieve_chunks(self, query: str, k: int) -> list[ChunkResult]:
        ev = self.evidence(query)
        m = ev.matrices
        scores = self.ppr_scores(ev)
        if scores is None:
            return self._dense_only(ev, k, set())
        chunk_scores = _chunk_part(scores, m)
        seeds = [m.names[link.row] for link in ev.links[:10]]
        out: list[ChunkResult] = []
        for row in _best(chunk_scores.nodes, chunk_scores.values, k):
            entity_rows = m.mentions[row].indices
            via = entity_rows[np.argsort(-scores.at(entity_rows))[:3]]
            explain = {"mode": self.mode, "seed_entities": seeds, "via_entities": [m.names[e] for e in via]}
            out.append((m.chunk_ids[row], float(chunk_scores.at(row)), explain))
        # chunks outside the graph fill the ranking below every PageRank hit, in dense order
        floor = out[-1][1] if out else 1.0
        fill = self._dense_only(ev, k - len(out), {c for c, _, _ in out})
        return out + [(cid, floor * 0.5 ** (i + 1), explain) for i, (cid, _, explain) in enumerate(fill)]


@dataclass(frozen=True)
class PathState:
    """Best-path activations per hop: ``entities[h]`` (over entities) and ``chunks[h]`` (over chunks,
    ``chunks[0]`` = dense seeds)."""

    entities: list[SparseVector]
    chunks: list[SparseVector]
    best: np.ndarray  # per chunk, best path score over hops
    best_hop: np.ndarray  # per chunk, the hop count of that path (0: not reached)


class MultiHopRetriever(_GraphSearchBase):
    """Mode "multihop": best paths from the question's entities and the top dense chunks, along mentions and
    relations, up to ``max_hops`` entity-to-chunk hops. A chunk scores
    ``exp((dense - best_dense) / path_temperature) + path_weight * best_path``; each hit explains its path.

    A path from a linked entity starts at the link's score, one from a dense hit at ``path_dense_seed_weight`` of
    the hit's seed weight: the dense hit already scores by its prior, and its path mostly restates that (a
    look-alike passage reaches itself through its own name), while a path from what the question names is evidence
    the prior lacks (docs/benchmarks.md, "Paths start at what the question names")."""

    mode = "multihop"

    def _path_matrices(self, m: GraphMatrices) -> tuple[sp.csc_matrix, sp.csc_matrix, sp.csc_matrix]:
        if "paths" not in self._derived:
            s = self.settings
            spec = sp.diags(m.specificity**s.specificity_power)
            body = s.body_mention_weight
            land = m.about + body * m.named_mentions + body * s.noun_phrase_weight * m.phrase_mentions
            land = sp.csc_matrix(land.minimum(1.0))  # chunk x entity: entity -> chunk
            leave = (m.about + m.named_mentions + s.noun_phrase_weight * m.phrase_mentions).minimum(1.0)
            leave = sp.csc_matrix((leave @ spec).T)  # entity x chunk: chunk -> entity
            relate = sp.csc_matrix(spec @ m.typed_relations)  # entity x entity
            self._derived["paths"] = (land, leave, relate)
        return self._derived["paths"]

    def _path_rows(self, m: GraphMatrices) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
        """The path matrices in CSR, for reading single rows when explaining a hit."""
        if "path_rows" not in self._derived:
            self._derived["path_rows"] = tuple(sp.csr_matrix(x) for x in self._path_matrices(m))
        return self._derived["path_rows"]

    def paths(self, ev: QueryEvidence) -> PathState:
        """Forward best-path relaxation (max-product) for ``max_hops`` hops."""
        s = self.settings
        m = ev.matrices
        land, leave, relate = self._path_matrices(m)
        seeds = SparseVector.empty()
        if s.path_dense_seeds and len(ev.dense_weight):
            top = _best(ev.dense_weight.nodes, ev.dense_weight.values, s.path_dense_seeds)
            seeds = SparseVector.of(top, ev.dense_weight.at(top) * s.path_dense_seed_weight)
        linked = ev.entity_seed.scaled(s.entity_seed_weight)
        entities = [linked.maximum(sparse_max_product(leave, seeds))]
        chunks = [seeds]
        best = np.zeros(m.n_chunks)
        best_hop = np.zeros(m.n_chunks, dtype=np.int64)
        for hop in range(1, s.max_hops + 1):
            reached = sparse_max_product(land, _pruned(entities[-1], s.path_beam)).scaled(s.hop_decay ** (hop - 1))
            chunks.append(reached)
            better = reached.values > best[reached.nodes]
            best[reached.nodes[better]] = reached.values[better]
            best_hop[reached.nodes[better]] = hop
            if hop < s.max_hops:
                onward = sparse_max_product(leave, _pruned(reached, s.path_beam))
                if s.relation_weight > 0:
                    related = sparse_max_product(relate, _pruned(entities[-1], s.path_beam))
                    onward = onward.maximum(related.scaled(s.relation_weight))
                entities.append(onward)
        return PathState(entities, chunks, best, best_hop)

    def combined(self, ev: QueryEvidence, state: PathState) -> np.ndarray:
        """Final per-chunk score: dense prior plus weighted best path."""
        s = self.settings
        m = ev.matrices
        prior = np.zeros(m.n_chunks)
        if len(ev.dense_scores):
            best = ev.dense_scores.max()
            floor = np.exp((ev.dense_scores.min() - best) / s.path_temperature)
            prior[:] = floor
            for cid, score in zip(ev.dense_ids, ev.dense_scores, strict=False):
                row = m.chunk_row.get(cid)
                if row is not None:
                    prior[row] = max(prior[row], np.exp((score - best) / s.path_temperature))
        return prior + s.path_weight * state.best

    def retrieve_chunks(self, query: str, k: int) -> list[ChunkResult]:
        ev = self.evidence(query)
        state = self.paths(ev)
        scores = self.combined(ev, state)
        out = [
            (ev.matrices.chunk_ids[row], float(scores[row]), self.explain(ev, state, int(row)))
            for row in _top(scores, k)
        ]
        return _merge_dense_only(out, self._dense_only(ev, k, {c for c, _, _ in out}), ev, k, self.settings)

    def explain(self, ev: QueryEvidence, state: PathState, row: int) -> dict[str, Any]:
        """The best path to chunk ``row`` as steps ``{"entity", "relation", "chunk"}``, start first.

        The first step says where the path started: ``relation`` "linked from question" (with the question's
        ``phrase``) or "dense hit" (a top dense chunk, ``dense_rank``). Then each hop: the entity the path went
        through, the chunk it reached, and how ("about", "mentioned in", or the parsed relation label between
        the previous entity and this one in that chunk).
        """
        s = self.settings
        m = ev.matrices
        land, leave, relate = self._path_rows(m)
        hop = int(state.best_hop[row])
        explain: dict[str, Any] = {"mode": self.mode, "hops": hop, "path_score": float(state.best[row]), "path": []}
        if hop == 0:
            return explain
        nodes: list[tuple[str, Any]] = [("chunk", row)]
        level = hop - 1
        entity = _row_best(land, row, state.entities[level])[1]
        while entity >= 0:
            nodes.append(("entity", entity))
            value = float(state.entities[level].at(entity))
            chunk_score, chunk = _row_best(leave, entity, state.chunks[level])
            relation_score, previous = 0.0, -1
            if level > 0 and s.relation_weight > 0:
                relation_score, previous = _row_best(relate, entity, state.entities[level - 1])
                relation_score *= s.relation_weight
            link = next((lk for lk in ev.links if lk.row == entity), None)
            linked = s.entity_seed_weight * float(ev.entity_seed.at(entity))
            if level == 0 and link is not None and linked >= value * (1 - 1e-9):
                nodes.append(("question", link.phrase))
                break
            if chunk >= 0 and chunk_score >= relation_score:
                nodes.append(("chunk", chunk))
                if level == 0:
                    nodes.append(("dense", chunk))
                    break
                level -= 1
                entity = _row_best(land, chunk, state.entities[level])[1]
            elif previous >= 0:
                nodes.append(("relation", None))
                level -= 1
                entity = previous
            else:
                break
        explain["path"] = self._steps(ev, nodes[::-1])
        return explain

    def _steps(self, ev: QueryEvidence, nodes: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        m = ev.matrices
        steps: list[dict[str, Any]] = []
        previous_entity: int | None = None
        for i, (kind, value) in enumerate(nodes):
            if kind == "question":
                entity = nodes[i + 1][1]
                steps.append({"entity": str(m.names[entity]), "relation": "linked from question", "chunk": None,
                              "phrase": value})
                previous_entity = entity
            elif kind == "dense":
                rank = ev.dense_ids.index(str(m.chunk_ids[value])) if str(m.chunk_ids[value]) in ev.dense_ids else -1
                steps.append({"entity": None, "relation": "dense hit", "chunk": str(m.chunk_ids[value]),
                              "dense_rank": rank})
            elif (
                kind == "chunk"
                and previous_entity is not None
                and (not steps or steps[-1]["chunk"] != str(m.chunk_ids[value]))
            ):
                relation = "about" if _row_has(m.about, value, previous_entity) else "mentioned in"
                steps.append({"entity": str(m.names[previous_entity]), "relation": relation,
                              "chunk": str(m.chunk_ids[value])})
            elif kind == "entity" and (previous_entity is None or previous_entity != value):
                chunk = steps[-1]["chunk"] if steps else None
                label = None
                if previous_entity is not None:
                    label = self.store.relation_label(str(m.keys[previous_entity]), str(m.keys[value]), chunk)
                relation = label or ("mentions" if nodes[i - 1][0] == "chunk" else "related to")
                steps.append({"entity": str(m.names[value]), "relation": relation,
                              "chunk": chunk if nodes[i - 1][0] == "chunk" else None})
                previous_entity = value
        return steps


def _pruned(scores: SparseVector, beam: int) -> SparseVector:
    """``scores`` with only its ``beam`` best entries (0 keeps all): the paths a hop carries on."""
    if beam <= 0 or len(scores) <= beam:
        return scores
    keep = np.sort(np.argpartition(-scores.values, beam - 1)[:beam])
    return SparseVector(scores.nodes[keep], scores.values[keep])


def _row_best(matrix: sp.csr_matrix, row: int, vector: SparseVector) -> tuple[float, int]:
    """``max_j matrix[row, j] * vector[j]`` and its ``j`` (-1 when the row is empty or all zero)."""
    start, end = matrix.indptr[row], matrix.indptr[row + 1]
    if start == end:
        return 0.0, -1
    columns = matrix.indices[start:end]
    values = matrix.data[start:end] * vector.at(columns)
    best = int(np.argmax(values))
    return (float(values[best]), int(columns[best])) if values[best] > 0 else (0.0, -1)


def _row_has(matrix: sp.csr_matrix, row: int, column: int) -> bool:
    return bool(np.any(matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]] == column))


def _merge_dense_only(
    results: list[ChunkResult], extra: list[ChunkResult], ev: QueryEvidence, k: int, settings: GraphSettings
) -> list[ChunkResult]:
    """Places dense hits outside the graph by their dense prior, so a chunk without entities still ranks."""
    if not extra:
        return results[:k]
    best = ev.dense_scores.max()
    rescored = [(cid, float(np.exp((score - best) / settings.path_temperature)), ex) for cid, score, ex in extra]
    return sorted(results + rescored, key=lambda r: -r[1])[:k]


def _chunk_part(scores: SparseVector, m: GraphMatrices) -> SparseVector:
    """The chunk nodes of a walk's scores (entities come first), indexed by chunk row."""
    part = scores.nodes >= m.n_entities
    return SparseVector(scores.nodes[part] - m.n_entities, scores.values[part])


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` highest positive scores, best first, ties by row."""
    positive = np.flatnonzero(scores > 0)
    return _best(positive, scores[positive], k)


def _best(nodes: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` of ``nodes`` (ascending) with the highest positive ``values``, best first, ties by node."""
    nodes, values = nodes[values > 0], values[values > 0]
    if len(nodes) > k:
        keep = np.argpartition(-values, k - 1)[:k]
        nodes, values = nodes[keep], values[keep]
    return nodes[np.lexsort((nodes, -values))]


class HybridGraphRetriever(MultiHopRetriever):
    """Mode "graph_hybrid": fusion of dense and graph results. First the top ``fusion_keep_paths`` chunks of the
    multi-hop score (dense prior + best path: the best dense hit and the end of the best path from it or from the
    question's entities, the two halves of a two-hop answer), then the top ``fusion_keep_dense`` dense hits
    (graph evidence never displaces a strong dense hit below them); below them chunks are ranked by the multi-hop
    score plus ``fusion_ppr_weight`` times the normalized PageRank mass."""

    mode = "graph_hybrid"

    def retrieve_chunks(self, query: str, k: int) -> list[ChunkResult]:
        s = self.settings
        ev = self.evidence(query)
        m = ev.matrices
        state = self.paths(ev)
        scores = self.combined(ev, state)
        on_paths = [m.chunk_ids[row] for row in _top(scores, s.fusion_keep_paths)]  # before PageRank is added
        ppr = self.ppr_scores(ev) if s.fusion_ppr_weight > 0 else None
        if ppr is not None:
            chunk_mass = _chunk_part(ppr, m).dense(m.n_chunks)
            if chunk_mass.max() > 0:
                scores = scores + s.fusion_ppr_weight * chunk_mass / chunk_mass.max()
        kept = list(dict.fromkeys(on_paths + list(ev.dense_ids[: s.fusion_keep_dense])))
        taken = set(kept)
        rest = [
            (m.chunk_ids[row], float(scores[row]), self.explain(ev, state, int(row)))
            for row in _top(scores, k + len(kept))
            if m.chunk_ids[row] not in taken
        ]
        rest = _merge_dense_only(rest, self._dense_only(ev, k, taken | {c for c, _, _ in rest}), ev, k, s)
        for _, _, explain in rest:
            explain["mode"] = self.mode
        # the kept hits score above every fused one, the paths' first (their rank order), then the dense ones
        # (dense scores are cosines, in [-1, 1]) in dense order
        lift = max((score for _, score, _ in rest), default=0.0) + 2.0
        dense_rank = {cid: rank for rank, cid in enumerate(ev.dense_ids[: s.fusion_keep_dense])}
        out: list[ChunkResult] = []
        for place, cid in enumerate(kept):
            row = m.chunk_row.get(cid)
            explain = self.explain(ev, state, row) if row is not None else {"mode": self.mode, "path": []}
            explain["mode"] = self.mode
            if place < len(on_paths):
                explain.update({"path_rank": place, "kept_path": True})
                if cid in dense_rank:
                    explain["dense_rank"] = dense_rank[cid]
                score = lift + 4.0 - place * 1e-3
            else:
                explain.update({"dense_rank": dense_rank[cid], "kept_dense": True})
                score = lift + float(ev.dense_scores[dense_rank[cid]])
            out.append((cid, score, explain))
        return (out + rest)[:k]
