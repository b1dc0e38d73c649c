"""InFlight's queue detection on a fake clock: a server that serves k at once is held near k; a server
whose replies merely vary in length is not taken for one that queues (or recovers from the mistake)."""

from __future__ import annotations

import random

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


def test_a_server_with_k_slots_is_held_near_k() -> None:
    for k in (2, 4, 16):
        clock = Clock()
        flow = InFlight(256, clock=clock)
        # 0.2 s a reply when served at once (the first k are); past k, every request waits its turn
        limits = _drive(flow, clock, lambda n, i, k=k: 0.2 * (1.0 if i < k else max(1.0, n / k)), 2000)
        late = limits[len(limits) // 2 :]
        assert max(late) <= 2 * k + 4 and min(late) >= k, (k, late)
        assert flow.capacity is not None and 0.7 * k <= flow.capacity <= 1.5 * k


def test_replies_of_very_different_lengths_without_a_queue_are_not_held_back() -> None:
    # 25 ms to 1.2 s whatever the concurrency (rows of 1 to 100 output tokens, ±50 %): no queue at all.
    # The in-flight limits are those of the same controller with no queue detection, reply for reply.
    def limits(detect: bool) -> list[int]:
        rng = random.Random(3)
        clock = Clock()
        flow = InFlight(256, clock=clock)
        if not detect:
            flow.queue_cap = lambda: flow.max_in_flight  # type: ignore[method-assign]
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
