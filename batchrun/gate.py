"""How many requests may be in flight at once: a limit the engine moves as latency changes."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable


class Gate:
    """An adjustable concurrency limit (Little's law: in flight = rate × latency), first come first served.

    A freed slot is handed to the longest waiter (counted as taken before it wakes), and a newcomer
    waits behind anyone already waiting. Without the hand-over, a task finishing one request took the
    slot it had just freed for its next one before the woken waiter ran, and the waiter went to the back
    of the queue again: on a fast server the first waiters' rows were sent last, and the reorder buffer
    held nearly the whole output until the end (a 5,000-row run: 4,868 rows held, +21 MB at the end)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the slot is ours once this resolves: _wake counted it
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a slot, then cancelled before running
                self.active -= 1
                self._wake()
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.active -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self.active < self.limit and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)


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
PROBE_AFTER = 64
"""Replies before the floor is first checked by a probe (InFlight.probe), and after one that found it lower."""
PROBE_SEEN = 1.25
"""No probe while one of the last QUEUE_WINDOW replies came within this factor of the floor: it is what
the server does now (TCP BBR skips its probe too when its least round trip was seen again lately)."""
PROBE_LEVEL = 0.6
"""A probe's first level, of throughput × the floor: what a server taking the floor's time a reply would
need. A right floor leaves 40 % of the slots idle for the probe; a floor too high by more than a sixth
shows as replies at most 0.7 times it (throughput × the floor overestimated by 15 % after a burst of
replies), well under PROBE_DESCEND. At 0.75 it was 0.9 times, and one trial in 12 stayed wrong."""
PROBE_REPLIES = 2
"""Replies at a probe's level that answer it: the first request sent at the level has fewer than the level
ahead of it, so with no more in flight than the server serves its reply already shows the server's own
time; a second keeps one reply's noise from ending the descent early. Each more would idle slots longer."""
PROBE_DESCEND = 0.9
"""While a probe's replies bring the floor under this fraction of what it was at the probe's last level,
there is a queue still: the level halves again (noise between replies of one length stays within it)."""
PROBE_GAIN = 0.75
"""A probe that brought the floor under this fraction of what it was found it too high, and the next probe
comes soon; otherwise twice as late as the last (a right floor costs ever fewer probes)."""


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
    Doubled for headroom; it at most doubles per step (a slow start), capped by max_in_flight. Answers
    that were errors count in the throughput (failed); a server seen to queue is held near what it
    serves (queue_cap), judged against the fastest reply ever, which is itself checked now and then
    (probe).
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
        self.probing_since: float | None = None
        """When the probe under way last set its level (see probe); None: no probe is under way."""
        self._probe_began = 0.0
        self._probe_level = 0
        self._probe_left = 0
        self._probe_floor = 0.0
        """The floor when the probe's level was last set (it halves while that makes replies faster)..."""
        self._probe_start = 0.0
        """... and when the probe began."""
        self._probe_every = PROBE_AFTER
        self._next_probe = PROBE_AFTER
        self.judged: deque[float] = deque(maxlen=QUEUE_WINDOW)
        """The last replies' latencies but those of a probe's requests (too few in flight to show a queue):
        the window a queue is judged on."""
        self._restore = 0
        """The limit before the probe, set again at once when it ends (not doubled back up to it)."""

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
        self._completed(now)
        self.replies += 1
        if self.probing_since is None or now - latency_s < self._probe_began:
            self.judged.append(latency_s)
        elif now - latency_s >= self.probing_since:
            self._probe_left -= 1  # a request sent at the probe's level: with fewer in flight
        # during a probe on every reply: it ends as soon as it has its answer, and the stragglers it counts
        # on top of its level are kept up to date (a long generation must not hold its few slots)
        return self.replies % 16 == 0 or self.probing_since is not None

    def failed(self) -> None:
        """The server answered with an error (a 500, say): a round trip it served, which the throughput
        counts as a reply does: in flight must cover the answers that fail as well as those that do not,
        or the few percent that fail slow every step of the climb (bench_faults.py: the faulty run's best
        1.74–1.76 s → 1.70–1.71 s). Its latency says nothing of the server's time and is not kept."""
        self._completed(self.clock())

    def _completed(self, now: float) -> None:
        self.completions.append(now)
        while self.completions and self.completions[0] < now - 2.0:
            self.completions.popleft()

    def retarget(self, limits: tuple[int | None, int | None], burst: int, charged: float) -> None:
        """Move the gate towards `target` (at most doubling it)."""
        target = min(self.target(limits, burst, charged), max(2 * self.gate.limit, self._restore))
        self._restore = 0 if self.probing_since is None else self._restore
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
        settled = self.replies - self._capacity_at >= self._capacity_settle and self.probing_since is None
        if floor is not None and floor >= STRAGGLER_FLOOR and len(self.judged) == QUEUE_WINDOW and settled:
            self.judge(min(self.judged) / floor, self.gate.limit)
        return self.capped()

    def capped(self) -> int:
        """In flight at most, from the capacity estimated (queue_cap)."""
        if self.capacity is None:
            return self.max_in_flight
        return max(1, math.ceil(self.capacity * QUEUE_INFLATION) + QUEUE_EXTRA)

    def judge(self, inflation: float, limit: int) -> None:
        """The capacity, from how much slower than the floor the fastest of some replies sent at `limit` was."""
        before = self.capacity
        if inflation >= QUEUE_INFLATION:
            self.capacity = limit / inflation
        elif self.capacity is not None:  # no queue now: it may take more (a false alarm recovers too)
            self.capacity *= 1.25
        if self.capacity != before:
            self._capacity_at, self._capacity_settle = self.replies, QUEUE_WINDOW + self.gate.limit

    def probe(self, throughput: float) -> int | None:
        """The in-flight limit while the floor (the fastest reply ever, which queue_cap measures a queue
        against) is checked, or None when it is not being checked.

        The first replies may all have been slow for a reason that does not last — our own event loop
        held up by a GC pause or a busy machine, a server warming up — and once a queue has formed no
        reply is as fast as the server's own time again: the queue would go unseen for the whole run.
        So every so many replies (PROBE_AFTER, then twice as many each time a probe finds the floor
        right), unless a recent reply came near the floor (PROBE_SEEN), in flight drops to PROBE_LEVEL ×
        throughput × the floor (under what a server taking the floor's time would need), plus the
        stragglers and the requests in backoff as always, until PROBE_REPLIES replies to requests sent
        since have come back; while that makes them faster the level halves again, down to 1; then it
        goes straight back. If the floor was right, a few slots idled for a round trip or two. If not,
        the floor drops, and the last replies to requests sent before the probe (the queue at the old
        limit) are judged against it as queue_cap would (TCP BBR's ProbeRTT, its cost kept small by the
        doubling). Only for replies taking real time, as for queue_cap."""
        floor = self.latency_min
        assert floor is not None
        if self.probing_since is not None:
            if self._probe_left > 0:
                return self._probe_level + self.stragglers() + self.waiting
            if floor < PROBE_DESCEND * self._probe_floor and self._probe_level > 1:
                # fewer in flight made replies faster: there is a queue still; halve again
                self._probe_level = max(1, self._probe_level // 2)
                self._probe_left = min(self._probe_level, PROBE_REPLIES)
                self._probe_floor, self.probing_since = floor, self.clock()
                return self._probe_level + self.stragglers() + self.waiting
            self.probing_since = None
            found = floor < PROBE_GAIN * self._probe_start
            self._probe_every = PROBE_AFTER if found else 2 * self._probe_every
            # the last replies to requests sent at the old limit, judged against the floor as it is now;
            # then not again until the limit set back has been seen (the queue the probe drained refills)
            if len(self.judged) == QUEUE_WINDOW:
                self.judge(min(self.judged) / floor, self._restore)
            self._capacity_at, self._capacity_settle = self.replies, QUEUE_WINDOW + self._restore
            self._next_probe = self.replies + QUEUE_WINDOW + self._restore + self._probe_every
            return None
        if floor < STRAGGLER_FLOOR or self.replies < self._next_probe or len(self.judged) < QUEUE_WINDOW:
            return None
        if min(self.judged) <= PROBE_SEEN * floor:  # a recent reply was as fast: the floor holds now
            return None
        level = max(1, math.ceil(throughput * floor * PROBE_LEVEL))
        if level >= self.gate.limit:  # fewer than that already: nothing to learn
            self._next_probe = self.replies + self._probe_every
            return None
        self.probing_since = self._probe_began = self.clock()
        self._probe_level, self._probe_left, self._restore = level, min(level, PROBE_REPLIES), self.gate.limit
        self._probe_floor = self._probe_start = floor
        return level + self.stragglers() + self.waiting

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
            self.queue_cap()  # the window judged first: a probe starting now must not put it off
            if (level := self.probe(throughput)) is not None:
                return level
            need = (
                math.ceil(throughput * max(self.latency_min, 0.001) * 2) + HEADROOM + self.stragglers() + self.waiting
            )
            return max(1, min(need, self.capped(), self.max_in_flight))
        self.probing_since = None  # limits stated since a probe began (a proxy's headers): it has no use now
        rates = [r for r in ((rpm / 60) if rpm else None, (tpm / 60 / charged) if tpm else None) if r is not None]
        need = math.ceil(min(rates) * self.latency_ewma * 2) + 8 + max(burst, 0) + self.waiting
        return max(1, min(need, self.max_in_flight))
