"""The model-free extractive generator, graceful degradation around failing generators, and the factory."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from ragkit.config import GeneratorSettings
from ragkit.connectors.generators import GENERATOR_NAMES, from_settings, make_generator
from ragkit.connectors.generators.extractive import NO_ANSWER, ExtractiveGenerator, not_prose, split_sentences
from ragkit.connectors.generators.fallback import FallbackGenerator
from ragkit.connectors.generators.openai import OpenAIGenerator
from ragkit.errors import ConfigError, GeneratorError
from ragkit.protocols import Generator
from ragkit.types import Answer, Chunk, Hit


def make_hit(index: int, text: str) -> Hit:
    chunk = Chunk(id=f"chunk-{index}", doc_id=f"doc-{index}", text=text, start=0, end=len(text))
    return Hit(chunk=chunk, score=1.0 / (index + 1), retriever="test", source=f"file{index}.txt")


HITS = [
    make_hit(0, "The Danube is a river in Europe. It flows through Vienna and Budapest to the Black Sea."),
    make_hit(1, "Volcanoes erupt when magma rises. The Danube delta is a wetland in Romania."),
    make_hit(2, "Chess openings shape the middle game. The Sicilian Defence is a popular opening."),
]


def cited_numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\[(\d+)\]", text)]


# -- extractive ---------------------------------------------------------------------------------------------


def test_extractive_answers_with_the_matching_sentences_each_cited() -> None:
    answer = ExtractiveGenerator().generate("Which cities does the Danube flow through?", HITS)
    assert answer.generator == "extractive" and not answer.degraded
    first = answer.text.split(" [")[0]
    assert first == "It flows through Vienna and Budapest to the Black Sea."
    numbers = cited_numbers(answer.text)
    assert numbers and sorted(set(numbers)) == list(range(1, len(answer.citations) + 1))
    assert answer.citations[0] is HITS[0]
    for sentence, number in re.findall(r"(.+?) \[(\d+)\]\s*", answer.text):
        assert sentence.strip() in answer.citations[int(number) - 1].chunk.text  # each sentence cites its hit


def test_a_quoted_row_ends_its_sentence_so_grounding_keeps_every_citation_on_its_own_sentence() -> None:
    from ragkit.grounding import ground
    from ragkit.testing import HashingEmbedder

    hits = [
        make_hit(0, "name: Golden Gate Bridge\ncity: San Francisco\nopened: 1937\ndesigner: Joseph Strauss"),
        make_hit(1, "The Golden Gate Bridge spans the strait. It opened in 1937."),
        make_hit(2, "The Brooklyn Bridge spans the East River. It opened in 1883."),
    ]
    answer = ExtractiveGenerator().generate("Who designed the bridge that opened in 1937?", hits)
    grounded = ground(answer, hits, HashingEmbedder().embed_documents)
    assert grounded.unsupported == ()
    quoted = re.findall(r"(.+?) \[(\d+)\]\s*", grounded.text)
    assert len(quoted) == len(cited_numbers(answer.text))  # no sentence lost its marker to the one before
    for sentence, number in quoted:
        source = " ".join(grounded.citations[int(number) - 1].chunk.text.split())
        assert sentence.strip().rstrip(".") in source  # each sentence cites the hit it was quoted from
    row = "name: Golden Gate Bridge city: San Francisco opened: 1937 designer: Joseph Strauss."
    assert answer.text.startswith(f"{row} [1]")


def test_extractive_prefers_the_higher_ranked_hit_on_equal_overlap() -> None:
    same = "Copper conducts electricity well."
    hits = [make_hit(0, "Unrelated text about gardens."), make_hit(1, same), make_hit(2, same + " Indeed.")]
    answer = ExtractiveGenerator(max_sentences=1).generate("Does copper conduct electricity?", hits)
    assert answer.text == f"{same} [1]" and answer.citations == (hits[1],)


def test_extractive_without_overlap_uses_the_lead_of_the_top_hit() -> None:
    answer = ExtractiveGenerator().generate("zzz qqq?", HITS)
    assert answer.text == "The Danube is a river in Europe. [1]"
    assert answer.citations == (HITS[0],)


def test_extractive_without_hits_says_so() -> None:
    answer = ExtractiveGenerator().generate("Anything?", [])
    assert answer.text == NO_ANSWER and answer.citations == ()


def test_extractive_is_deterministic_and_stream_matches_generate() -> None:
    generator = ExtractiveGenerator()
    question = "Where is the Danube delta?"
    answer = generator.generate(question, HITS)
    assert generator.generate(question, HITS) == answer
    pieces = list(generator.stream(question, HITS))
    assert len(pieces) == len(cited_numbers(answer.text)) and "".join(pieces) == answer.text
    many = generator.generate_many([question, "What is the Sicilian Defence?"], [HITS, HITS])
    assert many[0] == answer and many[1].citations == (HITS[2],)


def titled_hit(index: int, title: str, text: str) -> Hit:
    chunk = Chunk(f"chunk-{index}", f"doc-{index}", text, 0, len(text), {"title": title})
    return Hit(chunk=chunk, score=1.0 / (index + 1), retriever="test", source=f"file{index}.txt")


def test_extractive_follows_the_bridge_to_the_second_passage() -> None:
    """A two-hop question: the first passage names the company, the second (about it) holds the answer."""
    hits = [
        titled_hit(0, "Kestrel Mixer", "The Kestrel Mixer is a kitchen appliance made by Halvorsen Works."),
        titled_hit(1, "Blender", "A blender is a kitchen appliance that mixes food."),
        titled_hit(2, "Halvorsen Works", "Halvorsen Works is a Norwegian manufacturer. It was founded by Ingrid Berg."),
    ]
    answer = ExtractiveGenerator().generate("Who founded the company that makes the Kestrel Mixer?", hits)
    assert "founded by Ingrid Berg" in answer.text
    assert answer.text.index("Ingrid Berg") < answer.text.index("made by Halvorsen")  # the answer first
    assert "Blender" not in answer.text and "mixes food" not in answer.text
    assert set(cited_numbers(answer.text)) == {1, 2}



def test_a_row_about_another_bridge_is_no_first_hop() -> None:
    """The question names Tower Bridge; a table row naming the Brooklyn Bridge says no more of the question than
    the Brooklyn page does, so that page is no second hop and its designer does not open the answer."""
    hits = [
        titled_hit(0, "Tower Bridge", "Tower Bridge is a bascule bridge in London, designed by Horace Jones."),
        make_hit(1, "name: Tower Bridge\ncity: London\ndesigner: Horace Jones"),
        titled_hit(2, "Brooklyn Bridge", "John A. Roebling designed the bridge across the East River."),
        make_hit(3, "name: Brooklyn Bridge\ncity: New York City\ndesigner: John A. Roebling"),
    ]
    answer = ExtractiveGenerator().generate("Who designed Tower Bridge?", hits)
    assert answer.text.startswith("Tower Bridge is a bascule bridge in London, designed by Horace Jones. [1]")


def test_extractive_takes_no_bridge_from_a_passage_unrelated_to_the_question() -> None:
    """A passage is a second hop only when a passage that matches the question names it: here only an unrelated
    one names the Chrysler Building, so it stays out and the answer's own sentence gets its place."""
    hits = [
        make_hit(0, "The Brooklyn Bridge connects Manhattan and Brooklyn. It was designed by John A. Roebling. "
                    "Washington Roebling, his son, supervised its construction after John died."),
        titled_hit(1, "Chrysler Building", "The Chrysler Building is an Art Deco skyscraper in Manhattan."),
        titled_hit(2, "Eiffel Tower", "The Eiffel Tower was the tallest structure until the Chrysler Building."),
    ]
    question = "Who supervised the construction of the Brooklyn Bridge?"
    answer = ExtractiveGenerator(max_sentences=3).generate(question, hits)
    assert "supervised its construction" in answer.text
    assert "Chrysler" not in answer.text and "Eiffel" not in answer.text
    assert set(cited_numbers(answer.text)) == {1}

def test_extractive_prefers_a_sentence_with_what_the_question_asks_for() -> None:
    hits = [make_hit(0, "The Halden bridge spans the river Tista. The Halden bridge opened in 1877 after a flood.")]
    answer = ExtractiveGenerator(max_sentences=1).generate("When did the Halden bridge open?", hits)
    assert answer.text == "The Halden bridge opened in 1877 after a flood. [1]"


def test_a_count_written_in_words_answers_how_many() -> None:
    text = (
        "Marta Velloso was selected for the All-Star game squad of the Rovers. "
        "She was a two-time All-Star selection."
    )
    hits = [make_hit(0, text)]
    question = "How many times was Marta Velloso selected for the All-Star game?"
    answer = ExtractiveGenerator(max_sentences=1).generate(question, hits)
    assert answer.text == "She was a two-time All-Star selection. [1]"


def test_extractive_weighs_a_rare_question_word_above_words_every_sentence_repeats() -> None:
    text = (
        "Carl Bach lived in Berlin. A German musician played there nightly. Every German musician knew him. "
        "The German musicians met weekly. His godfather was Georg Telemann."
    )
    question = "Who was the godfather of the German musician?"
    answer = ExtractiveGenerator(max_sentences=1).generate(question, [make_hit(0, text)])
    assert answer.text == "His godfather was Georg Telemann. [1]"  # flat weights choose "A German musician played ..."


def test_term_weights_favour_rare_terms_and_keep_every_term_counting() -> None:
    from ragkit.connectors.generators.extractive import term_weights

    sentences = [{"german", "musician"}, {"german", "sonata"}, {"german", "godfath"}, {"flute"}]
    weights = term_weights({"german", "godfath", "absent"}, sentences)
    assert weights["godfath"] > 1 > weights["german"] > 0.5
    assert weights["absent"] > weights["godfath"]  # no sentence holds it, so it is rarest, yet matches nothing
    assert term_weights({"a"}, []) == {"a": 1.0}


def test_extractive_stems_so_that_inflections_meet() -> None:
    hits = [make_hit(0, "The council met in March. In 1946 the province refused to surrender its mandate.")]
    answer = ExtractiveGenerator(max_sentences=1).generate("When did the province refuse the surrender?", hits)
    assert answer.text == "In 1946 the province refused to surrender its mandate. [1]"


def test_extractive_skips_code_and_headings() -> None:
    text = "def stable_id(doc): return sha1(doc)\n\n## Stable ids\n\nChunk ids stay stable across runs of the index."
    answer = ExtractiveGenerator().generate("How do chunk ids stay stable?", [make_hit(0, text)])
    assert answer.text == "Chunk ids stay stable across runs of the index. [1]"


def test_split_sentences_keeps_closing_quotes() -> None:
    assert split_sentences('He said "stop." Then he left.\n\nNew para') == [
        'He said "stop."',
        "Then he left.",
        "New para",
    ]


# -- graceful degradation -----------------------------------------------------------------------------------


class Failing:
    name = "broken"

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:
        raise GeneratorError("server at http://10.0.0.1/v1 is down")

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
        raise GeneratorError("server at http://10.0.0.1/v1 is down")
        yield ""  # pragma: no cover


class Slow:
    name = "slow"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:
        time.sleep(self.delay_s)
        return Answer(text="late [1]", citations=(hits[0],), generator=self.name)

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
        time.sleep(self.delay_s)
        yield "late"


class BreaksMidStream:
    name = "flaky"

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:  # pragma: no cover - unused
        raise AssertionError

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
        yield "The answer is"
        raise ConnectionError("connection reset")


def test_failure_degrades_to_the_extractive_answer_with_the_reason() -> None:
    question = "Which cities does the Danube flow through?"
    answer = FallbackGenerator(Failing()).generate(question, HITS)
    expected = ExtractiveGenerator().generate(question, HITS)
    assert answer.degraded and answer.text == expected.text and answer.citations == expected.citations
    assert "broken" in answer.reason and "http://10.0.0.1/v1 is down" in answer.reason
    assert answer.generator == "extractive" and answer.meta["primary"] == "broken"


def test_timeout_degrades_and_success_passes_through() -> None:
    started = time.perf_counter()
    answer = FallbackGenerator(Slow(2.0), timeout_s=0.2).generate("Danube?", HITS)
    assert time.perf_counter() - started < 1.5
    assert answer.degraded and "TimeoutError" in answer.reason
    ok = FallbackGenerator(Slow(0.0), timeout_s=5).generate("Danube?", HITS)
    assert not ok.degraded and ok.text == "late [1]" and ok.generator == "slow"


def test_generate_many_degrades_every_answer_when_the_batch_fails() -> None:
    answers = FallbackGenerator(Failing()).generate_many(["Danube?", "Chess?"], [HITS, HITS])
    assert [a.degraded for a in answers] == [True, True]
    assert answers[1].citations == (HITS[2],)


def test_stream_falls_back_before_the_first_piece_only() -> None:
    expected = ExtractiveGenerator().generate("Danube delta?", HITS).text
    assert "".join(FallbackGenerator(Failing()).stream("Danube delta?", HITS)) == expected
    assert "".join(FallbackGenerator(Slow(2.0), timeout_s=0.2).stream("Danube delta?", HITS)) == expected
    stream = FallbackGenerator(BreaksMidStream()).stream("Danube delta?", HITS)
    assert next(stream) == "The answer is"
    with pytest.raises(GeneratorError, match="mid-stream.*connection reset"):
        next(stream)


def test_abandoned_stream_stops_its_pump() -> None:
    class Endless:
        name = "endless"
        produced = 0

        def generate(self, question: str, hits: Sequence[Hit]) -> Answer:  # pragma: no cover - unused
            raise AssertionError

        def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
            while True:
                Endless.produced += 1
                yield "x"

    before = threading.active_count()
    stream = FallbackGenerator(Endless()).stream("q", HITS)
    assert next(stream) == "x"
    stream.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before
    assert Endless.produced < 1000


# -- the factory --------------------------------------------------------------------------------------------


def test_make_generator_builds_by_name_and_lists_valid_choices() -> None:
    generator = make_generator("extractive", max_sentences=2)
    assert isinstance(generator, Generator)
    assert isinstance(generator, ExtractiveGenerator) and generator.max_sentences == 2
    with pytest.raises(ConfigError, match="valid generators: extractive, local, openai, vllm"):
        make_generator("gpt")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"unknown option\(s\) temprature.*max_sentences"):
        make_generator("extractive", temprature=0.3)
    assert GENERATOR_NAMES == ("extractive", "local", "openai", "vllm")


def test_from_settings_wraps_model_generators_in_the_fallback() -> None:
    settings = GeneratorSettings(name="openai", base_url="http://127.0.0.1:9/v1", model="m", timeout_s=7)
    generator = from_settings(settings)
    assert isinstance(generator, FallbackGenerator) and generator.timeout_s == 7
    assert (
        isinstance(generator.primary, OpenAIGenerator)
        and generator.primary.base_url == "http://127.0.0.1:9/v1"
    )
    assert isinstance(from_settings(GeneratorSettings(name="extractive")), ExtractiveGenerator)


def test_importing_the_package_loads_no_model_library() -> None:
    import subprocess

    code = (
        "import sys, ragkit; before = set(sys.modules); import ragkit.connectors.generators; "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in ('torch', 'transformers', 'httpx', 'vllm') if m in new))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_auto_is_extractive_on_a_cpu_and_the_server_when_one_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from ragkit.connectors.generators import resolve_name

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert GeneratorSettings().name == "auto"
    assert resolve_name(GeneratorSettings()) == "extractive"
    assert isinstance(from_settings(GeneratorSettings()), ExtractiveGenerator)
    served = from_settings(GeneratorSettings(base_url="http://127.0.0.1:9/v1", model="m"))
    assert isinstance(served, FallbackGenerator) and isinstance(served.primary, OpenAIGenerator)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_name(GeneratorSettings()) == "local"
    assert resolve_name(GeneratorSettings(name="extractive")) == "extractive"


def test_extractive_draws_on_several_passages_and_reads_pronouns_as_the_subject() -> None:
    """The answer sentence says "It" for its passage's subject; a passage that shares nothing is left out."""
    hits = [
        titled_hit(0, "Thumb Wrestling Federation", "Thumb Wrestling Federation is a children's series shown on "
                   "Cartoon Network. It ran for five seasons."),
        titled_hit(1, "Chess", "Chess is a board game for two players."),
        titled_hit(2, "Cartoon Network", "Cartoon Network is an American cable channel. It was founded by Betty "
                   "Cohen and launched in 1992."),
    ]
    answer = ExtractiveGenerator().generate("Thumb Wrestling Federation is on a network founded by who?", hits)
    assert answer.text.startswith("It was founded by Betty Cohen and launched in 1992. [1]")  # the answer first
    assert answer.citations[0] is hits[2] and hits[0] in answer.citations
    assert "board game" not in answer.text


def test_extractive_limits_sentences_and_takes_typographic_quotes_for_prose() -> None:
    text = "Victoria Falls (``The Smoke that Thunders'') is a waterfall on the Zambezi River."
    answer = ExtractiveGenerator().generate("Which waterfall is on the Zambezi?", [make_hit(0, text)])
    assert answer.text == f"{text} [1]"  # doubled backticks open a quotation; they are not code
    many = [make_hit(i, f"Copper fact number {i} is that copper conducts heat.") for i in range(6)]
    answer = ExtractiveGenerator(max_sentences=2).generate("Does copper conduct heat?", many)
    assert len(cited_numbers(answer.text)) == 2


def test_extractive_skips_code_that_quotes_the_question() -> None:
    """A usage example holds the question itself ("How are chunk ids kept stable?" in docs/python-api.md's code):
    assignments, method calls and ``print(`` lines are code, whatever words they share with the question."""
    code = (
        'answer = index.ask("how are chunk ids kept stable?", generator="extractive")\n'
        "print(answer.text)  # sentences with [1], citations\n"
        'hits = index.retrieve("how are chunk ids kept stable?", k=5)\n'
    )
    prose = "Chunk ids stay stable when a folder is indexed again: a chunk's id is a hash of its text."
    hits = [make_hit(0, code), make_hit(1, prose)]
    answer = ExtractiveGenerator().generate("How are chunk ids kept stable?", hits)
    assert answer.text == f"{prose} [1]" and list(answer.citations) == [hits[1]]
    for sentence in ("The index is kept in the folder given with `--index`.", "The index.html page lists the hits."):
        assert not not_prose(sentence), sentence


def test_the_lead_bonus_goes_to_the_first_sentence_of_prose_below_a_heading() -> None:
    """A documentation page's chunk opens with its heading; the sentence under it is the lead, as a Wikipedia
    passage's first sentence is, and it answers before another page's lead that shares fewer of the question's
    words ("What does ragkit eval measure?" over ragkit's own docs/)."""
    lead = (
        "`ragkit eval` measures retrieval the way the field does: recall@k, hit-rate@k, MRR, nDCG and MAP per mode,"
        " and query latency."
    )
    other = "Every metric of `ragkit eval` on the default mode, the start of the session to now."
    hits = [make_hit(0, f"# Evaluation\n\n{lead}"), make_hit(1, other)]
    answer = ExtractiveGenerator().generate("What does ragkit eval measure?", hits)
    assert answer.text.startswith(f"{lead} [1]"), answer.text


def test_extractive_skips_fenced_code_and_examples_that_quote_the_question() -> None:
    """A fenced block read as one sentence is code; a sentence that holds the question itself (an API example's
    request body) is an example of asking, not an answer."""
    fence = "```bash pip install 'ragkit[serve]' ragkit serve --index my-index ```"
    example = 'A batch, `{"queries": ["Which vector backends are there?"], "k": 1}`, answers the queries in order.'
    prose = "Three vector backends ship with ragkit: FAISS, Milvus and Chroma."
    assert not_prose(fence)
    hits = [make_hit(0, example), make_hit(1, f"{fence}\n\n{prose}")]
    answer = ExtractiveGenerator().generate("Which vector backends are there?", hits)
    assert answer.text == f"{prose} [1]" and list(answer.citations) == [hits[1]]


def test_a_keyword_query_inside_an_answer_sentence_is_no_quoted_question() -> None:
    """Only a question (it ends with "?") quoted whole marks an example; the words of a keyword query standing
    together in a sentence are that sentence's subject."""
    sentence = "A red apple pie bakes for an hour in the oven."
    hits = [make_hit(0, "Apple apple apple apple."), make_hit(1, sentence)]
    answer = ExtractiveGenerator().generate("red apple pie", hits)
    assert sentence in answer.text
