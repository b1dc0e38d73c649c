"""The cluster-wide limiter and budget (leases.py) on a fake clock, without Ray: several workers'
LeasedLimiters and LeasedBudgets against one LeaseBook, as the Ray actors use them."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from batchrun.headers import RateLimitHeaders
from batchrun.leases import LeaseBook, LeasedBudget, LeasedLimiter
from batchrun.limits import RequestTooLarge


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


class Local:
    """leases.Lessor in process: the book's coroutines as they are, its plain methods as done futures."""

    def __init__(self, book: LeaseBook) -> None:
        self.book = book
        self.calls = 0

    def call(self, method: str, *args: Any) -> Any:
        self.calls += 1
        result = getattr(self.book, method)(*args)
        if inspect.isawaitable(result):
            return result
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(result)
        return fut


def _workers(n: int, rpm: int | None, tpm: int | None, t: FakeTime) -> tuple[LeaseBook, Local, list[LeasedLimiter]]:
    book = LeaseBook(rpm, tpm, clock=t.clock, sleep=t.sleep)
    lessor = Local(book)
    return book, lessor, [LeasedLimiter(lessor, f"w{i}", clock=t.clock, sleep=t.sleep) for i in range(n)]


def test_workers_together_never_exceed_the_bucket_and_call_the_book_rarely() -> None:
    t = FakeTime()
    tpm, per_request = 600_000, 100  # 100 requests/s: a lease is ~25 of them
    _book, lessor, workers = _workers(4, None, tpm, t)
    sent: list[float] = []

    async def worker(lim: LeasedLimiter, n: int) -> None:
        for _ in range(n):
            await lim.acquire(per_request)
            sent.append(t.now)
        await lim.close()

    async def main() -> None:
        await asyncio.gather(*(worker(w, 2_500) for w in workers))

    asyncio.run(main())
    assert len(sent) == 10_000
    # token-bucket conformance: by any time T at most capacity + rate × T tokens were sent
    for i, at in enumerate(sorted(sent)):
        assert (i + 1) * per_request <= tpm + tpm / 60 * at + 1e-6
    # 1M tokens at 10,000/s after a 600,000 burst: ≥ 40 s of (fake) time, and not much more
    assert 40 <= max(sent) <= 40 * 1.03
    assert lessor.calls < len(sent) / 3  # leases, not a call per request


def test_a_pause_reaches_every_worker_and_forfeits_its_lease() -> None:
    t = FakeTime()
    book, _, (a, b) = _workers(2, 600, None, t)

    async def main() -> float:
        await a.acquire(1)
        await b.acquire(1)
        assert b.left[0] > 0  # b holds a lease of a few requests
        watch = asyncio.create_task(b.watch())
        a.pause(20.0)  # a got a 429 naming 20 s
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert b.left == [0.0, 0.0] and b.paused_until >= 20.0
        await b.acquire(1)
        watch.cancel()
        return t.now

    assert asyncio.run(main()) >= 20.0
    assert book.limiter.pauses == 1


def test_headers_lower_the_book_by_what_the_others_hold() -> None:
    t = FakeTime()
    book, _lessor, (a, b) = _workers(2, None, 60_000, t)

    async def main() -> None:
        await a.acquire(100)
        await b.acquire(100)
        held_by_b = book.held["w1"][1]
        # the server says 10,000 tokens remain; b's lease is part of what it counted as sent
        a.observe(RateLimitHeaders(limit_tokens=60_000, remaining_tokens=10_000))
        a.left = [0.0, 0.0]  # force a new lease, which carries the headers
        await a.acquire(100)
        assert book.limiter.tokens is not None
        assert book.limiter.tokens.level <= 10_000 - held_by_b

    asyncio.run(main())


def test_a_request_larger_than_the_limit_is_refused_by_the_book() -> None:
    t = FakeTime()
    _, _, (a,) = _workers(1, None, 1_000, t)
    with pytest.raises(RequestTooLarge):
        asyncio.run(a.acquire(5_000))


def test_the_budget_holds_across_workers() -> None:
    book = LeaseBook(None, None, max_usd=1.0)
    lessor = Local(book)
    budgets = [LeasedBudget(lessor, f"w{i}") for i in range(3)]
    granted = 0

    async def worker(b: LeasedBudget) -> None:
        nonlocal granted
        while await b.acquire(0.03):
            granted += 1
            await asyncio.sleep(0)
            b.settle(0.03, 0.02)  # a reply cheaper than its worst case
        await b.close()

    async def main() -> None:
        await asyncio.gather(*(worker(b) for b in budgets))

    asyncio.run(main())
    assert book.spent <= 1.0 + 1e-9
    assert granted * 0.02 == pytest.approx(book.spent)
    assert book.spent > 0.9  # the cap is used, not refused early by leases held elsewhere


def test_earlier_spend_counts_once_per_job_and_a_dead_workers_lease_counts_as_spent() -> None:
    book = LeaseBook(None, None)
    book.join("job-a", 1.0, 0.4)
    book.join("job-a", 1.0, 0.4)  # the same job's second driver
    book.join("job-b", 2.0, 0.1)
    assert book.max_usd == 1.0 and book.spent == pytest.approx(0.5)
    lease = book.budget_lease("w0", 0.1, 0.3, 0.0, 0.0)
    assert lease.granted == pytest.approx(0.3)
    book.forfeit("w0")
    assert book.spent == pytest.approx(0.8)
    assert book.budget_lease("w1", 0.25, 1.0, 0.0, 0.0).granted == 0.0
