"""Graceful degradation: when a generator fails or takes too long, answer extractively and say so.

The user still gets cited sentences from the retrieved passages, marked ``degraded=True`` with the reason,
instead of an exception in the middle of a question-answering session.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from ragkit.connectors.generators.extractive import ExtractiveGenerator
from ragkit.connectors.generators.prompt import streamed_answer
from ragkit.errors import GeneratorError
from ragkit.protocols import Generator
from ragkit.types import Answer, Hit

logger = logging.getLogger(__name__)
T = TypeVar("T")
_END = object()


def describe_error(exc: BaseException) -> str:
    """``"TypeName: message"``, or the type's name alone when the message is empty."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def mark_degraded(answer: Answer, failed: str, why: str) -> Answer:
    """``answer``, written by a fallback because the ``failed`` generator failed (``why``), marked degraded."""
    reason = f"{failed} generator failed ({why}); answered by {answer.generator}"
    return dataclasses.replace(answer, degraded=True, reason=reason, meta={**answer.meta, "primary": failed})


def call_with_timeout(function: Callable[[], T], timeout_s: float | None) -> T:
    """``function()``, or TimeoutError after ``timeout_s`` seconds (the call goes on in a daemon thread)."""
    if timeout_s is None:
        return function()
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # handed back to the caller
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="ragkit-generate", daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class FallbackGenerator:
    """Wraps ``primary``; on any exception or after ``timeout_s`` returns ``fallback``'s answer, degraded.

    >>> generator = FallbackGenerator(OpenAIGenerator(), timeout_s=30)
    >>> answer = generator.generate(question, hits)   # server down: answer.degraded, answer.reason says why
    """

    def __init__(
        self, primary: Generator, fallback: Generator | None = None, timeout_s: float | None = None
    ) -> None:
        self.primary = primary
        self.fallback = fallback if fallback is not None else ExtractiveGenerator()
        self.timeout_s = timeout_s
        self.name = primary.name
        self.stream_degraded_reason = ""  # set when the fallback took over the last stream, so a caller can say so

    def _degraded(self, answer: Answer, exc: BaseException) -> Answer:
        degraded = mark_degraded(answer, self.primary.name, describe_error(exc))
        logger.warning("%s", degraded.reason)
        return degraded

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:
        try:
            return call_with_timeout(lambda: self.primary.generate(question, hits), self.timeout_s)
        except Exception as exc:
            return self._degraded(self.fallback.generate(question, hits), exc)

    def generate_many(
        self, questions: Sequence[str], hits_per_question: Sequence[Sequence[Hit]]
    ) -> list[Answer]:
        """The primary's batch when it succeeds; otherwise every answer comes from the fallback, degraded."""
        if len(questions) != len(hits_per_question):
            raise ValueError(f"{len(questions)} questions but {len(hits_per_question)} hit lists")
        batch = getattr(self.primary, "generate_many", None)
        try:
            if batch is not None:
                return call_with_timeout(lambda: batch(questions, hits_per_question), self.timeout_s)
            return [
                call_with_timeout(functools.partial(self.primary.generate, q, h), self.timeout_s)
                for q, h in zip(questions, hits_per_question, strict=True)
            ]
        except Exception as exc:
            return [
                self._degraded(self.fallback.generate(q, h), exc)
                for q, h in zip(questions, hits_per_question, strict=True)
            ]

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
        """The primary's stream; the fallback's when the primary fails or times out before its first piece.

        A failure after text was already sent cannot be taken back: it is raised as GeneratorError.
        """
        pieces: queue.Queue[Any] = queue.Queue(maxsize=64)
        stop = threading.Event()
        self.stream_degraded_reason = ""

        def pump() -> None:
            stream = self.primary.stream(question, hits)
            try:
                for piece in stream:
                    if stop.is_set():
                        break
                    pieces.put(piece)
                pieces.put(_END)
            except BaseException as exc:  # handed to the consumer
                pieces.put(exc)
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()

        threading.Thread(target=pump, name="ragkit-stream", daemon=True).start()
        started = False
        try:
            while True:
                try:
                    item = pieces.get(timeout=None if started else self.timeout_s)
                except queue.Empty:
                    item = TimeoutError(f"no text within {self.timeout_s:g} s")
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    if started:
                        raise GeneratorError(
                            f"{self.primary.name} generator failed mid-stream: {describe_error(item)}"
                        ) from item
                    logger.warning(
                        "%s stream failed (%s); streaming %s",
                        self.primary.name,
                        describe_error(item),
                        self.fallback.name,
                    )
                    self.stream_degraded_reason = describe_error(item)
                    yield from self.fallback.stream(question, hits)
                    return
                started = True
                yield item
        finally:
            stop.set()
            while not pieces.empty():  # let a pump blocked on a full queue see the stop flag
                pieces.get_nowait()

    def answer_from_stream(self, question: str, hits: Sequence[Hit], text: str) -> Answer:
        """The answer for the whole text the last :meth:`stream` produced: built as the primary builds it, or, when
        the fallback took over before the first piece, as the fallback does, marked degraded with the reason."""
        if not self.stream_degraded_reason:
            return streamed_answer(self.primary, question, hits, text)
        answer = streamed_answer(self.fallback, question, hits, text)
        return mark_degraded(answer, self.primary.name, self.stream_degraded_reason)
