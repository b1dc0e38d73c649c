"""InFlight's queue detection on a fake clock: a server that serves k at once is held near k, even when its
first replies were slow; a server whose replies merely vary in length is not taken for one that queues (or
recovers from the mistake)."""

from __future__ import annotations

import heapq
import random

import pytest

from batchrun.gate import InFlight


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _drive(flow: InFlight, clock: Clock, latency_of, replies: int) -> list[int]:
    """Replies one after another at the rate the in-flight limit and their latency give; the limit after each
    retarget (every 16 replies)."""
    limits = []
    for i in range(replies):
        latency = latency_of(flow.gate.limit, i)
        clock.now += latency / flow.gate.limit  # Little's law: L in flight, each taking `latency`
        if flow.observe(latency):
            flow.retarget((None, None), 0, 0.0)
            limits.append(flow.gate.limit)
    return limits


def _serve(flow: InFlight, clock: Clock, k: int, replies: int, first: float = 1.0) -> tuple[list[int], list[int]]:
    """A server that serves k requests at once, 0.2 s each, the rest waiting their turn in order (its first k
    `first` times slower), kept sent to up to the in-flight limit: the limits after each retarget outside a
    probe, and those during one."""
    free = [0.0] * k  # when each slot is next free
    out: list[tuple[float, int, float]] = []  # (done at, request, sent at)
    sent = 0
    limits: list[int] = []
    probes: list[int] = []
    for _ in range(replies):
        while len(out) < flow.gate.limit:
            start = max(clock.now, heapq.heappop(free))
            heapq.heappush(free, end := start + 0.2 * (first if sent < k else 1.0))
            heapq.heappush(out, (end, sent, clock.now))
            sent += 1
        clock.now, _, at = heapq.heappop(out)
        if flow.observe(clock.now - at):
            flow.retarget((None, None), 0, 0.0)
            (limits if flow.probing_since is None else probes).append(flow.gate.limit)
    return limits, probes


def _held_near(k: int, limits: list[int], flow: InFlight, clock: Clock, first: float = 1.0) -> None:
    late = limits[len(limits) // 2 :]
    assert max(late) <= 3 * k + 4 and min(late) >= k, (k, late)  # never so few that a slot idles
    assert flow.capacity is not None and 0.7 * k <= flow.capacity <= 1.5 * k, (k, flow.capacity)
    # 3000 replies of 0.2 s on k slots take 600 / k seconds at best (and the slow first ones more): the
    # probes and the rest cost under 3 %
    assert clock.now <= 1.03 * (600 / k + 0.2 * (first - 1)), (k, clock.now)


def test_a_server_with_k_slots_is_held_near_k() -> None:
    for k in (2, 4, 16):
        clock = Clock()
        flow = InFlight(256, clock=clock)
        limits, probes = _serve(flow, clock, k, 3000)
        _held_near(k, limits, flow, clock)
        # the floor was right from the start: the probes checking it never have more than k in flight
        assert probes and max(probes) <= k, probes


def test_a_server_whose_first_replies_were_slow_is_still_held_near_k() -> None:
    # the first replies took 1.5–6 times the server's time (a GC pause in our client, a machine busy at the
    # start, a server warming up): that is the fastest reply ever until a probe sends fewer and sees faster
    for k, first in ((2, 1.5), (2, 6.0), (4, 3.0), (16, 4.0)):
        clock = Clock()
        flow = InFlight(256, clock=clock)
        limits, _ = _serve(flow, clock, k, 3000, first)
        _held_near(k, limits, flow, clock, first)
        assert flow.latency_min == pytest.approx(0.2)

    # without the probe (as before it) the queue is measured against the slow first replies for the whole
    # run: 27 in flight on 2 slots, each reply taking 13 times the server's time
    clock = Clock()
    flow = InFlight(256, clock=clock)
    flow.probe = lambda _throughput: None  # type: ignore[method-assign]
    assert min(_serve(flow, clock, 2, 3000, 6.0)[0][-20:]) >= 20


def test_replies_of_very_different_lengths_without_a_queue_are_not_held_back() -> None:
    # 25 ms to 1.2 s whatever the concurrency (rows of 1 to 100 output tokens, ±50 %): no queue at all.
    # The in-flight limits are those of the same controller with no queue detection, reply for reply.
    def limits(detect: bool) -> list[int]:
        rng = random.Random(3)
        clock = Clock()
        flow = InFlight(256, clock=clock)
        if not detect:
            flow.judge = lambda _inflation, _limit: None  # type: ignore[method-assign]
        lat = lambda _n, _i: (0.05 + 0.008 * rng.randint(1, 100)) * rng.uniform(0.5, 1.5)  # noqa: E731
        return _drive(flow, clock, lat, 3000)

    with_detection, without = limits(True), limits(False)
    assert with_detection[len(without) // 4 :] == without[len(without) // 4 :]


def test_a_fast_server_is_left_alone() -> None:
    clock = Clock()
    flow = InFlight(256, clock=clock)
    # 1–10 ms replies: the client's own event loop stretches them; no capacity is ever estimated
    _drive(flow, clock, lambda n, _i: 0.001 + 0.00005 * n, 2000)
    assert flow.capacity is None


def test_a_probe_ends_when_the_server_starts_stating_its_limits() -> None:
    clock = Clock()
    flow = InFlight(256, clock=clock)
    _serve(flow, clock, 2, 70)  # to the first probe, at 64 replies
    assert flow.probing_since is not None
    flow.observe(0.2)
    flow.retarget((600, None), 0, 100.0)  # a proxy in front now sends x-ratelimit-*: Little's law on its rpm
    assert flow.probing_since is None and flow.gate.limit > 2
    assert flow.observe(0.2) is False  # and replies are no longer each a retarget


def test_answers_that_failed_count_in_the_throughput_in_flight_must_cover() -> None:
    # 90 replies a second at 0.2 s each, and in one run 10 answers a second more that were 500s: 100
    # answers a second need 20 in flight, not the 18 the replies alone would say (doubled, plus the
    # headroom of 16, as for any target)
    def target(failures: bool) -> int:
        clock = Clock()
        flow = InFlight(256, clock=clock)
        for i in range(200):
            clock.now += 0.01
            if i % 10 != 9:
                flow.observe(0.2)
            elif failures:
                flow.failed()
        return flow.target((None, None), 0, 0.0)

    assert target(True) - 16 == 2 * 20
    assert (target(True) - 16) / (target(False) - 16) == pytest.approx(100 / 90, rel=0.05)
