"""`ragkit eval GOLD.jsonl --index DIR`: gold named by document id or by file path, and gold that matches nothing.

A small index of Markdown, text and JSONL files built with the hashing embedder (no model, graph off).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ragkit.cli import main
from ragkit.config import load_settings
from ragkit.eval import load_gold_dataset, resolve_gold
from ragkit.index import Index

FILES = {
    "corpus/notes/etna.md": "# Mount Etna\n\nMount Etna is an active volcano on the east coast of Sicily.\n",
    "corpus/notes/danube.txt": "The Danube is the second-longest river in Europe and flows into the Black Sea.\n",
    "corpus/baking/sourdough.md": "# Sourdough\n\nSourdough bread is leavened by wild yeast.\n",
}
ROWS = [
    {"_id": "jupiter", "title": "Jupiter", "text": "Jupiter is the largest planet, a gas giant with a red spot."},
    {"_id": "saturn", "title": "Saturn", "text": "Saturn is a gas giant planet known for its bright rings."},
    {"_id": "mars", "title": "Mars", "text": "Mars is a small rocky planet with a thin atmosphere and red dust."},
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``corpus/``, ``ragkit.toml`` (hashing embedder, no graph) and the index ``idx``."""
    root = tmp_path_factory.mktemp("gold")
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    (root / "corpus" / "planets.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    (root / "ragkit.toml").write_text('[embedder]\nmodel = "hashing-64"\n\n[graph]\nenabled = false\n')
    with Index.create(root / "idx", load_settings(root / "ragkit.toml")) as index:
        report = index.add([root / "corpus"])
    assert not report.failed
    return root


@pytest.fixture
def in_workspace(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The workspace as the current directory (relative gold paths resolve from it)."""
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("RAGKIT_CACHE", str(workspace / "cache"))
    return workspace


def doc_id_of(workspace: Path, name: str) -> str:
    """The id the index gave the one document of file ``name``."""
    with Index.open(workspace / "idx", load_settings(workspace / "ragkit.toml")) as index:
        (doc_id,) = index.catalog.sources()[str((workspace / name).resolve())]
    return doc_id


def write_gold(path: Path, *lines: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def run_eval(workspace: Path, gold: Path, *extra: str) -> int:
    return main(["eval", str(gold), "--index", str(workspace / "idx"), "--config", str(workspace / "ragkit.toml"),
                 "--modes", "dense,bm25", "--k", "1,5", "--latency-queries", "0", *extra])


def eval_json(workspace: Path, gold: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert run_eval(workspace, gold, "--json", *extra) == 0
    return json.loads(capsys.readouterr().out)


def scores(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The metrics of each mode, without the timings."""
    return {
        mode: {key: value for key, value in values.items() if "@" in key}
        for mode, values in result["results"].items()
    }


def test_gold_by_document_id(in_workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    etna = doc_id_of(in_workspace, "corpus/notes/etna.md")
    gold = write_gold(in_workspace / "by-id.jsonl",
                      {"query": "Which volcano is on Sicily?", "gold": [etna]},
                      {"query": "Which planet is the largest gas giant?", "gold": ["jupiter"]})
    result = eval_json(in_workspace, gold, capsys)
    assert (result["queries"], result["passages"]) == (2, 6)
    assert scores(result)["bm25"]["recall@5"] == 1.0
    assert "unmatched_gold" not in result
    assert capsys.readouterr().err == ""


def test_gold_by_relative_or_absolute_path_equals_gold_by_id(
    in_workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etna = doc_id_of(in_workspace, "corpus/notes/etna.md")
    danube = doc_id_of(in_workspace, "corpus/notes/danube.txt")
    questions = ["Which volcano is on Sicily?", "Where does the Danube flow?"]
    by_id = write_gold(in_workspace / "by-id.jsonl",
                       *({"query": q, "gold": [d]} for q, d in zip(questions, [etna, danube], strict=True)))
    relative = write_gold(in_workspace / "relative.jsonl",
                          {"query": questions[0], "gold": ["corpus/notes/etna.md"]},
                          {"query": questions[1], "gold": ["./corpus/notes/../notes/danube.txt"]})
    absolute = write_gold(in_workspace / "absolute.jsonl",
                          *({"query": q, "gold": [str(in_workspace / "corpus" / "notes" / name)]}
                            for q, name in zip(questions, ["etna.md", "danube.txt"], strict=True)))
    expected = scores(eval_json(in_workspace, by_id, capsys))
    assert scores(eval_json(in_workspace, relative, capsys)) == expected
    assert scores(eval_json(in_workspace, absolute, capsys)) == expected
    assert expected["bm25"]["recall@1"] == 1.0


def test_a_jsonl_source_makes_all_its_rows_relevant(in_workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold = write_gold(in_workspace / "rows.jsonl", {"query": "Which planets are gas giants?",
                                                    "gold": ["corpus/planets.jsonl"]})
    report = in_workspace / "report-rows"
    result = eval_json(in_workspace, gold, capsys, "--report", str(report))
    rows = [json.loads(line) for line in (report / "per_query.jsonl").read_text().splitlines()]
    assert {tuple(sorted(row["gold"])) for row in rows} == {("jupiter", "mars", "saturn")}
    assert scores(result)["bm25"]["recall@5"] == 1.0  # all three rows are in the top 5 of six documents


def test_resolve_gold_expands_files_and_folders_with_their_grades(in_workspace: Path) -> None:
    gold = write_gold(in_workspace / "graded.jsonl",
                      {"query": "gas giants", "gold": {"corpus/planets.jsonl": 2, "jupiter": 3}},
                      {"query": "rivers and volcanoes", "gold": ["corpus/notes"]},
                      {"query": "bread", "gold": ["corpus/baking/missing.md", "corpus/baking/sourdough.md"]})
    with Index.open(in_workspace / "idx", load_settings(in_workspace / "ragkit.toml")) as index:
        resolved = resolve_gold(load_gold_dataset(gold, passages=6), index.catalog)
    notes = {doc_id_of(in_workspace, f"corpus/notes/{name}") for name in ("etna.md", "danube.txt")}
    sourdough = doc_id_of(in_workspace, "corpus/baking/sourdough.md")
    qrels = resolved.dataset.qrels
    assert qrels["q1"] == {"jupiter": 3, "saturn": 2, "mars": 2}  # an entry naming one row keeps the higher grade
    assert set(qrels["q2"]) == notes
    assert qrels["q3"] == {"corpus/baking/missing.md": 1, sourdough: 1}  # a miss stays, as a miss
    assert resolved.entries == 5
    assert resolved.unmatched == (("q3", "corpus/baking/missing.md"),)


def test_some_unmatched_gold_warns_and_still_evaluates(in_workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold = write_gold(in_workspace / "partly.jsonl",
                      {"query": "Which volcano is on Sicily?", "gold": ["corpus/notes/etna.md"]},
                      {"query": "Which planet is the largest?", "gold": ["jupiter", "pluto"]},
                      {"query": "What is in the missing file?", "gold": ["docs/missing.md"]})
    report = in_workspace / "report-partly"
    assert run_eval(in_workspace, gold, "--json", "--report", str(report)) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "warning: 2 of 4 gold ids match no document in the index (q2: 'pluto', q3: 'docs/missing.md'); "
        "they count as misses"
    )
    result = json.loads(captured.out)
    assert result["queries"] == 3
    assert result["unmatched_gold"] == [{"qid": "q2", "gold": "pluto"}, {"qid": "q3", "gold": "docs/missing.md"}]
    assert json.loads((report / "report.json").read_text())["unmatched_gold"] == result["unmatched_gold"]
    assert "2 gold ids match no document and count as misses (q2: pluto, q3: docs/missing.md)." in (
        report / "report.md"
    ).read_text()
    bm25 = scores(result)["bm25"]
    assert bm25["hit@5"] == pytest.approx(2 / 3)  # the question with only a missing gold can never be hit
    assert bm25["recall@5"] == pytest.approx((1 + 0.5 + 0) / 3)  # unmatched gold count as misses


def test_no_matching_gold_is_refused(in_workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold = write_gold(in_workspace / "none.jsonl",
                      {"query": "Which volcano is on Sicily?", "gold": ["p1"]},
                      {"query": "Which planet is the largest?", "gold": ["elsewhere/planets.jsonl"]})
    assert run_eval(in_workspace, gold) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and "\n" not in err
    assert err.startswith(f"ragkit eval: error: {gold}: none of its 2 gold ids matches a document of the index")
    assert "sources" in err and "--allow-missing-gold" in err


def test_allow_missing_gold_turns_the_refusal_into_a_warning(
    in_workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gold = write_gold(in_workspace / "none.jsonl", *({"query": f"question {n}", "gold": [f"p{n}"]} for n in range(5)))
    assert run_eval(in_workspace, gold, "--json", "--allow-missing-gold") == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: 5 of 5 gold ids match no document in the index (q1: 'p0', q2: 'p1', ")
    assert ", ...)" in captured.err
    result = json.loads(captured.out)
    assert [entry["qid"] for entry in result["unmatched_gold"]] == ["q1", "q2", "q3", "q4", "q5"]
    assert all(values["recall@5"] == 0.0 for values in scores(result).values())


def test_limit_keeps_the_unmatched_gold_of_the_queries_evaluated(
    in_workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gold = write_gold(in_workspace / "limited.jsonl",
                      {"query": "Which volcano is on Sicily?", "gold": ["corpus/notes/etna.md"]},
                      {"query": "Which planet is the largest?", "gold": ["pluto"]})
    result = eval_json(in_workspace, gold, capsys, "--limit", "1")
    assert result["queries"] == 1 and "unmatched_gold" not in result
