"""An evaluation's results and their renderings: JSON, a text table, Markdown, a recall@k plot, query rows.

The JSON shape (``EvalReport.to_dict``) is the one ``ragkit eval --json`` prints::

    {"dataset": ..., "queries": ..., "passages": ...,
     "results": {MODE: {"recall@K": ..., "hit@K": ..., "all_recall@K": ..., "precision@K": ...,
                        "mrr@10": ..., "ndcg@10": ..., "map@10": ...,
                        "latency_ms": {"p50": ..., "p90": ..., "p99": ...}, "queries_per_s": ...}}}

With ``--answers`` each mode also carries ``"answers": {...}`` (:meth:`AnswerMetrics.to_dict`: generator, k,
questions, exact_match, f1, contains, citation_precision, citation_recall, cited, unsupported_share, degraded,
latency_ms {retrieve_p50, generate_p50, total_p50}), and each per-query row an ``"answer"`` object.
When some gold matches no document (a typo, a file that was never indexed, a judged passage missing from the
corpus), ``"unmatched_gold": [{"qid": ..., "gold": ...}, ...]`` lists them; those count as misses.

Metric values are fractions in [0, 1]; latency is in milliseconds (``null`` when it was not measured).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragkit.eval.answers import AnswerMetrics, AnswerScore

_METRIC_ORDER = ("recall", "hit", "all_recall", "precision", "mrr", "ndcg", "map")


@dataclass(frozen=True)
class ModeResult:
    """One retrieval mode's scores: mean metrics, per-query latency percentiles and batch throughput.

    ``answers`` holds the answer metrics when the evaluation also generated answers (``--answers``).
    """

    metrics: Mapping[str, float]
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_p99_ms: float | None
    queries_per_s: float
    answers: AnswerMetrics | None = None

    def to_dict(self) -> dict[str, Any]:
        result = {
            **{key: float(value) for key, value in self.metrics.items()},
            "latency_ms": {
                "p50": self.latency_p50_ms,
                "p90": self.latency_p90_ms,
                "p99": self.latency_p99_ms,
            },
            "queries_per_s": self.queries_per_s,
        }
        if self.answers is not None:
            result["answers"] = self.answers.to_dict()
        return result


@dataclass(frozen=True)
class QueryResult:
    """How one mode did on one query: what it retrieved, which gold it found, how long it took."""

    mode: str
    qid: str
    query: str
    gold: tuple[str, ...]
    retrieved: tuple[str, ...]
    recall: Mapping[int, float]
    latency_ms: float | None = None
    answer: AnswerScore | None = None

    @property
    def first_gold_rank(self) -> int | None:
        """1-based rank of the first gold passage among ``retrieved``, None when none was retrieved."""
        gold = set(self.gold)
        return next((rank for rank, d in enumerate(self.retrieved, start=1) if d in gold), None)

    @property
    def missing_gold(self) -> tuple[str, ...]:
        """Gold passages not among ``retrieved``."""
        found = set(self.retrieved)
        return tuple(d for d in self.gold if d not in found)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "qid": self.qid,
            "query": self.query,
            "gold": list(self.gold),
            "retrieved": list(self.retrieved),
            **{f"recall@{k}": value for k, value in sorted(self.recall.items())},
            "first_gold_rank": self.first_gold_rank,
            "missing_gold": list(self.missing_gold),
            "latency_ms": self.latency_ms,
            **({"answer": self.answer.to_dict()} if self.answer is not None else {}),
        }


@dataclass(frozen=True)
class EvalReport:
    """The outcome of ``run_eval``: one :class:`ModeResult` per mode plus per-query rows.

    >>> report.to_dict()["results"]["dense"]["recall@5"]   # doctest: +SKIP
    0.81
    """

    dataset: str
    queries: int
    passages: int
    ks: tuple[int, ...]
    results: Mapping[str, ModeResult]
    per_query: tuple[QueryResult, ...] = field(default=())
    unmatched_gold: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The ``ragkit eval --json`` object; ``unmatched_gold`` only when some gold matched no document."""
        data: dict[str, Any] = {
            "dataset": self.dataset,
            "queries": self.queries,
            "passages": self.passages,
            "results": {mode: result.to_dict() for mode, result in self.results.items()},
        }
        if self.unmatched_gold:
            data["unmatched_gold"] = [{"qid": qid, "gold": gold} for qid, gold in self.unmatched_gold]
        return data

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text (NaN and infinities are not valid JSON and are refused)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _metric_sort_key(name: str) -> tuple[int, int, str]:
    base, _, k = name.partition("@")
    rank = _METRIC_ORDER.index(base) if base in _METRIC_ORDER else len(_METRIC_ORDER)
    return (rank, int(k) if k.isdigit() else 0, name)


def _metric_names(report: EvalReport) -> list[str]:
    names: dict[str, None] = {}
    for result in report.results.values():
        names.update(dict.fromkeys(result.metrics))
    return sorted(names, key=_metric_sort_key)


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _rows(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    """Header and rows: metrics (3 decimals) then latency and throughput, one column per mode."""
    modes = list(report.results)
    rows = [
        [name, *(_fmt(report.results[m].metrics.get(name), 3) for m in modes)]
        for name in _metric_names(report)
    ]
    rows.append(["latency p50 (ms)", *(_fmt(report.results[m].latency_p50_ms, 1) for m in modes)])
    rows.append(["latency p90 (ms)", *(_fmt(report.results[m].latency_p90_ms, 1) for m in modes)])
    rows.append(["latency p99 (ms)", *(_fmt(report.results[m].latency_p99_ms, 1) for m in modes)])
    rows.append(["queries/s", *(_fmt(report.results[m].queries_per_s, 1) for m in modes)])
    if any(report.results[m].answers is not None for m in modes):
        rows += _answer_rows(report, modes)
    return ["metric", *modes], rows


_ANSWER_ROWS: tuple[tuple[str, str, int], ...] = (
    ("answer exact match", "exact_match", 3),
    ("answer F1", "f1", 3),
    ("answer contains gold", "contains", 3),
    ("citation precision", "citation_precision", 3),
    ("citation recall", "citation_recall", 3),
    ("answers citing", "cited", 3),
    ("unsupported share", "unsupported_share", 3),
    ("degraded share", "degraded", 3),
    ("answer retrieve p50 (ms)", "retrieve_p50_ms", 1),
    ("answer generate p50 (ms)", "generate_p50_ms", 1),
    ("answer total p50 (ms)", "total_p50_ms", 1),
)


def _answer_rows(report: EvalReport, modes: Sequence[str]) -> list[list[str]]:
    answers = [report.results[m].answers for m in modes]
    rows = [
        ["answers by", *(f"{a.generator} k={a.k}" if a else "-" for a in answers)],
        ["answered questions", *(str(a.questions) if a else "-" for a in answers)],
    ]
    for label, attribute, digits in _ANSWER_ROWS:
        rows.append([label, *(_fmt(getattr(a, attribute), digits) if a else "-" for a in answers)])
    return rows


def format_table(report: EvalReport) -> str:
    """A plain-text table with the modes side by side and the metrics as rows, ready to print."""
    header, rows = _rows(report)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]).rstrip()

    title = f"{report.dataset}: {report.queries} queries, {report.passages} passages"
    rule = "-" * len(line(header))
    return "\n".join([title, line(header), rule, *(line(r) for r in rows)])


def _md_cell(text: str) -> str:
    return re.sub(r"\s+", " ", text).replace("|", "\\|")


def format_markdown(report: EvalReport, plot_file: str | None = "recall_at_k.png", misses: int = 10) -> str:
    """The report as Markdown: the table, the plot, and up to ``misses`` failed queries per mode."""
    header, rows = _rows(report)
    out = [
        f"# Retrieval evaluation: {_md_cell(report.dataset)}",
        "",
        f"{report.queries} queries, {report.passages} passages. Metrics are fractions in [0, 1]; latency is "
        "per query, measured one query at a time; queries/s is batched throughput.",
        "",
        "| " + " | ".join(_md_cell(h) for h in header) + " |",
        "|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|",
        *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows),
    ]
    if report.unmatched_gold:
        shown = ", ".join(f"{qid}: {_md_cell(gold)}" for qid, gold in report.unmatched_gold[:misses])
        more = f" and {len(report.unmatched_gold) - misses} more" if len(report.unmatched_gold) > misses else ""
        out += ["", f"{len(report.unmatched_gold)} gold ids match no document and count as misses ({shown}{more})."]
    if plot_file:
        out += ["", f"![recall@k against k]({plot_file})"]
    if report.per_query and report.ks:
        top = max(report.ks)
        out += ["", f"## Queries with no gold passage in the top {top}"]
        for mode in report.results:
            failed = [r for r in report.per_query if r.mode == mode and r.recall.get(top, 0.0) == 0.0]
            out += ["", f"### {_md_cell(mode)}: {len(failed)} queries", ""]
            if failed:
                out += ["| qid | query | gold | retrieved (top 3) |", "|---|---|---|---|"]
                for r in failed[:misses]:
                    cells = [r.qid, r.query, ", ".join(r.gold), ", ".join(r.retrieved[:3])]
                    out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
                if len(failed) > misses:
                    out.append(f"\n{len(failed) - misses} more in per_query.jsonl.")
    answered = [(r, r.answer) for r in report.per_query if r.answer is not None]
    if answered:
        out += ["", "## Answers that do not contain the gold answer"]
        for mode in report.results:
            wrong = [(r, a) for r, a in answered if r.mode == mode and not a.contains]
            out += ["", f"### {_md_cell(mode)}: {len(wrong)} answers", ""]
            if wrong:
                out += ["| qid | query | gold answer | answer |", "|---|---|---|---|"]
                for r, a in wrong[:misses]:
                    cells = [r.qid, r.query, " / ".join(a.gold_answers), a.answer[:300]]
                    out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
                if len(wrong) > misses:
                    out.append(f"\n{len(wrong) - misses} more in per_query.jsonl.")
    return "\n".join(out) + "\n"


def plot_recall(report: EvalReport, path: str | os.PathLike[str]) -> Path:
    """Write a PNG of recall@k against k, one line per mode (matplotlib's Agg canvas, never pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    ks = sorted(report.ks)
    for mode, result in report.results.items():
        points = [(k, result.metrics[f"recall@{k}"]) for k in ks if f"recall@{k}" in result.metrics]
        if points:
            axes.plot([k for k, _ in points], [v for _, v in points], marker="o", label=mode)
    if len(ks) > 1 and ks[-1] / ks[0] >= 8:
        axes.set_xscale("log")
    if ks:
        axes.set_xticks(ks)
        axes.set_xticklabels([str(k) for k in ks])
        axes.minorticks_off()
    axes.set_ylim(-0.02, 1.02)  # points at 0 and 1 stay visible
    axes.set_xlabel("k")
    axes.set_ylabel("recall@k")
    axes.set_title(f"{report.dataset}: passage recall@k ({report.queries} queries)")
    axes.grid(True, alpha=0.3)
    if report.results:
        axes.legend(loc="lower right")
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, format="png")
    return target


def write_report(report: EvalReport, directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``recall_at_k.png`` and ``per_query.jsonl`` into ``directory``.

    Returns the written paths by kind (``json``, ``markdown``, ``plot``, ``per_query``).
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": root / "report.json",
        "markdown": root / "report.md",
        "plot": root / "recall_at_k.png",
        "per_query": root / "per_query.jsonl",
    }
    paths["json"].write_text(report.to_json() + "\n", encoding="utf-8")
    paths["markdown"].write_text(format_markdown(report, paths["plot"].name), encoding="utf-8")
    plot_recall(report, paths["plot"])
    with paths["per_query"].open("w", encoding="utf-8") as handle:
        for row in report.per_query:
            handle.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
    return paths
