"""The rate limiter: RPM and TPM token buckets that mirror the server's own.

Why not asyncio-throttle: it counts requests only (no token weights, no
refunds, polls every 10 ms), so it cannot express a tokens-per-minute limit.

The rules, each one there because breaking it draws 429s:

* Both buckets start full and refill continuously at limit/60 per second, as
  OpenAI's do. Before a request is sent it reserves 1 request and the tokens the
  server will charge at admission: prompt tokens + max output tokens.
* Nothing is credited back when a reply uses fewer tokens than reserved: the
  server does not credit it either. A limiter that refunds unused output tokens
  overshoots the real limit by the refund and drifts into 429s.
* Every response's `x-ratelimit-*` headers correct the buckets, but only
  downwards: `remaining` below our level means someone else (another process, a
  different count) is using the account, so we lower ours. A `remaining` above
  our level is not credited, because the server has not yet seen requests we
  have in flight. The `limit` headers replace the configured limits (both ways),
  so a job with wrong or missing limits runs at the real ones after the first
  reply.
* After a rate-limit 429 every waiter pauses until the time the server names,
  and the token level is set so that requests resume at the refill rate, not in
  a burst.
* Waiters are served first come, first served (an asyncio.Lock is FIFO).

The clock and sleep are injectable so tests run on a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .headers import RateLimitHeaders

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RequestTooLarge(Exception):
    """A request needs more tokens than the whole TPM bucket holds: it can never be sent."""

    def __init__(self, tokens: int, capacity: float) -> None:
        self.tokens = tokens
        self.capacity = capacity
        super().__init__(f"needs {tokens} tokens at once; the TPM limit is {int(capacity)}")


class Bucket:
    """A continuously refilled token bucket, full at start."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, per_minute: float, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def seconds_until(self, amount: float) -> float:
        short = amount - self.level
        return 0.0 if short <= 0 else short / self.rate

    def set_limit(self, per_minute: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = min(self.level, self.capacity)

    def __repr__(self) -> str:
        return f"Bucket({self.level:.1f}/{self.capacity:.0f}, +{self.rate:.2f}/s)"


@dataclass(frozen=True, slots=True)
class Grant:
    """What one acquire reserved, and when."""

    tokens: int
    at: float


class RateLimiter:
    """Reserve-before-send RPM + TPM limiter shared by every worker of a run."""

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        *,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        lag_allowance: float = 0.0,
    ) -> None:
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._sleep = sleep or asyncio.sleep
        self._rpm0, self._tpm0 = rpm, tpm
        self.requests: Bucket | None = None
        self.tokens: Bucket | None = None
        self._started = False
        self._lock = asyncio.Lock()
        self.paused_until = 0.0
        self.pauses = 0
        self.slowdowns = 0
        self.lag_allowance = lag_allowance

    def _start(self) -> None:
        if not self._started:
            now = self._clock()
            self.requests = Bucket(self._rpm0, now) if self._rpm0 else None
            self.tokens = Bucket(self._tpm0, now) if self._tpm0 else None
            self._started = True

    @property
    def limits(self) -> tuple[int | None, int | None]:
        self._start()
        return (
            int(self.requests.capacity) if self.requests else None,
            int(self.tokens.capacity) if self.tokens else None,
        )

    def __repr__(self) -> str:
        return (
            f"RateLimiter(requests={self.requests!r}, tokens={self.tokens!r}, "
            f"paused_until={self.paused_until:.2f}, pauses={self.pauses})"
        )

    async def acquire(self, tokens: int) -> Grant:
        """Wait until 1 request and `tokens` tokens are free, then take them."""
        self._start()
        if self.tokens is not None and tokens > self.tokens.capacity:
            raise RequestTooLarge(tokens, self.tokens.capacity)
        async with self._lock:
            now = await self._wait(1, tokens, whole=True)
            if self.requests is not None:
                self.requests.level -= 1
            if self.tokens is not None:
                self.tokens.level -= tokens
            return Grant(tokens, now)

    async def wait_free(self, requests: float, tokens: float) -> None:
        """Wait, first come first served and through any pause, until the buckets hold `requests` and
        `tokens` (each capped at its bucket's capacity), and take nothing: the caller takes what it
        wants before its next await (the cluster's lease book, which grants more than one request)."""
        self._start()
        async with self._lock:
            await self._wait(requests, tokens, whole=False)

    async def _wait(self, requests: float, tokens: float, *, whole: bool) -> float:
        """The wait loop under the lock; returns the clock when the amounts are free. `whole`: the
        amounts must fit whole (a request larger than a limit learnt lower meanwhile is refused)."""
        while True:
            now = self._clock()
            if now < self.paused_until - 1e-9:
                await self._sleep(self.paused_until - now)
                continue
            if whole and self.tokens is not None and tokens > self.tokens.capacity:
                raise RequestTooLarge(int(tokens), self.tokens.capacity)  # the limit was learned lower
            wait = 0.0
            for bucket, amount in ((self.requests, requests), (self.tokens, tokens)):
                if bucket is not None:
                    bucket.refill(now)
                    wait = max(wait, bucket.seconds_until(amount if whole else min(amount, bucket.capacity)))
            # sub-nanosecond shortfalls are float rounding; sleeping for them cannot move the clock
            if wait <= 1e-9:
                return now
            await self._sleep(wait)

    def observe(self, headers: RateLimitHeaders) -> None:
        """Correct the buckets from a response's headers: learn limits, only ever lower levels."""
        self._start()
        now = self._clock()
        pairs = (
            ("requests", headers.limit_requests, headers.remaining_requests, headers.reset_requests),
            ("tokens", headers.limit_tokens, headers.remaining_tokens, headers.reset_tokens),
        )
        for name, limit, remaining, reset in pairs:
            bucket: Bucket | None = getattr(self, name)
            if limit is not None and limit > 0:
                if bucket is None:
                    bucket = Bucket(limit, now)
                    setattr(self, name, bucket)
                elif bucket.capacity != limit:
                    bucket.refill(now)
                    bucket.set_limit(limit)
            if bucket is None:
                continue
            if remaining is None and reset is not None:
                # reset = time until the bucket is full again
                remaining = max(int(bucket.capacity - reset * bucket.rate), 0)
            if remaining is not None:
                bucket.refill(now)
                # The header was written a little before we read it, so the server has refilled since;
                # `lag_allowance` seconds of that refill may be assumed (default 0: never credit more
                # than the server has said). Measured on the utilization benchmark: 1 s of allowance
                # gained ~0.3 s in 53 s but let 429s through when the server's bucket lagged ours.
                bucket.level = min(bucket.level, remaining + bucket.rate * self.lag_allowance)

    def pause(self, seconds: float, *, kind: str | None = None) -> None:
        """After a rate-limit 429: hold every waiter for `seconds`, then resume at the refill rate."""
        self._start()
        now = self._clock()
        until = now + max(seconds, 0.0)
        if until > self.paused_until:
            self.paused_until = until
            self.pauses += 1
        # the server is at or below zero for this bucket: when the pause ends it has only refilled
        # what the pause allowed, so we must not release a full bucket's burst either
        for name in ("requests", "tokens") if kind is None else (kind,):
            bucket: Bucket | None = getattr(self, name, None)
            if bucket is not None:
                bucket.refill(now)
                bucket.level = min(bucket.level, 0.0)

    def slow_down(self, factor: float = 0.5) -> None:
        """A 503 "slow down": lower both rates (OpenAI asks for the original rate for ≥ 15 min)."""
        self._start()
        now = self._clock()
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(now)
                bucket.set_limit(max(bucket.capacity * factor, 1.0))
        self.slowdowns += 1

    def minimum_seconds(self, requests: int, tokens: int) -> float:
        """The least time the limits allow for this much work, the buckets starting full."""
        rpm, tpm = self.limits
        t = 0.0
        if rpm:
            t = max(t, (requests - rpm) / (rpm / 60))
        if tpm:
            t = max(t, (tokens - tpm) / (tpm / 60))
        return max(t, 0.0)
