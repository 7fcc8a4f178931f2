"""The evaluation runner (orchestration, with a fake index and a fake clock) and the reports it writes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ragkit.eval.datasets import BeirDataset
from ragkit.eval.metrics import evaluate_run
from ragkit.eval.report import (
    EvalReport,
    ModeResult,
    QueryResult,
    format_markdown,
    format_table,
    write_report,
)
from ragkit.eval.runner import run_eval
from ragkit.types import Chunk, Hit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KS = (1, 2, 5)


class FakeClock:
    """Seconds that only move when the fake index says work was done."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def chunk(doc_id: str, part: int) -> Chunk:
    return Chunk(id=f"{doc_id}#{part}", doc_id=doc_id, text=f"{doc_id} part {part}", start=part, end=part + 1)


class FakeIndex:
    """Answers from a fixed table and records every call.

    Mode ``gold``: the query's gold passages first, each as two chunks, then filler passages. Mode ``filler``:
    filler only. Each query costs ``cost[query]`` seconds of the fake clock, plus 1 ms per call.
    """

    def __init__(self, dataset: BeirDataset, clock: FakeClock, cost: dict[str, float]) -> None:
        self.dataset = dataset
        self.clock = clock
        self.cost = cost
        self.calls: list[tuple[int, int, str]] = []
        self.text_to_qid = {text: qid for qid, text in dataset.queries.items()}

    def ranking(self, query: str, mode: str) -> list[str]:
        gold = sorted(d for d, g in self.dataset.qrels[self.text_to_qid[query]].items() if g > 0)
        filler = [f"filler{i}" for i in range(30)]
        return gold + filler if mode == "gold" else filler

    def retrieve_many(self, queries: list[str], k: int, mode: str) -> list[list[Hit]]:
        self.calls.append((len(queries), k, mode))
        self.clock.now += 0.001 + sum(self.cost[q] for q in queries)
        out = []
        for query in queries:
            hits = []
            for rank, doc_id in enumerate(self.ranking(query, mode)):
                score = 100.0 - rank
                hits += [Hit(chunk(doc_id, 0), score, mode), Hit(chunk(doc_id, 1), score - 0.5, mode)]
            out.append(hits[:k])
        return out


def tiny_dataset(n: int = 10) -> BeirDataset:
    queries = {f"q{i}": f"question number {i}" for i in range(n)}
    qrels = {f"q{i}": {f"gold{i}a": 1, f"gold{i}b": 2, f"judged{i}": 0} for i in range(n)}
    qrels["q0"] = {"gold0a": 1, "gold0b": 1, "gold0c": 1}  # three gold: not all within k=2
    return BeirDataset(name="tiny", queries=queries, qrels=qrels, passages=64)


@pytest.fixture
def evaluated() -> tuple[EvalReport, FakeIndex, dict[str, float]]:
    dataset = tiny_dataset()
    clock = FakeClock()
    cost = {text: 0.002 * (i + 1) for i, text in enumerate(dataset.queries.values())}
    index = FakeIndex(dataset, clock, cost)
    report = run_eval(dataset, index, ["gold", "filler"], KS, batch_size=4, overfetch=2, clock=clock)
    return report, index, cost


def test_runner_calls_warm_up_batches_then_one_query_at_a_time(evaluated) -> None:
    report, index, _ = evaluated
    depth_chunks = 10 * 2  # max(ks + rank_ks) * overfetch
    per_mode = [(1, depth_chunks)] + [(4, depth_chunks), (4, depth_chunks), (2, depth_chunks)]
    per_mode += [(1, depth_chunks)] * 10
    assert index.calls == [(n, k, "gold") for n, k in per_mode] + [(n, k, "filler") for n, k in per_mode]
    assert (report.dataset, report.queries, report.passages, report.ks) == ("tiny", 10, 64, KS)


def test_runner_scores_collapsed_passages(evaluated) -> None:
    report, index, _ = evaluated
    dataset = index.dataset
    for mode in ("gold", "filler"):
        expected_run = {qid: index.ranking(text, mode)[:10] for qid, text in dataset.queries.items()}
        expected = evaluate_run(expected_run, dataset.qrels, KS, ["recall", "hit", "all_recall", "precision"])
        expected |= evaluate_run(expected_run, dataset.qrels, [10], ["mrr", "ndcg", "map"])
        assert report.results[mode].metrics == pytest.approx(expected, abs=1e-12)
    gold = report.results["gold"].metrics
    assert gold["recall@1"] == pytest.approx((1 / 3 + 9 * 0.5) / 10)
    assert gold["all_recall@2"] == pytest.approx(0.9) and gold["all_recall@5"] == 1.0
    assert report.results["filler"].metrics["hit@5"] == 0.0
    rows = [r for r in report.per_query if r.mode == "gold"]
    assert [r.qid for r in rows] == list(dataset.queries)
    assert rows[1].retrieved[:2] == ("gold1a", "gold1b") and len(set(rows[1].retrieved)) == 10
    assert rows[1].gold == ("gold1a", "gold1b") and rows[1].recall == {1: 0.5, 2: 1.0, 5: 1.0}
    assert rows[1].first_gold_rank == 1 and rows[1].missing_gold == ()


def test_runner_latency_is_per_query_and_throughput_is_batched(evaluated) -> None:
    report, _, cost = evaluated
    single = [(0.001 + c) * 1000.0 for c in cost.values()]  # ms of each query timed alone
    p50, p90, p99 = np.percentile(single, [50, 90, 99])
    result = report.results["gold"]
    assert (result.latency_p50_ms, result.latency_p90_ms, result.latency_p99_ms) == pytest.approx(
        (p50, p90, p99)
    )
    batch_seconds = 3 * 0.001 + sum(cost.values())  # three batches; the warm-up is not counted
    assert result.queries_per_s == pytest.approx(10 / batch_seconds)
    rows = {r.qid: r.latency_ms for r in report.per_query if r.mode == "gold"}
    assert list(rows.values()) == pytest.approx(single)


def test_runner_latency_sample_and_progress() -> None:
    dataset = tiny_dataset()
    clock = FakeClock()
    index = FakeIndex(dataset, clock, dict.fromkeys(dataset.queries.values(), 0.001))
    seen: list[tuple[str, int, int]] = []
    report = run_eval(
        dataset, index, ["gold"], [1], latency_queries=3, clock=clock, progress=lambda *a: seen.append(a)
    )
    assert sum(1 for n, _, _ in index.calls if n == 1) == 1 + 3  # warm-up + three timed queries
    assert seen[-1] == ("gold", 13, 13) and [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)
    assert sum(r.latency_ms is not None for r in report.per_query) == 3
    silent = run_eval(dataset, index, ["gold"], [1], latency_queries=0, clock=clock)
    assert silent.results["gold"].latency_p99_ms is None
    assert silent.to_dict()["results"]["gold"]["latency_ms"] == {"p50": None, "p90": None, "p99": None}


def test_runner_warns_when_chunks_hide_passages(caplog: pytest.LogCaptureFixture) -> None:
    dataset = tiny_dataset(3)
    clock = FakeClock()
    index = FakeIndex(dataset, clock, dict.fromkeys(dataset.queries.values(), 0.0))
    with caplog.at_level(logging.WARNING, logger="ragkit.eval"):
        run_eval(dataset, index, ["gold"], [5], overfetch=1, latency_queries=0, clock=clock)
    assert "3 queries got fewer than 10 distinct passages from 10 chunks; raise overfetch" in caplog.text


def test_runner_refuses_bad_arguments_and_bad_indexes() -> None:
    dataset = tiny_dataset(2)
    index = FakeIndex(dataset, FakeClock(), dict.fromkeys(dataset.queries.values(), 0.0))
    with pytest.raises(ValueError, match="modes is empty"):
        run_eval(dataset, index, [], [1])
    with pytest.raises(ValueError, match="duplicates"):
        run_eval(dataset, index, ["gold", "gold"], [1])
    with pytest.raises(ValueError, match="positive integer"):
        run_eval(dataset, index, ["gold"], [0])

    class Broken(FakeIndex):
        def retrieve_many(self, queries: list[str], k: int, mode: str) -> list[list[Hit]]:
            return super().retrieve_many(queries, k, mode)[:-1]

    broken = Broken(dataset, FakeClock(), dict.fromkeys(dataset.queries.values(), 0.0))
    with pytest.raises(RuntimeError, match="returned 0 result lists for 1 queries"):
        run_eval(dataset, broken, ["gold"], [1])


def test_written_report_files(evaluated, tmp_path: Path) -> None:
    report, _, _ = evaluated
    paths = write_report(report, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "report.json",
        "report.md",
        "recall_at_k.png",
        "per_query.jsonl",
    }
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data == report.to_dict()
    assert set(data) == {"dataset", "queries", "passages", "results"}
    assert (data["dataset"], data["queries"], data["passages"]) == ("tiny", 10, 64)
    assert list(data["results"]) == ["gold", "filler"]
    for values in data["results"].values():
        expected_keys = {f"{m}@{k}" for m in ("recall", "hit", "all_recall", "precision") for k in KS}
        expected_keys |= {"mrr@10", "ndcg@10", "map@10", "latency_ms", "queries_per_s"}
        assert set(values) == expected_keys
        assert all(0.0 <= v <= 1.0 for key, v in values.items() if "@" in key)
        assert set(values["latency_ms"]) == {"p50", "p90", "p99"}
        assert values["latency_ms"]["p50"] <= values["latency_ms"]["p90"] <= values["latency_ms"]["p99"]
        assert values["queries_per_s"] > 0

    png = paths["plot"].read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 2000

    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "| metric | gold | filler |" in markdown
    assert "| recall@5 | 1.000 | 0.000 |" in markdown
    assert "![recall@k against k](recall_at_k.png)" in markdown
    assert "### filler: 10 queries" in markdown and "### gold: 0 queries" in markdown

    rows = [json.loads(line) for line in paths["per_query"].read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 * 10
    assert {r["mode"] for r in rows} == {"gold", "filler"}
    failed = next(r for r in rows if r["mode"] == "filler" and r["qid"] == "q1")
    assert failed["recall@5"] == 0.0 and failed["first_gold_rank"] is None
    assert failed["missing_gold"] == ["gold1a", "gold1b"] and failed["query"] == "question number 1"


def handmade_report() -> EvalReport:
    results = {
        "dense": ModeResult({"recall@1": 0.5, "recall@10": 0.75, "ndcg@10": 0.6123}, 3.25, 4.5, 9.0, 120.0),
        "bm25": ModeResult({"recall@1": 0.25, "recall@10": 1.0, "ndcg@10": 0.5}, 1.0, 2.0, 3.0, 800.0),
    }
    row = QueryResult("bm25", "q|1", "a | question\nwith lines", ("g1",), ("x",), {1: 0.0, 10: 0.0})
    return EvalReport("set", 2, 9, (1, 10), results, (row,))


def test_format_table_has_modes_side_by_side_and_three_decimals() -> None:
    lines = format_table(handmade_report()).splitlines()
    assert lines[0] == "set: 2 queries, 9 passages"
    assert lines[1].split() == ["metric", "dense", "bm25"]
    body = {line.split()[0]: line.split()[1:] for line in lines[3:] if not line.startswith("latency")}
    assert body["recall@1"] == ["0.500", "0.250"] and body["recall@10"] == ["0.750", "1.000"]
    assert body["ndcg@10"] == ["0.612", "0.500"] and body["queries/s"] == ["120.0", "800.0"]
    assert [line.split()[0] for line in lines[3:6]] == ["recall@1", "recall@10", "ndcg@10"]
    assert any(line.split()[-2:] == ["9.0", "3.0"] for line in lines if line.startswith("latency p99"))


def test_markdown_escapes_cells() -> None:
    markdown = format_markdown(handmade_report())
    assert "| q\\|1 | a \\| question with lines | g1 | x |" in markdown


def test_json_refuses_nan() -> None:
    report = EvalReport(
        "set", 1, 1, (1,), {"m": ModeResult({"recall@1": float("nan")}, None, None, None, 1.0)}
    )
    with pytest.raises(ValueError):
        report.to_json()


def test_import_and_plot_leave_matplotlib_state_alone(tmp_path: Path) -> None:
    """Importing ragkit.eval loads no matplotlib; writing a plot never loads pyplot or switches backend."""
    script = f"""
import sys
import ragkit.eval
assert "matplotlib" not in sys.modules, "import ragkit.eval must not import matplotlib"
from ragkit.eval import EvalReport, ModeResult, write_report
import matplotlib
backend = dict.__getitem__(matplotlib.rcParams, "backend")  # get_backend() would load pyplot
result = ModeResult({{"recall@1": 0.5, "recall@5": 1.0}}, 1.0, 1.0, 1.0, 1.0)
report = EvalReport("s", 1, 1, (1, 5), {{"m": result}})
write_report(report, {str(tmp_path)!r})
assert "matplotlib.pyplot" not in sys.modules
assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "recall_at_k.png").read_bytes().startswith(PNG_MAGIC)
