"""Run a dataset's queries through an index in several retrieval modes and score the rankings.

Two timed passes per mode, because one number cannot serve both questions:

1. **Throughput**: all queries in batches of ``batch_size`` through ``index.retrieve_many``; ``queries_per_s``
   is queries / total batch time. These batched results are the ones scored.
2. **Latency**: each query alone, ``index.retrieve_many([query], ...)``, timed with ``perf_counter``;
   p50/p90/p99 are percentiles (linear interpolation) of those single-query times. Dividing a batch's time
   by its size would report the mean for every query and hide the slow tail that p99 exists to show.

One untimed call per mode comes first, so loading a model or warming caches does not land in either figure.
The latency pass repeats queries the batch pass has seen: an index that caches query embeddings or results
would look faster than it is for new questions (ragkit's ``Index`` caches neither).
Chunks are collapsed to corpus ids (a passage scores as its best chunk) before scoring, because gold are
corpus ids; ask for ``overfetch`` times more chunks than the deepest cutoff when passages are split into
several chunks.

With an ``answerer`` (``ragkit eval --answers``) a third pass answers every query that has a gold answer, one
question at a time: retrieve ``answer_k`` chunks, generate, each step timed (see ``ragkit.eval.answers``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from ragkit.eval.answers import AnswerCase, Answerer, AnswerScore, aggregate_answers, answer_questions
from ragkit.eval.datasets import BeirDataset
from ragkit.eval.metrics import (
    evaluate_run,
    normalize_ks,
    per_query_metrics,
    rank_docs_from_chunks,
    relevant_count,
)
from ragkit.eval.report import EvalReport, ModeResult, QueryResult
from ragkit.types import Hit

logger = logging.getLogger("ragkit.eval")

SET_METRICS: tuple[str, ...] = ("recall", "hit", "all_recall", "precision")
RANK_METRICS: tuple[str, ...] = ("mrr", "ndcg", "map")

ProgressCallback = Callable[[str, int, int], None]


class BatchRetriever(Protocol):
    """What ``run_eval`` needs from an index: ranked chunk hits for a batch of queries in a given mode."""

    def retrieve_many(self, queries: list[str], k: int, mode: str) -> list[list[Hit]]: ...


def _latency_sample(n: int, limit: int | None) -> list[int]:
    """Indices of the queries timed one by one: all of them, or ``limit`` spread evenly over the set."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, n - 1, limit).round()})


def _retrieve(index: BatchRetriever, queries: list[str], k: int, mode: str) -> list[list[Hit]]:
    hits = index.retrieve_many(queries, k, mode)
    if len(hits) != len(queries):
        raise RuntimeError(
            f"{type(index).__name__}.retrieve_many returned {len(hits)} result lists for "
            f"{len(queries)} queries (mode {mode!r})"
        )
    return hits


def _answer_progress(progress: ProgressCallback | None, mode: str, total: int) -> Callable[[int], None] | None:
    """``progress`` for the answer pass of ``mode``, reported as ``"MODE answers"``."""
    if progress is None:
        return None
    report = progress
    return lambda done: report(f"{mode} answers", done, total)


def run_eval(
    dataset: BeirDataset,
    index: BatchRetriever,
    modes: Sequence[str],
    ks: Sequence[int] = (1, 2, 5, 10, 20),
    batch_size: int = 64,
    *,
    rank_ks: Sequence[int] = (10,),
    overfetch: int = 1,
    latency_queries: int | None = None,
    progress: ProgressCallback | None = None,
    clock: Callable[[], float] = time.perf_counter,
    answerer: Answerer | None = None,
    answer_k: int = 5,
    generator_name: str = "",
) -> EvalReport:
    """Evaluate ``index`` on ``dataset`` in each of ``modes``.

    ``ks`` are the cutoffs of recall, hit, all_recall and precision; ``rank_ks`` those of MRR, nDCG and MAP
    (10 by default, as BEIR reports). Each query retrieves ``max(ks + rank_ks) * overfetch`` chunks, collapsed
    to at most ``max(ks + rank_ks)`` passages. ``latency_queries`` limits how many queries are also timed
    alone, spread evenly over the set (None: all; 0: latency not measured). ``progress(mode, done, total)``
    is called as work advances. ``clock`` returns seconds (tests pass a fake one to check the arithmetic).

    ``answerer(questions, hits)`` also answers each query that has a gold answer from its top ``answer_k``
    chunks; the mode's :class:`ModeResult` then carries ``answers`` (reported as made by ``generator_name``)
    and its per-query rows an ``answer``.

    >>> report = run_eval(load_beir("shared/data/scifact"), index, ["dense", "bm25"])   # doctest: +SKIP
    >>> print(format_table(report))                                                      # doctest: +SKIP
    """
    if not modes:
        raise ValueError("modes is empty; name at least one retrieval mode, e.g. ['dense']")
    if len(set(modes)) != len(modes):
        raise ValueError(f"modes has duplicates: {list(modes)}")
    cutoffs, rank_cutoffs = normalize_ks(ks), normalize_ks(rank_ks)
    if batch_size < 1 or overfetch < 1:
        raise ValueError(f"batch_size and overfetch must be >= 1 (got {batch_size}, {overfetch})")

    qids = [q for q in dataset.queries if relevant_count(dataset.qrels.get(q, {})) > 0]
    if not qids:
        raise ValueError(f"dataset {dataset.name!r} has no query with a relevant judgement")
    texts = [dataset.queries[q] for q in qids]
    qrels = {q: dataset.qrels[q] for q in qids}
    depth = max(cutoffs + rank_cutoffs)
    chunk_k = depth * overfetch
    timed = _latency_sample(len(qids), latency_queries)
    cases: list[AnswerCase] = []
    if answerer is not None:
        if answer_k < 1:
            raise ValueError(f"answer_k must be >= 1 (got {answer_k})")
        cases = [
            AnswerCase(q, dataset.queries[q], dataset.gold_answers(q), frozenset(d for d, g in qrels[q].items() if g))
            for q in qids
            if dataset.gold_answers(q)
        ]
        if not cases:
            raise ValueError(f"dataset {dataset.name!r} has no query with a gold answer (metadata.answer)")

    results: dict[str, ModeResult] = {}
    rows: list[QueryResult] = []
    for mode in modes:
        total = len(qids) + len(timed)
        _retrieve(index, texts[:1], chunk_k, mode)  # warm-up, untimed

        rankings: dict[str, list[str]] = {}
        short = 0
        elapsed = 0.0
        for start in range(0, len(qids), batch_size):
            batch = texts[start : start + batch_size]
            began = clock()
            hits = _retrieve(index, batch, chunk_k, mode)
            elapsed += clock() - began
            for qid, query_hits in zip(qids[start : start + batch_size], hits, strict=True):
                ranking = rank_docs_from_chunks([(h.chunk.doc_id, h.score) for h in query_hits])[:depth]
                short += len(ranking) < depth and len(query_hits) >= chunk_k
                rankings[qid] = ranking
            if progress is not None:
                progress(mode, start + len(batch), total)
        if short:
            logger.warning(
                "%s: %d queries got fewer than %d distinct passages from %d chunks; raise overfetch",
                mode,
                short,
                depth,
                chunk_k,
            )

        latencies: dict[str, float] = {}
        for done, i in enumerate(timed, start=1):
            began = clock()
            _retrieve(index, [texts[i]], chunk_k, mode)
            latencies[qids[i]] = (clock() - began) * 1000.0
            if progress is not None:
                progress(mode, len(qids) + done, total)

        answer_scores: dict[str, AnswerScore] = {}
        answer_metrics = None
        if answerer is not None:
            scores = answer_questions(
                cases,
                functools.partial(_retrieve, index),
                answerer,
                mode,
                answer_k,
                clock=clock,
                progress=_answer_progress(progress, mode, len(cases)),
            )
            answer_scores = {score.qid: score for score in scores}
            answer_metrics = aggregate_answers(scores, generator_name, answer_k, skipped=len(qids) - len(cases))

        metrics = evaluate_run(rankings, qrels, cutoffs, SET_METRICS)
        metrics.update(evaluate_run(rankings, qrels, rank_cutoffs, RANK_METRICS))
        p50 = p90 = p99 = None
        if latencies:
            p50, p90, p99 = (float(v) for v in np.percentile(list(latencies.values()), [50, 90, 99]))
        results[mode] = ModeResult(
            metrics=metrics,
            latency_p50_ms=p50,
            latency_p90_ms=p90,
            latency_p99_ms=p99,
            queries_per_s=len(qids) / max(elapsed, 1e-9),
            answers=answer_metrics,
        )
        recalls = per_query_metrics(rankings, qrels, cutoffs, ["recall"])
        for qid, text in zip(qids, texts, strict=True):
            rows.append(
                QueryResult(
                    mode=mode,
                    qid=qid,
                    query=text,
                    gold=tuple(d for d, g in qrels[qid].items() if g > 0),
                    retrieved=tuple(rankings[qid]),
                    recall={k: recalls[qid][f"recall@{k}"] for k in cutoffs},
                    latency_ms=latencies.get(qid),
                    answer=answer_scores.get(qid),
                )
            )
    return EvalReport(
        dataset=dataset.name,
        queries=len(qids),
        passages=dataset.passages,
        ks=tuple(cutoffs),
        results=results,
        per_query=tuple(rows),
        unmatched_gold=tuple(pair for pair in dataset.unknown_gold if pair[0] in qrels),
    )
