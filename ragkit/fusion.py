"""Pure functions that combine ranked lists: the one top-k merge used by every fan-out, and rank fusion.

Shards, hybrid search and multi-query search all reduce to "several (scores, ids) lists -> one top-k"; keeping
that in one function means there is one place to get ties, padding and duplicates right.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """An all-padding result: scores ``-inf``, ids ``-1``."""
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard ``(scores, ids)`` arrays of shape ``(nq, k_i)`` into the global top ``k``.

    Higher scores win; ties are broken by smaller id so the merge is deterministic and independent of shard
    order. Padding (id ``-1``) never displaces a real result, and an id present in several parts (an upsert
    seen twice) is kept once with its best score.
    """
    if not parts:
        raise ValueError("merge_topk needs at least one part")
    nq = parts[0][0].shape[0]
    scores = np.concatenate([np.asarray(s, dtype=np.float32).reshape(nq, -1) for s, _ in parts], axis=1)
    ids = np.concatenate([np.asarray(i, dtype=np.int64).reshape(nq, -1) for _, i in parts], axis=1)
    scores = np.where(ids < 0, -np.inf, scores)
    out_scores, out_ids = empty_result(nq, k)
    for row in range(nq):
        # lexsort: last key is primary. Sort by score desc, then id asc.
        order = np.lexsort((ids[row], -scores[row]))
        row_ids, row_scores = ids[row][order], scores[row][order]
        keep = row_ids >= 0
        row_ids, row_scores = row_ids[keep], row_scores[keep]
        _, first = np.unique(row_ids, return_index=True)
        first.sort()
        take = first[:k]
        out_ids[row, : len(take)] = row_ids[take]
        out_scores[row, : len(take)] = row_scores[take]
    return out_scores, out_ids


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hashable]], k: int, constant: float = 60.0, weights: Sequence[float] | None = None
) -> list[tuple[Hashable, float]]:
    """Reciprocal rank fusion (Cormack et al., 2009): ``score(d) = sum_i w_i / (constant + rank_i(d))``.

    Returns the top ``k`` items with their fused scores, best first; ties keep first-seen order.
    """
    weights = weights or [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"got {len(weights)} weights for {len(rankings)} rankings")
    fused: dict[Hashable, float] = {}
    for ranking, weight in zip(rankings, weights, strict=False):
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (constant + rank)
    ordered = sorted(fused.items(), key=lambda kv: -kv[1])
    return ordered[:k]
