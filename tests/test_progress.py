"""``ragkit index``'s progress: the files counted first (the loading bar's total) and the bars that follow them.

The count must match what the loaders read (``iter_files`` and ``load_sources`` share one walk), or the bar
would end short of its total or run past it. The bars are drawn on a rich terminal console writing to a string.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from ragkit import Index, Settings
from ragkit.cli import _IndexProgress, _progress_bars
from ragkit.connectors.loaders import load_sources
from ragkit.connectors.loaders.common import file_source
from ragkit.connectors.loaders.walk import count_files, iter_files
from ragkit.pipelines import indexing
from ragkit.testing import HashingEmbedder
from ragkit.types import LoadError

symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symbolic links")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Six loadable files (one CSV of three rows, one JSONL of two), and files the loaders leave out."""
    root = tmp_path / "tree"
    (root / "guide").mkdir(parents=True)
    (root / "drafts").mkdir()
    (root / ".git").mkdir()
    (root / "apples.md").write_text("# Apples\n\nApples grow on trees in orchards.")
    (root / "rivers.txt").write_text("The Danube flows through Vienna and Budapest.")
    (root / "rows.csv").write_text("_id,title,text\nr1,One,First row\nr2,Two,Second row\nr3,Three,Third row\n")
    (root / "lines.jsonl").write_text('{"_id": "j1", "text": "first line"}\n{"_id": "j2", "text": "second line"}\n')
    (root / "guide" / "page.html").write_text("<html><body><p>Sourdough bread rises overnight.</p></body></html>")
    (root / "drafts" / "volcano.md").write_text("Magma rises through the crust and erupts as lava.")
    (root / "photo.png").write_bytes(b"\x89PNG not loaded")  # unsupported suffix
    (root / "notes").write_text("no suffix: not loaded")
    (root / ".hidden.md").write_text("dot-files are skipped")
    (root / ".git" / "HEAD.md").write_text("dot-folders are skipped")
    return root


def sources_of(items) -> set[str]:
    """The files the loaded items came from (a row's LoadError is ``path:row``)."""
    found = set()
    for item in items:
        source = item.source
        if isinstance(item, LoadError) and not Path(source).exists():
            source = source.rpartition(":")[0]
        found.add(source)
    return found


def test_count_files_counts_what_the_loaders_load(tree):
    assert count_files([tree]) == 6  # a CSV or JSONL file is one file, whatever its rows
    listed = {file_source(path) for path in iter_files([tree])}
    assert listed == sources_of(load_sources([tree]))
    assert all(Path(source).suffix in {".md", ".txt", ".csv", ".jsonl", ".html"} for source in listed)


def test_iter_files_walks_in_the_loaders_order(tree):
    order = [file_source(path) for path in iter_files([tree])]
    loaded = list(dict.fromkeys(item.source for item in load_sources([tree])))
    assert order == loaded


def test_include_and_exclude_rule_out_files_as_the_loaders_do(tree):
    assert count_files([tree], exclude=["drafts/"]) == 5
    assert count_files([tree], include=["**/*.md"]) == 2
    assert count_files([tree], include=["*.md"], exclude=["drafts/*"]) == 1
    for include, exclude in ((["**/*.md"], []), ([], ["drafts/"]), (["*.csv", "*.html"], ["guide/*"])):
        listed = {file_source(path) for path in iter_files([tree], include=include, exclude=exclude)}
        assert listed == sources_of(load_sources([tree], include=include, exclude=exclude)), (include, exclude)


def test_named_files_count_when_a_loader_reads_them(tree):
    named = [tree / "drafts" / "volcano.md", tree / "photo.png", tree / "missing.md", tree / "apples.md"]
    assert count_files(named, exclude=["drafts/*"]) == 2  # a file named directly is always loaded
    assert count_files([tree, tree / "apples.md", tree]) == 6  # each file once


@symlinks
def test_links_outside_the_folder_count_only_when_followed(tree, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not to be indexed through a link")
    (outside / "more.md").write_text("also outside")
    (tree / "secret.txt").symlink_to(outside / "secret.txt")
    (tree / "elsewhere").symlink_to(outside, target_is_directory=True)
    (tree / "same-apples.md").symlink_to(tree / "apples.md")  # inside: the same file, counted once
    (tree / "broken.md").symlink_to(tmp_path / "nowhere.md")

    assert count_files([tree]) == 6
    assert count_files([tree], follow_symlinks=True) == 8  # secret.txt through two links is one file
    for follow in (False, True):
        listed = {file_source(path) for path in iter_files([tree], follow_symlinks=follow)}
        loaded = [item for item in load_sources([tree], follow_symlinks=follow) if not _link_error(item)]
        assert listed == sources_of(loaded), follow


def _link_error(item) -> bool:
    return isinstance(item, LoadError) and ("symbolic link" in item.reason)


def bars() -> tuple[Progress, io.StringIO]:
    """The CLI's bars, drawn on a terminal console that writes into a string."""
    screen = io.StringIO()
    return _progress_bars(Console(force_terminal=True, file=screen, width=100)), screen


def make_index(path: Path, **loaders) -> Index:
    settings = Settings().merged(graph={"enabled": False}, chunking={"max_tokens": 16, "overlap": 4}, loaders=loaders)
    return Index.create(path, settings, embedder=HashingEmbedder(64))


def task(bar: Progress, description: str):
    (found,) = [t for t in bar.tasks if t.description == description]
    return found


def test_loading_bar_counts_files_to_the_total(tree, tmp_path):
    (tree / "empty.txt").write_text("")  # a file that fails still counts as done
    bar, screen = bars()
    with make_index(tmp_path / "idx") as index, bar:
        report = _IndexProgress(bar).add(index, [str(tree)])
    files = task(bar, "loading files")
    assert files.total == count_files([tree]) == 7
    assert files.completed == files.total
    assert (report.added, report.failed) == (9, 1)  # 4 one-document files, 3 CSV rows, 2 JSONL lines
    embedded = task(bar, "embedding chunks")
    assert embedded.total and embedded.completed == embedded.total
    assert "loading files" in screen.getvalue() and "7/7" in screen.getvalue()


def test_progress_indexes_what_index_add_indexes(tree, tmp_path):
    (tree / "drafts" / "empty.md").write_text("   ")
    with make_index(tmp_path / "plain", exclude=("guide/*",)) as plain:
        expected = plain.add([tree]).as_dict()
        counts = plain.catalog.counts()
    bar, _ = bars()
    with make_index(tmp_path / "shown", exclude=("guide/*",)) as shown, bar:
        report = _IndexProgress(bar).add(shown, [str(tree)]).as_dict()
        assert shown.catalog.counts() == counts
    assert {k: v for k, v in report.items() if k != "seconds"} == {k: v for k, v in expected.items() if k != "seconds"}
    assert task(bar, "loading files").total == task(bar, "loading files").completed == 6  # guide/ excluded


def test_second_run_and_sync_reach_the_total(tree, tmp_path):
    with make_index(tmp_path / "idx") as index:
        first, _ = bars()
        with first:
            _IndexProgress(first).add(index, [str(tree)])
        (tree / "rivers.txt").unlink()
        again, _ = bars()
        with again:
            report = _IndexProgress(again).add(index, [str(tree)], sync=True)
    files = task(again, "loading files")
    assert files.total == files.completed == 5
    assert (report.unchanged, report.removed) == (8, 1)


def test_the_bars_index_as_index_add_does(tree, tmp_path, monkeypatch):
    """``_IndexProgress.add`` is ``indexing.add_sources`` with the loaded items watched (the pipeline reports
    documents, not files): both hand ``add_items`` the same items and options. When this fails, add_sources
    has changed: change ``_IndexProgress.add`` alike."""
    calls = []

    def add_items(store, items, **options):
        options.pop("progress")
        calls.append((list(items), options))
        return indexing.IndexReport()

    monkeypatch.setattr(indexing, "add_items", add_items)
    (tree / "empty.txt").write_text("")
    with make_index(tmp_path / "idx", exclude=("guide/*",), text_field="text") as index:
        index.add([str(tree)], meta={"team": "docs"}, sync=True)
        bar, _ = bars()
        with bar:
            _IndexProgress(bar).add(index, [str(tree)], tags={"team": "docs"}, sync=True)
    by_index, by_bars = calls
    assert by_bars == by_index
    assert any(isinstance(item, LoadError) for item in by_index[0])  # the empty file
