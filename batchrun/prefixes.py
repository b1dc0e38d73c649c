"""Shared prompt prefixes: which requests a provider's prompt cache can serve together.

A prompt cache (docs/service-tiers.md) serves the longest recently seen prefix of a prompt of at least
1,024 tokens, in 128-token steps, on the machine the request is routed to — by a hash of the prompt's
first ~256 tokens and its `prompt_cache_key`; one machine serves about 15 requests a minute for a
prefix and key before the rest overflow to machines that have not seen it. So:

* requests are grouped by the opening of their prompt (`prefix_key`) and a group's requests are
  dispatched together (`order`, used by the online executor within its reorder window);
* each group gets its own `prompt_cache_key`, and a hot group more than one (`CacheKeys`: a new key
  only when every key of the group has had 15 requests in the last minute), so no machine overflows;
* the plan forecasts the cached share (`Forecast`): per group, the prefix all its prompts share,
  rounded down to the cache's steps, served to every request but the first of each key.

The prompt is serialized as the simulator's cache sees it: role and content of each message in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

CACHE_MIN_TOKENS = 1024
"""The shortest prompt a provider caches (OpenAI)."""
CACHE_STEP = 128
"""Cached prefixes grow in steps of this many tokens past the minimum."""
KEY_RPM = 15
"""Requests a minute one prefix and key can have before the provider routes some elsewhere."""
KEY_CHARS = 4096
"""The opening of a prompt that names its group: about 1,024 tokens of English text."""
FORECAST_GROUPS = 4096
"""Groups the plan's forecast follows (memory stays bounded on a job of all-different prompts)."""
FORECAST_CHARS = 32_768
"""How much of a group's shared prefix the forecast compares (about 8,000 tokens)."""
AUTO_TEMPLATE = "{job}-{group}-{index}"
T = TypeVar("T")


def prompt_text(body: dict[str, Any]) -> str:
    """A chat body's messages as one string, in order, as the cache sees them."""
    parts = []
    for m in body.get("messages") or ():
        content = m.get("content")
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        parts.append(f"<|{m.get('role')}|>{text}")
    return "".join(parts)


def cacheable(tokens: int) -> int:
    """The tokens of a shared prefix a cache can serve: none under the minimum, else whole steps."""
    if tokens < CACHE_MIN_TOKENS:
        return 0
    return CACHE_MIN_TOKENS + (tokens - CACHE_MIN_TOKENS) // CACHE_STEP * CACHE_STEP


def group_of(model: str, text: str) -> str:
    """A short, stable name for the group a prompt's opening puts it in."""
    return hashlib.blake2b(f"{model}\0{text[:KEY_CHARS]}".encode(), digest_size=5).hexdigest()


def order(items: Sequence[T], group: Callable[[T], str | None]) -> list[T]:
    """Items regrouped so that each group's items are consecutive: groups in order of first appearance,
    items within a group in their own order (an item with no group stays where its group of None is)."""
    groups: dict[str | None, list[T]] = {}
    for item in items:
        groups.setdefault(group(item), []).append(item)
    if len(groups) <= 1:
        return list(items)
    return [item for members in groups.values() for item in members]


def key_template(setting: str | None, openai_like: bool) -> str | None:
    """The job's `[request] prompt_cache_key` as a template, or None when no key is sent."""
    if setting is None:
        setting = "auto" if openai_like else "off"
    if setting == "off":
        return None
    return AUTO_TEMPLATE if setting == "auto" else setting


@dataclass
class _Key:
    opened: float
    uses: deque[float] = field(default_factory=deque)
    """When its requests were handed out, in the last minute."""
    warm: bool = False
    """Its first request has been answered: the provider has the prefix cached under it."""


class CacheKeys:
    """Hands out `prompt_cache_key` values for a group of requests sharing a prefix.

    A provider caches a prefix only once a request carrying it has been processed, so requests sent
    together on a cold key all miss; and one machine serves about `per_key_rpm` requests a minute for a
    prefix and key. So a key's first request goes alone and the group's next requests wait (briefly)
    for it to be answered; a warm key takes up to `per_key_rpm` requests a minute; when every warm key
    is full another one is opened, up to `warming` cold ones at a time. A group sent slowly keeps one
    key (one miss); a hot one is spread over as many keys as its rate needs, one miss each."""

    def __init__(
        self,
        template: str,
        job: str,
        *,
        per_key_rpm: int = KEY_RPM,
        warming: int = 4,
        warm_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.template = template.replace("{job}", job)
        self.per_key_rpm = per_key_rpm
        self.warming = warming
        self.warm_timeout_s = warm_timeout_s
        self.clock = clock
        self.groups: dict[str, list[_Key]] = {}
        self.changed: asyncio.Event | None = None

    def pick(self, group: str) -> int | None:
        """The index of a key that may take a request now (opening one if allowed), else None."""
        keys = self.groups.setdefault(group, [])
        now = self.clock()
        cold = 0
        for i, k in enumerate(keys):
            while k.uses and k.uses[0] <= now - 60.0:
                k.uses.popleft()
            if not k.warm and now - k.opened >= self.warm_timeout_s:
                k.warm = True  # its first answer is long overdue: waiting longer helps no one
            if k.warm:
                if len(k.uses) < self.per_key_rpm:
                    return i
            else:
                cold += 1
        if cold < self.warming:
            keys.append(_Key(opened=now))
            return len(keys) - 1
        return None

    async def take(self, group: str, stopped: asyncio.Event | None = None) -> tuple[str, int]:
        """A key for the next request of `group` (waiting for a cold key's first answer if need be)
        and its index, for `answered`."""
        if self.changed is None:
            self.changed = asyncio.Event()
        while (index := self.pick(group)) is None and not (stopped is not None and stopped.is_set()):
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.25)
        if index is None:  # the run has stopped (pick found every key busy, so there is one): not sent anyway
            index = 0
        keys = self.groups[group]
        keys[index].uses.append(self.clock())
        return self.template.replace("{group}", group).replace("{index}", str(index)), index

    def answered(self, group: str, index: int) -> None:
        """A request under this key was answered: the key is warm."""
        keys = self.groups.get(group)
        if keys is not None and index < len(keys) and not keys[index].warm:
            keys[index].warm = True
            if self.changed is not None:
                self.changed.set()


@dataclass
class _Group:
    prefix: str
    requests: int = 0
    finishing: int = 0
    """Of `requests`, those still to send (not answered in the ledger)."""
    shortest: int = 0
    """The fewest prompt tokens of any request in the group (a hit never exceeds the prompt)."""


@dataclass
class Forecast:
    """The plan's forecast of prompt-cache hits, from the prefix structure of the rendered prompts."""

    groups: dict[tuple[str, str], _Group] = field(default_factory=dict)
    beyond: int = 0
    """Requests of ≥ 1,024 tokens in groups past FORECAST_GROUPS: forecast uncached."""

    def add(self, model: str, body: dict[str, Any], prompt_tokens: int, finishing: bool) -> None:
        if prompt_tokens < CACHE_MIN_TOKENS:
            return
        text = prompt_text(body)
        name = (model, text[:KEY_CHARS])
        g = self.groups.get(name)
        if g is None:
            if len(self.groups) >= FORECAST_GROUPS:
                self.beyond += 1
                return
            g = self.groups[name] = _Group(text[:FORECAST_CHARS], shortest=prompt_tokens)
        elif not text.startswith(g.prefix):
            g.prefix = g.prefix[: _shared(g.prefix, text)]
        g.requests += 1
        g.finishing += finishing
        g.shortest = min(g.shortest, prompt_tokens)

    def cached(
        self, count: Callable[[str, str], int], rate_rpm: float | None, spread: bool
    ) -> dict[str, tuple[int, int]]:
        """model → (cached prompt tokens of all requests, of those still to send). `count(model, text)`
        counts a prefix's tokens. A group's first request per key misses; with keys spread at `rate_rpm`
        (None: as fast as the server allows) a group uses ceil(min(requests, rate) / 15) keys; with one
        key, only ~15 a minute are served by the machine that has the prefix."""
        out: dict[str, tuple[int, int]] = {}
        for (model, _), g in self.groups.items():
            if g.requests < 2:
                continue
            per_request = min(cacheable(count(model, g.prefix)), cacheable(g.shortest))
            if not per_request:
                continue
            if spread:
                busiest = g.requests if rate_rpm is None else min(g.requests, rate_rpm)
                keys = max(1, math.ceil(busiest / KEY_RPM))
                hits = max(0, g.requests - keys)
                # the misses fall on the first requests sent; a resumed run's are among those still to send
                hits_finishing = max(0, g.finishing - keys)
            else:
                # one key: the machine holding the prefix serves ~15 a minute and the rest go elsewhere,
                # where a hit is luck — counted as none (the group takes requests / rate minutes)
                minutes = 1.0 if rate_rpm is None else max(1.0, g.requests / rate_rpm)
                cap = math.ceil(KEY_RPM * minutes)
                hits = min(g.requests - 1, cap)
                hits_finishing = min(max(0, g.finishing - 1), cap)
            total, finishing = out.get(model, (0, 0))
            out[model] = (total + hits * per_request, finishing + hits_finishing * per_request)
        return out

    def summary(self) -> tuple[int, int]:
        """(groups of ≥ 2 long prompts, requests in them)."""
        shared = [g for g in self.groups.values() if g.requests >= 2]
        return len(shared), sum(g.requests for g in shared)


def _shared(a: str, b: str) -> int:
    """Length of the common prefix of two strings, by halving with str.startswith (C speed)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if b.startswith(a[:mid]):
            lo = mid
        else:
            hi = mid - 1
    return lo


__all__ = ["CACHE_MIN_TOKENS", "CacheKeys", "Forecast", "cacheable", "group_of", "key_template", "order", "prompt_text"]
