"""BEIR and gold-JSONL readers: the shared evaluation sets, and malformed files that must name file:line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ragkit.eval.datasets import (
    BeirDataset,
    DatasetFormatError,
    load_beir,
    load_gold_dataset,
    load_gold_jsonl,
    read_qrels,
)

SETS = {"scifact": (300, 5183), "musique-train100": (100, 1890), "hotpotqa-train100": (100, 994)}


def plain_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Reference reader: csv module, header skipped, only relevant rows (what BEIR keeps for evaluation)."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1:]
    qrels: dict[str, dict[str, int]] = {}
    for qid, doc_id, score in rows:
        if int(score) > 0:
            qrels.setdefault(qid, {})[doc_id] = int(score)
    return qrels


@pytest.mark.parametrize("name", sorted(SETS))
def test_shared_sets_load_with_their_published_sizes(shared_data: Path, name: str) -> None:
    folder = shared_data / name
    dataset = load_beir(folder)
    queries, passages = SETS[name]
    assert (len(dataset.queries), dataset.passages) == (queries, passages)
    assert dataset.qrels == plain_qrels(folder / "qrels" / "test.tsv")
    assert list(dataset.queries) == list(dataset.qrels)
    assert not any("\r" in qid or any("\r" in d for d in gold) for qid, gold in dataset.qrels.items())
    assert dataset.unknown_gold == ()
    with (folder / "queries.jsonl").open(encoding="utf-8") as handle:
        texts = {row["_id"]: row["text"] for row in map(json.loads, handle)}
    assert all(dataset.queries[qid] == texts[qid] for qid in dataset.queries)


def test_scifact_has_crlf_qrels_and_documents_stream_the_corpus(shared_data: Path) -> None:
    folder = shared_data / "scifact"
    assert b"\r\n" in (folder / "qrels" / "test.tsv").read_bytes()  # the case this reader must accept
    dataset = load_beir(folder)
    docs = list(dataset.documents())
    assert len(docs) == dataset.passages
    first = json.loads((folder / "corpus.jsonl").open(encoding="utf-8").readline())
    assert (docs[0].id, docs[0].title, docs[0].text) == (first["_id"], first["title"], first["text"])
    assert len({d.id for d in docs}) == len(docs)


def write_beir(
    root: Path,
    corpus: list[str] | None = None,
    queries: list[str] | None = None,
    qrels: str = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n",
) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = corpus or [
        json.dumps({"_id": "d1", "title": "One", "text": "first passage"}),
        json.dumps({"_id": "d2", "title": "Two", "text": "second passage"}),
        json.dumps({"_id": "d3", "text": "untitled passage"}),
    ]
    queries = queries or [
        json.dumps({"_id": "q1", "text": "which is first?"}),
        json.dumps({"_id": "q2", "text": "which is second?"}),
        json.dumps({"_id": "q3", "text": "not judged"}),
    ]
    (root / "corpus.jsonl").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return root


def test_small_folder_round_trip(tmp_path: Path) -> None:
    dataset = load_beir(write_beir(tmp_path / "tiny"))
    assert dataset == BeirDataset(
        name="tiny",
        queries={"q1": "which is first?", "q2": "which is second?"},
        qrels={"q1": {"d1": 1}, "q2": {"d2": 2}},
        passages=3,
        corpus_path=tmp_path / "tiny" / "corpus.jsonl",
    )
    docs = list(dataset.documents())
    assert [(d.id, d.title) for d in docs] == [("d1", "One"), ("d2", "Two"), ("d3", "")]


def test_crlf_bom_blank_lines_and_missing_header_are_accepted(tmp_path: Path) -> None:
    root = write_beir(tmp_path, qrels="q1\td1\t1\r\n\r\nq2\td2\t1\r\n")
    (root / "queries.jsonl").write_bytes(b"\xef\xbb\xbf" + (root / "queries.jsonl").read_bytes())
    dataset = load_beir(root)
    assert dataset.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}}


def test_queries_without_relevant_judgement_are_dropped(tmp_path: Path) -> None:
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td3\t0\nq2\td2\t0\n"
    dataset = load_beir(write_beir(tmp_path, qrels=qrels))
    assert dataset.queries == {"q1": "which is first?"}
    assert dataset.qrels == {"q1": {"d1": 1, "d3": 0}}


def test_gold_missing_from_corpus_is_reported_not_fatal(tmp_path: Path) -> None:
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tgone\t1\n"
    dataset = load_beir(write_beir(tmp_path, qrels=qrels))
    assert dataset.unknown_gold == (("q1", "gone"),)
    assert dataset.qrels["q1"] == {"d1": 1, "gone": 1}


@pytest.mark.parametrize(
    ("corpus_line", "message"),
    [
        ("{not json", "corpus.jsonl:2: not valid JSON"),
        ('["a list"]', "corpus.jsonl:2: expected a JSON object"),
        ('{"_id": "d9"}', "corpus.jsonl:2: missing or invalid 'text'"),
        ('{"text": "no id"}', "corpus.jsonl:2: missing or invalid '_id'"),
        ('{"_id": "d1", "text": "again"}', "corpus.jsonl:2: duplicate _id 'd1' \\(first on line 1\\)"),
    ],
)
def test_malformed_corpus_names_file_and_line(tmp_path: Path, corpus_line: str, message: str) -> None:
    root = write_beir(tmp_path, corpus=[json.dumps({"_id": "d1", "text": "x"}), corpus_line])
    with pytest.raises(DatasetFormatError, match=message):
        load_beir(root)


@pytest.mark.parametrize(
    ("qrels", "message"),
    [
        ("query-id\tcorpus-id\tscore\nq1\td1\n", "test.tsv:2: expected 3 tab-separated columns"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2 d2 1\n", "test.tsv:3: expected 3 tab-separated"),
        ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", "test.tsv:2: score 'high' is not an integer"),
        ("q\td\ts\nq1\td1\t1\nq1\td1\t2\n", "test.tsv:3: \\(q1, d1\\) judged 2 here and 1 on line 2"),
        ("query-id\tcorpus-id\tscore\nq7\td1\t1\n", "1 judged queries have no text in .*queries.jsonl"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t0\n", "no query has a relevant"),
    ],
)
def test_malformed_qrels_name_file_and_line(tmp_path: Path, qrels: str, message: str) -> None:
    with pytest.raises(DatasetFormatError, match=message):
        load_beir(write_beir(tmp_path, qrels=qrels))


def test_missing_files_and_splits_are_explained(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="no such dataset folder"):
        load_beir(tmp_path / "absent")
    root = write_beir(tmp_path / "set")
    with pytest.raises(DatasetFormatError, match="missing; splits available: test"):
        load_beir(root, split="dev")
    (root / "queries.jsonl").unlink()
    with pytest.raises(DatasetFormatError, match="queries.jsonl: missing"):
        load_beir(root)


def test_non_utf8_file_is_named(tmp_path: Path) -> None:
    root = write_beir(tmp_path)
    (root / "qrels" / "test.tsv").write_bytes(b"q1\td\xff1\t1\n")
    with pytest.raises(DatasetFormatError, match="test.tsv: not UTF-8"):
        read_qrels(root / "qrels" / "test.tsv")


def test_gold_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "gold.jsonl"
    lines = [
        {"query": "who wrote it?", "gold": ["doc-a", "doc-b"], "answer": "ignored"},
        {},
        {"query": "graded", "gold": {"doc-c": 2, "doc-d": 0}},
        {"query": "numeric ids", "gold": [17]},
    ]
    path.write_text("\n".join("" if not x else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    queries, qrels = load_gold_jsonl(path)
    assert queries == {"q1": "who wrote it?", "q2": "graded", "q3": "numeric ids"}
    assert qrels == {"q1": {"doc-a": 1, "doc-b": 1}, "q2": {"doc-c": 2, "doc-d": 0}, "q3": {"17": 1}}
    dataset = load_gold_dataset(path, passages=42)
    assert (dataset.name, dataset.passages, dataset.corpus_path) == ("gold", 42, None)
    with pytest.raises(DatasetFormatError, match="has no corpus file"):
        next(dataset.documents())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", "gold.jsonl:2: not valid JSON"),
        ('{"gold": ["a"]}', "gold.jsonl:2: 'query' must be a non-empty string"),
        ('{"query": "q", "gold": "a"}', "gold.jsonl:2: 'gold' must be a list"),
        ('{"query": "q", "gold": []}', "gold.jsonl:2: 'gold' lists no relevant document"),
        ('{"query": "q", "gold": [null]}', "gold.jsonl:2: gold id None is not a string id"),
        ('{"query": "q", "gold": {"a": "high"}}', "gold.jsonl:2: grade 'high' of 'a' is not an integer"),
    ],
)
def test_gold_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps({"query": "fine", "gold": ["x"]}) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=message):
        load_gold_jsonl(path)
    with pytest.raises(DatasetFormatError, match="no such gold file"):
        load_gold_jsonl(tmp_path / "absent.jsonl")
