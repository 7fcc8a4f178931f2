"""Retrieval metrics as pure functions of ranked document ids and graded judgements.

Conventions (each one checked against ``pytrec_eval`` in ``tests/test_eval_metrics.py``):

- A *ranking* is a sequence of document ids, best first. It is taken as given; a document id repeated later in
  the list is ignored (only its first, best position counts). To turn scores into a ranking the way trec_eval
  does, use :func:`rank_by_score` (score descending, ties broken by document id descending).
- *Judgements* map document id -> integer grade. A document is *relevant* (gold) when its grade is > 0
  (trec_eval's default relevance level 1); unjudged documents are non-relevant.
- ``precision@k`` divides by ``k`` even when fewer than ``k`` documents were retrieved (trec_eval ``P_k``).
- ``recall@k`` is relevant documents in the top ``k`` / all relevant documents: the "passage recall@k" of the
  HippoRAG papers (trec_eval ``recall_k``). ``hit@k`` is 1 when any relevant document is in the top ``k``
  (trec_eval ``success_k``); ``all_recall@k`` is 1 when every relevant document is.
- ``mrr@k`` is 1 / rank of the first relevant document when that rank is <= k, else 0.
- ``map@k`` sums precision at the rank of each relevant document within the top ``k`` and divides by the
  number of relevant documents, not by ``min(k, relevant)`` (trec_eval ``map_cut_k``).
- ``ndcg@k`` uses linear gains (gain = grade; grades <= 0 gain nothing) and the ``log2(rank + 1)``
  discount; the ideal ranking orders all judged grades > 0 descending (trec_eval ``ndcg_cut_k``).
- :func:`evaluate_run` averages over the queries that have at least one relevant judgement. A judged query
  that is missing from the run, or whose ranking is empty, counts with zeros (trec_eval ``-c``); run queries
  without judgements are ignored. Unlike trec_eval, queries whose judgements are all non-relevant are left
  out of the mean instead of adding zeros: they cannot measure anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

METRIC_NAMES: tuple[str, ...] = ("recall", "hit", "all_recall", "precision", "mrr", "map", "ndcg")


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return k


def _top_k(ranked: Sequence[str], k: int) -> list[str]:
    """The first ``k`` distinct ids of ``ranked``, in order."""
    _check_k(k)
    seen: set[str] = set()
    top: list[str] = []
    for doc_id in ranked:
        if doc_id in seen:
            continue
        seen.add(doc_id)
        top.append(doc_id)
        if len(top) == k:
            break
    return top


def _relevant(gold: Mapping[str, int]) -> set[str]:
    return {doc_id for doc_id, grade in gold.items() if grade > 0}


def relevant_count(gold: Mapping[str, int]) -> int:
    """Number of relevant (grade > 0) documents in a query's judgements."""
    return sum(1 for grade in gold.values() if grade > 0)


def recall_at_k(ranked: Sequence[str], gold: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents found in the top ``k``; 0.0 when the query has none."""
    relevant = _relevant(gold)
    if not relevant:
        _check_k(k)
        return 0.0
    return sum(1 for d in _top_k(ranked, k) if d in relevant) / len(relevant)


def hit_at_k(ranked: Sequence[str], gold: Mapping[str, int], k: int) -> float:
    """1.0 when at least one relevant document is in the top ``k``, else 0.0."""
    relevant = _relevant(gold)
    return 1.0 if any(d in relevant for d in _top_k(ranked, k)) else 0.0


def all_recall_at_k(ranked: Sequence[str], gold: Mapping[str, int], k: int) -> float:
    """1.0 when every relevant document is in the top ``k`` (multi-hop: all supporting passages), else 0.0."""
    relevant = _relevant(gold)
    top = _top_k(ranked, k)
    return 1.0 if relevant and relevant.issubset(top) else 0.0


def precision_at_k(ranked: Sequence[str], gold: Mapping[str, int], k: int) -> float:
    """Relevant documents in the top ``k`` divided by ``k``."""
    relevant = _relevant(gold)
    return sum(1 for d in _top_k(ranked, k) if d in relevant) / k


def reciprocal_rank_at_k(ranked: Sequence[str], gold: Mapping[str, int], k: int) -> float:
    """1 / rank of the first relevant document if it is within the top ``k``, else 0.0."""
    relevant = _relevant(gold)
    for rank, doc_id in enumerate(_top_k(ranked, k), start=1):
        if doc_id in relevant:
            return 1.0 / rank
    return 0.0


def average_precision_at_k(ranked: Sequence[str], gold: Mapping[str, int], k: int) -> float:
    """Precision at each relevant document's rank within the top ``k``, summed, / all relevant documents."""
    relevant = _relevant(gold)
    if not relevant:
        _check_k(k)
        return 0.0
    found = 0
    total = 0.0
    for rank, doc_id in enumerate(_top_k(ranked, k), start=1):
        if doc_id in relevant:
            found += 1
            total += found / rank
    return total / len(relevant)


def _dcg(gains: Iterable[float]) -> float:
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1) if gain > 0)


def ndcg_at_k(ranked: Sequence[str], gold: Mapping[str, int], k: int) -> float:
    """Normalized discounted cumulative gain of the top ``k`` with linear graded gains."""
    top = _top_k(ranked, k)
    ideal = _dcg(sorted((g for g in gold.values() if g > 0), reverse=True)[:k])
    if ideal == 0.0:
        return 0.0
    return _dcg(max(gold.get(d, 0), 0) for d in top) / ideal


_PER_QUERY = {
    "recall": recall_at_k,
    "hit": hit_at_k,
    "all_recall": all_recall_at_k,
    "precision": precision_at_k,
    "mrr": reciprocal_rank_at_k,
    "map": average_precision_at_k,
    "ndcg": ndcg_at_k,
}


def normalize_ks(ks: Iterable[int]) -> list[int]:
    """Cutoffs sorted ascending without duplicates; a ValueError for an empty list or a k that is not >= 1."""
    checked = sorted({_check_k(k) for k in ks})
    if not checked:
        raise ValueError("ks must hold at least one cutoff, e.g. (1, 5, 10)")
    return checked


def _check_metrics(metrics: Iterable[str]) -> list[str]:
    names = list(metrics)
    unknown = [m for m in names if m not in _PER_QUERY]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {', '.join(METRIC_NAMES)}")
    return names


def query_metrics(
    ranked: Sequence[str], gold: Mapping[str, int], ks: Iterable[int], metrics: Iterable[str] = METRIC_NAMES
) -> dict[str, float]:
    """Every requested metric at every cutoff for one query, keyed ``"recall@5"``, ``"ndcg@10"``, ..."""
    cutoffs = normalize_ks(ks)
    return {f"{m}@{k}": _PER_QUERY[m](ranked, gold, k) for m in _check_metrics(metrics) for k in cutoffs}


def per_query_metrics(
    run: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    ks: Iterable[int],
    metrics: Iterable[str] = METRIC_NAMES,
) -> dict[str, dict[str, float]]:
    """:func:`query_metrics` for each judged query with a relevant document (missing runs rank nothing)."""
    cutoffs = normalize_ks(ks)
    names = _check_metrics(metrics)
    return {
        qid: query_metrics(run.get(qid, ()), gold, cutoffs, names)
        for qid, gold in qrels.items()
        if relevant_count(gold) > 0
    }


def evaluate_run(
    run: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    ks: Iterable[int],
    metrics: Iterable[str] = METRIC_NAMES,
) -> dict[str, float]:
    """Mean of every metric at every cutoff over the queries with at least one relevant judgement.

    ``run`` maps query id -> ranked document ids (best first); ``qrels`` maps query id -> {doc id: grade}.
    Returns keys such as ``recall@5``, ``hit@5``, ``all_recall@5``, ``precision@5``, ``mrr@10``, ``map@10``,
    ``ndcg@10``, each a fraction in [0, 1].

    >>> evaluate_run({"q": ["a", "b"]}, {"q": {"b": 1}}, ks=[1, 2], metrics=["recall"])
    {'recall@1': 0.0, 'recall@2': 1.0}
    """
    per_query = per_query_metrics(run, qrels, ks, metrics)
    if not per_query:
        raise ValueError("qrels hold no query with a relevant (grade > 0) judgement; nothing to evaluate")
    keys = next(iter(per_query.values())).keys()
    return {key: math.fsum(row[key] for row in per_query.values()) / len(per_query) for key in keys}


def rank_by_score(scores: Mapping[str, float]) -> list[str]:
    """Document ids ordered as trec_eval orders a run: score descending, ties by document id descending.

    trec_eval compares ids with ``strcmp``; Python's ``str`` order is the same for UTF-8 text. NaN scores rank
    last.
    """

    def key(doc_id: str) -> tuple[float, str]:
        value = float(scores[doc_id])
        return (-math.inf if math.isnan(value) else value, doc_id)

    return sorted(scores, key=key, reverse=True)


def rank_docs_from_chunks(hits: Sequence[tuple[str, float]]) -> list[str]:
    """Collapse chunk hits ``(doc_id, score)`` to a ranking of documents, each scored by its best chunk.

    Documents are ordered by best chunk score, descending; equal scores keep the order in which the documents
    first appear, so a list that is already sorted best-first keeps its order. NaN scores rank last.
    """
    best: dict[str, float] = {}
    for doc_id, score in hits:
        value = float(score)
        if math.isnan(value):
            value = -math.inf
        if doc_id not in best or value > best[doc_id]:
            best[doc_id] = value
    order = {doc_id: i for i, doc_id in enumerate(best)}
    return sorted(best, key=lambda d: (-best[d], order[d]))
