"""The query pipeline, top to bottom: retrieve (a mode from the registry) -> hits -> answer -> grounding.

>>> hits = retrieve_many(store, ["who founded it?"], k=5, mode="hybrid", where=None)
>>> answers = answer_many(store, ["who founded it?"], hits, generator=None)
>>> stream = stream_answer(store, "who founded it?", hits[0], generator=None)   # text deltas, then .answer
"""

from __future__ import annotations

import collections.abc
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ragkit import linalg
from ragkit.errors import ConfigError, GeneratorError
from ragkit.protocols import Generator, Reranker, Retriever, Scored
from ragkit.registry import retrieval_modes
from ragkit.types import Answer, Hit

if TYPE_CHECKING:
    from ragkit.store import IndexStore

logger = logging.getLogger(__name__)


def check_mode(mode: str) -> None:
    if mode not in retrieval_modes:
        raise ConfigError(f"unknown retrieval mode {mode!r} (valid: {', '.join(retrieval_modes.names())})")


def retriever(store: IndexStore, mode: str) -> Retriever:
    """The open index's retriever for ``mode``, built on first use and kept with the index."""
    check_mode(mode)
    factory = retrieval_modes.get(mode)
    built: Retriever = store.part(f"mode:{mode}", lambda: factory(store))
    return built


def reranker(store: IndexStore, rerank: bool | None = None) -> Reranker | None:
    """The open index's cross-encoder when reranking is on, built on first use and kept with the index; None
    when off. ``rerank`` turns it on or off for one call; None: on when ``retrieval.rerank`` names a model."""
    if rerank is not None and not isinstance(rerank, bool):
        raise ConfigError(f"rerank must be True, False or None (got {rerank!r}); the model is retrieval.rerank")
    model = store.settings.retrieval.rerank
    if rerank is False or (rerank is None and model is None):
        return None
    if model is None:
        raise ConfigError(
            "rerank=True: no cross-encoder is configured; set retrieval.rerank to a local model directory or an "
            "installed package that carries one ([retrieval] rerank = ... in ragkit.toml, or --rerank MODEL)"
        )
    from ragkit.connectors.rerankers import CrossEncoderReranker

    device = store.settings.embedder.device
    built: Reranker = store.part(f"reranker:{model}", lambda: CrossEncoderReranker(model, device=device))
    return built


def retrieve_many(
    store: IndexStore,
    queries: Sequence[str],
    k: int,
    mode: str,
    where: Mapping[str, Any] | None,
    rerank: bool | None = None,
) -> list[list[Hit]]:
    """The top ``k`` hits of each query in ``mode``.

    With reranking on (``rerank``, else whether ``retrieval.rerank`` is set) the mode retrieves
    ``max(k, retrieval.rerank_candidates)`` hits and the cross-encoder keeps the best ``k`` of them.
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1 (got {k})")
    cross_encoder = reranker(store, rerank)
    if not queries:
        return []
    depth = k if cross_encoder is None else max(k, store.settings.retrieval.rerank_candidates)
    found = retriever(store, mode)
    search_hits = getattr(found, "search_hits", None)  # a mode that reads its chunks along with its ranking
    products = linalg.products_scope()
    try:
        if search_hits is not None:
            hits: list[list[Hit]] = search_hits(list(queries), depth, where)
        else:
            hits = to_hits(store, found.search(list(queries), depth, where), mode)
    finally:
        linalg.products_done(products)
    return hits if cross_encoder is None else cross_encoder.rerank_many(list(queries), hits, k)


def search_by_vector(
    store: IndexStore, vectors: np.ndarray, k: int, where: Mapping[str, Any] | None
) -> list[list[Hit]]:
    """Dense hits for query vectors the caller embedded (the LangChain adapter's ``*_by_vector``)."""
    from ragkit.pipelines.retrievers import DenseRetriever

    if k < 1:
        raise ConfigError(f"k must be at least 1 (got {k})")
    dense: DenseRetriever = store.part("dense-vectors", lambda: DenseRetriever(store))
    products = linalg.products_scope()
    try:
        linalg.products_beside(store.embedder)  # the products retrieve() makes for this index, to the last bit
        return dense.hits_of_vectors(vectors, k, where)
    finally:
        linalg.products_done(products)


def to_hits(store: IndexStore, found: Sequence[Sequence[Scored]], mode: str) -> list[list[Hit]]:
    """Ranked chunk ids become hits with their chunk and source; chunks deleted meanwhile are left out."""
    wanted = list(dict.fromkeys(cid for row in found for cid, _, _ in row))
    chunks = store.catalog.chunks_with_sources(wanted) if wanted else {}
    results = []
    for row in found:
        hits = []
        for cid, score, explain in row:
            looked_up = chunks.get(cid)
            if looked_up is None:  # deleted between search and look-up
                continue
            hits.append(Hit(looked_up[0], score, mode, looked_up[1], explain))
        results.append(hits)
    return results


def resolve_generator(store: IndexStore, generator: Generator | str | None = None) -> Generator:
    """A generator instance from a name (or the configured one); model-backed ones degrade to extractive."""
    from ragkit.connectors.generators import from_settings

    if generator is None or isinstance(generator, str):
        settings = store.settings.generator
        if generator is not None:
            settings = store.settings.merged(generator={"name": generator}).generator
        return from_settings(settings)
    return generator


def ground_answers(store: IndexStore, answers: Sequence[Answer], hits: Sequence[Sequence[Hit]]) -> list[Answer]:
    """Each answer checked against its hits with the index's embedder (``ragkit.grounding``), as configured.

    The embedder is asked for only when some sentence is not quoted word for word from a passage, so grounding
    an extractive answer never loads it, and a model generator's answer uses the one retrieval loaded.
    """
    settings = store.settings.grounding
    if not settings.enabled:
        return list(answers)
    from ragkit.grounding import ground_many

    def embed(texts: Sequence[str]) -> np.ndarray:
        return store.embedder.embed_documents(texts)

    return ground_many(answers, hits, embed, threshold=settings.threshold, min_overlap=settings.min_overlap)


def answer_many(
    store: IndexStore, questions: Sequence[str], hits: Sequence[Sequence[Hit]], generator: Generator | str | None
) -> list[Answer]:
    """One answer per question from its hits, grounded (see :func:`ground_answers`)."""
    resolved = resolve_generator(store, generator)
    generate_many = getattr(resolved, "generate_many", None)
    if generate_many is not None:
        answers = list(generate_many(list(questions), list(hits)))
    else:
        answers = [resolved.generate(q, h) for q, h in zip(questions, hits, strict=False)]
    return ground_answers(store, answers, hits)


MID_STREAM_SEPARATOR = "\n\n--- the {generator} generator failed mid-stream; the extractive answer follows ---\n\n"


class AnswerStream:
    """An answer's text as it is generated (iterate for the deltas), then the checked answer (``answer``).

    The deltas are the generator's text with its ``[n]`` markers renumbered as they complete, so that ``[n]`` is
    ``answer.citations[n - 1]`` as it is in :meth:`ragkit.Index.ask`'s answer; ``draft`` is what they joined to.
    Once they are used up, ``answer`` is the Answer built from the whole text as the generator's ``generate`` builds
    it, then grounded (``ragkit.grounding``): citations repaired, ``unsupported`` set. Grounding can still rewrite
    a marker (a wrong citation corrected, the markers of an unsupported sentence removed): ``answer.text !=
    draft`` then. Reading ``answer`` before the end consumes the deltas left (unseen), so ``stream.answer`` alone
    is the answer ``ask`` gives; after :meth:`close` it raises RuntimeError.

    A generator that fails is answered for as ``FallbackGenerator`` does (every configured model generator is one,
    and streams its fallback's text when it fails before its first delta): the stream goes on with
    :data:`MID_STREAM_SEPARATOR` (when text was already sent) and the extractive answer's text, and ``answer`` is
    that extractive answer, ``degraded=True`` with the reason; ``draft`` is then its text alone.

    >>> stream = index.stream("How does sourdough rise?")
    >>> for delta in stream:
    ...     print(delta, end="", flush=True)
    >>> stream.answer.citations, stream.answer.unsupported
    """

    def __init__(self, store: IndexStore, question: str, hits: Sequence[Hit], generator: Generator) -> None:
        self.question = question
        self.hits = list(hits)
        self.generator = generator
        self.draft = ""
        self._store = store
        self._answer: Answer | None = None
        self._deltas = self._generate()

    def __iter__(self) -> AnswerStream:
        return self

    def __next__(self) -> str:
        return next(self._deltas)

    @property
    def answer(self) -> Answer:
        """The checked answer; reading it before the deltas are used up consumes the rest of them."""
        for _ in self._deltas:
            pass
        if self._answer is None:
            raise RuntimeError("the answer stream was closed before its end: it has no answer")
        return self._answer

    def close(self) -> None:
        """Stop generating (a local model stops after its current step); ``answer`` then raises RuntimeError."""
        self._deltas.close()

    def _generate(self) -> collections.abc.Generator[str, None, None]:
        from ragkit.connectors.generators.prompt import StreamedCitations, streamed_answer

        citations = StreamedCitations(self.hits)
        failure: Exception | None = None
        pieces = None
        try:
            pieces = iter(self.generator.stream(self.question, self.hits))
            for piece in pieces:
                settled = citations.feed(piece)
                if settled:
                    self.draft += settled
                    yield settled
        except Exception as exc:  # the generator failed: answer extractively, as FallbackGenerator does
            failure = exc
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        if failure is None:
            rest = citations.finish()
            if rest:
                self.draft += rest
                yield rest
            answer = streamed_answer(self.generator, self.question, self.hits, citations.text)
        else:
            answer = self._extractive(failure)
            if self.draft:
                yield MID_STREAM_SEPARATOR.format(generator=self.generator.name)
            self.draft = answer.text
            yield answer.text
        self._answer = ground_answers(self._store, [answer], [self.hits])[0]

    def _extractive(self, failure: Exception) -> Answer:
        """The extractive answer, degraded because the generator failed with ``failure``."""
        from ragkit.connectors.generators.extractive import ExtractiveGenerator
        from ragkit.connectors.generators.fallback import describe_error, mark_degraded

        why: BaseException = failure
        cause = failure.__cause__
        if isinstance(failure, GeneratorError) and cause is not None and str(failure).endswith(describe_error(cause)):
            why = cause  # FallbackGenerator's "<name> failed mid-stream: <cause>": name the cause once
        answer = ExtractiveGenerator().generate(self.question, self.hits)
        answer = mark_degraded(answer, self.generator.name, describe_error(why))
        logger.warning("%s", answer.reason)
        return answer


def stream_answer(
    store: IndexStore, question: str, hits: Sequence[Hit], generator: Generator | str | None
) -> AnswerStream:
    """The answer to ``question`` from ``hits`` as it is generated, then checked (see :class:`AnswerStream`).

    Nothing is generated until the first delta is asked for.
    """
    return AnswerStream(store, question, hits, resolve_generator(store, generator))
