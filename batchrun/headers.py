"""OpenAI's rate-limit vocabulary: Go-style durations, x-ratelimit-* headers, 429 messages.

Shared by the engine (which reads them) and the simulator (which writes them),
so both sides agree on one format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_TRY_AGAIN = re.compile(r"try again in ((?:\d+(?:\.\d+)?(?:ms|us|µs|ns|h|m|s))+)", re.IGNORECASE)


def parse_duration(text: str) -> float | None:
    """Seconds in a Go duration ("1s", "6m0s", "120ms", "8.64s", "1h2m"); None if unreadable."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)  # some servers send bare seconds
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return total if pos == len(text) else None


MAX_WAIT_SECONDS = 600.0
"""No wait a server asks for is slept longer than this in one go: past it, the next request asks again."""
_EPOCH_AFTER = 1e8  # seconds: a "reset" this large is a Unix timestamp (1973 on), not a delay
_EPOCH_MS_AFTER = 1e11


def parse_reset(text: str, now: float | None = None) -> float | None:
    """Seconds until a reset or retry time, in every form servers send: a Go duration or bare seconds
    ("6m0s", "8.64s", "120ms", "30"), a Unix timestamp in seconds or milliseconds, an RFC 3339 time
    ("2026-12-02T01:00:00Z", as Anthropic-style headers have it) or an HTTP date (Retry-After). Never
    negative; None when unreadable."""
    import time
    from datetime import datetime
    from email.utils import parsedate_to_datetime

    text = text.strip()
    if not text:
        return None
    now = time.time() if now is None else now
    seconds = parse_duration(text)
    if seconds is not None:
        if seconds >= _EPOCH_MS_AFTER:
            return max(seconds / 1000 - now, 0.0)
        if seconds >= _EPOCH_AFTER:
            return max(seconds - now, 0.0)
        return max(seconds, 0.0)
    when = None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - now, 0.0)


def format_duration(seconds: float) -> str:
    """A Go-style duration as OpenAI writes it: "120ms", "8.64s", "6m0s", "1h0m0s"."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        ms = round(seconds * 1000, 3)
        return f"{ms:g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    secs_text = f"{round(secs, 3):g}s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{secs_text}"
    if minutes:
        return f"{int(minutes)}m{secs_text}"
    return secs_text


def try_again_in(message: str) -> float | None:
    """Seconds from a 429 message's "Please try again in 1.2s"."""
    m = _TRY_AGAIN.search(message or "")
    return parse_duration(m.group(1)) if m else None


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """What a response says about the account's buckets; any field may be missing."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None
    retry_after: float | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__dataclass_fields__)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(float(value))
    except ValueError:
        return None
    # Azure's responses API sends -1 / 0 for "not applicable"
    return n if n >= 0 else None


def read_headers(headers: Mapping[str, str]) -> RateLimitHeaders:
    """Parse x-ratelimit-* and Retry-After from a response's headers (case-insensitive mapping)."""

    def get(name: str) -> str | None:
        return headers.get(name)

    def dur(name: str) -> float | None:
        v = get(name)
        seconds = parse_reset(v) if v is not None else None
        return None if seconds is None else min(seconds, MAX_WAIT_SECONDS)

    limit_tokens = _int(get("x-ratelimit-limit-tokens"))
    retry_after = None
    if (ms := get("retry-after-ms")) is not None:
        try:
            retry_after = float(ms) / 1000
        except ValueError:
            retry_after = None
    if retry_after is None and (ra := get("retry-after")) is not None:
        retry_after = parse_reset(ra)  # seconds, or an HTTP date
    return RateLimitHeaders(
        limit_requests=_int(get("x-ratelimit-limit-requests")),
        limit_tokens=limit_tokens if limit_tokens else None,
        remaining_requests=_int(get("x-ratelimit-remaining-requests")),
        remaining_tokens=_int(get("x-ratelimit-remaining-tokens")),
        reset_requests=dur("x-ratelimit-reset-requests"),
        reset_tokens=dur("x-ratelimit-reset-tokens"),
        retry_after=retry_after,
    )
