"""The simulator's meters: its own token buckets (the limits it enforces) and the sliding windows its
statistics report (peak RPM / TPM in any 60 s)."""

from __future__ import annotations

from collections import deque


class Bucket:
    """A server-side token bucket: capacity = the per-minute limit, refilled continuously.

    Deliberately not batchrun.limits.Bucket: the simulator is the test double for the client's
    limiter, so it keeps its own, independent arithmetic."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        return max(amount - self.level, 0.0) / self.rate

    def reset_seconds(self) -> float:
        return (self.capacity - self.level) / self.rate


class Window:
    """Largest sum of amounts seen in any `span`-second window (peak RPM / TPM)."""

    def __init__(self, span: float = 60.0) -> None:
        self.span = span
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0
        self.peak = 0
        self.accepted = 0

    def add(self, now: float, amount: int) -> None:
        self.accepted += 1
        self.events.append((now, amount))
        self.total += amount
        while self.events and self.events[0][0] <= now - self.span:
            self.total -= self.events.popleft()[1]
        self.peak = max(self.peak, self.total)
