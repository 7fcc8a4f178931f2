"""`ragkit eval` end to end with the real MiniLM embedder: a dataset built here, and HotpotQA when present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragkit.cli import main

pytestmark = pytest.mark.slow

PASSAGES = {
    "p1": ("Mount Etna", "Mount Etna is an active volcano on the east coast of Sicily."),
    "p2": ("Sourdough", "Sourdough bread is leavened by a culture of wild yeast and lactic acid bacteria."),
    "p3": ("Danube", "The Danube is the second-longest river in Europe and flows into the Black Sea."),
    "p4": ("Chess", "The Sicilian Defence is a chess opening that begins 1.e4 c5."),
    "p5": ("Photosynthesis", "Plants turn light, water and carbon dioxide into sugar through photosynthesis."),
    "p6": ("Jupiter", "Jupiter is the largest planet of the Solar System, a gas giant with a great red spot."),
}
QUERIES = {
    "q1": ("Which volcano is on Sicily?", {"p1": 1}),
    "q2": ("What makes sourdough bread rise?", {"p2": 1}),
    "q3": ("Where does the Danube river end?", {"p3": 1}),
    "q4": ("How do plants make sugar from light?", {"p5": 1}),
    "q5": ("What is the biggest planet?", {"p6": 1}),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("beir")
    with (root / "corpus.jsonl").open("w") as out:
        for pid, (title, text) in PASSAGES.items():
            out.write(json.dumps({"_id": pid, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as out:
        for qid, (text, _) in QUERIES.items():
            out.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (root / "qrels").mkdir()
    rows = [f"{qid}\t{pid}\t{grade}" for qid, (_, gold) in QUERIES.items() for pid, grade in gold.items()]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\r\n" + "\r\n".join(rows) + "\r\n")
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGKIT_CACHE", str(tmp_path / "cache"))


def run_json(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_json_shape_and_quality_on_a_built_dataset(dataset, capsys, tmp_path):
    report_dir = tmp_path / "report"
    result = run_json(capsys, str(dataset), "--modes", "dense,bm25,hybrid", "--k", "1,2,5", "--report", str(report_dir))
    assert (result["dataset"], result["queries"], result["passages"]) == (dataset.name, 5, 6)
    assert set(result["results"]) == {"dense", "bm25", "hybrid"}
    dense = result["results"]["dense"]
    for key in ("recall@1", "recall@5", "hit@1", "all_recall@2", "mrr@10", "ndcg@10", "map@10"):
        assert 0.0 <= dense[key] <= 1.0, key
    assert set(dense["latency_ms"]) == {"p50", "p90", "p99"} and dense["queries_per_s"] > 0
    assert dense["recall@5"] == 1.0 and dense["recall@1"] >= 0.8  # easy questions, real model
    assert {p.name for p in report_dir.iterdir()} >= {"report.json", "report.md", "recall_at_k.png", "per_query.jsonl"}
    assert (report_dir / "recall_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (report_dir / "per_query.jsonl").read_text().splitlines()]
    assert len(rows) == 15 and {r["mode"] for r in rows} == {"dense", "bm25", "hybrid"}


def test_eval_reuses_the_index_and_reads_user_gold(dataset, capsys, tmp_path):
    first = run_json(capsys, str(dataset), "--modes", "dense", "--index", str(tmp_path / "idx"))
    again = run_json(capsys, str(dataset), "--modes", "dense", "--index", str(tmp_path / "idx"))
    assert first["results"]["dense"]["recall@5"] == again["results"]["dense"]["recall@5"]
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"query": "Which volcano is on Sicily?", "gold": ["p1"]}) + "\n")
    own = run_json(capsys, str(gold), "--index", str(tmp_path / "idx"), "--modes", "bm25", "--k", "1")
    assert own["queries"] == 1 and own["results"]["bm25"]["recall@1"] == 1.0


def test_eval_table_output(dataset, capsys):
    assert main(["eval", str(dataset), "--modes", "bm25,dense", "--k", "1,5"]) == 0
    out = capsys.readouterr().out
    assert "bm25" in out and "dense" in out and "recall@5" in out


def test_dense_recall_on_hotpotqa_train100(shared_data, capsys):
    result = run_json(capsys, str(shared_data / "hotpotqa-train100"), "--modes", "dense", "--k", "5",
                      "--latency-queries", "0")
    assert result["queries"] == 100
    assert result["results"]["dense"]["recall@5"] == pytest.approx(0.785, abs=0.015)


@pytest.mark.parametrize("backend", ["milvus", "chroma"])
def test_database_backends_match_faiss_recall_on_hotpotqa(shared_data, capsys, tmp_path, backend):
    """Switching the vector store is one setting with identical results: the same dense recall@5 as FAISS
    exact search within 0.005 (each backend searches exactly on a corpus of this size)."""
    dataset = str(shared_data / "hotpotqa-train100")
    faiss = run_json(capsys, dataset, "--modes", "dense", "--k", "5", "--latency-queries", "0")
    other = run_json(capsys, dataset, "--modes", "dense", "--k", "5", "--latency-queries", "0",
                     "--backend", backend, "--index", str(tmp_path / backend))
    assert other["results"]["dense"]["recall@5"] == pytest.approx(faiss["results"]["dense"]["recall@5"], abs=0.005)
