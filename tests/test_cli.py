"""The CLI end to end on real files, with the real MiniLM embedder, in subprocesses as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import run_ragkit

pytestmark = pytest.mark.slow

PDF_BYTES = b"%PDF-1.4 this is not really a pdf \x00\x01\x02"


def ragkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_ragkit(*args, cwd=cwd)  # fails the test on any traceback


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    docs = root / "docs"
    docs.mkdir()
    (docs / "faiss.md").write_text(
        "# Vector search\n\nFAISS stores vectors in shards.\n\n## Deletes\n\nDeleting a document removes its "
        "vectors by id from the shard that holds them.\n"
    )
    (docs / "garden.txt").write_text("Tomatoes need full sun and regular watering to ripen in summer.")
    (docs / "page.html").write_text(
        "<html><head><title>Bread</title><script>var tracking = 1;</script></head><body><nav>Home | About</nav>"
        "<article><h1>Sourdough bread</h1><p>Sourdough bread rises with a wild yeast starter that needs "
        "feeding every day. The dough ferments slowly overnight, which gives the bread its sour taste and an "
        "open crumb.</p></article></body></html>"
    )
    (docs / "broken.pdf").write_bytes(PDF_BYTES)
    (docs / "empty.txt").write_text("")
    return root


def test_index_reports_bad_files_and_exits_3(workspace):
    result = ragkit("index", "docs", "--index", "idx", cwd=workspace)
    assert result.returncode == 3, result.stderr
    assert "broken.pdf" in result.stderr and "empty.txt" in result.stderr
    assert "3 added" in result.stdout and "2 failed" in result.stdout


def test_ask_json_returns_cited_hits(workspace):
    result = ragkit(
        "ask", "How does sourdough rise?", "--index", "idx", "--generator", "extractive", "--json", "--k", "3",
        cwd=workspace,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert set(payload) >= {"answer", "generator", "hits", "timings_ms"}
    assert payload["generator"] == "extractive"
    top = payload["hits"][0]
    assert top["rank"] == 1 and top["source"].endswith("page.html")
    assert "tracking" not in top["text"] and "<" not in top["text"]
    assert "[1]" in payload["answer"]


def test_ask_plain_prints_answer_and_sources(workspace):
    result = ragkit("ask", "Where are vectors deleted from?", "--index", "idx", "--generator", "extractive",
                    "--mode", "bm25", cwd=workspace)
    assert result.returncode == 0, result.stderr
    assert "answered by extractive" in result.stdout
    assert "[1]" in result.stdout and "faiss.md" in result.stdout


def test_stats_delete_and_reindex(workspace):
    stats = json.loads(ragkit("stats", "--index", "idx", "--json", cwd=workspace).stdout)
    assert stats["documents"] == 3 and stats["embedder"] == "all-MiniLM-L6-v2@openvino" and stats["dimension"] == 384
    assert stats["backend"] == "faiss" and stats["shards"] == 1 and stats["chunks"] >= 3
    deleted = ragkit("delete", "docs/garden.txt", "--index", "idx", cwd=workspace)
    assert deleted.returncode == 0 and "removed 1" in deleted.stdout
    again = ragkit("index", "docs", "--index", "idx", "--json", cwd=workspace)
    summary = json.loads(again.stdout)
    assert (summary["added"], summary["unchanged"], summary["failed"]) == (1, 2, 2)
    assert again.returncode == 3


def test_usage_and_fatal_exit_codes(workspace):
    assert ragkit("ask", "--index", "idx", cwd=workspace).returncode == 2
    assert ragkit("index", cwd=workspace).returncode == 2
    missing = ragkit("stats", "--index", "nowhere", cwd=workspace)
    assert missing.returncode == 1 and "nowhere" in missing.stderr
    (workspace / "ragkit.toml").write_text("[retrieval]\nmoed = 'dense'\n")
    try:
        bad = ragkit("stats", "--index", "idx", cwd=workspace)
        assert bad.returncode == 1 and "retrieval.moed" in bad.stderr and "valid keys" in bad.stderr
    finally:
        (workspace / "ragkit.toml").unlink()


BROKEN_STATS = """
import sys
import ragkit.cli
from ragkit.index import Index

def stats(self):
    raise KeyError("a bug deep inside")

Index.stats = stats
sys.exit(ragkit.cli.main(sys.argv[1:]))
"""


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(workspace):
    driver = workspace / "broken_stats.py"
    driver.write_text(BROKEN_STATS)
    plain = subprocess.run(
        [sys.executable, str(driver), "stats", "--index", "idx"], cwd=workspace, capture_output=True, text=True
    )
    assert plain.returncode == 1
    assert "Traceback" not in plain.stderr
    assert plain.stderr.strip() == (
        "ragkit stats: unexpected error: KeyError: 'a bug deep inside' (run again with --debug for the traceback)"
    )
    debug = subprocess.run(
        [sys.executable, str(driver), "stats", "--index", "idx", "--debug"],
        cwd=workspace, capture_output=True, text=True,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "a bug deep inside" in debug.stderr


def test_config_and_debug_work_after_the_command(workspace):
    (workspace / "other.toml").write_text("[retrieval]\nk = 2\n")
    result = ragkit("stats", "--index", "idx", "--config", "missing.toml", cwd=workspace)
    assert result.returncode == 1 and "missing.toml" in result.stderr
    result = ragkit(
        "ask", "sourdough", "--index", "idx", "--config", "other.toml", "--generator", "extractive", "--json",
        cwd=workspace,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["hits"]) == 2
