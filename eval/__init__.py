"""Measure retrieval and answer quality: metrics checked against trec_eval, answer metrics (SQuAD/HotpotQA
normalisation, citations), BEIR readers, the runner and its reports.

>>> from ragkit.eval import evaluate_run
>>> evaluate_run({"q1": ["d3", "d1"]}, {"q1": {"d1": 1}}, ks=[1, 2], metrics=["recall", "mrr"])
{'recall@1': 0.0, 'recall@2': 1.0, 'mrr@1': 0.0, 'mrr@2': 0.5}
"""

from ragkit.eval.answers import (
    AnswerMetrics,
    AnswerScore,
    aggregate_answers,
    citation_precision,
    citation_recall,
    contains,
    exact_match,
    f1,
    normalize_answer,
    score_answer,
    strip_citations,
    unsupported_share,
)
from ragkit.eval.datasets import (
    BeirDataset,
    DatasetFormatError,
    load_beir,
    load_gold_dataset,
    load_gold_jsonl,
    read_qrels,
)
from ragkit.eval.metrics import (
    METRIC_NAMES,
    all_recall_at_k,
    average_precision_at_k,
    evaluate_run,
    hit_at_k,
    ndcg_at_k,
    normalize_ks,
    per_query_metrics,
    precision_at_k,
    query_metrics,
    rank_by_score,
    rank_docs_from_chunks,
    recall_at_k,
    reciprocal_rank_at_k,
    relevant_count,
)
from ragkit.eval.report import (
    EvalReport,
    ModeResult,
    QueryResult,
    format_markdown,
    format_table,
    plot_recall,
    write_report,
)
from ragkit.eval.runner import BatchRetriever, run_eval

__all__ = [
    "AnswerMetrics",
    "AnswerScore",
    "BatchRetriever",
    "BeirDataset",
    "DatasetFormatError",
    "EvalReport",
    "METRIC_NAMES",
    "ModeResult",
    "QueryResult",
    "aggregate_answers",
    "all_recall_at_k",
    "average_precision_at_k",
    "citation_precision",
    "citation_recall",
    "contains",
    "evaluate_run",
    "exact_match",
    "f1",
    "format_markdown",
    "format_table",
    "hit_at_k",
    "load_beir",
    "load_gold_dataset",
    "load_gold_jsonl",
    "ndcg_at_k",
    "normalize_answer",
    "normalize_ks",
    "per_query_metrics",
    "plot_recall",
    "precision_at_k",
    "query_metrics",
    "rank_by_score",
    "rank_docs_from_chunks",
    "read_qrels",
    "recall_at_k",
    "reciprocal_rank_at_k",
    "relevant_count",
    "run_eval",
    "score_answer",
    "strip_citations",
    "unsupported_share",
    "write_report",
]
