"""The simulator's prompt cache, modelled on OpenAI's documented rules (docs/service-tiers.md):

* only prompts of at least `min_tokens` (1,024) are cached, on their exact prefix;
* a hit covers the longest cached prefix, counted from `min_tokens` in `increment` (128) steps;
* an entry lives `ttl_s` after its last use;
* requests are routed by a hash of the prompt's first `route_tokens` (256) tokens together with
  `prompt_cache_key`, so the same prefix under two keys lands on two machines, each with its own cache;
* with `route_rpm` set, a machine takes that many requests a minute for one route (OpenAI documents
  about 15) and the rest overflow to a random one of `machines`, which has its own cache.

The reply reports the hit as `usage.prompt_tokens_details.cached_tokens`, which the client prices at the
cached rate. The prompt is the request's messages as the server would see them, tokenized with the
model's encoding (role and content of each message in order).
"""

from __future__ import annotations

import hashlib
import random
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any


class PromptCache:
    def __init__(
        self,
        *,
        min_tokens: int = 1024,
        increment: int = 128,
        ttl_s: float = 300.0,
        route_tokens: int = 256,
        route_rpm: int = 0,
        machines: int = 512,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_tokens = min_tokens
        self.increment = increment
        self.ttl_s = ttl_s
        self.route_tokens = route_tokens
        self.clock = clock
        self.route_rpm = route_rpm
        self.machines = machines
        self.rng = random.Random(seed + 11)
        self.routed: dict[bytes, deque[float]] = {}
        self.overflowed = 0
        self.entries: dict[bytes, tuple[float, float]] = {}
        """(machine, prefix) digest → (cached from, last used): a prefix is cached once the first request
        carrying it has been processed, so requests sent together before that all miss."""
        self.hits = 0
        self.cached_tokens = 0
        self.cacheable_tokens = 0

    @staticmethod
    def prompt_tokens(encode: Callable[[str], list[int]], body: dict[str, Any]) -> list[int]:
        tokens: list[int] = []
        for m in body.get("messages") or []:
            if isinstance(m, dict):
                content = m.get("content")
                text = content if isinstance(content, str) else str(content)
                tokens += encode(f"<|{m.get('role')}|>{text}")
        return tokens

    def use(self, tokens: list[int], key: str | None, ready_after: float = 0.0) -> int:
        """The cached tokens of this prompt; its prefixes are cached `ready_after` seconds from now (when
        this request has been processed)."""
        n = len(tokens)
        if n < self.min_tokens:
            return 0
        now = self.clock()
        ids = array("I", tokens)
        route = hashlib.blake2b(ids[: self.route_tokens].tobytes() + (key or "").encode(), digest_size=8).digest()
        if self.route_rpm:
            recent = self.routed.setdefault(route, deque())
            while recent and recent[0] <= now - 60.0:
                recent.popleft()
            if len(recent) >= self.route_rpm:  # this machine is busy with the route: another one serves it
                self.overflowed += 1
                route = hashlib.blake2b(route + self.rng.randrange(self.machines).to_bytes(4, "big")).digest()[:8]
            else:
                recent.append(now)
        h = hashlib.blake2b(route, digest_size=16)
        done = 0
        hit = 0
        for length in range(self.min_tokens, n + 1, self.increment):
            h.update(ids[done:length].tobytes())
            done = length
            digest = h.copy().digest()
            seen = self.entries.get(digest)
            if seen is not None and seen[0] <= now and now - seen[1] <= self.ttl_s:
                hit = length
                self.entries[digest] = (seen[0], now)
            elif seen is None or now - seen[1] > self.ttl_s:
                self.entries[digest] = (now + ready_after, now)
        self.cacheable_tokens += n
        if hit:
            self.hits += 1
            self.cached_tokens += hit
        if len(self.entries) > 200_000:  # expired entries go, so a long benchmark does not grow without end
            self.entries = {d: t for d, t in self.entries.items() if now - t[1] <= self.ttl_s}
        return hit
