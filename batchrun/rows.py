"""What happened to one row: the record every stage passes on (engine → ledger → sink, and back from
the ledger on a resumed run). Kept apart from `sinks`, which needs pyarrow, so what only reads the
ledger (`plan`, `status`) does not load it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RowResult:
    """What happened to one row."""

    row: int
    row_id: str
    status: str
    error: str | None = None
    attempts: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    finish_reason: str | None = None
    model: str | None = None
    request_id: str | None = None
    output: Any = None
    """Parsed structured output (dict), reply text (str), or embedding (list of floats)."""
    raw_text: str | None = None
    """The reply text as the model sent it, for every reply that carries text (the raw_response column)."""
    from_cache: bool = False
    """Answered from the ledger (an earlier run, or an identical request in this run): not paid again."""
    retryable: bool = False
    """A failure that another run may fix (5xx, timeouts): not kept as the row's final answer."""
    service_tier: str | None = None
    """The tier that served the request, as the response says (billed by it); None when it did not say."""
    cached_tokens: int | None = None
    """Of prompt_tokens, those the provider's prompt cache served (usage.prompt_tokens_details), priced lower."""


EMPTY_ERROR = (
    "not sent: the row's template columns are empty (null) or its prompt is blank; "
    '[input] empty = "send" sends such rows'
)


def empty_result(row: int, row_id: str) -> RowResult:
    """The result of a row with nothing to ask (status empty_input): never sent, never paid."""
    return RowResult(row=row, row_id=row_id, status="empty_input", error=EMPTY_ERROR)
