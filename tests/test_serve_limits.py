"""Rate and concurrency limits with fair queueing (ragkit.serve.limits), driven on one event loop.

Rates run on a fake clock, so they are exact; concurrency and fairness are checked through the order in which
requests are admitted, not through timings."""

from __future__ import annotations

import asyncio

import pytest

from ragkit.errors import ConfigError
from ragkit.serve.auth import LOCAL_PRINCIPAL, Principal
from ragkit.serve.limits import QUEUE_RETRY_AFTER_S, FairLimiter, RateLimited

READ = frozenset({"read"})


def key(name: str, tenant: str | None = None, *, rate: float | None = None, cap: int | None = None) -> Principal:
    return Principal(
        name, tenant if tenant is not None else f"tenant-{name}", READ, rate_per_s=rate, max_concurrent=cap
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(**kwargs: object) -> FairLimiter:
    options: dict[str, object] = {
        "max_concurrent": 4,
        "default_rate_per_s": None,
        "default_max_concurrent_per_key": None,
        "max_queue": 1000,
    }
    options.update(kwargs)
    return FairLimiter(**options)  # type: ignore[arg-type]


async def enter_and_leave(lim: FairLimiter, principal: Principal) -> None:
    async with lim.slot(principal):
        pass


async def refusal(lim: FairLimiter, principal: Principal, match: str | None = None) -> RateLimited:
    """The RateLimited a request gets at once; a request that queues instead fails the test after a second."""
    with pytest.raises(RateLimited, match=match) as refused:
        async with asyncio.timeout(1):
            await enter_and_leave(lim, principal)
    return refused.value


async def settle() -> None:
    """Let every runnable task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- rate ---------------------------------------------------------------------------------------------------------


async def test_a_key_over_its_rate_is_refused_with_the_time_to_its_next_token() -> None:
    clock = FakeClock()
    lim = limiter(default_rate_per_s=2.0, clock=clock)
    alice = key("alice")
    await enter_and_leave(lim, alice)
    await enter_and_leave(lim, alice)  # burst of max(1, 2) = 2
    refused = await refusal(lim, alice)
    assert refused.reason == "rate"
    assert refused.retry_after == pytest.approx(0.5)
    assert "alice" in str(refused)

    clock.now += 0.2
    refused = await refusal(lim, alice)
    assert refused.retry_after == pytest.approx(0.3)
    clock.now += 0.3
    await enter_and_leave(lim, alice)

    await enter_and_leave(lim, key("bob"))  # another key has its own bucket
    assert lim.in_flight == 0 and lim.queue_depth == 0  # refusals hold nothing


async def test_bucket_holds_at_most_its_burst() -> None:
    clock = FakeClock()
    lim = limiter(default_rate_per_s=3.0, clock=clock)
    alice = key("alice")
    clock.now += 3600  # an idle hour does not bank 10,800 requests
    for _ in range(3):
        await enter_and_leave(lim, alice)
    await refusal(lim, alice)


async def test_a_keys_own_rate_overrides_the_default_and_slow_rates_still_admit_one() -> None:
    clock = FakeClock()
    lim = limiter(default_rate_per_s=100.0, clock=clock)
    slow = key("slow", rate=0.25)
    await enter_and_leave(lim, slow)  # burst max(1, 0.25) = 1
    refused = await refusal(lim, slow)
    assert refused.retry_after == pytest.approx(4.0)
    for _ in range(50):
        await enter_and_leave(lim, key("fast"))


async def test_no_rate_means_no_rate_limit() -> None:
    lim = limiter(clock=FakeClock())
    for _ in range(500):
        await enter_and_leave(lim, LOCAL_PRINCIPAL)


# -- concurrency --------------------------------------------------------------------------------------------------


async def test_global_concurrency_cap() -> None:
    lim = limiter(max_concurrent=3)
    inside, peak = 0, 0

    async def request(principal: Principal) -> None:
        nonlocal inside, peak
        async with lim.slot(principal):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    async with asyncio.timeout(10):
        await asyncio.gather(*(request(key(f"k{i % 5}")) for i in range(40)))
    assert peak == 3
    assert lim.in_flight == 0 and lim.queue_depth == 0


async def test_per_key_cap_makes_that_key_wait_but_not_others() -> None:
    lim = limiter(max_concurrent=10, default_max_concurrent_per_key=5)
    capped = key("capped", cap=2)
    release = asyncio.Event()
    inside: dict[str, int] = {"capped": 0, "other": 0}
    peak: dict[str, int] = {"capped": 0, "other": 0}

    async def request(principal: Principal, label: str) -> None:
        async with lim.slot(principal):
            inside[label] += 1
            peak[label] = max(peak[label], inside[label])
            await release.wait()
            inside[label] -= 1

    async with asyncio.timeout(10):
        capped_tasks = [asyncio.create_task(request(capped, "capped")) for _ in range(8)]
        await settle()
        assert inside["capped"] == 2 and lim.queue_depth == 6
        # free global slots go to another key at once although 'capped' has requests waiting
        other_tasks = [asyncio.create_task(request(key("other"), "other")) for _ in range(7)]
        await settle()
        assert inside["other"] == 5  # the default per-key cap
        assert lim.in_flight == 7 and lim.queue_depth == 8
        release.set()
        await asyncio.gather(*capped_tasks, *other_tasks)
    assert peak == {"capped": 2, "other": 5}
    assert lim.in_flight == 0 and lim.queue_depth == 0


# -- the queue ----------------------------------------------------------------------------------------------------


async def test_a_full_queue_refuses_with_retry_after() -> None:
    lim = limiter(max_concurrent=1, max_queue=3)
    hold = lim.slot(key("holder"))
    await hold.__aenter__()
    waiters = [asyncio.create_task(enter_and_leave(lim, key(f"w{i}"))) for i in range(3)]
    await settle()
    assert lim.queue_depth == 3
    refused = await refusal(lim, key("late"))
    assert refused.reason == "queue" and refused.retry_after == QUEUE_RETRY_AFTER_S
    await hold.__aexit__(None, None, None)
    async with asyncio.timeout(5):
        await asyncio.gather(*waiters)
    await enter_and_leave(lim, key("late"))  # room again


async def test_one_key_cannot_take_the_whole_queue() -> None:
    lim = limiter(max_concurrent=1, max_queue=10)  # a key's share: half the queue
    assert lim.max_queue_per_key == 5
    hold = lim.slot(key("holder"))
    await hold.__aenter__()
    flood = [asyncio.create_task(enter_and_leave(lim, key("flood"))) for _ in range(5)]
    await settle()
    refused = await refusal(lim, key("flood"), match="share of the queue")
    assert refused.reason == "queue"
    polite = asyncio.create_task(enter_and_leave(lim, key("polite")))
    await settle()
    assert lim.queue_depth == 6  # the other key still got in line
    await hold.__aexit__(None, None, None)
    async with asyncio.timeout(5):
        await asyncio.gather(*flood, polite)


async def test_a_request_refused_for_a_full_queue_keeps_its_token() -> None:
    clock = FakeClock()
    lim = limiter(max_concurrent=1, max_queue=1, clock=clock)
    hold = lim.slot(key("holder"))
    await hold.__aenter__()
    queued = asyncio.create_task(enter_and_leave(lim, key("queued")))
    await settle()
    once = key("once", rate=1.0)
    refused = await refusal(lim, once)
    assert refused.reason == "queue"
    await hold.__aexit__(None, None, None)
    await queued
    await enter_and_leave(lim, once)  # its one token was not spent on the refusal


# -- fairness -----------------------------------------------------------------------------------------------------


async def test_a_flooding_tenant_does_not_starve_another() -> None:
    max_concurrent = 4
    lim = limiter(max_concurrent=max_concurrent, max_queue=1000)
    admitted: list[str] = []

    async def request(principal: Principal, hold_s: float = 0.002) -> int:
        """Holds a slot for ``hold_s``; returns how many of A's requests were admitted while it waited."""
        arrived = len(admitted)
        async with lim.slot(principal):
            overtaken = admitted[arrived:].count("A")
            admitted.append(principal.tenant or "")
            await asyncio.sleep(hold_s)
        return overtaken

    flooder_keys = [key(f"a{i}", "A") for i in range(3)]  # one tenant, several keys: still one tenant's share
    async with asyncio.timeout(30):
        flood = [asyncio.create_task(request(flooder_keys[i % 3])) for i in range(200)]
        await settle()
        # the flood is queued: every slot taken and the rest waiting (on a loaded machine a few of the first
        # holders may already be done and replaced by the time the event loop gets here, hence a bound)
        assert lim.in_flight == max_concurrent and lim.queue_depth >= 200 - 4 * max_concurrent, lim.queue_depth

        # A burst of B's requests arrives behind A's ~196 waiting ones. In arrival order, FIFO would admit all of
        # A's first; fair queueing admits B's first at the next free slot and the others alternating with A's.
        # (An A admitted just before B arrived may log itself just after: hence bounds, not exact counts.)
        burst = await asyncio.gather(*(request(key("b", "B")) for _ in range(5)))
        assert min(burst) <= max_concurrent and max(burst) <= 2 * max_concurrent, burst
        assert admitted.count("A") < 40, admitted.count("A")  # B was done long before A's flood

        # a client of B sending one request at a time gets in at about the next free slot every time
        for _ in range(10):
            overtaken = await request(key("b2", "B"))
            assert overtaken <= max_concurrent
        assert lim.queue_depth > 100  # A's flood was waiting all along

        await asyncio.gather(*flood)
    assert admitted.count("A") == 200 and admitted.count("B") == 15
    assert lim.in_flight == 0 and lim.queue_depth == 0


async def test_waiting_tenants_are_admitted_round_robin() -> None:
    lim = limiter(max_concurrent=2)
    admitted: list[str] = []

    async def request(principal: Principal) -> None:
        async with lim.slot(principal):
            admitted.append(principal.tenant or "")
            await asyncio.sleep(0.0005)

    async with asyncio.timeout(30):
        tasks = [asyncio.create_task(request(key(t.lower(), t))) for t in "AAAAAAAAAAAAAAAAAAAA"]
        await settle()
        tasks += [asyncio.create_task(request(key(t.lower(), t))) for t in "BC" for _ in range(20)]
        await asyncio.gather(*tasks)
    # from the moment B and C queue up, every window of three admissions serves each tenant once
    start = 2
    while_all_wait = admitted[start : start + 3 * 17]
    for window in range(0, len(while_all_wait), 3):
        assert sorted(while_all_wait[window : window + 3]) == ["A", "B", "C"], admitted


async def test_principals_without_a_tenant_are_queued_per_key() -> None:
    lim = limiter(max_concurrent=1)
    admitted: list[str] = []

    async def request(principal: Principal) -> None:
        async with lim.slot(principal):
            admitted.append(principal.name)
            await asyncio.sleep(0)

    one = Principal("one", None, READ)
    two = Principal("two", None, READ)
    async with asyncio.timeout(10):
        tasks = [asyncio.create_task(request(one)) for _ in range(10)]
        await settle()
        tasks += [asyncio.create_task(request(two)) for _ in range(3)]
        await asyncio.gather(*tasks)
    first_two = admitted.index("two")
    assert admitted[first_two : first_two + 6] == ["two", "one", "two", "one", "two", "one"], admitted


# -- cancellation -------------------------------------------------------------------------------------------------


async def test_cancelled_waiters_leave_the_queue_without_leaking_slots() -> None:
    lim = limiter(max_concurrent=2)
    holders = [lim.slot(key("holder")) for _ in range(2)]
    for hold in holders:
        await hold.__aenter__()
    waiters = [asyncio.create_task(enter_and_leave(lim, key(f"w{i % 3}", "W"))) for i in range(10)]
    await settle()
    assert lim.queue_depth == 10
    for task in waiters[::2]:
        task.cancel()
    await settle()
    assert lim.queue_depth == 5
    for hold in holders:
        await hold.__aexit__(None, None, None)
    async with asyncio.timeout(5):
        results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [isinstance(r, asyncio.CancelledError) for r in results] == [i % 2 == 0 for i in range(10)]
    assert lim.in_flight == 0 and lim.queue_depth == 0
    await assert_full_capacity(lim, 2)


async def test_a_waiter_cancelled_just_as_it_is_admitted_gives_its_slot_back() -> None:
    lim = limiter(max_concurrent=1)
    hold = lim.slot(key("holder"))
    await hold.__aenter__()
    entered = asyncio.Event()

    async def request() -> None:
        async with lim.slot(key("late")):
            entered.set()

    task = asyncio.create_task(request())
    await settle()
    assert lim.queue_depth == 1
    await hold.__aexit__(None, None, None)  # admits the waiter; it has not run yet
    assert lim.in_flight == 1 and lim.queue_depth == 0
    task.cancel()  # the client goes away before the request starts
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not entered.is_set()
    assert lim.in_flight == 0 and lim.queue_depth == 0
    await assert_full_capacity(lim, 1)


async def test_a_waiter_cancelled_before_a_slot_frees_is_skipped() -> None:
    lim = limiter(max_concurrent=1)
    hold = lim.slot(key("holder"))
    await hold.__aenter__()
    gone = asyncio.create_task(enter_and_leave(lim, key("gone")))
    stays = asyncio.create_task(enter_and_leave(lim, key("stays")))
    await settle()
    gone.cancel()  # its handler has not run when the slot frees right after
    await hold.__aexit__(None, None, None)
    async with asyncio.timeout(5):
        await stays
        with pytest.raises(asyncio.CancelledError):
            await gone
    assert lim.in_flight == 0 and lim.queue_depth == 0
    await assert_full_capacity(lim, 1)


async def test_timeouts_and_cancellation_inside_the_slot_release_it() -> None:
    lim = limiter(max_concurrent=2)
    started = asyncio.Event()

    async def long_request() -> None:
        async with lim.slot(key("slow")):
            started.set()
            await asyncio.sleep(3600)

    running = [asyncio.create_task(long_request()) for _ in range(2)]
    await started.wait()
    await settle()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await enter_and_leave(lim, key("impatient"))  # times out while waiting
    assert lim.queue_depth == 0 and lim.in_flight == 2
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    assert lim.in_flight == 0
    await assert_full_capacity(lim, 2)


async def assert_full_capacity(lim: FairLimiter, slots: int) -> None:
    """Exactly ``slots`` requests can hold a slot at once: none leaked, none invented."""
    holds = [lim.slot(key(f"check{i}")) for i in range(slots)]
    async with asyncio.timeout(1):
        for hold in holds:
            await hold.__aenter__()
    one_more = asyncio.create_task(enter_and_leave(lim, key("one-more")))
    await settle()
    assert not one_more.done() and lim.queue_depth == 1
    for hold in holds:
        await hold.__aexit__(None, None, None)
    async with asyncio.timeout(1):
        await one_more
    assert lim.in_flight == 0


# -- settings -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_queue": -1}, "max_queue"),
        ({"default_rate_per_s": 0.0}, "default_rate_per_s"),
        ({"default_rate_per_s": float("nan")}, "default_rate_per_s"),
        ({"default_max_concurrent_per_key": 0}, "default_max_concurrent_per_key"),
        ({"max_queue_per_key": -1}, "max_queue_per_key"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        limiter(**kwargs)
