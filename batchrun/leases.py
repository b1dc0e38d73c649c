"""Leases: one RPM/TPM limit and one spend cap shared by many workers (a Ray cluster), exactly.

The cluster's buckets live in one place (`LeaseBook`, held by a named Ray actor); a worker's
limiter (`LeasedLimiter`) and budget (`LeasedBudget`) take short leases from it — about one second
of the worker's share of the rate, and a few requests' worst-case cost — spend them locally and hand
back what they did not send when they ask again. So the book is called about once a second per
worker, not per request, and what all workers send is never more than the book granted: the same
reserve-before-send rule as `limits.RateLimiter` (which the book reuses for its buckets, its header
corrections and its pauses), cluster-wide.

The rules that differ from one process, each one there because the cluster needs it:

* A header's `remaining` is the server's count *including* what other workers have leased but not
  yet sent, so the book lowers its level to `remaining - (what the others hold)`, never more: that
  can only under-credit, by at most the others' leases (about a second of rate).
* A rate-limit 429 pauses the book, and every worker hears of it at once: each keeps one call
  waiting in `LeaseBook.wait_pause` that returns when a pause starts; its lease is then forfeit
  (the server has none left) and it waits the time the server named.
* Budget leases are counted as spent until the worker reports otherwise; a worker that dies keeps
  its lease counted as spent (`forfeit`), so a lost worker can never let the cap be overshot.

Nothing here imports Ray: the book is a plain object (tested on a fake clock), and the worker side
talks to it through `Lessor`, which a Ray actor handle satisfies (see `cluster.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

from .budget import Budget
from .headers import RateLimitHeaders
from .limits import Bucket, Clock, Grant, RateLimiter, RequestTooLarge, Sleep

LEASE_SECONDS = 1.0
"""A rate lease is about this many seconds of the worker's share of the limit."""
BUDGET_LEASE_REQUESTS = 8
"""A budget lease covers about this many requests' worst-case cost."""
ACTIVE_SECONDS = 5.0
"""A worker that asked within this long counts towards the share of each lease."""


@dataclass(frozen=True, slots=True)
class Lease:
    """What the book granted, and what the worker should know about the cluster."""

    requests: float
    tokens: float
    limits: tuple[int | None, int | None]
    workers: int
    paused_for: float = 0.0
    too_large: float | None = None
    """Set when the request can never be sent: the TPM limit (the worker raises RequestTooLarge)."""


@dataclass(frozen=True, slots=True)
class BudgetLease:
    granted: float
    """Dollars this worker may reserve for requests (0: the cap is reached)."""
    max_usd: float
    committed: float
    """Spent or held cluster-wide (every run naming this book, earlier runs included)."""


class LeaseBook:
    """The cluster's RPM/TPM buckets and spend cap; every method is called from one event loop."""

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        *,
        max_usd: float | None = None,
        spent_before: float = 0.0,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self.clock = clock or time.monotonic
        self.limiter = RateLimiter(rpm, tpm, clock=self.clock, sleep=sleep)
        self.held: dict[str, tuple[float, float]] = {}
        """worker → (requests, tokens) of its current lease (an upper bound on what it has not sent)."""
        self.seen: dict[str, float] = {}
        self.max_usd = max_usd
        self.spent = spent_before
        self.usd_held: dict[str, float] = {}
        self.jobs: set[str] = set()
        self.epoch = 0
        self._paused = asyncio.Event()
        self.leases = 0
        self.granted = [0.0, 0.0]

    # -- rate --------------------------------------------------------------------------------

    def workers(self) -> int:
        now = self.clock()
        return max(1, sum(1 for t in self.seen.values() if now - t < ACTIVE_SECONDS))

    def share(self) -> tuple[float, float]:
        """One lease's size for one worker: LEASE_SECONDS of its share of each limit."""
        rpm, tpm = self.limiter.limits
        n = self.workers()
        return (
            (rpm / 60 * LEASE_SECONDS / n) if rpm else float("inf"),
            (tpm / 60 * LEASE_SECONDS / n) if tpm else float("inf"),
        )

    async def lease(
        self,
        worker: str,
        need_tokens: int,
        unspent: tuple[float, float] = (0.0, 0.0),
        headers: RateLimitHeaders | None = None,
    ) -> Lease:
        """Take back `unspent` of the worker's last lease, apply its latest headers, then wait until one
        request of `need_tokens` fits and grant it plus up to a share's worth more."""
        self.seen[worker] = self.clock()
        self._give_back(worker, unspent)
        if headers is not None:
            self._observe(worker, headers)
        lim = self.limiter
        lim._start()
        if lim.tokens is not None and need_tokens > lim.tokens.capacity:
            return Lease(0, 0, lim.limits, self.workers(), too_large=lim.tokens.capacity)
        want_r, want_t = self.share()
        # wait for a whole share, not one request: at a binding limit the level is always near zero,
        # and granting what is there would make every lease one request (a call each)
        await lim.wait_free(max(1.0, want_r), max(need_tokens, want_t))
        # no await from here to the return: the grant is taken atomically after the FIFO wait
        if lim.requests is not None:
            extra_r = max(0.0, min(want_r, lim.requests.level) // 1 - 1)
            lim.requests.level -= 1 + extra_r
        else:
            extra_r = float("inf")
        if lim.tokens is not None:
            extra_t = max(0.0, min(want_t, lim.tokens.level) - need_tokens)
            lim.tokens.level -= need_tokens + extra_t
        else:
            extra_t = float("inf")
        grant = (1 + extra_r, need_tokens + extra_t)
        self.held[worker] = grant
        self.leases += 1
        self.granted[0] += grant[0] if grant[0] != float("inf") else 1
        self.granted[1] += grant[1] if grant[1] != float("inf") else need_tokens
        return Lease(grant[0], grant[1], lim.limits, self.workers())

    def _give_back(self, worker: str, unspent: tuple[float, float]) -> None:
        self.held.pop(worker, None)
        now = self.clock()
        for bucket, amount in ((self.limiter.requests, unspent[0]), (self.limiter.tokens, unspent[1])):
            if bucket is not None and 0 < amount < float("inf"):
                bucket.refill(now)
                bucket.level = min(bucket.capacity, bucket.level + amount)

    def _observe(self, worker: str, headers: RateLimitHeaders) -> None:
        others_r = sum(r for w, (r, _) in self.held.items() if w != worker and r != float("inf"))
        others_t = sum(t for w, (_, t) in self.held.items() if w != worker and t != float("inf"))
        self.limiter.observe(
            RateLimitHeaders(
                limit_requests=headers.limit_requests,
                limit_tokens=headers.limit_tokens,
                remaining_requests=None
                if headers.remaining_requests is None
                else int(headers.remaining_requests - others_r),
                remaining_tokens=None if headers.remaining_tokens is None else int(headers.remaining_tokens - others_t),
                reset_requests=None,
                reset_tokens=None,
            )
        )

    def release(self, worker: str, unspent: tuple[float, float] = (0.0, 0.0)) -> None:
        """A worker that is done hands back what it did not send."""
        self._give_back(worker, unspent)
        self.seen.pop(worker, None)

    def pause(self, seconds: float, kind: str | None = None) -> None:
        """A worker got a rate-limit 429: pause everyone, and wake every worker's watch."""
        self.limiter.pause(seconds, kind=kind)
        self.epoch += 1
        self._paused.set()
        self._paused = asyncio.Event()

    def slow_down(self) -> None:
        self.limiter.slow_down()

    async def wait_pause(self, epoch: int, timeout: float = 30.0) -> tuple[int, float]:
        """Return (epoch, seconds still paused) as soon as a pause newer than `epoch` starts (or at timeout)."""
        if self.epoch <= epoch:
            event = self._paused
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        return self.epoch, max(0.0, self.limiter.paused_until - self.clock())

    # -- budget --------------------------------------------------------------------------------

    def join(self, job: str, max_usd: float | None, spent_before: float) -> None:
        """A run names this book: its earlier spend counts once, and the tightest cap holds."""
        if job not in self.jobs:
            self.jobs.add(job)
            self.spent += spent_before
        if max_usd is not None:
            self.max_usd = max_usd if self.max_usd is None else min(self.max_usd, max_usd)

    def committed(self) -> float:
        return self.spent + sum(self.usd_held.values())

    def budget_lease(self, worker: str, need: float, want: float, spent: float, in_flight: float) -> BudgetLease:
        """The worker reports what it spent since it last asked and what it has reserved in flight,
        hands back the rest of its lease, and asks for `want` (at least `need`)."""
        self.spent += spent
        self.usd_held[worker] = in_flight
        cap = self.max_usd if self.max_usd is not None else float("inf")
        available = cap - self.committed()
        granted = min(want, available) if available >= need - 1e-12 else 0.0
        self.usd_held[worker] = in_flight + granted
        return BudgetLease(granted, cap, self.committed())

    def budget_release(self, worker: str, spent: float) -> None:
        self.spent += spent
        self.usd_held.pop(worker, None)

    def forfeit(self, worker: str) -> None:
        """A worker died: what it held may have been billed, so it stays counted as spent."""
        self.spent += self.usd_held.pop(worker, 0.0)
        self.held.pop(worker, None)
        self.seen.pop(worker, None)

    def snapshot(self) -> dict[str, Any]:
        return {
            "limits": self.limiter.limits,
            "leases": self.leases,
            "pauses": self.limiter.pauses,
            "slowdowns": self.limiter.slowdowns,
            "spent": self.spent,
            "max_usd": self.max_usd,
        }


class Lessor(Protocol):
    """The worker's view of a LeaseBook: each call awaits the book's answer (a Ray actor method's
    `.remote(...)` result, or a coroutine in tests)."""

    def call(self, method: str, *args: Any) -> Any: ...


class LeasedLimiter(RateLimiter):
    """A worker's limiter: spends leases from the book; the engine uses it like a RateLimiter."""

    def __init__(self, lessor: Lessor, worker: str, *, clock: Clock | None = None, sleep: Sleep | None = None) -> None:
        super().__init__(None, None, clock=clock, sleep=sleep)
        self.lessor = lessor
        self.worker = worker
        self.left = [0.0, 0.0]
        self.expires = 0.0
        self._limits: tuple[int | None, int | None] = (None, None)
        self._headers: RateLimitHeaders | None = None
        self._epoch = 0
        self.calls = 0
        self.sent: list[Any] = []
        """Calls made without waiting (a pause, a slow-down), awaited at `close`."""

    @property
    def limits(self) -> tuple[int | None, int | None]:
        return self._limits

    def _start(self) -> None:  # the buckets are the lease's (levels seen by the engine's in-flight sizing)
        if not self._started:
            now = self._clock()
            self.requests, self.tokens = Bucket(1, now), Bucket(1, now)
            self.requests.level = self.tokens.level = 0.0
            self._started = True

    async def acquire(self, tokens: int) -> Any:
        self._start()
        async with self._lock:
            while True:
                now = self._clock()
                if now < self.paused_until - 1e-9:
                    await self._sleep(self.paused_until - now)
                    continue
                if now < self.expires and self.left[0] >= 1 and self.left[1] >= tokens:
                    self.left[0] -= 1
                    self.left[1] -= tokens
                    self._levels()
                    return Grant(tokens, now)
                await self._renew(tokens)

    async def _renew(self, tokens: int) -> None:
        unspent = (self.left[0], self.left[1])
        self.left = [0.0, 0.0]
        headers, self._headers = self._headers, None
        self.calls += 1
        lease: Lease = await self.lessor.call("lease", self.worker, tokens, unspent, headers)
        self._limits = lease.limits
        if lease.too_large is not None:
            raise RequestTooLarge(tokens, lease.too_large)
        self.left = [lease.requests, lease.tokens]
        self.expires = self._clock() + LEASE_SECONDS
        self._levels()

    def _levels(self) -> None:
        if self.requests is not None and self.tokens is not None:
            self.requests.level = min(self.left[0], 1e12)
            self.tokens.level = min(self.left[1], 1e12)

    def observe(self, headers: RateLimitHeaders) -> None:
        """Kept for the next lease call (the book applies it there, against what the others hold)."""
        self._headers = headers
        rpm, tpm = self._limits
        self._limits = (headers.limit_requests or rpm, headers.limit_tokens or tpm)

    def pause(self, seconds: float, *, kind: str | None = None) -> None:
        self._forfeit(seconds)
        self.pauses += 1
        self.sent.append(self.lessor.call("pause", seconds, kind))

    def _forfeit(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self._clock() + seconds)
        self.left = [0.0, 0.0]
        self._levels()

    def slow_down(self, factor: float = 0.5) -> None:
        self.slowdowns += 1
        self.sent.append(self.lessor.call("slow_down"))

    async def watch(self) -> None:
        """Hear of every pause another worker started (one waiting call to the book at a time)."""
        while True:
            epoch, seconds = await self.lessor.call("wait_pause", self._epoch)
            if epoch > self._epoch:
                self._epoch = epoch
                if seconds > 0:
                    self._forfeit(seconds)

    async def close(self) -> None:
        for ref in self.sent:
            await ref
        self.sent.clear()
        await self.lessor.call("release", self.worker, (self.left[0], self.left[1]))
        self.left = [0.0, 0.0]


class LeasedBudget(Budget):
    """A worker's share of the cluster's spend cap, reserved by lease."""

    def __init__(self, lessor: Lessor, worker: str) -> None:
        super().__init__(float("inf"))
        self.lessor = lessor
        self.worker = worker
        self.lease = 0.0
        self.unreported = 0.0
        self.cluster: BudgetLease | None = None
        self._lock = asyncio.Lock()

    async def acquire(self, worst: float) -> bool:
        async with self._lock:
            if self.lease < worst - 1e-12:
                self.unreported, spent = 0.0, self.unreported
                back, self.lease = self.lease, 0.0
                del back  # handed back: the book recounts what this worker holds from `reserved`
                got: BudgetLease = await self.lessor.call(
                    "budget_lease", self.worker, worst, worst * BUDGET_LEASE_REQUESTS, spent, self.reserved
                )
                self.cluster = got
                self.max_usd = got.max_usd
                self.lease = got.granted
                if got.granted < worst - 1e-12:
                    return False
            self.lease -= worst
            self.reserved += worst
            return True

    def reserve(self, worst: float) -> bool:  # pragma: no cover - the engine awaits acquire()
        raise RuntimeError("a leased budget is reserved with `await acquire()`")

    def settle(self, worst: float, actual: float) -> None:
        self.reserved -= worst
        self.spent += actual
        self.unreported += actual
        self.lease += max(worst - actual, 0.0)  # what the reply did not cost may be reserved again

    def message(self) -> str:
        c = self.cluster
        total = c.committed if c is not None else self.spent + self.reserved
        return (
            f"budget.max_usd = ${self.max_usd:,.4f} reached cluster-wide: ${total:,.4f} spent or in flight "
            "(every run sharing this limiter, earlier runs included). Finished rows are kept; raise "
            "budget.max_usd and run the job again to continue."
        )

    async def close(self) -> None:
        await self.lessor.call("budget_release", self.worker, self.unreported)
        self.unreported = 0.0
        self.lease = 0.0
