"""Per-key rate and concurrency limits with fair queueing, so one tenant flooding the server cannot starve others.

A request asks ``FairLimiter.slot(principal)`` for a slot and holds it while it runs::

    limiter = FairLimiter(max_concurrent=64, default_rate_per_s=50, default_max_concurrent_per_key=16, max_queue=1024)
    try:
        async with limiter.slot(principal):
            ...                              # the request's work
    except RateLimited as exc:
        ...                                  # 429 with Retry-After: exc.retry_after

Three limits apply, cheapest first:

- **queue**: at most ``max_queue`` requests wait in total and at most ``max_queue_per_key`` of them come from one
  key (by default half the queue, so one flooding key always leaves room for others); beyond that, RateLimited.
- **rate**: each key has a token bucket of ``rate_per_s`` tokens a second holding at most ``max(1, rate_per_s)``
  (the burst); a request with no token left is refused with the time until the next one.
- **concurrency**: at most ``max_concurrent`` requests run at once, and at most the key's ``max_concurrent`` of
  one key. Requests over either cap wait.

When a slot frees, the waiting request admitted next comes from the tenant (or, for principals without one, the
key) served least recently: round-robin across tenants, and a tenant that has not been served for a while goes
first. A tenant with 200 requests waiting therefore waits behind its own requests, while another tenant's request
takes the next free slot.

Everything runs on one asyncio event loop (no threads, no locks): every state change happens between awaits.
A waiter cancelled while it waits (the client went away) leaves the queue; one cancelled just as it was admitted
hands its slot straight back.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, Literal

from ragkit.errors import ConfigError
from ragkit.serve.auth import Principal

QUEUE_RETRY_AFTER_S: Final = 1.0
"""Retry-After for a full queue: long enough for a batch of requests to finish, short enough to stay responsive."""


class RateLimited(Exception):
    """A request refused by a limit; the server answers 429 with ``Retry-After: retry_after`` (seconds).

    ``reason`` says which limit: ``"rate"`` (the key's requests per second) or ``"queue"`` (too many waiting).
    """

    def __init__(self, message: str, retry_after: float, reason: Literal["rate", "queue"] = "rate") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.reason: Literal["rate", "queue"] = reason


@dataclass
class _KeyState:
    """One key's token bucket and counts. ``rate`` and ``cap`` follow the principal's latest limits."""

    tokens: float
    updated: float
    rate: float | None
    cap: int | None
    active: int = 0
    waiting: int = 0

    def has_room(self) -> bool:
        return self.cap is None or self.active < self.cap


@dataclass(eq=False)
class _Waiter:
    seq: int
    key: str
    group: str
    future: asyncio.Future[None] = field(repr=False)
    queued: bool = True


class FairLimiter:
    """Admits requests under a global concurrency cap, per-key rate and concurrency limits, fairly across tenants.

    ``default_rate_per_s`` and ``default_max_concurrent_per_key`` apply to principals whose own limits are None
    (None: unlimited). ``clock`` is the monotonic time source of the token buckets (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        max_concurrent: int,
        default_rate_per_s: float | None,
        default_max_concurrent_per_key: int | None,
        max_queue: int,
        max_queue_per_key: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be a whole number of at least 1, not {max_concurrent!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise ConfigError(f"max_queue must be a whole number of at least 0, not {max_queue!r}")
        if default_rate_per_s is not None and not (math.isfinite(default_rate_per_s) and default_rate_per_s > 0):
            raise ConfigError(f"default_rate_per_s must be a positive number or None, not {default_rate_per_s!r}")
        if default_max_concurrent_per_key is not None and default_max_concurrent_per_key < 1:
            raise ConfigError(
                f"default_max_concurrent_per_key must be at least 1 or None, not {default_max_concurrent_per_key!r}"
            )
        if max_queue_per_key is not None and max_queue_per_key < 0:
            raise ConfigError(f"max_queue_per_key must be at least 0 or None, not {max_queue_per_key!r}")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.max_queue_per_key = max(1, max_queue // 2) if max_queue_per_key is None else max_queue_per_key
        self.default_rate_per_s = default_rate_per_s
        self.default_max_concurrent_per_key = default_max_concurrent_per_key
        self._clock = clock
        self._active = 0
        self._waiting = 0
        self._keys: dict[str, _KeyState] = {}
        # group (tenant, or key without a tenant) -> key -> its waiters, oldest first
        self._queues: dict[str, dict[str, deque[_Waiter]]] = {}
        self._last_served: dict[str, int] = {}  # group -> admission number of its latest admission
        self._admissions = itertools.count()
        self._sequence = itertools.count()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a slot now (the ``queue depth`` metric)."""
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Requests holding a slot now."""
        return self._active

    def slot(self, principal: Principal) -> AbstractAsyncContextManager[None]:
        """Wait for a slot for ``principal``'s request and hold it for the ``async with`` block.

        Raises RateLimited at once when the key is over its rate or the queue (or the key's share of it) is full.
        """
        return self._slot(principal)

    @asynccontextmanager
    async def _slot(self, principal: Principal) -> AsyncIterator[None]:
        await self._acquire(principal)
        try:
            yield
        finally:
            self._release(principal.name)

    # -- admission -------------------------------------------------------------------------------------------

    async def _acquire(self, principal: Principal) -> None:
        key = principal.name
        group = f"tenant:{principal.tenant}" if principal.tenant is not None else f"key:{key}"
        state = self._state(principal)
        # While a global slot is free no admissible request waits (_dispatch keeps it so), so a request that
        # fits now is admitted now, and one that does not fit has to queue.
        runs_now = self._active < self.max_concurrent and state.has_room()
        if not runs_now:
            if self._waiting >= self.max_queue:
                raise RateLimited(
                    f"server busy: {self._waiting} requests already waiting", QUEUE_RETRY_AFTER_S, "queue"
                )
            if state.waiting >= self.max_queue_per_key:
                raise RateLimited(
                    f"key {key!r} has {state.waiting} requests waiting, its share of the queue",
                    QUEUE_RETRY_AFTER_S,
                    "queue",
                )
        self._take_token(key, state)
        if runs_now:
            self._admit(group, state)
            return
        waiter = _Waiter(next(self._sequence), key, group, asyncio.get_running_loop().create_future())
        self._queues.setdefault(group, {}).setdefault(key, deque()).append(waiter)
        self._waiting += 1
        state.waiting += 1
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self._release(key)  # admitted just as the client went away: the slot is ours to give back
            else:
                self._unqueue(waiter)  # _dispatch may have dropped it already
            raise

    def _state(self, principal: Principal) -> _KeyState:
        rate = principal.rate_per_s if principal.rate_per_s is not None else self.default_rate_per_s
        cap = principal.max_concurrent if principal.max_concurrent is not None else self.default_max_concurrent_per_key
        state = self._keys.get(principal.name)
        if state is None:
            state = _KeyState(tokens=_burst(rate), updated=self._clock(), rate=rate, cap=cap)
            self._keys[principal.name] = state
        state.rate, state.cap = rate, cap
        return state

    def _take_token(self, key: str, state: _KeyState) -> None:
        """Spend one token of the key's bucket, or raise RateLimited with the time until the next token."""
        if state.rate is None:
            return
        now = self._clock()
        state.tokens = min(_burst(state.rate), state.tokens + (now - state.updated) * state.rate)
        state.updated = now
        if state.tokens < 1.0:
            wait = (1.0 - state.tokens) / state.rate
            raise RateLimited(f"key {key!r} is over its rate of {state.rate:g} requests/s", wait, "rate")
        state.tokens -= 1.0

    def _admit(self, group: str, state: _KeyState) -> None:
        self._active += 1
        state.active += 1
        self._last_served[group] = next(self._admissions)

    def _release(self, key: str) -> None:
        self._active -= 1
        self._keys[key].active -= 1
        self._dispatch()

    def _unqueue(self, waiter: _Waiter) -> None:
        if not waiter.queued:
            return
        waiter.queued = False
        keys = self._queues[waiter.group]
        keys[waiter.key].remove(waiter)
        if not keys[waiter.key]:
            del keys[waiter.key]
            if not keys:
                del self._queues[waiter.group]
        self._waiting -= 1
        self._keys[waiter.key].waiting -= 1

    def _dispatch(self) -> None:
        """Fill free slots from the queue: least recently served group first, its oldest admissible waiter."""
        while self._active < self.max_concurrent and self._waiting:
            chosen: _Waiter | None = None
            chosen_stamp = math.inf
            for group, keys in self._queues.items():
                stamp = self._last_served.get(group, -1)
                if stamp >= chosen_stamp:
                    continue
                heads = [queue[0] for key, queue in keys.items() if self._keys[key].has_room()]
                if heads:
                    chosen, chosen_stamp = min(heads, key=lambda w: w.seq), stamp
            if chosen is None:
                return  # every waiter's key is at its own concurrency cap
            self._unqueue(chosen)
            if chosen.future.cancelled():
                continue  # its task is being cancelled and has not run its handler yet
            self._admit(chosen.group, self._keys[chosen.key])
            chosen.future.set_result(None)


def _burst(rate: float | None) -> float:
    """A bucket holds a second's worth of tokens, and at least one so a slow rate still admits a request."""
    return 1.0 if rate is None else max(1.0, rate)
