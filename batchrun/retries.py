"""Retries, in one place: what a failed call means and how long to wait before trying again.

The SDK's own retries are off (`max_retries=0`): they cannot tell a quota stop
from a rate limit and do not talk to the limiter. Every SDK / HTTP exception is
translated here, and only here, into a `Failure` the engine acts on.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .headers import MAX_WAIT_SECONDS, RateLimitHeaders, read_headers, try_again_in
from .redact import scrub
from .wire import PlainConnectionError, PlainFailure, PlainMalformedReply, PlainStatusError, PlainTimeout

if TYPE_CHECKING:  # imported where a failure is classified: `plan`, `status` and bad jobs never load the SDK
    import openai

QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
        "billing_hard_limit_reached",
    }
)
RETRYABLE_STATUS = frozenset({408, 409, 500, 502, 503, 504})


class Action(enum.Enum):
    RATE_LIMITED = "rate_limited"  # pause everyone, retry; not an attempt of the row's budget
    RETRY = "retry"  # back off and retry, counts against max_attempts
    ROW_FAILED = "row_failed"  # this row cannot succeed: failed with the server's message
    TOO_LONG = "too_long"  # larger than the TPM bucket: never retried
    STOP_QUOTA = "stop_quota"  # the account is out of credit: stop the run
    STOP_ENDPOINT = "stop_endpoint"  # auth / model access: every row would fail the same way
    UNAVAILABLE = "unavailable"  # flex has no capacity now: unbilled; back off, this row only (or fall back)


@dataclass(frozen=True, slots=True)
class Failure:
    action: Action
    message: str
    status: int | None = None
    wait: float | None = None
    """Seconds the server asked us to wait, when it said."""
    limit_kind: str | None = None
    """"tokens" or "requests" for a rate limit."""
    slow_down: bool = False
    headers: RateLimitHeaders | None = None

    def __post_init__(self) -> None:
        # the one place a server's words become ours: from here they reach the ledger, the output,
        # the audit log and the terminal, so no key may survive past it (a gateway may echo it)
        object.__setattr__(self, "message", scrub(self.message))


def _error_fields(exc: openai.APIStatusError | PlainStatusError) -> tuple[str, str, str]:
    body: Any = exc.body
    if isinstance(body, dict) and "error" in body and isinstance(body["error"], dict):
        body = body["error"]
    if isinstance(body, dict):
        return str(body.get("message") or exc.message), str(body.get("type") or ""), str(body.get("code") or "")
    return str(exc.message), "", ""


def classify(exc: BaseException) -> Failure:
    """What a failed call means for the row and the run: a plain server's failure (wire.py, made without
    the SDK) and the SDK's exception for the same failure mean the same."""
    if isinstance(exc, PlainFailure):
        return _classify(exc, timeout=PlainTimeout, connection=PlainConnectionError, status=PlainStatusError,
                         malformed=PlainMalformedReply)  # fmt: skip
    import openai

    return _classify(exc, timeout=openai.APITimeoutError, connection=openai.APIConnectionError,
                     status=openai.APIStatusError, malformed=openai.APIResponseValidationError)  # fmt: skip


def _classify(exc: BaseException, *, timeout: type, connection: type, status: type, malformed: type) -> Failure:
    if isinstance(exc, timeout):
        return Failure(Action.RETRY, "request timed out")
    if isinstance(exc, connection):
        cause = exc.__cause__
        detail = f": {cause}" if cause else ""
        return Failure(Action.RETRY, f"connection error{detail}")
    if isinstance(exc, status):
        return _status_failure(exc)
    if isinstance(exc, malformed):
        return Failure(Action.RETRY, f"malformed response: {exc}")
    raise exc


def _status_failure(exc: Any) -> Failure:
    """An error reply (the SDK's APIStatusError or a wire.PlainStatusError: the same attributes)."""
    status = exc.status_code
    message, type_, code = _error_fields(exc)
    headers = read_headers(exc.response.headers)
    if status == 429:
        if type_ in QUOTA_CODES or code in QUOTA_CODES:
            return Failure(Action.STOP_QUOTA, message, status, headers=headers)
        if message.startswith("Request too large"):
            return Failure(Action.TOO_LONG, message, status, headers=headers)
        if code == "resource_unavailable" or "resource unavailable" in message.lower():
            # flex processing's "429 Resource Unavailable": the tier has no capacity for this request
            # right now — not the account's rate limit (no pause for everyone) and not billed
            return Failure(Action.UNAVAILABLE, message, status, wait=headers.retry_after, headers=headers)
        wait = headers.retry_after or try_again_in(message)
        if wait is None:
            wait = headers.reset_tokens if type_ == "tokens" else headers.reset_requests
        kind = type_ if type_ in ("tokens", "requests") else None
        if wait is not None and wait > MAX_WAIT_SECONDS:
            # never slept blindly: wait the cap, then the next request asks the server again
            message = f"{message} (the server asked to wait {wait:,.0f} s; waiting {MAX_WAIT_SECONDS:,.0f} s, then asking again)"
            wait = MAX_WAIT_SECONDS
        return Failure(Action.RATE_LIMITED, message, status, wait=wait, limit_kind=kind, headers=headers)
    if status in (401, 403):
        return Failure(Action.STOP_ENDPOINT, f"{status} {message}", status, headers=headers)
    if status == 404 and (code == "model_not_found" or "model" in message.lower()):
        return Failure(Action.STOP_ENDPOINT, f"404 {message}", status, headers=headers)
    if status == 498 and code == "capacity_exceeded":
        # Groq's flex tier without capacity (console.groq.com/docs/flex-processing): like OpenAI's
        # "resource unavailable", this row backs off (or falls back); the account is not limited
        return Failure(Action.UNAVAILABLE, f"498 {message}", status, wait=headers.retry_after, headers=headers)
    if status in RETRYABLE_STATUS or status >= 500:
        slow = status == 503 and "slow down" in message.lower()
        return Failure(
            Action.RETRY, f"{status} {message}", status, wait=headers.retry_after, slow_down=slow, headers=headers
        )
    return Failure(Action.ROW_FAILED, f"{status} {message}", status, headers=headers)


def line_failure(status_code: int | None, body: Any, error: Any) -> Failure:
    """What a Batch API result line that is not a 200 means: send again in a later batch (RETRY), or
    the row's final answer (ROW_FAILED). Expired and cancelled lines carry `error` and no response;
    per-request HTTP failures carry a 4xx/5xx `status_code` with the error in the body."""
    if status_code is None:
        code = (error or {}).get("code") or "no_response"
        return Failure(Action.RETRY, f"{code}: {(error or {}).get('message') or 'no response for this line'}")
    err = body.get("error") if isinstance(body, dict) else None
    message = str((err or {}).get("message") or body)[:500] if err or body else "no body"
    if status_code == 429 or status_code in RETRYABLE_STATUS or status_code >= 500:
        return Failure(Action.RETRY, f"{status_code} {message}", status_code)
    return Failure(Action.ROW_FAILED, f"{status_code} {message}", status_code)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: uniform(0, min(cap, base · 2^attempt)).

    Two bases: `base` while failures are common (an outage, an overloaded server: spread the
    retries out), `rare_base` while they are rare (a stray 500 or reset on a healthy server:
    the row's retry need not wait longer than the server takes to answer it; the AWS SDKs make
    the same split, 100 ms for errors against 500 ms for throttling). Where the server answers
    faster than `rare_base`, the rare base is its typical reply time (`typical`): with 50 ms replies
    a row failing twice near the end of a run held it 0.3–0.5 s, most of the cost of the faults.
    """

    base: float = 0.5
    cap: float = 30.0
    rare_base: float = 0.1

    def delay(
        self,
        attempt: int,
        rng: random.Random,
        server_wait: float | None = None,
        *,
        rare: bool = False,
        typical: float = 0.0,
    ) -> float:
        base = (min(self.rare_base, typical) if typical > 0 else self.rare_base) if rare else self.base
        ceiling = min(self.cap, base * (2 ** max(attempt - 1, 0)))
        delay = rng.uniform(0, ceiling)
        return max(delay, server_wait or 0.0)


class FailureRate:
    """The share of recent answers that were retryable failures, as an exponential average.

    Over ~`window` answers, so one unlucky burst does not flip it; it starts at zero, and a server
    failing every request crosses `rare_below` within a handful of answers.
    """

    __slots__ = ("_alpha", "rare_below", "value")

    def __init__(self, window: int = 200, rare_below: float = 0.1) -> None:
        self._alpha = 1.0 / window
        self.rare_below = rare_below
        self.value = 0.0

    def record(self, failed: bool) -> None:
        self.value += self._alpha * ((1.0 if failed else 0.0) - self.value)

    @property
    def rare(self) -> bool:
        return self.value < self.rare_below
