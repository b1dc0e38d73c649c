"""Secrets never reach a file or a terminal: every server message, exception text and audit record
passes through `scrub` before batchrun writes it anywhere.

Two nets: the exact keys this process holds (registered when an endpoint is opened — a gateway
that echoes the key in a 401 body is caught whatever the key looks like), and the shapes of keys
and credentials in general (`sk-…`, `Bearer …`, `api-key: …`), for keys we were never told about.
"""

from __future__ import annotations

import re
import threading
from typing import Any

MASK = "[redacted]"
_SHAPES = re.compile(
    r"""
    \bsk-[A-Za-z0-9_\-]{8,}                                   # OpenAI-style keys (sk-, sk-proj-, ...)
    | (?i:\bbearer\s+)[A-Za-z0-9._~+/\-]{8,}=*                # Authorization: Bearer <token>
    | (?i:\b(?:api[-_]?key|x-api-key|authorization|access[-_]?token)\b)
      ["']?\s*[:=]\s*["']?[^\s"',}&]{8,}                       # api-key: <v>, "api_key": "<v>", ?api-key=<v>
    """,
    re.VERBOSE,
)
_secrets: set[str] = set()
_lock = threading.Lock()


def register(secret: str | None) -> None:
    """Remember a secret this process uses (an API key), so `scrub` removes it wherever it shows up."""
    if secret and len(secret) >= 6:  # a shorter "key" (tests' "x") would mask ordinary text
        with _lock:
            _secrets.add(secret)


def scrub(text: str) -> str:
    """`text` with every registered secret and every key-shaped string replaced by [redacted]."""
    if not text:
        return text
    for secret in tuple(_secrets):
        if secret in text:
            text = text.replace(secret, MASK)
    return _SHAPES.sub(_mask_match, text)


def _mask_match(m: re.Match[str]) -> str:
    found = m.group(0)
    lower = found.lower()
    if lower.startswith("sk-"):
        return MASK
    # keep the label ("Bearer ", "api-key: ") so the message still says what was there
    for sep in (":", "=", " "):
        i = found.find(sep)
        if i > 0 and not lower.startswith("sk-"):
            head = found[: i + 1]
            rest = found[i + 1 :]
            lead = len(rest) - len(rest.lstrip(" \"'"))
            return head + rest[:lead] + MASK
    return MASK


def scrub_obj(value: Any) -> Any:
    """A JSON-like value with every string scrubbed (for audit records)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_obj(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_obj(v) for v in value]
    return value
