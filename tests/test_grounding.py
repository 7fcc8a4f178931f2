"""Grounding: answer sentences attributed to the passages that support them, citations repaired, the rest flagged.

The logic is tested on the hashing fake embedder; the thresholds are tested with the real MiniLM, on sentences
written against real passages of hotpotqa-train100 (the calibration set the defaults were chosen on).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from cli_run import run_ragkit

from ragkit import Index, Settings
from ragkit.config import GroundingSettings
from ragkit.connectors.generators.extractive import NO_ANSWER, ExtractiveGenerator
from ragkit.errors import ConfigError
from ragkit.grounding import (
    attribute,
    attribute_many,
    claim_of,
    content_words,
    ground,
    ground_many,
    numbers,
    passage_sentences,
    sentence_spans,
)
from ragkit.testing import HashingEmbedder, ScriptedGenerator
from ragkit.types import Answer, Chunk, Hit


def make_hit(index: int, text: str, title: str = "") -> Hit:
    meta = {"title": title} if title else {}
    chunk = Chunk(id=f"chunk-{index}", doc_id=f"doc-{index}", text=text, start=0, end=len(text), meta=meta)
    return Hit(chunk=chunk, score=1.0 / (index + 1), retriever="test", source=f"file{index}.txt")


HITS = [
    make_hit(0, "The Danube is a river in Europe. It flows through Vienna and Budapest to the Black Sea."),
    make_hit(1, "Volcanoes erupt when magma rises. The Danube delta is a wetland in Romania."),
    make_hit(2, "Chess openings shape the middle game. The Sicilian Defence is a popular opening."),
]
INVENTED = "The Q3 budget for Kestrel was $1.1 million."


class CountingEmbedder:
    """The hashing embedder, counting its calls and the texts it embedded."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder(256)
        self.calls: list[list[str]] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner.embed_documents(texts)


def refuse(texts: Sequence[str]) -> np.ndarray:
    raise AssertionError(f"nothing here needs an embedding, yet {list(texts)[:3]} were sent")


def loose(answer: Answer, hits: Sequence[Hit] = HITS, embed=None) -> Answer:
    """Grounding with a threshold the hashing embedder's bag-of-words cosines reach (the logic, not calibration)."""
    return ground(answer, hits, embed or CountingEmbedder(), threshold=0.3, min_overlap=0.65)


def cited(answer: Answer) -> list[str]:
    return [hit.chunk.id for hit in answer.citations]


# -- splitting ------------------------------------------------------------------------------------------------


def test_answer_sentences_keep_their_markers_and_survive_abbreviations_and_lists():
    text = "Paris is in France. [1] It lies on the Seine [2]. Dr. Who met J. R. R. Tolkien c. 1950 in the U.S. today!"
    pieces = [text[s:e] for s, e in sentence_spans(text)]
    assert pieces == [
        "Paris is in France. [1]",
        "It lies on the Seine [2].",
        "Dr. Who met J. R. R. Tolkien c. 1950 in the U.S. today!",
    ]
    items = "Two rivers:\n1. The Danube [1]\n- The Rhine, which is long. [2]"
    assert [items[s:e] for s, e in sentence_spans(items)] == ["Two rivers:", "1. The Danube [1]",
                                                              "- The Rhine, which is long. [2]"]
    assert claim_of("1. The Danube [1, 2]") == "The Danube"
    assert sentence_spans("") == [] and sentence_spans("  \n ") == []


def test_passages_split_at_sentences_and_blank_lines_but_not_at_wrapped_lines():
    text = "# Vector search\n\nFAISS stores vectors\nin shards. Deletes remove them!\n\n"
    assert passage_sentences(text) == ["# Vector search", "FAISS stores vectors in shards.", "Deletes remove them!"]


def test_content_words_and_numbers():
    assert content_words("The rivers are flowing to the sea") == {"river", "flow", "sea"}
    assert numbers("6,960 people in 2011 and $1.1 million; Q3") == {"6960", "2011", "1.1", "3"}


# -- attribution ----------------------------------------------------------------------------------------------


def test_a_sentence_quoted_from_a_passage_is_supported_without_an_embedding():
    found = attribute(["It flows through Vienna and Budapest to the Black Sea. [3]"], HITS, refuse)
    assert found[0].supported and found[0].hits == (0,) and found[0].similarity == 1.0


def test_extractive_answers_are_always_supported_and_left_as_they_are():
    generator = ExtractiveGenerator()
    for question in ("Which cities does the Danube flow through?", "Where is the Danube delta?", "zzz qqq?",
                     "What is a popular chess opening?"):
        answer = generator.generate(question, HITS)
        grounded = ground(answer, HITS, refuse)
        assert grounded.unsupported == () and grounded.text == answer.text, question
        assert grounded.citations == answer.citations
    short = [make_hit(0, "# Title\n\nTiny. Bits.")]  # every sentence too short: the whole chunk is the answer
    answer = generator.generate("title?", short)
    assert ground(answer, short, refuse).unsupported == ()


def test_an_answer_with_nothing_to_check_has_nothing_unsupported():
    for text in (NO_ANSWER, "I do not know. [1]", "Yes.", "The passages do not say."):
        answer = ground(Answer(text, (), "scripted"), HITS, refuse)
        assert answer.unsupported == () and answer.meta["grounding"]["sentences"] == 0, text
    assert ground(Answer(NO_ANSWER, (), "extractive"), [], refuse).text == NO_ANSWER


def test_a_number_absent_from_the_passage_is_unsupported_however_similar_the_words():
    answer = loose(Answer("The Danube flows through Vienna and Budapest 2850 times.", (), "scripted"))
    assert answer.unsupported == ("The Danube flows through Vienna and Budapest 2850 times.",)
    ok = loose(Answer("The Danube flows through Vienna and Budapest.", (), "scripted"))
    assert ok.unsupported == () and cited(ok) == ["chunk-0"]


def test_the_title_of_a_passage_counts_as_its_words():
    hits = [make_hit(0, "It was founded in 1993 and plays in Adelaide.", title="Adelaide Lightning")]
    answer = loose(Answer("The Adelaide Lightning was founded in 1993.", (), "scripted"), hits)
    assert answer.unsupported == () and answer.text.endswith("[1]")


# -- citation repair ------------------------------------------------------------------------------------------


def test_an_uncited_supported_sentence_gets_its_citation():
    answer = loose(Answer("The Danube delta is a wetland in Romania.", (), "scripted"))
    assert answer.text == "The Danube delta is a wetland in Romania. [1]" and cited(answer) == ["chunk-1"]


def test_a_wrong_citation_is_replaced_where_the_model_put_it_and_numbers_follow_first_citation():
    # [1] (chess) is wrong for the delta, [2] right for the cities; [9] names no passage.
    answer = Answer(
        "The Danube delta is a wetland in Romania [1]. It flows through Vienna and Budapest [2, 9].",
        (HITS[2], HITS[0]), "scripted",
    )
    grounded = loose(answer)
    assert grounded.text == "The Danube delta is a wetland in Romania [1]. It flows through Vienna and Budapest [2]."
    assert cited(grounded) == ["chunk-1", "chunk-0"]
    assert grounded.meta["grounding"] == {"sentences": 2, "unsupported": 0, "corrected": 2}


def test_an_unsupported_sentence_keeps_its_text_loses_its_markers_and_is_listed():
    answer = Answer(f"It flows through Vienna and Budapest. [2] {INVENTED} [1]", HITS, "scripted")
    grounded = loose(answer)
    assert grounded.text == f"It flows through Vienna and Budapest. [1] {INVENTED}"
    assert grounded.unsupported == (INVENTED,) and cited(grounded) == ["chunk-0"]
    assert INVENTED in grounded.text


def test_citations_list_exactly_the_cited_hits_in_order_of_first_citation():
    # The scripted generator cites every hit; only the one the text needs stays.
    answer = Answer("Chess openings shape the middle game. [3] The Sicilian Defence is popular. [3]", HITS, "x")
    grounded = loose(answer)
    assert grounded.text == "Chess openings shape the middle game. [1] The Sicilian Defence is popular. [1]"
    assert cited(grounded) == ["chunk-2"]


def test_a_sentence_drawing_on_two_passages_cites_both():
    hits = [make_hit(0, "Sid Haig (born July 14, 1939) is an American actor."),
            make_hit(1, "Vic Darchinyan (born 7 January 1976) is an Armenian professional boxer.")]
    claim = "Sid Haig, the American actor born in 1939, is older than the Armenian boxer Vic Darchinyan, born in 1976."
    found = attribute([claim], hits, CountingEmbedder(), threshold=0.3, min_overlap=0.65)[0]
    assert found.supported and found.joint and set(found.hits) == {0, 1}
    grounded = ground(Answer(claim, (), "scripted"), hits, CountingEmbedder(), threshold=0.3, min_overlap=0.65)
    assert grounded.text.endswith("[1, 2]") and len(grounded.citations) == 2


def test_grounding_again_changes_nothing():
    answer = Answer(f"The Danube delta is a wetland in Romania [3]. {INVENTED} [1]", HITS, "scripted")
    once = loose(answer)
    assert loose(once) is not None and loose(once) == once  # already grounded: returned as it is
    again = loose(Answer(once.text, once.citations, once.generator))
    assert (again.text, again.citations, again.unsupported) == (once.text, once.citations, once.unsupported)


def test_a_batch_is_embedded_in_one_call_each_text_once():
    embed = CountingEmbedder()
    answers = [Answer("The Danube flows through Vienna.", (), "s"), Answer(INVENTED, (), "s"),
               Answer(NO_ANSWER, (), "s")]
    grounded = ground_many(answers, [HITS, HITS, HITS], embed, threshold=0.3, min_overlap=0.65)
    assert len(embed.calls) == 1 and len(embed.calls[0]) == len(set(embed.calls[0]))
    assert [a.unsupported for a in grounded] == [(), (INVENTED,), ()]
    with pytest.raises(ValueError, match="2 answers but 1 hit lists"):
        ground_many(answers[:2], [HITS], embed)
    assert attribute_many([], [], refuse) == []


def test_passage_labels_copied_from_the_prompt_do_not_count_against_a_sentence():
    leaked = "The answer is: (file1.txt) The Danube delta is a wetland in Romania."
    answer = loose(Answer(leaked, (), "local"))
    assert answer.unsupported == () and answer.text == leaked + " [1]"


def test_cited_hits_outside_the_hit_list_are_checked_too():
    answer = Answer("The Sicilian Defence is a popular opening. [1]", (HITS[2],), "scripted")
    grounded = ground(answer, HITS[:1], refuse)
    assert grounded.unsupported == () and cited(grounded) == ["chunk-2"]


# -- settings and wiring --------------------------------------------------------------------------------------


def test_grounding_settings_are_validated():
    assert Settings().grounding == GroundingSettings(enabled=True, threshold=0.55, min_overlap=0.65)
    with pytest.raises(ConfigError, match="grounding.threshold"):
        Settings().merged(grounding={"threshold": 1.5})
    with pytest.raises(ConfigError, match=r"unknown key 'grounding.treshold' \(valid keys: enabled, min_overlap"):
        Settings().merged(grounding={"treshold": 0.5})


def fake_index(tmp_path: Path, **grounding) -> Index:
    settings = Settings().merged(graph={"enabled": False}, grounding=grounding)
    index = Index.create(tmp_path / "idx", settings, embedder=HashingEmbedder(64))
    index.add_documents([])
    return index


def test_the_documented_grounding_settings_are_the_defaults():
    import re
    import tomllib

    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert block is not None
    assert tomllib.loads(block.group(1))["grounding"] == GroundingSettings().model_dump()


def test_answer_many_grounds_every_generators_answer_unless_disabled(tmp_path):
    from ragkit.pipelines.query import answer_many

    script = ScriptedGenerator([f"It flows through Vienna and Budapest to the Black Sea. {INVENTED} [2]"])
    with fake_index(tmp_path) as index:
        answer = answer_many(index.store, ["q"], [HITS], script)[0]
        assert answer.text == f"It flows through Vienna and Budapest to the Black Sea. [1] {INVENTED}"
        assert answer.unsupported == (INVENTED,) and cited(answer) == ["chunk-0"]
    with fake_index(tmp_path / "off", enabled=False) as index:
        raw = answer_many(index.store, ["q"], [HITS], script)[0]
        assert raw.unsupported == () and raw.citations == tuple(HITS) and "grounding" not in raw.meta


def test_the_cli_marks_unsupported_sentences(capsys):
    from ragkit.cli import _print_answer

    answer = loose(Answer(f"{INVENTED} The Danube delta is a wetland in Romania.", (), "scripted"))
    _print_answer(answer, HITS, explain=False)
    out = capsys.readouterr().out
    assert f"{INVENTED} [unsupported] The Danube delta is a wetland in Romania. [1]" in out
    assert "1 sentence supported by no source" in out and "[1] file1.txt" in out


# -- the real embedder: thresholds ----------------------------------------------------------------------------

# Sentences written against hotpotqa-train100 passages (ids in its corpus.jsonl): paraphrases and sentences that
# combine two passages must be supported, same-subject inventions flagged. The defaults were chosen on 62
# supported sentences (paraphrases and combinations) and 81 unsupported ones (49 same-subject inventions, 32
# unrelated); these are the hardest of them. The defaults support 61 and flag 80: the paraphrase they miss says
# "play their home games in Adelaide" for "based in the city of Adelaide" (cosine 0.75, overlap 0.57), the
# invention they accept uses only a passage's words ("Lee Roy Selmon was named coach of the Buccaneers after
# retiring.": 0.67, 0.71).
SUPPORTED = [
    (("p5", "p9"), "Lilu is a spirit in Akkadian mythology."),
    (("p10", "p15"), "Christopher Nolan is an English-American filmmaker who also produces and writes screenplays."),
    (("p10", "p15"), "Sathish Kalathil directs and produces films and documentaries in Malayalam."),
    (("p21", "p24"), "During the Middle Ages, Aristotle's books were translated from Greek or Arabic into Latin."),
    (("p90", "p93"), "Eddie Irvine finished second in the 1999 World Drivers' Championship while driving for Ferrari."),
    (("p126", "p129"), "Oettinger became Germany's best-selling beer in 2004, overtaking Krombacher."),
    (("p132", "p136"), "Young, New South Wales had 6,960 residents in the 2011 census."),
    (("p166", "p167"), "The March 2-3, 2012 tornado outbreak killed 41 people."),
    (("p240", "p241"), "Jeffrey Smart was an Australian painter whose precise paintings depicted urban landscapes."),
    (("p255", "p258"), "The Adelaide Lightning, a WNBL team based in Adelaide, was formed in 1993."),
    (("p263", "p268"), "James Stockdale received the Medal of Honor for his service in the Vietnam War."),
    (("p314", "p318"), "Charmed was first aired on The WB, from 1998 to 2006."),
    (("p326", "p329"), "Smithers first appears in the episode Homer's Odyssey."),
    (("p362", "p368"), "The Buccaneers chose Lee Roy Selmon of Oklahoma as their first draft pick in 1976."),
    (("p240", "p241"), "Jeffrey Smart, an expatriate Australian artist, painted cities in a precise style."),
    (("p10", "p15"), "Yes, Christopher Nolan and Sathish Kalathil are both film directors."),
    (("p170", "p172"), "Sid Haig, born in 1939, is older than Vic Darchinyan, born in 1976."),
    (("p41", "p46"), "No, Watertown International Airport is in New York while Alexandria International Airport is "
                     "in Louisiana."),
    (("p102", "p105"), "The Exies were formed in 1997, before Circus Diablo, which formed in 2006."),
]
UNSUPPORTED = [
    (("p10", "p15"), "Christopher Nolan won the Academy Award for Best Director in 2005."),
    (("p21", "p24"), "Haymo of Faversham translated the Bible into French in 1240."),
    (("p90", "p93"), "Formula One Arcade sold over a million copies on the PlayStation."),
    (("p110", "p117"), "Jagdish Mali was born in Mumbai and studied at the J. J. School of Art."),
    (("p126", "p129"), "Oettinger Brauerei was founded in 1731 in Bavaria."),
    (("p142", "p143"), "Mark King was born in Glasgow, Scotland."),
    (("p190", "p191"), "The Aristocats won an Oscar for Best Original Song."),
    (("p205", "p206"), "Rhiwallon ap Cynfyn died in the Battle of Hastings."),
    (("p233", "p237"), "Scott Buchholz was born in Brisbane and studied law."),
    (("p276", "p279"), "Dick Humbert was inducted into the Pro Football Hall of Fame in 1972."),
    (("p290", "p294"), "The Heinkel HD 23 was powered by a jet engine."),
    (("p330", "p334"), "Eddie the Eagle won a bronze medal in the 90 m event."),
    (("p255", "p258"), "The WNBL was founded in 1981 by the Australian government."),
    (("p394", "p399"), "Armando Iannucci studied medicine at Cambridge."),
    (("p394", "p399"), "Puneet Sira received an OBE for services to film."),
    (("p5", "p9"), INVENTED),
    (("p166", "p167"), INVENTED),
]


@pytest.fixture(scope="module")
def hotpot_passages(shared_data: Path) -> dict[str, Hit]:
    wanted = {pid for ids, _ in SUPPORTED + UNSUPPORTED for pid in ids}
    hits = {}
    with (shared_data / "hotpotqa-train100" / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            if row["_id"] in wanted:
                chunk = Chunk(row["_id"], row["_id"], row["text"], 0, len(row["text"]), {"title": row["title"]})
                hits[row["_id"]] = Hit(chunk, 1.0, "dense", row["_id"])
    return hits


@pytest.mark.slow
def test_default_thresholds_on_real_passages(minilm, hotpot_passages):
    cases = [(ids, s, True) for ids, s in SUPPORTED] + [(ids, s, False) for ids, s in UNSUPPORTED]
    found = attribute_many(
        [[sentence] for _, sentence, _ in cases],
        [[hotpot_passages[pid] for pid in ids] for ids, _, _ in cases],
        minilm.embed_documents,
    )
    wrong = [(s, f[0].similarity, f[0].overlap) for (_, s, expected), f in zip(cases, found, strict=True)
             if f[0].supported != expected]
    assert not wrong, wrong


SOURDOUGH = make_hit(0, "Sourdough bread rises with a wild yeast starter that needs feeding every day. The dough "
                        "ferments slowly overnight, which gives the bread its sour taste and an open crumb.")
GARDEN = make_hit(1, "Tomatoes need full sun and regular watering to ripen in summer.")
VECTORS = make_hit(2, "Deleting a document removes its vectors by id from the shard that holds them.")
PASSAGES = [GARDEN, SOURDOUGH, VECTORS]


@pytest.mark.slow
def test_a_paraphrase_is_attributed_to_its_source(minilm):
    found = attribute(["Sourdough rises because of a wild yeast starter, which has to be fed daily."], PASSAGES,
                      minilm.embed_documents)[0]
    assert found.supported and found.hits == (1,) and found.similarity >= 0.6, found
    assert found.sources == (SOURDOUGH.chunk.text.split(". ")[0] + ".",)


@pytest.mark.slow
def test_an_invented_fact_is_flagged(minilm):
    found = attribute([INVENTED, "Sourdough bread was invented in Paris in 1850."], PASSAGES, minilm.embed_documents)
    assert [f.supported for f in found] == [False, False], found
    answer = ground(Answer(f"{INVENTED} [2]", PASSAGES, "scripted"), PASSAGES, minilm.embed_documents)
    assert answer.unsupported == (INVENTED,) and answer.text == INVENTED and answer.citations == ()


@pytest.mark.slow
def test_a_correct_uncited_sentence_gets_its_citation_and_a_wrong_one_is_corrected(minilm):
    answer = Answer(
        "Tomatoes ripen in summer when they get full sun and are watered regularly. "
        "The dough ferments overnight, which makes the bread taste sour. [3]",
        PASSAGES, "scripted",
    )
    grounded = ground(answer, PASSAGES, minilm.embed_documents)
    assert grounded.text == (
        "Tomatoes ripen in summer when they get full sun and are watered regularly. [1] "
        "The dough ferments overnight, which makes the bread taste sour. [2]"
    )
    assert grounded.citations == (GARDEN, SOURDOUGH) and grounded.unsupported == ()


# -- end to end -----------------------------------------------------------------------------------------------

DOCUMENTS = {
    "bread.txt": SOURDOUGH.chunk.text,
    "garden.txt": GARDEN.chunk.text,
    "vectors.md": "# Deletes\n\n" + VECTORS.chunk.text,
}


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, minilm) -> Path:
    root = tmp_path_factory.mktemp("grounding")
    for name, text in DOCUMENTS.items():
        (root / "docs").mkdir(exist_ok=True)
        (root / "docs" / name).write_text(text)
    settings = Settings().merged(graph={"enabled": False})
    with Index.create(root / "idx", settings, embedder=minilm) as index:
        assert index.add([root / "docs"]).failed == 0
    return root


@pytest.mark.slow
def test_index_ask_grounds_a_scripted_answer(small_index, minilm):
    script = ScriptedGenerator(["The starter for sourdough is made of wild yeast and is fed every day. " + INVENTED])
    with Index.open(small_index / "idx", Settings().merged(graph={"enabled": False}), embedder=minilm) as index:
        answer = index.ask("How does sourdough bread rise?", k=3, generator=script)
    assert answer.unsupported == (INVENTED,)
    assert answer.text == (
        "The starter for sourdough is made of wild yeast and is fed every day. [1] " + INVENTED
    )
    assert len(answer.citations) == 1 and answer.citations[0].source.endswith("bread.txt")
    assert answer.meta["grounding"] == {"sentences": 2, "unsupported": 1, "corrected": 1}


@pytest.mark.slow
def test_ragkit_ask_json_reports_unsupported(small_index):
    result = run_ragkit("ask", "How does sourdough bread rise?", "--index", "idx", "--generator", "extractive",
                        "--json", "--k", "3", cwd=small_index)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["unsupported"] == [] and "[1]" in payload["answer"]
    assert payload["citations"][0]["source"].endswith("bread.txt") and "ground" in payload["timings_ms"]
