"""Library calls work from any kind of caller: a script without a main guard, a thread, a daemonic process.

Graph extraction starts spawned worker processes. spawn makes each one import the caller's main module, so a
script without an ``if __name__ == "__main__":`` guard that indexes used to hang (its workers indexed too and
waited for the writer lock the script held). Where workers cannot be started, extraction falls back to this
process, with the same results and one warning.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from cli_run import run_ragkit

from ragkit.graph import extract
from ragkit.graph.extract import SpacyExtractor, workers_unavailable
from ragkit.graph.model import ChunkExtraction
from ragkit.graph.settings import GraphSettings
from ragkit.types import Chunk

HOTPOTQA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hotpotqa-train100" / "corpus.jsonl"
FALLBACK = "graph extraction runs in this process only"

PASSAGES = [
    ("Lothair II", "Lothair II was the king of Lotharingia. He was the second son of Emperor Lothair I."),
    ("Clark University", "The APA was founded in 1892 at Clark University in Worcester, Massachusetts."),
    ("Demon Dice", "Demon Dice is a dice game created by Lester Smith and published by Fast Forward Games."),
]


def small_chunks(n: int = 12) -> list[Chunk]:
    return [
        Chunk(f"c{i}", f"d{i // 2}", text, 0, len(text), {"title": title})
        for i, (title, text) in enumerate(PASSAGES * (n // len(PASSAGES) + 1))
        if i < n
    ]


@pytest.fixture
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback warning is once per process: each test starts as a process that has not warned yet."""
    monkeypatch.setattr(extract, "_fallback_reported", False)


# --- the main module stays out of the workers --------------------------------------------------------------


def test_workers_are_started_without_the_callers_main_module() -> None:
    from multiprocessing import spawn

    main_keys = {"init_main_from_path", "init_main_from_name"}
    main = sys.modules["__main__"]
    assert main_keys & set(spawn.get_preparation_data("x"))  # pytest's own script, as a user's would be
    with extract._main_module_hidden():
        assert not main_keys & set(spawn.get_preparation_data("x"))
    assert sys.modules["__main__"] is main


def test_a_notebook_main_module_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    notebook = types.ModuleType("__main__")  # no __file__, no __spec__: what spawn leaves out anyway
    monkeypatch.setitem(sys.modules, "__main__", notebook)
    with extract._main_module_hidden():
        assert sys.modules["__main__"] is notebook
    assert sys.modules["__main__"] is notebook


def test_the_pool_starts_every_worker_through_the_hiding_process_class() -> None:
    assert extract._WORKER_CONTEXT.Process is extract._WorkerProcess
    assert extract._WORKER_CONTEXT.get_start_method() == "spawn"
    assert issubclass(extract._WorkerProcess, multiprocessing.get_context("spawn").Process)


def test_daemonic_and_bootstrapping_processes_may_not_start_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    process = multiprocessing.current_process()
    assert workers_unavailable() is None
    monkeypatch.setitem(process._config, "daemon", True)  # type: ignore[attr-defined]
    assert "daemonic" in (workers_unavailable() or "")
    monkeypatch.setitem(process._config, "daemon", False)  # type: ignore[attr-defined]
    monkeypatch.setattr(process, "_inheriting", True, raising=False)
    assert "starting up" in (workers_unavailable() or "")


# --- falling back to one process ---------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _extract_in_daemon(chunks: list[Chunk], connection: Connection) -> None:
    """Runs in a daemonic process: two extractors that would use 2 worker processes each."""
    records = _Records()
    logging.getLogger("ragkit").addHandler(records)
    results = []
    for _ in range(2):
        with SpacyExtractor(GraphSettings(n_process=2, batch_size=2)) as extractor:
            results.append(list(extractor.extract(chunks)))
    connection.send((results, records.messages))
    connection.close()


@pytest.fixture(scope="module")
def single() -> list[ChunkExtraction]:
    return list(SpacyExtractor(GraphSettings(n_process=1, batch_size=2)).extract(small_chunks()))


@pytest.mark.slow
def test_a_daemonic_worker_extracts_in_one_process_and_warns_once(single: list[ChunkExtraction]) -> None:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_extract_in_daemon, args=(small_chunks(), sender), daemon=True)
    child.start()
    sender.close()
    try:
        assert receiver.poll(300), "the daemonic process sent nothing"
        results, warnings = receiver.recv()
    finally:
        child.join(60)
    assert child.exitcode == 0
    assert results == [single, single]
    assert len(warnings) == 1 and FALLBACK in warnings[0] and "daemonic" in warnings[0]


@pytest.mark.slow
def test_worker_processes_started_from_a_thread(single: list[ChunkExtraction], caplog: Any) -> None:
    got: list[list[ChunkExtraction]] = []
    used_workers: list[bool] = []

    def run() -> None:
        with SpacyExtractor(GraphSettings(n_process=2, batch_size=2)) as extractor:
            got.append(list(extractor.extract(small_chunks())))
            used_workers.append(extractor._pool is not None)

    with caplog.at_level(logging.DEBUG, logger="ragkit"):
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(300)
    assert got == [single]
    assert used_workers == [True]
    assert not [r for r in caplog.records if FALLBACK in r.getMessage()]


@pytest.mark.slow
def test_a_pool_that_cannot_start_falls_back_with_one_warning(
    single: list[ChunkExtraction], monkeypatch: pytest.MonkeyPatch, caplog: Any, fresh_warning: None
) -> None:
    def refuse(self: Any) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(extract._WorkerProcess, "start", refuse)
    with caplog.at_level(logging.WARNING, logger="ragkit"):
        for _ in range(2):
            with SpacyExtractor(GraphSettings(n_process=2, batch_size=2)) as extractor:
                assert list(extractor.extract(small_chunks())) == single
    warnings = [r.getMessage() for r in caplog.records if FALLBACK in r.getMessage()]
    assert len(warnings) == 1 and "Too many open files" in warnings[0]


@pytest.mark.slow
def test_a_worker_that_dies_is_replaced_by_this_process(
    single: list[ChunkExtraction], caplog: Any, fresh_warning: None
) -> None:
    with caplog.at_level(logging.WARNING, logger="ragkit"), SpacyExtractor(
        GraphSettings(n_process=2, batch_size=2)
    ) as extractor:
        extractor.start()
        pool = extractor._pool
        assert pool is not None
        victim = next(iter(pool._processes.values()))  # type: ignore[attr-defined]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(30)
        assert list(extractor.extract(small_chunks())) == single
        assert extractor._pool is None
    warnings = [r.getMessage() for r in caplog.records if FALLBACK in r.getMessage()]
    assert len(warnings) == 1 and "worker process failed" in warnings[0]


@pytest.mark.slow
def test_a_worker_that_cannot_load_spacy_is_replaced_by_this_process(
    caplog: Any, fresh_warning: None, capfd: Any
) -> None:
    """The workers' error reaches the caller as one warning, not as a traceback on stderr; here the pipeline
    cannot load in this process either, and that error is the caller's."""
    with caplog.at_level(logging.WARNING, logger="ragkit"), SpacyExtractor(
        GraphSettings(n_process=2, batch_size=2, model="no_such_spacy_pipeline")
    ) as extractor:
        with pytest.raises(ImportError, match="no_such_spacy_pipeline"):
            list(extractor.extract(small_chunks()))
    warnings = [r.getMessage() for r in caplog.records if FALLBACK in r.getMessage()]
    assert len(warnings) == 1 and "could not load spaCy" in warnings[0]
    assert "Traceback" not in capfd.readouterr().err


# --- a script without a main guard, as README.md's example is written ----------------------------------------

# README.md's example, with the settings of ./ragkit.toml (the hashing embedder, which the CLI reads there too),
# and a record of every process that runs this file.
SCRIPT = """\
import logging
import os
import sys

import ragkit

with open({runs!r}, "a") as runs:  # every execution of this file, in any process
    runs.write(f"{{os.getpid()}} {{__name__}}\\n")
handler = logging.StreamHandler(sys.stderr)
logging.getLogger("ragkit").addHandler(handler)
logging.getLogger("ragkit").setLevel(logging.DEBUG)

index = ragkit.Index.create({index!r}, settings=ragkit.load_settings())
index.add([{corpus!r}])
print("done")
"""


def _synthetic_corpus(path: Path, n: int = 300) -> None:
    people = ["Ada Lovelace", "Charles Babbage", "Alan Turing", "Grace Hopper", "John von Neumann"]
    places = ["London", "Cambridge", "Princeton", "New York", "Manchester"]
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            who, where = people[i % 5], places[(i * 3) % 5]
            text = f"{who} worked in {where} in {1900 + i}. {who} wrote report {i} about machines for {where}."
            out.write(json.dumps({"_id": f"s{i}", "title": f"{who} {i}", "text": text}) + "\n")


@pytest.fixture
def corpus(tmp_path: Path) -> Iterator[Path]:
    """The HotpotQA passages when ``../shared/data`` has them (about 1,000), else 300 synthetic documents."""
    if HOTPOTQA.is_file():
        yield HOTPOTQA
    else:
        path = tmp_path / "corpus.jsonl"
        _synthetic_corpus(path)
        yield path


def _graph_of(index_dir: Path) -> tuple[set[Any], list[Any]]:
    from ragkit.index import Index

    with Index.open(index_dir) as index:
        graph = index.graph
    edges = sorted((u, v, data["label"], data["kind"], tuple(data["chunks"])) for u, v, data in graph.edges(data=True))
    return set(graph.nodes), edges


@pytest.mark.slow
def test_a_script_without_main_guard_finishes_with_the_index_the_cli_builds(tmp_path: Path, corpus: Path) -> None:
    (tmp_path / "ragkit.toml").write_text('[embedder]\nmodel = "hashing-64"\n')  # both sides read it
    # alias resolution picks among a name's type classes in set order, which follows the string hash seed
    same_hashes = {"PYTHONHASHSEED": "0"}
    runs = tmp_path / "runs.txt"
    script = tmp_path / "build_index.py"
    script.write_text(SCRIPT.format(runs=str(runs), index=str(tmp_path / "from-script"), corpus=str(corpus)))
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **same_hashes},
        start_new_session=True,  # its workers too can be stopped if it hangs
    )
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the unguarded script hung; runs of it: {runs.read_text() if runs.exists() else ''}")
    assert process.returncode == 0, stderr
    assert stdout.strip() == "done"
    assert "worker processes started" in stderr and FALLBACK not in stderr  # the workers really did the work
    assert "Traceback" not in stderr
    assert [line.split()[1] for line in runs.read_text().splitlines()] == ["__main__"]  # never run again

    cli_index = tmp_path / "from-cli"
    built = run_ragkit("index", corpus, "--index", cli_index, "--json", cwd=tmp_path, env=same_hashes, timeout=300)
    assert built.returncode == 0, built.stderr
    stats = [json.loads(run_ragkit("stats", "--index", d, "--json", cwd=tmp_path).stdout) for d in
             (tmp_path / "from-script", cli_index)]
    assert stats[0]["chunks"] >= 4 * GraphSettings().batch_size  # enough for the worker processes
    for key in ("documents", "chunks", "embedder", "graph"):
        assert stats[0][key] == stats[1][key], key
    assert _graph_of(tmp_path / "from-script") == _graph_of(cli_index)
