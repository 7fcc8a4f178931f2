"""Streaming answers: ``Index.stream`` / ``pipelines.query.stream_answer`` and ``ragkit ask --stream``.

The deltas join to the answer ``ask`` gives (citations renumbered as they complete); once they are used up the
stream's ``answer`` is checked like ``ask``'s; a generator that fails mid-stream is followed by the extractive
answer, degraded. Fast: the hashing embedder, the scripted and extractive generators, a loopback fake server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cli_run import run_ragkit
from servers import FaultServer, Reply

from ragkit import Index
from ragkit.connectors.generators.extractive import ExtractiveGenerator
from ragkit.connectors.generators.fallback import FallbackGenerator
from ragkit.connectors.generators.prompt import StreamedCitations, parse_citations
from ragkit.errors import GeneratorError
from ragkit.pipelines.query import MID_STREAM_SEPARATOR, AnswerStream
from ragkit.testing import HashingEmbedder, ScriptedGenerator
from ragkit.types import Answer, Chunk, Document, Hit

TEXTS = {
    "sourdough.txt": "Sourdough bread rises with a wild yeast starter. The starter needs feeding every day. "
    "The dough ferments slowly overnight, which gives the bread its sour taste.",
    "danube.txt": "The Danube flows through Vienna and Budapest. The Danube ends in a wide delta on the Black Sea.",
    "chess.txt": "The Sicilian Defence is a chess opening. It begins with the pawn move c5 against e4.",
}
QUESTION = "How does sourdough bread rise, and where does the Danube end?"
INVENTED = "The moon is made of green cheese and orbits Jupiter."


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    path = tmp_path_factory.mktemp("stream") / "idx"
    with Index.create(path, embedder=HashingEmbedder(64), graph=False) as created:
        created.add_documents(Document(id=name, text=text, source=name) for name, text in TEXTS.items())
    with Index.open(path, embedder=HashingEmbedder(64)) as opened:
        yield opened


def same_answer(streamed: Answer, asked: Answer) -> None:
    assert streamed.text == asked.text
    assert [h.chunk.id for h in streamed.citations] == [h.chunk.id for h in asked.citations]
    assert streamed.unsupported == asked.unsupported
    assert (streamed.generator, streamed.degraded, streamed.reason) == (asked.generator, asked.degraded, asked.reason)


# -- the numbering of streamed citations ------------------------------------------------------------------------


def fake_hits(count: int) -> list[Hit]:
    return [Hit(Chunk(f"c{i}", f"d{i}", f"passage {i}", 0, 9), 1.0, "test", f"s{i}") for i in range(count)]


@pytest.mark.parametrize(
    "text",
    [
        "Paris [3] is on the Seine [1, 3]. It is big [2].",
        "  Made up [9]. Real [2] and [2,2] again [ 1 , 4 ]",
        "No markers at all, [just brackets] and [ ] and [[2]] and a trailing [",
        "[2] first\n\n[7]\tsecond [1]   ",
    ],
)
def test_streamed_citations_match_parse_citations_at_every_split(text: str) -> None:
    """Renumbering delta by delta gives what parse_citations gives for the whole text, wherever it is cut."""
    hits = fake_hits(4)
    expected = parse_citations(text, hits)[0]
    for cut in range(len(text) + 1):
        for pieces in ([text[:cut], text[cut:]], [text[:cut], *text[cut:]]):  # and one character at a time
            citations = StreamedCitations(hits)
            settled = [citations.feed(piece) for piece in pieces]
            assert "".join(settled) + citations.finish() == expected, (cut, pieces)


def test_a_marker_being_written_waits_for_its_end() -> None:
    citations = StreamedCitations(fake_hits(3))
    assert citations.feed("Paris [3") == "Paris"
    assert citations.feed("] is on the Seine [1].") == " [1] is on the Seine [2]."
    assert citations.finish() == ""


# -- Index.stream against Index.ask ---------------------------------------------------------------------------


def test_extractive_deltas_join_to_the_answer_ask_gives(index: Index) -> None:
    stream = index.stream(QUESTION, k=3, mode="bm25", generator="extractive")
    assert isinstance(stream, AnswerStream) and stream.hits == index.retrieve(QUESTION, k=3, mode="bm25")
    deltas = list(stream)
    asked = index.ask(QUESTION, k=3, mode="bm25", generator="extractive")
    assert len(deltas) > 1  # one cited sentence at a time
    assert "".join(deltas) == stream.draft == stream.answer.text == asked.text
    assert "[1]" in asked.text and asked.citations and not asked.unsupported
    same_answer(stream.answer, asked)


def test_scripted_answer_is_renumbered_and_checked_like_ask(index: Index) -> None:
    hits = index.retrieve(QUESTION, k=3, mode="bm25")
    first, second = (hit.chunk.text.split(". ")[0] + "." for hit in hits[:2])
    script = f"{second} [2] {first} [1] {INVENTED} [1]"
    stream = index.stream(QUESTION, k=3, mode="bm25", generator=ScriptedGenerator([script]))
    deltas = list(stream)
    assert "".join(deltas) == stream.draft == f"{second} [1] {first} [2] {INVENTED} [2]"  # renumbered on the way
    asked = index.ask(QUESTION, k=3, mode="bm25", generator=ScriptedGenerator([script]))
    same_answer(stream.answer, asked)
    assert stream.answer.unsupported == (INVENTED,)
    assert stream.answer.text == f"{second} [1] {first} [2] {INVENTED}"  # grounding took the invention's marker
    assert [h.chunk.id for h in stream.answer.citations] == [hits[1].chunk.id, hits[0].chunk.id]


class BreaksAfterOneDelta:
    name = "flaky"

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:  # pragma: no cover - never asked
        raise AssertionError("only streamed")

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
        yield "Sourdough bread rises [2"
        yield "] because"
        raise ConnectionError("connection reset")


class FailsAtOnce:
    name = "broken"

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:
        raise GeneratorError("server at http://127.0.0.1:9/v1 is down")

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
        raise GeneratorError("server at http://127.0.0.1:9/v1 is down")
        yield ""  # pragma: no cover


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "fallback-wrapped"])
def test_a_generator_failing_mid_stream_is_followed_by_the_extractive_answer(index: Index, wrapped: bool) -> None:
    generator = FallbackGenerator(BreaksAfterOneDelta()) if wrapped else BreaksAfterOneDelta()
    stream = index.stream(QUESTION, k=3, mode="bm25", generator=generator)
    deltas = list(stream)
    extractive = index.ask(QUESTION, k=3, mode="bm25", generator="extractive")
    separator = MID_STREAM_SEPARATOR.format(generator="flaky")
    assert deltas == ["Sourdough bread rises", " [1] because", separator, extractive.text]
    answer = stream.answer
    assert answer.degraded and answer.generator == "extractive" and answer.meta["primary"] == "flaky"
    assert answer.reason == "flaky generator failed (ConnectionError: connection reset); answered by extractive"
    assert answer.reason.endswith("; answered by extractive")
    assert stream.draft == answer.text == extractive.text
    assert [h.chunk.id for h in answer.citations] == [h.chunk.id for h in extractive.citations]


def test_a_failure_before_the_first_delta_streams_the_fallback_without_a_separator(index: Index) -> None:
    stream = index.stream(QUESTION, k=3, mode="bm25", generator=FallbackGenerator(FailsAtOnce()))
    deltas = list(stream)
    extractive = index.ask(QUESTION, k=3, mode="bm25", generator="extractive")
    asked = index.ask(QUESTION, k=3, mode="bm25", generator=FallbackGenerator(FailsAtOnce()))
    assert "".join(deltas) == extractive.text and not any("---" in d for d in deltas)
    same_answer(stream.answer, asked)  # degraded, with the same reason as ask's
    assert asked.degraded and "http://127.0.0.1:9/v1 is down" in asked.reason


def test_reading_answer_first_consumes_the_stream(index: Index) -> None:
    asked = index.ask(QUESTION, k=3, mode="bm25", generator="extractive")
    stream = index.stream(QUESTION, k=3, mode="bm25", generator="extractive")
    same_answer(stream.answer, asked)
    assert list(stream) == [] and stream.draft == asked.text  # the deltas were used up, unseen
    partly = index.stream(QUESTION, k=3, mode="bm25", generator="extractive")
    first = next(partly)
    assert asked.text.startswith(first) and partly.answer.text == asked.text and list(partly) == []


def test_a_closed_stream_has_no_answer(index: Index) -> None:
    stream = index.stream(QUESTION, k=3, mode="bm25", generator="extractive")
    next(stream)
    stream.close()
    assert list(stream) == []
    with pytest.raises(RuntimeError, match="closed before its end"):
        stream.answer  # noqa: B018 - reading it is the test


def test_the_extractive_generator_rebuilds_its_own_answer_from_its_stream(index: Index) -> None:
    """Its stream numbers citations in its own order, not the hits': answer_from_stream knows which is which."""
    hits = index.retrieve("Where does the Danube end, and how does sourdough rise?", k=3, mode="bm25")
    generator = ExtractiveGenerator()
    question = "Where does the Danube end, and how does sourdough rise?"
    expected = generator.generate(question, hits)
    rebuilt = generator.answer_from_stream(question, hits, "".join(generator.stream(question, hits)))
    assert rebuilt == expected


# -- ragkit ask --stream -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stream-cli")
    (root / "ragkit.toml").write_text('[embedder]\nmodel = "hashing-64"\n\n[graph]\nenabled = false\n')
    (root / "docs").mkdir()
    for name, text in TEXTS.items():
        (root / "docs" / name).write_text(text)
    result = run_ragkit("index", "docs", "--index", "idx", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def ask(workspace: Path, *args: str) -> tuple[int, str, str]:
    result = run_ragkit("ask", QUESTION, "--index", "idx", "--mode", "bm25", "--k", "3", *args, cwd=workspace,
                        env={"RAGKIT_CACHE": str(workspace / "cache")})
    return result.returncode, result.stdout, result.stderr


def test_cli_stream_prints_the_answer_then_its_sources(workspace: Path) -> None:
    code, streamed, err = ask(workspace, "--generator", "extractive", "--stream")
    assert code == 0, err
    text, _, rest = streamed.partition("\n\n")
    assert text.startswith("The Danube ends") and text.endswith("[2]")
    assert rest.startswith("answered by extractive\nSources\n  [1] ")
    code, plain, err = ask(workspace, "--generator", "extractive")
    assert code == 0, err
    assert streamed == plain  # every sentence is supported: the same bytes as the complete answer


def sse(*contents: str) -> Reply:
    events = [json.dumps({"choices": [{"delta": {"content": c}, "index": 0}]}) for c in contents]
    body = "".join(f"data: {event}\n\n" for event in events) + "data: [DONE]\n\n"
    return Reply(200, body, {"content-type": "text/event-stream"})


def test_cli_stream_from_a_server_renumbers_and_lists_unsupported_sentences(workspace: Path) -> None:
    """The model cites the prompt's second passage; the streamed text cites the sources block's numbers."""
    sentence = TEXTS["sourdough.txt"].split(". ")[0] + "."
    with FaultServer([sse(sentence, " [", "2", "] It is baked on the moon", ".")]) as server:
        code, out, err = ask(workspace, "--generator", "openai", "--base-url", server.base_url, "--model", "m",
                             "--stream")
    assert code == 0, err
    text, _, rest = out.partition("\n\n")
    assert text.startswith(sentence + " [1] It is baked on the moon.")
    assert rest.startswith("unsupported: It is baked on the moon.\n")
    assert "answered by openai" in rest and "1 sentence supported by no source" in rest
    assert "\nSources\n  [1] " in rest and "sourdough.txt" in rest


def test_cli_stream_shows_a_server_failing_mid_stream_then_the_extractive_answer(workspace: Path) -> None:
    good = json.dumps({"choices": [{"delta": {"content": "Sourdough rises thanks to"}, "index": 0}]})
    broken = Reply(200, f"data: {good}\n\ndata: {{not json\n\n", {"content-type": "text/event-stream"})
    with FaultServer([broken]) as server:
        code, out, err = ask(workspace, "--generator", "openai", "--base-url", server.base_url, "--model", "m",
                             "--stream")
    assert code == 0, err
    extractive = ask(workspace, "--generator", "extractive")[1].split("\n")[0]
    separator = MID_STREAM_SEPARATOR.format(generator="openai")
    assert out.startswith(f"Sourdough rises thanks to{separator}{extractive}\n\nanswered by extractive (degraded: ")
    assert "malformed stream event" in out and "\nSources\n  [1] " in out


def test_cli_stream_with_json_or_file_is_a_usage_error(workspace: Path) -> None:
    code, out, err = ask(workspace, "--stream", "--json")
    assert code == 2 and out == "" and "--stream" in err and "--json" in err
    (workspace / "questions.txt").write_text(QUESTION + "\n")
    result = run_ragkit("ask", "--file", "questions.txt", "--stream", "--index", "idx", cwd=workspace)
    assert result.returncode == 2 and "--stream" in result.stderr and "--file" in result.stderr
