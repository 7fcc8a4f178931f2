"""Concurrent requests coalesced into batched calls, and the one lock the embedder needs between threads.

:class:`MicroBatcher` queues items by key (for retrieval: mode, k, where and rerank, which one
``Index.retrieve_many`` call must share) and hands each batch to a function run on its own worker thread. A
batch leaves when it holds ``max_batch`` items or when its oldest item has waited ``max_wait_ms``; items that
arrive while a batch runs wait for the next one, so under load batches fill without any added wait, and a
lone request waits at most ``max_wait_ms``.

Why one worker thread for retrieval: ``Index`` may be read from several threads (the catalog and the store
serialize their own state behind locks, and ``tests/test_concurrency.py`` queries one open index from many
threads), but those locks serialize most of a query anyway, and a batch of 32 queries costs little more than
one; one thread running batched calls is both safe and the fastest use of the embedder.

:class:`SerializedEmbedder` wraps the index's embedder in a lock: a Hugging Face fast tokenizer raises
"Already borrowed" when two threads use it at once, and the embedder is used by the batcher's thread
(queries), generation threads (grounding an answer) and the upload writer (documents).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from ragkit.errors import EmbedderMismatchError
from ragkit.protocols import Embedder

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Group(Generic[Item, Result]):
    """Items waiting under one key, oldest first."""

    first_at: float
    items: list[tuple[Item, asyncio.Future[Result]]] = field(default_factory=list)


class MicroBatcher(Generic[Item, Result]):
    """``await batcher.submit(key, item)`` returns ``run(key, items)[i]`` for its item, computed in a batch.

    ``run`` gets every queued item of one key (at most ``max_batch``) and returns one result per item, in order;
    it runs on the batcher's own thread, one batch at a time. An exception fails every item of its batch.
    ``observe(size)`` is told each batch's size, ``depth(n)`` the number of items waiting after each change.

    >>> batcher = MicroBatcher(lambda key, queries: index.retrieve_many(queries, *key), max_batch=32, max_wait_ms=5)
    >>> hits = await batcher.submit((5, "hybrid"), "who founded it?")
    """

    def __init__(
        self,
        run: Callable[[Any, list[Item]], Sequence[Result]],
        *,
        max_batch: int,
        max_wait_ms: float,
        name: str = "ragkit-batch",
        observe: Callable[[int], None] | None = None,
        depth: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1 (got {max_batch})")
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms / 1000)
        self._observe = observe or (lambda size: None)
        self._depth = depth or (lambda count: None)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._groups: dict[Hashable, _Group[Item, Result]] = {}  # insertion order: oldest group first
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending = 0
        self.batches: list[int] = []  # recent batch sizes (bounded), for tests and benchmarks

    @property
    def pending(self) -> int:
        """Items queued and not yet handed to ``run``."""
        return self._pending

    async def submit(self, key: Hashable, item: Item) -> Result:
        """Queue ``item`` under ``key`` and wait for its result."""
        if self._task is None or self._task.done():
            self._start()
        assert self._arrived is not None
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(time.monotonic())
        group.items.append((item, future))
        self._pending += 1
        self._depth(self._pending)
        self._arrived.set()
        return await future

    async def submit_many(self, key: Hashable, items: Sequence[Item]) -> list[Result]:
        """Several items under one key (a request that is itself a batch); they may share batches with others."""
        return list(await asyncio.gather(*(self.submit(key, item) for item in items)))

    def _start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._dispatch(), name="ragkit-batcher")

    async def _dispatch(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._groups:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            key, group = next(iter(self._groups.items()))
            deadline = group.first_at + self.max_wait_s
            while len(group.items) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch = group.items[: self.max_batch]
            del group.items[: self.max_batch]
            if not group.items:
                del self._groups[key]
            else:  # the rest goes to the back of the line, counted as waiting from now
                del self._groups[key]
                group.first_at = time.monotonic() - self.max_wait_s
                self._groups[key] = group
            self._pending -= len(batch)
            self._depth(self._pending)
            live = [(item, future) for item, future in batch if not future.done()]  # a client gone: skip it
            if not live:
                continue
            self._observe(len(live))
            self.batches = [*self.batches[-999:], len(live)]
            try:
                results = await loop.run_in_executor(self._executor, self._run, key, [item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except Exception as exc:  # every waiter of this batch gets the error
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def aclose(self) -> None:
        """Stop dispatching (waiters still queued get CancelledError) and release the worker thread."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for group in self._groups.values():
            for _, future in group.items:
                future.cancel()
        self._groups.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


class SerializedEmbedder:
    """An index's embedder, loaded on first use (or by :meth:`load`) and used by one thread at a time.

    ``name`` and ``dim`` are the manifest's, known before the model loads, so ``Index.open(path,
    embedder=SerializedEmbedder(...))`` is instant and the server can answer ``/healthz`` while the model loads.

    >>> embedder = SerializedEmbedder("all-MiniLM-L6-v2", 384, lambda: make_embedder("all-MiniLM-L6-v2"))
    """

    def __init__(self, name: str, dim: int, make: Callable[[], Embedder]) -> None:
        self.name = name
        self.dim = dim
        self._make = make
        self._model: Embedder | None = None
        self._lock = threading.RLock()

    def load(self) -> Embedder:
        """The model, loaded now if it was not (its dimension must be the index's)."""
        with self._lock:
            if self._model is None:
                model = self._make()
                if model.dim != self.dim:
                    raise EmbedderMismatchError(
                        f"embedder {self.name!r} now has dimension {model.dim}, the index has {self.dim}"
                    )
                self._model = model
            return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def max_tokens(self) -> int:
        return int(self.load().max_tokens)

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return self.load().count_tokens(text)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        with self._lock:
            return self.load().token_offsets(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self.load().embed_documents(texts)

    def embed_query(self, text: str) -> np.ndarray:
        with self._lock:
            return self.load().embed_query(text)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self.load().embed_queries(texts)
