"""ragkit.eval.metrics against trec_eval (pytrec_eval), ir_measures and plain brute-force references."""

from __future__ import annotations

import math
import random

import ir_measures
import pytest
import pytrec_eval
from hypothesis import given
from hypothesis import strategies as st

from ragkit.eval.metrics import (
    all_recall_at_k,
    average_precision_at_k,
    evaluate_run,
    hit_at_k,
    ndcg_at_k,
    per_query_metrics,
    precision_at_k,
    query_metrics,
    rank_by_score,
    rank_docs_from_chunks,
    recall_at_k,
    reciprocal_rank_at_k,
)

KS = (1, 2, 3, 5, 10, 20)
CUTS = ",".join(str(k) for k in KS)
# ids chosen so that string order differs from numeric and case-insensitive order; one is non-ASCII
DOC_POOL = [f"d{i}" for i in range(30)] + ["D3", "a", "b-2", "10", "9", "0x", "é1", "z", "Z"]
TIE_SCORES = (0.1, 0.2, 0.5, 1.0)


def random_case(seed: int) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """Scores and qrels with heavy ties, empty runs, unjudged queries and all-non-relevant judgements."""
    rng = random.Random(seed)
    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for q in range(20):
        qid = f"q{q}"
        kind = rng.random()
        if kind < 0.8:  # judged; a few with only non-relevant judgements
            judged = rng.sample(DOC_POOL, rng.randint(1, 8))
            grades = [-1, 0, 0, 1, 1, 2, 3] if rng.random() < 0.85 else [-1, 0]
            qrels[qid] = {d: rng.choice(grades) for d in judged}
        if kind < 0.1:
            continue  # judged, absent from the run
        if rng.random() < 0.1:
            run[qid] = {}  # empty run
            continue
        retrieved = rng.sample(DOC_POOL, rng.randint(1, 25))
        if rng.random() < 0.6:
            run[qid] = {d: rng.choice(TIE_SCORES) for d in retrieved}
        else:
            run[qid] = {d: round(rng.uniform(-5, 5), 3) for d in retrieved}
    return run, qrels


def trec_per_query(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, dict]:
    measures = {f"P.{CUTS}", f"recall.{CUTS}", f"success.{CUTS}", f"ndcg_cut.{CUTS}", f"map_cut.{CUTS}"}
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


def trec_rr_at_k(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], k: int
) -> dict[str, float]:
    """trec_eval's recip_rank has no cutoff: evaluate the run truncated to its top k (trec_eval order)."""
    truncated = {qid: {d: scores[d] for d in rank_by_score(scores)[:k]} for qid, scores in run.items()}
    evaluated = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(truncated)
    return {qid: values["recip_rank"] for qid, values in evaluated.items()}


def brute_all_recall(ranked: list[str], gold: dict[str, int], k: int) -> float:
    relevant = [d for d, g in gold.items() if g > 0]
    return float(bool(relevant) and all(d in ranked[:k] for d in relevant))


OURS_VS_TREC = {
    "precision": (precision_at_k, "P_{k}"),
    "recall": (recall_at_k, "recall_{k}"),
    "hit": (hit_at_k, "success_{k}"),
    "ndcg": (ndcg_at_k, "ndcg_cut_{k}"),
    "map": (average_precision_at_k, "map_cut_{k}"),
}


@pytest.mark.parametrize("seed", range(40))
def test_per_query_metrics_match_pytrec_eval(seed: int) -> None:
    run, qrels = random_case(seed)
    reference = trec_per_query(run, qrels)
    rr = {k: trec_rr_at_k(run, qrels, k) for k in KS}
    assert reference, "the random case must give trec_eval something to evaluate"
    for qid, values in reference.items():
        ranked = rank_by_score(run[qid])
        for k in KS:
            for name, (ours, trec_name) in OURS_VS_TREC.items():
                expected = values[trec_name.format(k=k)]
                assert ours(ranked, qrels[qid], k) == pytest.approx(expected, abs=1e-6), (qid, name, k)
            assert reciprocal_rank_at_k(ranked, qrels[qid], k) == pytest.approx(rr[k][qid], abs=1e-6)
            assert all_recall_at_k(ranked, qrels[qid], k) == brute_all_recall(ranked, qrels[qid], k)


@pytest.mark.parametrize("seed", range(40))
def test_evaluate_run_matches_pytrec_eval_means(seed: int) -> None:
    run, qrels = random_case(seed)
    averaged = [qid for qid, gold in qrels.items() if any(g > 0 for g in gold.values())]
    assert averaged, "the random case must hold a query with a relevant judgement"
    reference = trec_per_query(run, qrels)
    ranked_run = {qid: rank_by_score(scores) for qid, scores in run.items()}
    ours = evaluate_run(ranked_run, qrels, KS)

    def mean(values: dict[str, float]) -> float:
        # queries absent from the run score 0 (trec_eval -c); all-non-relevant queries are not averaged
        return math.fsum(values.get(qid, 0.0) for qid in averaged) / len(averaged)

    for k in KS:
        for name, (_, trec_name) in OURS_VS_TREC.items():
            per_query = {qid: v[trec_name.format(k=k)] for qid, v in reference.items()}
            assert ours[f"{name}@{k}"] == pytest.approx(mean(per_query), abs=1e-6), (name, k)
        assert ours[f"mrr@{k}"] == pytest.approx(mean(trec_rr_at_k(run, qrels, k)), abs=1e-6)
        all_recall = {qid: brute_all_recall(ranked_run.get(qid, []), qrels[qid], k) for qid in averaged}
        assert ours[f"all_recall@{k}"] == pytest.approx(mean(all_recall), abs=1e-12)
    assert set(ours) == {f"{m}@{k}" for m in OURS_VS_TREC.keys() | {"mrr", "all_recall"} for k in KS}


@pytest.mark.parametrize("seed", range(0, 40, 4))
def test_rr_and_success_match_ir_measures(seed: int) -> None:
    """A second reference. ir_measures computes RR@k with the MS MARCO script, which breaks ties its own way,
    so the run is made tie-free first (keeping trec_eval's order)."""
    tied_run, qrels = random_case(seed)
    run = {
        qid: {d: float(len(scores) - i) for i, d in enumerate(rank_by_score(scores))}
        for qid, scores in tied_run.items()
    }
    measures = [ir_measures.RR @ k for k in KS] + [ir_measures.Success @ k for k in KS]
    checked = 0
    for metric in ir_measures.iter_calc(measures, qrels, run):
        ranked = rank_by_score(run.get(metric.query_id, {}))  # absent: ranks nothing
        k = metric.measure["cutoff"]
        ours = reciprocal_rank_at_k if metric.measure.NAME == "RR" else hit_at_k
        assert ours(ranked, qrels[metric.query_id], k) == pytest.approx(metric.value, abs=1e-6)
        checked += 1
    assert checked > 0


def test_ties_break_by_doc_id_descending_like_trec_eval() -> None:
    scores = {"a": 0.5, "b": 0.5, "c": 0.5, "B": 0.5, "top": 0.9}
    assert rank_by_score(scores) == ["top", "c", "b", "a", "B"]
    qrels = {"q": {"a": 1}}
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate({"q": scores})
    assert trec["q"]["recip_rank"] == pytest.approx(1 / 4)
    assert reciprocal_rank_at_k(rank_by_score(scores), qrels["q"], 10) == pytest.approx(1 / 4)


def test_hand_computed_values() -> None:
    gold = {"a": 2, "b": 1, "c": 0, "x": -1}
    ranked = ["x", "b", "c", "a"]
    assert recall_at_k(ranked, gold, 2) == 0.5
    assert precision_at_k(ranked, gold, 4) == 0.5
    assert precision_at_k(ranked, gold, 10) == 0.2  # divided by k, not by the retrieved count
    assert hit_at_k(ranked, gold, 1) == 0.0 and hit_at_k(ranked, gold, 2) == 1.0
    assert all_recall_at_k(ranked, gold, 3) == 0.0 and all_recall_at_k(ranked, gold, 4) == 1.0
    assert reciprocal_rank_at_k(ranked, gold, 1) == 0.0 and reciprocal_rank_at_k(ranked, gold, 2) == 0.5
    assert average_precision_at_k(ranked, gold, 4) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert average_precision_at_k(ranked, gold, 2) == pytest.approx((1 / 2) / 2)  # over all relevant docs
    dcg = 1 / math.log2(3) + 2 / math.log2(5)
    ideal = 2 + 1 / math.log2(3)
    assert ndcg_at_k(ranked, gold, 4) == pytest.approx(dcg / ideal)


def test_repeated_ids_count_once_at_their_first_rank() -> None:
    gold = {"a": 1, "b": 1}
    assert recall_at_k(["a", "a", "b"], gold, 2) == recall_at_k(["a", "b"], gold, 2) == 1.0
    assert precision_at_k(["a", "a", "a"], gold, 3) == pytest.approx(1 / 3)


def test_queries_without_relevant_judgements_or_run() -> None:
    qrels = {"judged": {"a": 1}, "no_rel": {"a": 0}, "missing": {"b": 1}}
    run = {"judged": ["a"], "no_rel": ["a"], "unjudged": ["a"]}
    result = evaluate_run(run, qrels, [1], metrics=["recall", "hit"])
    assert result == {"recall@1": 0.5, "hit@1": 0.5}  # judged=1, missing=0; no_rel and unjudged ignored
    assert set(per_query_metrics(run, qrels, [1])) == {"judged", "missing"}
    assert query_metrics([], {"a": 1}, [1, 5]) == {key: 0.0 for key in query_metrics(["z"], {"a": 1}, [1, 5])}
    with pytest.raises(ValueError, match="no query with a relevant"):
        evaluate_run(run, {"q": {"a": 0}}, [1])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "5"])
def test_bad_cutoffs_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        recall_at_k(["a"], {"a": 1}, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive integer"):
        evaluate_run({"q": ["a"]}, {"q": {"a": 1}}, [1, bad])  # type: ignore[list-item]


def test_unknown_metric_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="recall, hit"):
        evaluate_run({"q": ["a"]}, {"q": {"a": 1}}, [1], metrics=["recal"])


def test_rank_docs_from_chunks_scores_each_doc_by_its_best_chunk() -> None:
    hits = [("d1", 0.9), ("d2", 0.8), ("d1", 0.7), ("d3", 0.8), ("d4", 0.95)]
    assert rank_docs_from_chunks(hits) == ["d4", "d1", "d2", "d3"]  # d2/d3 tie: first occurrence first
    assert rank_docs_from_chunks([("a", float("nan")), ("b", -1.0)]) == ["b", "a"]
    assert rank_docs_from_chunks([]) == []


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(-10, 10)), max_size=30))
def test_rank_docs_from_sorted_chunks_keeps_first_occurrence_order(hits: list[tuple[str, float]]) -> None:
    ordered = sorted(hits, key=lambda h: -h[1])
    expected = list(dict.fromkeys(doc for doc, _ in ordered))
    assert rank_docs_from_chunks(ordered) == expected


@given(
    st.lists(st.sampled_from("abcdefgh"), max_size=12),
    st.dictionaries(st.sampled_from("abcdefxyz"), st.integers(-1, 3), max_size=6),
)
def test_metrics_are_fractions_and_recall_grows_with_k(ranked: list[str], gold: dict[str, int]) -> None:
    values = query_metrics(ranked, gold, [1, 3, 6, 12])
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in values.values())
    for name in ("recall", "hit", "all_recall", "mrr", "map"):
        series = [values[f"{name}@{k}"] for k in (1, 3, 6, 12)]
        assert series == sorted(series), name
