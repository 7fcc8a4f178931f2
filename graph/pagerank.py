"""Personalized PageRank as a pure function of a sparse matrix, plus the entity-chunk walk matrix it runs on.

``personalized_pagerank`` solves ``p = (1 - d) s + d (W p + m s)`` by power iteration, where ``W`` is
column-stochastic, ``s`` the normalized seed vector and ``m`` the mass on dangling nodes (columns without edges),
which jumps back to the seeds: the same convention as ``networkx.pagerank(alpha=d, personalization=s)``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def column_stochastic(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """``W[i, j] = A[i, j] / sum_i A[i, j]``: column ``j`` holds where a walker at node ``j`` goes next.

    Returns CSR so ``W @ p`` is a fast sparse matrix-vector product.
    """
    matrix = sp.csc_matrix(adjacency, dtype=np.float64)
    totals = np.asarray(matrix.sum(axis=0)).ravel()
    scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    return sp.csr_matrix(matrix @ sp.diags(scale))


def personalized_pagerank(
    transition: sp.csr_matrix,
    seeds: np.ndarray,
    damping: float = 0.5,
    iterations: int = 50,
    tolerance: float = 1e-8,
) -> np.ndarray:
    """Stationary scores of a walk that follows edges with probability ``damping`` and else restarts at a seed.

    ``transition`` is column-stochastic (``column_stochastic``), ``seeds`` non-negative with a positive sum.
    Stops when the L1 change falls below ``tolerance`` (the error then shrinks by ``damping`` per step).
    """
    total = float(seeds.sum())
    if total <= 0:
        raise ValueError("personalized_pagerank needs seeds with a positive sum")
    restart = seeds / total
    outgoing = np.asarray(transition.sum(axis=0)).ravel()
    dangling = outgoing <= 0
    scores = restart.copy()
    for _ in range(iterations):
        lost = float(scores[dangling].sum())
        updated = (1.0 - damping) * restart + damping * (transition @ scores + lost * restart)
        change = float(np.abs(updated - scores).sum())
        scores = updated
        if change < tolerance:
            break
    return scores
