"""Fakes for testing code built on ragkit: a hashing embedder and a scripted generator.

They are for unit tests of orchestration (fast, deterministic, no model); quality tests use real models.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

from ragkit.types import Answer, Hit

_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Bag-of-words feature hashing into ``dim`` dimensions, L2-normalized. Texts sharing words are close.

    >>> HashingEmbedder(64).embed_documents(["red apple", "green apple"]).shape
    (2, 64)
    """

    def __init__(self, dim: int = 64, max_tokens: int = 128) -> None:
        self.dim = dim
        self.max_tokens = max_tokens
        self.name = f"hashing-{dim}"

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _TOKEN.finditer(text)]

    def count_tokens(self, text: str) -> int:
        return len(_TOKEN.findall(text))

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in _TOKEN.findall(text.lower()):
                h = zlib.crc32(token.encode("utf-8"))
                out[row, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
            if not norm:
                out[row, 0] = 1.0
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_documents(texts)


class ScriptedGenerator:
    """Answers with the given texts in turn (cycling), citing every hit; records the questions it saw."""

    name = "scripted"

    def __init__(self, answers: Sequence[str] = ("scripted answer [1]",), fail: Exception | None = None) -> None:
        self.answers = list(answers)
        self.fail = fail
        self.questions: list[str] = []

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:
        if self.fail is not None:
            raise self.fail
        self.questions.append(question)
        text = self.answers[(len(self.questions) - 1) % len(self.answers)]
        return Answer(text=text, citations=tuple(hits), generator=self.name)

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
        yield from re.findall(r"\S+\s*", self.generate(question, hits).text)

    def generate_many(self, questions: Sequence[str], hits: Sequence[Sequence[Hit]]) -> list[Answer]:
        return [self.generate(q, h) for q, h in zip(questions, hits, strict=False)]
