"""Answer metrics of ``ragkit eval --answers``: hand-computed cases, the runner's timing, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragkit.cli import main
from ragkit.eval.answers import (
    AnswerCase,
    AnswerScore,
    aggregate_answers,
    answer_questions,
    citation_precision,
    citation_recall,
    contains,
    exact_match,
    f1,
    normalize_answer,
    score_answer,
    split_sentences,
    strip_citations,
    unsupported_share,
)
from ragkit.eval.datasets import load_beir, load_gold_dataset
from ragkit.eval.report import EvalReport, ModeResult, QueryResult, format_markdown, format_table
from ragkit.types import Answer, Chunk, Hit

# -- normalisation and text metrics ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Cat sat", "cat sat"),
        ("  The   quick, brown fox!  ", "quick brown fox"),
        ("an apple a day", "apple day"),
        ("Theatre of Anna", "theatre of anna"),  # articles only as whole words
        ("U.S. don't", "us dont"),  # punctuation is removed, not replaced by a space
        ("A-ha (band)", "aha band"),
        ("", ""),
    ],
)
def test_normalize_answer_is_squads(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


def test_official_squad_style_cases() -> None:
    assert exact_match("The Cat sat", "cat sat") == 1.0
    assert exact_match("the cat sat.", ["a dog", "Cat sat"]) == 1.0  # best over gold and aliases
    assert exact_match("cat sat down", "cat sat") == 0.0
    assert f1("cat sat down", "cat sat") == pytest.approx(0.8)  # p 2/3, r 1
    assert f1("The Cat sat", "cat sat") == 1.0
    assert f1("the the cat", "cat cat") == pytest.approx(2 / 3)  # counts clip: p 1/1, r 1/2
    assert f1("dog", "cat") == 0.0
    assert f1("Denver Broncos", ["Broncos", "Denver Broncos won"]) == pytest.approx(max(2 / 3, 0.8))


def test_yes_no_answers_must_match_exactly_as_in_hotpotqa() -> None:
    assert f1("yes it is", "yes") == 0.0 and exact_match("yes it is", "yes") == 0.0
    assert f1("Yes.", "yes") == 1.0
    assert f1("no", "no way") == 0.0
    assert contains("yes it is [1]", "yes") == 1.0


def test_empty_answers() -> None:
    assert f1("", "") == 1.0 and exact_match("", "") == 1.0  # SQuAD v2: two empty answers agree
    assert f1("", "Paris") == 0.0 and f1("Paris", "") == 0.0
    assert f1("Paris", []) == 0.0 and exact_match("Paris", []) == 0.0
    assert contains("anything", "") == 0.0 and contains("anything", "the") == 0.0


def test_citation_markers_are_removed_before_scoring() -> None:
    assert strip_citations("Paris [1] is big [1, 2]. Old [3-4]  [12 ,13]") == "Paris is big . Old"
    assert strip_citations("lives in [n]") == "lives in [n]"  # a leaked placeholder is the answer's fault
    assert exact_match("Paris [1]", "Paris") == 1.0
    assert f1("Paris [1, 2]", "Paris") == 1.0
    assert contains("It was 1 [1]", "1") == 1.0 and contains("It was [1]", "1") == 0.0


def test_contains_matches_whole_words_of_the_normalised_gold() -> None:
    assert contains("There are 35 Publix stores. [2]", "35") == 1.0
    assert contains("There are 350 stores.", "35") == 0.0
    assert contains("He met G. Stanley Hall in 1890.", ["Granville Hall", "Stanley Hall"]) == 1.0
    assert contains("It is the Anglican Communion. [1]", "the Anglican Communion") == 1.0


# -- citations and unsupported sentences -------------------------------------------------------------------


def test_citation_precision_and_recall() -> None:
    assert citation_precision(["a", "b", "a"], {"a", "c"}) == pytest.approx(2 / 3)  # per cited chunk
    assert citation_recall(["a", "b", "a"], {"a", "c"}) == 0.5  # per gold passage
    assert citation_precision([], {"a"}) == 0.0 and citation_recall([], {"a"}) == 0.0
    assert citation_recall(["a"], set()) == 0.0


def test_unsupported_share_counts_sentences_without_their_markers() -> None:
    text = "Etna is a volcano. [1] It erupted in 2021! [2] It is in France."
    assert split_sentences(text) == ["Etna is a volcano.", "It erupted in 2021!", "It is in France."]
    assert unsupported_share(text, ("It is in France.",)) == pytest.approx(1 / 3)
    assert unsupported_share(text, ()) == 0.0
    assert unsupported_share("", ("x",)) == 0.0  # an empty answer
    assert unsupported_share("One sentence", ("a", "b")) == 1.0  # never above 1
    assert split_sentences("Line one\nLine two.\n\n[1]") == ["Line one", "Line two."]


def test_sentences_are_counted_as_grounding_splits_them() -> None:
    pytest.importorskip("ragkit.grounding")
    from ragkit.eval.answers import count_sentences

    text = "Dr. Smith was born in 1900. [1] He died in France."
    assert count_sentences(text) == 2  # "Dr." does not end a sentence for grounding
    assert unsupported_share(text, ("He died in France.",)) == 0.5


def hit(doc_id: str, chunk: str | None = None, text: str = "text") -> Hit:
    return Hit(Chunk(chunk or f"c-{doc_id}", doc_id, text, 0, len(text)), 1.0, "bm25", f"{doc_id}.txt")


def test_score_answer_counts_each_cited_chunk_once() -> None:
    answer = Answer(
        "Mount Etna is in Sicily [1]. It is tall [2]. Cheese [3].",
        (hit("p1"), hit("p2"), hit("p1")),
        "extractive",
        unsupported=("Cheese.",),
    )
    score = score_answer("q1", answer, ["Mount Etna", "Etna"], {"p1", "p3"}, retrieve_ms=2.0, generate_ms=5.0)
    assert score.cited == ("p1", "p2")
    assert (score.citation_precision, score.citation_recall) == (0.5, 0.5)
    assert (score.exact_match, score.contains) == (0.0, 1.0)
    assert score.f1 == pytest.approx(4 / 11)  # 9 answer tokens, 2 shared with "Mount Etna": p 2/9, r 1
    assert score.unsupported_share == pytest.approx(1 / 3)
    row = score.to_dict()
    assert row["cited"] == ["p1", "p2"] and row["retrieve_ms"] == 2.0 and row["degraded"] is False


def make_score(em: float, retrieve_ms: float | None, generate_ms: float | None, **kwargs) -> AnswerScore:
    fields = {
        "qid": "q", "answer": "a", "gold_answers": ("a",), "exact_match": em, "f1": em, "contains": em,
        "cited": ("d",), "citation_precision": 1.0, "citation_recall": 0.5, "unsupported": (),
        "unsupported_share": 0.0, "retrieve_ms": retrieve_ms, "generate_ms": generate_ms,
    }
    return AnswerScore(**{**fields, **kwargs})


def test_aggregate_means_and_medians() -> None:
    scores = [
        make_score(1.0, 10.0, 100.0),
        make_score(0.0, 20.0, 300.0, cited=(), citation_precision=0.0, citation_recall=0.0, degraded=True),
        make_score(0.0, 30.0, 200.0, unsupported_share=0.5),
    ]
    metrics = aggregate_answers(scores, "extractive", 5, skipped=2)
    assert metrics.exact_match == pytest.approx(1 / 3)
    assert metrics.citation_precision == pytest.approx(2 / 3) and metrics.citation_recall == pytest.approx(1 / 3)
    assert metrics.cited == pytest.approx(2 / 3) and metrics.degraded == pytest.approx(1 / 3)
    assert metrics.unsupported_share == pytest.approx(1 / 6)
    assert (metrics.retrieve_p50_ms, metrics.generate_p50_ms, metrics.total_p50_ms) == (20.0, 200.0, 230.0)
    out = metrics.to_dict()
    assert (out["generator"], out["k"], out["questions"], out["skipped"]) == ("extractive", 5, 3, 2)
    assert out["latency_ms"] == {"retrieve_p50": 20.0, "generate_p50": 200.0, "total_p50": 230.0}
    with pytest.raises(ValueError, match="no answers"):
        aggregate_answers([], "extractive", 5)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_answer_questions_times_each_question_alone() -> None:
    clock = FakeClock()
    calls: list[tuple[str, ...]] = []

    def retrieve(queries: list[str], k: int, mode: str) -> list[list[Hit]]:
        calls.append(("retrieve", *queries, str(k), mode))
        clock.now += 0.010
        return [[hit("p1"), hit("p2")][:k] for _ in queries]

    def answerer(questions: list[str], hits: list[list[Hit]]) -> list[Answer]:
        calls.append(("answer", *questions))
        clock.now += 0.250
        return [Answer("Paris [1]", (h[0],), "fake") for h in hits]

    cases = [
        AnswerCase("q1", "capital of France?", ("Paris",), frozenset({"p1"})),
        AnswerCase("q2", "capital of Italy?", ("Rome",), frozenset({"p2", "p3"})),
    ]
    done: list[int] = []
    scores = answer_questions(cases, retrieve, answerer, "hybrid", 1, clock=clock, progress=done.append)
    assert calls[:2] == [("retrieve", "capital of France?", "1", "hybrid"), ("answer", "capital of France?")]
    assert len(calls) == 6 and done == [1, 2]  # warm-up, then one retrieve and one answer per question
    assert [s.exact_match for s in scores] == [1.0, 0.0]
    assert [s.citation_precision for s in scores] == [1.0, 0.0]
    assert [s.retrieve_ms for s in scores] == pytest.approx([10.0, 10.0])
    assert [s.generate_ms for s in scores] == pytest.approx([250.0, 250.0])
    with pytest.raises(ValueError, match="k must be"):
        answer_questions(cases, retrieve, answerer, "hybrid", 0, clock=clock)


# -- datasets and report -----------------------------------------------------------------------------------

PASSAGES = {
    "p1": ("Mount Etna", "Mount Etna is an active volcano on the east coast of Sicily."),
    "p2": ("Danube", "The Danube river flows into the Black Sea."),
    "p3": ("Jupiter", "Jupiter is the largest planet."),
    "p4": ("Sourdough", "Sourdough bread rises with wild yeast."),
}
JUPITER_META = {"answer": "Jove", "answer_aliases": ["Jupiter is the largest planet"]}
QUERIES = {  # text, gold passages, metadata
    "q1": ("Which volcano is on the coast of Sicily?", ["p1"], {"answer": "Mount Etna"}),
    "q2": ("Where does the Danube river flow?", ["p2", "p4"], {"answer": "Caspian Sea", "answer_aliases": []}),
    "q3": ("What is the largest planet?", ["p3"], JUPITER_META),
    "q4": ("Why does sourdough bread rise?", ["p4"], {}),
}


def write_dataset(root: Path, with_answers: bool = True) -> Path:
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as out:
        for pid, (title, text) in PASSAGES.items():
            out.write(json.dumps({"_id": pid, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as out:
        for qid, (text, _, meta) in QUERIES.items():
            out.write(json.dumps({"_id": qid, "text": text, "metadata": meta if with_answers else {}}) + "\n")
    rows = [f"{qid}\t{pid}\t1" for qid, (_, gold, _) in QUERIES.items() for pid in gold]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return root


def test_load_beir_keeps_query_metadata_and_gold_answers(tmp_path: Path) -> None:
    dataset = load_beir(write_dataset(tmp_path / "tiny"))
    assert dataset.gold_answers("q1") == ("Mount Etna",)
    assert dataset.gold_answers("q3") == ("Jove", "Jupiter is the largest planet")
    assert dataset.gold_answers("q4") == () and dataset.has_answers
    assert "q4" not in dataset.query_metadata  # empty metadata is not kept
    head = dataset.first(2)
    assert list(head.queries) == ["q1", "q2"] and set(head.qrels) == {"q1", "q2"}
    assert set(head.query_metadata) == {"q1", "q2"} and head.passages == dataset.passages
    assert not load_beir(write_dataset(tmp_path / "plain", with_answers=False)).has_answers


def test_malformed_gold_answer_names_file_and_line(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "bad")
    lines = (root / "queries.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"_id": "q2", "text": "x", "metadata": {"answer": 42}})
    (root / "queries.jsonl").write_text("\n".join(lines) + "\n")
    from ragkit.eval.datasets import DatasetFormatError

    with pytest.raises(DatasetFormatError, match=r"queries.jsonl:2: 'answer' must be a string"):
        load_beir(root)


def test_gold_jsonl_answers(tmp_path: Path) -> None:
    path = tmp_path / "gold.jsonl"
    rows = [{"query": "who?", "gold": ["a"], "answer": "Ada", "answer_aliases": ["Ada Lovelace"]},
            {"query": "what?", "gold": ["b"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dataset = load_gold_dataset(path, passages=3)
    assert dataset.gold_answers("q1") == ("Ada", "Ada Lovelace") and dataset.gold_answers("q2") == ()


def test_report_carries_answers_only_when_measured(tmp_path: Path) -> None:
    score = make_score(1.0, 1.5, 20.0, qid="q|1", answer="a | b", gold_answers=("x",), contains=0.0)
    metrics = aggregate_answers([score], "extractive", 5)
    with_answers = ModeResult({"recall@1": 0.5}, 1.0, 2.0, 3.0, 10.0, answers=metrics)
    plain = ModeResult({"recall@1": 0.25}, 1.0, 2.0, 3.0, 10.0)
    row = QueryResult("hybrid", "q|1", "question", ("g",), ("g",), {1: 1.0}, 1.0, answer=score)
    report = EvalReport("set", 1, 4, (1,), {"hybrid": with_answers, "bm25": plain}, (row,))
    data = json.loads(report.to_json())
    assert data["results"]["hybrid"]["answers"]["exact_match"] == 1.0
    assert "answers" not in data["results"]["bm25"]
    assert row.to_dict()["answer"]["text"] == "a | b"
    table = format_table(report)
    assert "answer exact match" in table and "extractive k=5" in table and "citation recall" in table
    markdown = format_markdown(report)
    assert "## Answers that do not contain the gold answer" in markdown and "a \\| b" in markdown
    no_answers = EvalReport("set", 1, 4, (1,), {"bm25": plain})
    assert "answer" not in format_table(no_answers)
    assert "answers" not in json.loads(no_answers.to_json())["results"]["bm25"]


# -- ragkit eval --answers end to end ----------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAGKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "ragkit.toml").write_text('[embedder]\nmodel = "hashing-64"\n\n[graph]\nenabled = false\n')
    return tmp_path


def test_eval_answers_end_to_end_with_hand_computed_metrics(workspace: Path, capsys) -> None:
    dataset = write_dataset(workspace / "tiny")
    report_dir = workspace / "report"
    argv = ["eval", str(dataset), "--config", str(workspace / "ragkit.toml"), "--modes", "bm25", "--k", "1,2",
            "--answers", "--generator", "extractive", "--answer-k", "1", "--json", "--report", str(report_dir)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    bm25 = result["results"]["bm25"]
    assert bm25["recall@1"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)  # BM25 finds each query's passage first
    answers = bm25["answers"]
    assert (answers["generator"], answers["k"], answers["questions"], answers["skipped"]) == ("extractive", 1, 3, 1)
    # Each answer is the one sentence of the top passage, cited [1]:
    # q1 "Mount Etna is an active volcano on the east coast of Sicily." vs "Mount Etna": EM 0, contains 1,
    #    F1: 10 tokens after normalisation, 2 shared -> p 0.2, r 1 -> 1/3; cites p1 (gold p1): P 1, R 1.
    # q2 "The Danube river flows into the Black Sea." vs "Caspian Sea": EM 0, contains 0,
    #    F1: 6 tokens, 1 shared ("sea") -> p 1/6, r 1/2 -> 1/4; cites p2 (gold p2, p4): P 1, R 1/2.
    # q3 "Jupiter is the largest planet." vs alias "Jupiter is the largest planet": EM 1, F1 1, contains 1.
    assert answers["exact_match"] == pytest.approx(1 / 3)
    assert answers["f1"] == pytest.approx((1 / 3 + 1 / 4 + 1) / 3)
    assert answers["contains"] == pytest.approx(2 / 3)
    assert answers["citation_precision"] == pytest.approx(1.0)
    assert answers["citation_recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert answers["cited"] == 1.0 and answers["degraded"] == 0.0
    assert answers["unsupported_share"] == 0.0  # every sentence is copied from its source
    assert set(answers["latency_ms"]) == {"retrieve_p50", "generate_p50", "total_p50"}
    assert all(v is not None and v >= 0 for v in answers["latency_ms"].values())

    rows = {r["qid"]: r for r in map(json.loads, (report_dir / "per_query.jsonl").read_text().splitlines())}
    assert rows["q1"]["answer"]["text"] == "Mount Etna is an active volcano on the east coast of Sicily. [1]"
    assert rows["q2"]["answer"]["cited"] == ["p2"] and rows["q2"]["answer"]["citation_recall"] == 0.5
    assert rows["q3"]["answer"]["exact_match"] == 1.0 and "answer" not in rows["q4"]
    assert json.loads((report_dir / "report.json").read_text())["results"]["bm25"]["answers"] == answers

    assert main([*argv[:-3], "--limit", "2"]) == 0  # text table, first two queries only
    table = capsys.readouterr().out
    assert "tiny: 2 queries" in table and "answer contains gold" in table and "extractive k=1" in table


def test_answers_on_a_set_without_gold_answers_is_one_clear_error(workspace: Path, capsys) -> None:
    dataset = write_dataset(workspace / "plain", with_answers=False)
    config = str(workspace / "ragkit.toml")
    assert main(["eval", str(dataset), "--config", config, "--modes", "bm25", "--answers"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ragkit eval: error: --answers: dataset 'plain' has no gold answers") and "\n" not in err
    assert not (workspace / "cache").exists()  # refused before building an index
    assert main(["eval", str(dataset), "--config", config, "--generator", "extractive"]) == 2
    assert "only used with --answers" in capsys.readouterr().err


def test_user_gold_file_with_answers_against_an_index(workspace: Path, capsys) -> None:
    config = str(workspace / "ragkit.toml")
    index = str(workspace / "idx")
    assert main(["eval", str(write_dataset(workspace / "tiny")), "--config", config, "--modes", "bm25",
                 "--index", index, "--json"]) == 0
    capsys.readouterr()
    gold = workspace / "gold.jsonl"
    gold.write_text(json.dumps({"query": "What is the largest planet?", "gold": ["p3"], "answer": "Jupiter"}) + "\n")
    argv = ["eval", str(gold), "--config", config, "--index", index, "--modes", "bm25", "--k", "1", "--answers",
            "--generator", "extractive", "--json"]
    assert main(argv) == 0
    answers = json.loads(capsys.readouterr().out)["results"]["bm25"]["answers"]
    assert (answers["questions"], answers["contains"], answers["citation_precision"]) == (1, 1.0, 1.0)
    gold.write_text(json.dumps({"query": "What is the largest planet?", "gold": ["p3"]}) + "\n")
    assert main(argv) == 1
    assert "has no gold answers" in capsys.readouterr().err


def test_shared_sets_carry_gold_answers(shared_data: Path) -> None:
    for name in ("hotpotqa-train100", "musique-train100"):
        dataset = load_beir(shared_data / name)
        assert sum(bool(dataset.gold_answers(q)) for q in dataset.queries) == 100, name
    musique = load_beir(shared_data / "musique-train100")
    assert musique.gold_answers("2hop__150763_14904") == ("G. Stanley Hall", "Stanley Hall")
    assert not load_beir(shared_data / "scifact").has_answers


@pytest.mark.slow
def test_eval_answers_with_the_local_model(workspace: Path, capsys) -> None:
    dataset = write_dataset(workspace / "tiny")
    config = workspace / "ragkit.toml"
    config.write_text(config.read_text() + "\n[generator]\nmax_new_tokens = 48\n")  # a short answer is enough
    argv = ["eval", str(dataset), "--config", str(config), "--modes", "bm25", "--k", "1",
            "--answers", "--generator", "local", "--answer-k", "1", "--limit", "1", "--json"]
    assert main(argv) == 0
    answers = json.loads(capsys.readouterr().out)["results"]["bm25"]["answers"]
    assert (answers["generator"], answers["questions"]) == ("local", 1)
    for key in ("exact_match", "f1", "contains", "citation_precision", "citation_recall", "unsupported_share"):
        assert 0.0 <= answers[key] <= 1.0, key
    assert answers["latency_ms"]["generate_p50"] > 0
