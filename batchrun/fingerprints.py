"""What identifies a request's answer, and which earlier answer still stands.

The fingerprint is a hash of exactly what is sent (endpoint, model, messages, parameters, schema) but
the output-token limit; `CachePolicy` decides, answer by answer, whether one recorded under another
limit (or before --refresh, or with a status to retry) is reused or asked again.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Which answers in the ledger a run reuses instead of paying for them again."""

    read: bool = True
    """False for --refresh and --no-cache: earlier answers are not reused (this run's own still are)."""
    write: bool = True
    """False for --no-cache: answers are not kept (their spend still is)."""
    max_output_tokens: int | None = None
    """The job's current output-token limit; answers asked under another limit are checked against it."""
    retry: frozenset[str] = frozenset()
    """Statuses to send again (`--retry failed,truncated`): final answers of these are not reused."""
    since: float = math.inf
    """Answers recorded at or after this time (this run's start) are always reused."""

    def accepts(self, status: str, completion_tokens: int | None, max_then: int | None, created_at: float) -> bool:
        if created_at >= self.since:
            return True
        if not self.read or status in self.retry:
            return False
        limit = self.max_output_tokens
        if limit is None or max_then == limit:
            return True
        if status == "truncated":
            return False  # cut off at another limit: under this one the answer would differ
        # finished within the old limit: it stands if it also fits the new one
        return completion_tokens is not None and completion_tokens < limit


OUTPUT_LIMIT_KEYS = frozenset({"max_tokens", "max_completion_tokens"})


class Fingerprinter:
    """The cache key of a request: a hash of what is actually sent, and where.

    A job's requests differ only in the rendered row text; everything else (endpoint, model,
    parameters but the output-token limit, system and few-shot messages, schema) is hashed once,
    canonically, and each row's fingerprint is the hash of that digest and the row's text.
    `legacy` keeps the limit in, as versions before 0.2 did (to find their batch runs again).
    """

    def __init__(self, endpoint: str, kind: str, constant: dict[str, Any], *, legacy: bool = False) -> None:
        if not legacy:  # the output-token limit is checked per answer instead (CachePolicy)
            constant = {k: v for k, v in constant.items() if k not in OUTPUT_LIMIT_KEYS}
        canonical = json.dumps(
            {"endpoint": endpoint, "kind": kind, "request": constant},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        self.prefix = hashlib.blake2b(canonical.encode("utf-8"), digest_size=32).digest()

    def of(self, text: str) -> str:
        h = hashlib.blake2b(self.prefix, digest_size=16)
        h.update(text.encode("utf-8"))
        return h.hexdigest()
