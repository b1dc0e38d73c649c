"""The limiter on a fake clock: exactness properties (hypothesis) and header/429 behaviour."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrun.headers import RateLimitHeaders, format_duration, parse_duration, try_again_in
from batchrun.limits import RateLimiter, RequestTooLarge


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def make(rpm: int | None, tpm: int | None) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(rpm, tpm, clock=clock, sleep=clock.sleep), clock


def max_window_excess(grants: list[tuple[float, int]], capacity: float, rate: float) -> float:
    """max over intervals [t_i, t_j] of reserved − (capacity + (t_j − t_i)·rate); ≤ 0 means exact."""
    worst = -capacity
    for i in range(len(grants)):
        total = 0
        for j in range(i, len(grants)):
            total += grants[j][1]
            worst = max(worst, total - (capacity + (grants[j][0] - grants[i][0]) * rate))
    return worst


ops = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(1, 1000)),
        st.tuples(st.just("idle"), st.floats(0, 5)),
        st.tuples(st.just("observe"), st.integers(0, 1000)),
        st.tuples(st.just("pause"), st.floats(0, 3)),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, rpm=st.integers(1, 200), tpm=st.integers(1000, 5000))
def test_reserved_never_exceeds_bucket_plus_refill(ops: list[tuple[str, float]], rpm: int, tpm: int) -> None:
    """Over any interval of length t: tokens reserved ≤ one full bucket + t × refill rate (and requests)."""

    async def run() -> tuple[list[tuple[float, int]], FakeClock]:
        limiter, clock = make(rpm, tpm)
        grants: list[tuple[float, int]] = []
        for op, value in ops:
            if op == "acquire":
                g = await limiter.acquire(int(value))
                grants.append((g.at, g.tokens))
            elif op == "idle":
                await clock.sleep(float(value))
            elif op == "observe":
                limiter.observe(RateLimitHeaders(remaining_tokens=int(value), remaining_requests=int(value) % rpm))
            else:
                limiter.pause(float(value))
        return grants, clock

    grants, _ = asyncio.run(run())
    assert max_window_excess(grants, tpm, tpm / 60) <= 1e-6
    assert max_window_excess([(t, 1) for t, _ in grants], rpm, rpm / 60) <= 1e-6


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(1, 500), min_size=1, max_size=40), workers=st.integers(1, 8))
def test_concurrent_acquirers_share_one_budget(sizes: list[int], workers: int) -> None:
    async def run() -> list[tuple[float, int]]:
        limiter, _ = make(None, 1000)
        grants: list[tuple[float, int]] = []
        queue = list(sizes)

        async def worker() -> None:
            while queue:
                n = queue.pop()
                g = await limiter.acquire(n)
                grants.append((g.at, g.tokens))

        async with asyncio.TaskGroup() as tg:
            for _ in range(workers):
                tg.create_task(worker())
        return grants

    grants = asyncio.run(run())
    assert len(grants) == len(sizes)
    grants.sort()
    assert max_window_excess(grants, 1000, 1000 / 60) <= 1e-6


def test_full_bucket_at_start_then_refill_rate() -> None:
    async def run() -> list[float]:
        limiter, _ = make(None, 600)  # 10 tokens/s
        return [(await limiter.acquire(100)).at for _ in range(8)]

    times = asyncio.run(run())
    assert times[:6] == [0.0] * 6
    assert times[6] == pytest.approx(10.0) and times[7] == pytest.approx(20.0)


def test_no_credit_for_unused_tokens_and_headers_only_lower() -> None:
    async def run() -> None:
        limiter, clock = make(None, 6000)  # 100 tokens/s
        await limiter.acquire(6000)
        limiter.observe(RateLimitHeaders(limit_tokens=6000, remaining_tokens=5000))  # server saw less: no credit
        assert limiter.tokens is not None and limiter.tokens.level == pytest.approx(0)
        clock.now += 10
        limiter.observe(RateLimitHeaders(remaining_tokens=200))  # another client used the account
        assert limiter.tokens.level == pytest.approx(200)

    asyncio.run(run())


def test_limits_are_learned_from_headers_both_ways() -> None:
    async def run() -> None:
        limiter, _ = make(10_000, 1_000_000)  # told 10x too much
        await limiter.acquire(10)
        limiter.observe(
            RateLimitHeaders(limit_requests=1000, limit_tokens=100_000, remaining_tokens=99_000, remaining_requests=999)
        )
        assert limiter.limits == (1000, 100_000)
        assert limiter.tokens is not None and limiter.tokens.level == pytest.approx(99_000)
        none, _ = make(None, None)
        await none.acquire(5)  # unknown limits: nothing to wait for
        none.observe(RateLimitHeaders(limit_tokens=5000, remaining_tokens=4000, reset_requests=1.0))
        assert none.limits == (None, 5000) and none.tokens is not None and none.tokens.level == 4000
        with pytest.raises(RequestTooLarge):
            await none.acquire(6000)

    asyncio.run(run())


def test_reset_header_alone_sets_the_level() -> None:
    async def run() -> None:
        limiter, _ = make(None, 6000)
        limiter.observe(RateLimitHeaders(reset_tokens=30.0))  # 30 s until full = 3000 missing
        assert limiter.tokens is not None and limiter.tokens.level == pytest.approx(3000)

    asyncio.run(run())


def test_pause_holds_every_waiter_then_resumes_at_refill_rate() -> None:
    async def run() -> list[float]:
        limiter, _ = make(None, 6000)  # 100/s
        limiter.pause(2.0, kind="tokens")
        return [(await limiter.acquire(100)).at for _ in range(3)]

    times = asyncio.run(run())
    # the bucket refilled only during the pause (200 tokens), not to full: no burst afterwards
    assert times == pytest.approx([2.0, 2.0, 3.0])


def test_request_larger_than_bucket_is_refused_not_waited_for() -> None:
    async def run() -> None:
        limiter, _ = make(None, 1000)
        with pytest.raises(RequestTooLarge, match="TPM limit is 1000"):
            await limiter.acquire(1001)

    asyncio.run(run())


def test_slow_down_halves_rates() -> None:
    async def run() -> None:
        limiter, _ = make(100, 1000)
        limiter.slow_down()
        assert limiter.limits == (50, 500)

    asyncio.run(run())


def test_repr_shows_live_state() -> None:
    limiter, _ = make(60, 600)
    assert "RateLimiter(requests=None" in repr(limiter)
    asyncio.run(limiter.acquire(10))
    assert "Bucket(590.0/600" in repr(limiter)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1), ("6m0s", 360), ("7m12s", 432), ("120ms", 0.12), ("8.64s", 8.64), ("1h2m3s", 3723), ("2", 2.0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@given(st.floats(0, 10_000, allow_nan=False))
def test_format_parse_roundtrip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-3)


def test_try_again_in_from_openai_message() -> None:
    msg = (
        "Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): Limit 30000, "
        "Used 29000, Requested 1500. Please try again in 1.2s. Visit https://platform.openai.com/account/rate-limits"
    )
    assert try_again_in(msg) == pytest.approx(1.2)
    assert try_again_in("Please try again in 6m0s.") == 360
    assert try_again_in("no hint") is None
