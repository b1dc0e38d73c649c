"""How many requests may be in flight at once: a limit the engine moves as latency changes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable


class Gate:
    """An adjustable concurrency limit (Little's law: in flight = rate × latency)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        while self.active >= self.limit:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)
        self.active += 1

    async def __aexit__(self, *exc: object) -> None:
        self.active -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        free = self.limit - self.active
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1


HEADROOM = 16
"""Requests in flight beyond what the measured rate needs, with no known limits (a fast server is
found within a few round trips as the target doubles; a k-slot server queues only this many more)."""
STRAGGLER_FACTOR = 4.0
"""A request out for more than this many times a typical recent reply (the lower quartile of the last 256:
a burst of slow replies coming back together does not move it) is a straggler (see InFlight)..."""
STRAGGLER_FLOOR = 0.05
"""... and for at least this many seconds: on a fast server a busy client's own event-loop lag stretches
replies to a few times their median, and counting those would only add requests in flight, and CPU."""
QUEUE_WINDOW = 32
"""Replies whose fastest is compared with the fastest ever, to see a server's queue (InFlight.queue_cap)."""
QUEUE_INFLATION = 2.0
"""How much slower than the fastest reply ever the fastest recent one may be before it counts as queueing
(rows of different lengths still leave a fast one among 32 replies; a queue slows every one of them). At
1.5, or over 16 replies, a server whose replies ranged 25 ms–1.2 s with no queue at all was taken for one
now and then, and ran 4–10 % slower (benchmarks/RESULTS.md)."""
QUEUE_EXTRA = 2
"""Requests allowed to wait at the server beyond what its capacity needs, so no slot idles between replies."""


class InFlight:
    """How many requests to have in flight, from the replies as they come back; moves `gate.limit`.

    With known limits it is Little's law on the binding limit: its request rate × the mean latency,
    plus what the buckets can admit at once. Without, it is the observed throughput × the least latency
    seen (the server's own time, before any queueing in our client) — which keeps a fast server from
    being sent hundreds of needless parallel requests that only cost client CPU — plus every request
    that has been out for more than STRAGGLER_FACTOR × a typical recent latency. Those stragglers (a slow
    tail: 30 % of replies taking 5 s, say) hold slots without adding throughput; counting them on top
    keeps the fast requests flowing instead of letting the slow ones shrink the target they feed. Requests
    waiting out a backoff before a retry hold their slots too, and are counted on top the same way.
    Doubled for headroom; it at most doubles per step (a slow start), capped by max_in_flight.
    """

    def __init__(self, max_in_flight: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_in_flight = max_in_flight
        self.gate = Gate(min(max_in_flight, 16))
        self.clock = clock
        self.latency_ewma: float | None = None
        self.latency_min: float | None = None
        self.completions: deque[float] = deque()
        self.recent: deque[float] = deque(maxlen=256)
        """The last replies' latencies, for the typical one a straggler is measured against."""
        self.replies = 0
        self._out: dict[int, float] = {}
        self._next = 0
        self.server_limits = False
        """Whether the server states its limits (x-ratelimit-*); without, in flight is found by throughput."""
        self.waiting = 0
        """Requests in backoff before being sent again (they keep their slot in the gate)."""
        self.capacity: float | None = None
        """Requests a server that queues serves at once, as its replies show (queue_cap); None: not seen."""
        self._capacity_at = 0
        self._capacity_settle = 0

    @contextlib.asynccontextmanager
    async def backing_off(self) -> AsyncIterator[None]:
        """A request waiting to be sent again holds its slot without adding throughput, like a straggler."""
        self.waiting += 1
        try:
            yield
        finally:
            self.waiting -= 1

    def sending(self) -> int:
        """A request goes out: its token for `answered`."""
        self._next += 1
        self._out[self._next] = self.clock()
        return self._next

    def answered(self, token: int) -> None:
        """A request came back (a reply or an error)."""
        self._out.pop(token, None)

    def typical(self) -> float:
        """A typical recent reply's latency: the lower quartile of the last 256."""
        return sorted(self.recent)[len(self.recent) // 4] if self.recent else 0.0

    def stragglers(self) -> int:
        if not self.recent:
            return 0
        cutoff = self.clock() - max(STRAGGLER_FACTOR * self.typical(), STRAGGLER_FLOOR)
        return sum(1 for t in self._out.values() if t < cutoff)

    def observe(self, latency_s: float) -> bool:
        """Record a reply's latency; True every 16 replies, when the target should be recomputed."""
        now = self.clock()
        self.latency_ewma = latency_s if self.latency_ewma is None else 0.9 * self.latency_ewma + 0.1 * latency_s
        self.latency_min = latency_s if self.latency_min is None else min(self.latency_min, latency_s)
        self.recent.append(latency_s)
        self.completions.append(now)
        while self.completions and self.completions[0] < now - 2.0:
            self.completions.popleft()
        self.replies += 1
        return self.replies % 16 == 0

    def retarget(self, limits: tuple[int | None, int | None], burst: int, charged: float) -> None:
        """Move the gate towards `target` (at most doubling it)."""
        target = min(self.target(limits, burst, charged), 2 * self.gate.limit)
        if target != self.gate.limit:
            self.gate.set_limit(target)

    def queue_cap(self) -> int:
        """In flight at most, once the server has been seen to queue; updates the estimate of its capacity.

        Queueing shows as every recent reply being slower than the fastest ever — the fastest of the last
        QUEUE_WINDOW against the fastest of the run (TCP Vegas' base RTT; the minimum, not a mean, since
        rows of different lengths make slow replies without any queue). With L in flight on a server that
        serves k at once, the fastest recent reply is about L / k times the fastest ever, so the server's
        capacity is L / that inflation; in flight is then held at QUEUE_INFLATION × the capacity +
        QUEUE_EXTRA (about 2k + 2: near k, not k + the headroom and the stragglers), and whenever a window
        shows no queue the estimate grows by a quarter — the server may take more, and a false alarm on a
        server whose replies merely vary recovers within a few windows. Only for replies taking real time
        (an LLM generating), not a fast server whose replies are stretched by the client's event loop."""
        floor = self.latency_min
        # judged again only once the requests out at the last change have come back, and a window after
        # them: replies from before a change (a longer queue, or a shorter one) would misjudge the new one
        settled = self.replies - self._capacity_at >= self._capacity_settle
        if floor is not None and floor >= STRAGGLER_FLOOR and len(self.recent) >= QUEUE_WINDOW and settled:
            inflation = min(itertools.islice(reversed(self.recent), QUEUE_WINDOW)) / floor
            before = self.capacity
            if inflation >= QUEUE_INFLATION:
                self.capacity = self.gate.limit / inflation
            elif self.capacity is not None:  # no queue now: it may take more (a false alarm recovers too)
                self.capacity *= 1.25
            if self.capacity != before:
                self._capacity_at, self._capacity_settle = self.replies, QUEUE_WINDOW + self.gate.limit
        if self.capacity is None:
            return self.max_in_flight
        return max(1, math.ceil(self.capacity * QUEUE_INFLATION) + QUEUE_EXTRA)

    def target(self, limits: tuple[int | None, int | None], burst: int, charged: float) -> int:
        """`limits` the (rpm, tpm) known; `burst` what the buckets admit at once (requests); `charged` the
        mean tokens a request reserves."""
        assert self.latency_ewma is not None and self.latency_min is not None
        rpm, tpm = limits
        if rpm is None and tpm is None:
            span = self.completions[-1] - self.completions[0] if len(self.completions) > 1 else 0.0
            if span < 0.5:  # not enough replies to measure a rate yet: hold (the slow start doubles from here)
                return min(2 * self.gate.limit, self.max_in_flight) if self.replies <= 16 else self.gate.limit
            throughput = (len(self.completions) - 1) / span
            need = (
                math.ceil(throughput * max(self.latency_min, 0.001) * 2) + HEADROOM + self.stragglers() + self.waiting
            )
            return max(1, min(need, self.queue_cap(), self.max_in_flight))
        rates = [r for r in ((rpm / 60) if rpm else None, (tpm / 60 / charged) if tpm else None) if r is not None]
        need = math.ceil(min(rates) * self.latency_ewma * 2) + 8 + max(burst, 0) + self.waiting
        return max(1, min(need, self.max_in_flight))
