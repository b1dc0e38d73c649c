"""What the engine is given and what it counts: work items, its options, a run's statistics.

Kept apart from `engine` so the cluster (driver and workers) and the executors share them without
the engine's sending machinery."""

from __future__ import annotations

import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .prompts import Request
from .retries import Backoff
from .rows import RowResult


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One API request: a chat row, or a group of embedding rows."""

    seqs: tuple[int, ...]
    requests: tuple[Request, ...]

    @property
    def charged(self) -> int:
        return sum(r.charged_tokens for r in self.requests)


@dataclass
class RunStats:
    started: float = field(default_factory=time.monotonic)
    by_status: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    charged_tokens: int = 0
    refused_tokens: int = 0
    """Of `charged_tokens`, what was asked for by requests the server refused with a rate-limit 429."""
    cost_usd: float = 0.0
    requests_sent: int = 0
    requests_ok: int = 0
    rate_limited: int = 0
    unavailable: int = 0
    """Flex "resource unavailable" refusals (unbilled; not rate limits)."""
    retries: int = 0
    latencies_ms: array = field(default_factory=lambda: array("d"))
    recent: deque = field(default_factory=deque)  # (time, tokens) of replies in the last 60 s
    reorder_peak: int = 0
    first_send: float | None = None
    cached_rows: int = 0
    cached_usd: float = 0.0
    cached_prompt_tokens: int = 0
    """Of prompt_tokens, those the provider's prompt cache served (priced at the cached rate)."""
    tiers: dict[str, list[Any]] = field(default_factory=dict)
    """Rows answered in this run by the tier that served them: [rows, dollars]."""

    def add(self, r: RowResult) -> None:
        self.by_status[r.status] = self.by_status.get(r.status, 0) + 1
        if r.from_cache:
            if r.status != "failed":  # "answered without a request": a copied failure answered nothing
                self.cached_rows += 1
                self.cached_usd += r.cost_usd or 0.0
        else:
            self.spend(r.prompt_tokens, r.completion_tokens, r.cost_usd)
            self.cached_prompt_tokens += r.cached_tokens or 0
            if r.service_tier is not None:
                tally = self.tiers.setdefault(r.service_tier, [0, 0.0])
                tally[0] += 1
                tally[1] += r.cost_usd or 0.0

    def spend(self, prompt: int | None, completion: int | None, cost: float | None) -> None:
        self.prompt_tokens += prompt or 0
        self.completion_tokens += completion or 0
        self.cost_usd += cost or 0.0

    @property
    def admitted(self) -> tuple[int, int]:
        """Requests and tokens the server took (sent, less what a rate-limit 429 refused): the work
        the limits had to allow."""
        return self.requests_sent - self.rate_limited, self.charged_tokens - self.refused_tokens

    def tokens_last_minute(self, now: float) -> int:
        while self.recent and self.recent[0][0] < now - 60:
            self.recent.popleft()
        return sum(n for _, n in self.recent)


@dataclass(frozen=True, slots=True)
class EngineOptions:
    max_in_flight: int = 256
    max_attempts: int = 6
    retry_bad_replies: int = 0
    window: int = 20_000
    fail_fast_rows: int = 10
    """Distinct rows failing the same way in a row, no success between, that stop the run (0: never)."""
    backoff: Backoff = field(default_factory=Backoff)
    seed: int = 0


__all__ = ["EngineOptions", "RunStats", "WorkItem"]
