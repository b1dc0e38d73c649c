"""What a run did (`RunResult`) and the end-of-run summary `batchrun run` prints.

Every kind of run (online table, Batch API, document) ends in one RunResult; its
`exit_code` is what the CLI tells cron when the run was not stopped early.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from .errors import ExitCode

if TYPE_CHECKING:
    from .jobs import Job

ACCEPTED_STATUSES = ("ok", "refused", "filtered")
"""Final statuses that count as answered by default: a refusal or a content filter is the model's answer."""
RETRYABLE_BY_FLAG = frozenset({"failed", "truncated", "schema_invalid", "refused", "filtered"})
"""Statuses `batchrun run --retry` can send again (they are final in the ledger otherwise)."""


@dataclass
class RunResult:
    """What a run did; `frame()` reads the output as a polars DataFrame."""

    job: str
    output_path: Path
    rows: int
    by_status: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    price_known: bool
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_max_ms: float | None
    requests_sent: int
    rate_limited: int
    retries: int
    wall_seconds: float
    minimum_seconds: float
    limits: tuple[int | None, int | None]
    simulated: bool
    cached_rows: int = 0
    cached_usd: float = 0.0
    ledger_path: Path | None = None
    stopped: str | None = None
    notes: list[str] = field(default_factory=list)
    mode: str = "online"
    waiting: str | None = None
    """Batch mode: why the output is not written yet (batches still running)."""
    batch_ids: list[str] = field(default_factory=list)
    documents: list[Path] = field(default_factory=list)
    """Document jobs: the translated documents written (the Parquet holds one row per paragraph)."""

    table_path: Path | None = None
    report_path: Path | None = None
    """The HTML run report written after the run (None: not written)."""
    """The typed Parquet output (the output itself, or what a CSV / JSONL / Excel output was exported from)."""
    startup_seconds: float | None = None
    """From the start (of the process, for the CLI) to the first request sent."""
    accepted: tuple[str, ...] = ACCEPTED_STATUSES
    """Statuses that count as answered for the exit code (the job's [output] accept)."""

    def frame(self) -> pl.DataFrame:
        """The output as a polars DataFrame, typed (read from the Parquet whatever the output format)."""
        return pl.read_parquet(self.table_path or self.output_path)

    def statuses(self) -> str:
        """Row counts by status, in the order of STATUS_ORDER."""
        return "   ".join(f"{k} {self.by_status[k]:,}" for k in STATUS_ORDER if self.by_status.get(k))

    def summary(self) -> dict[str, Any]:
        """What the ledger keeps of a finished run (JSON-ready: paths left out)."""
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in ("output_path", "ledger_path", "documents", "table_path", "report_path")
        }

    @property
    def unanswered(self) -> dict[str, int]:
        """Rows by status that do not count as answered (see `accepted`)."""
        return {k: n for k, n in self.by_status.items() if n and k not in self.accepted}

    @property
    def exit_code(self) -> int:
        """The process exit code this result stands for when the run was not stopped (README: Exit codes)."""
        if self.waiting is not None:
            return ExitCode.PENDING
        return ExitCode.ROWS_FAILED if self.unanswered else ExitCode.DONE

    @classmethod
    def empty(cls, job: Job, *, waiting: str, simulated: bool, notes: list[str], **kw: Any) -> RunResult:
        """A batch invocation that wrote no output yet."""
        return cls(
            job=job.name, output_path=job.output_path, rows=0, by_status={}, prompt_tokens=0, completion_tokens=0,
            cost_usd=0.0, price_known=True, latency_p50_ms=None, latency_p95_ms=None, latency_max_ms=None,
            requests_sent=0, rate_limited=0, retries=0, wall_seconds=0.0, minimum_seconds=0.0, limits=(None, None),
            simulated=simulated, notes=notes, mode="batch", waiting=waiting, **kw,
        )  # fmt: skip


STATUS_ORDER = (
    "ok", "refused", "truncated", "schema_invalid", "filtered", "too_long", "failed", "empty_input", "not_sent",
)  # fmt: skip


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def format_summary(r: RunResult) -> str:
    """The end-of-run table `batchrun run` prints."""
    if r.waiting is not None:
        head = f"{'SIMULATED batch' if r.simulated else 'Batch'} job {r.job!r}: output not written yet"
        return "\n".join([head, f"  batches      {r.waiting}", *(f"  note         {n}" for n in r.notes)])
    if r.mode != "online":
        return _format_batch(r)
    cost = f"${r.cost_usd:,.4f}" if r.price_known else "unknown (no price for this model)"
    rpm, tpm = r.limits
    lat = (
        "n/a"
        if r.latency_p50_ms is None
        else (f"p50 {r.latency_p50_ms:,.0f} ms   p95 {r.latency_p95_ms:,.0f} ms   max {r.latency_max_ms:,.0f} ms")
    )
    startup = (
        f", of which {r.startup_seconds:,.1f} s start-up before the first request"
        if r.startup_seconds is not None and r.startup_seconds > 1.0
        else ""
    )
    if rpm or tpm:
        given = ", ".join(f"{k} {v:,}" for k, v in (("rpm", rpm), ("tpm", tpm)) if v)
        allow = (
            f"the limits allow {r.minimum_seconds:,.1f} s at best; {given}"
            if r.minimum_seconds > 0
            else f"all of it fits in the limits' first minute; {given}"
        )
    else:
        allow = "no rate limits known: neither the job nor the server gave any"
    lines = [
        *_head(r, "run", cost),
        f"  latency      {lat}",
        f"  requests     {r.requests_sent:,} sent   {r.rate_limited:,} rate-limited (429)   {r.retries:,} retries",
        f"  cache        {r.cached_rows:,} rows answered without a request (ledger, or an identical row) — "
        f"${r.cached_usd:,.4f} not spent again",
        f"  wall time    {r.wall_seconds:,.1f} s{startup}   ({allow})",
    ]
    if r.documents:
        lines[0] += " (one row per paragraph)"
        lines += [f"  document     {p}" for p in r.documents]
    if r.stopped:
        lines.append(f"  STOPPED      {r.stopped}")
    return "\n".join([*lines, *_tail(r)])


def _format_batch(r: RunResult) -> str:
    cost = f"${r.cost_usd:,.4f} at the Batch API price" if r.price_known else "unknown (no price for this model)"
    lines = [
        *_head(r, "batch run", cost),
        f"  requests     {r.requests_sent:,} in {len(r.batch_ids)} batch(es)   {r.retries:,} sent again",
        f"  cache        {r.cached_rows:,} rows answered from the ledger — ${r.cached_usd:,.4f} not spent again",
        f"  wall time    {r.wall_seconds:,.1f} s (this invocation)",
    ]
    return "\n".join([*lines, *_tail(r)])


def _head(r: RunResult, what: str, cost: str) -> list[str]:
    """The title, rows, tokens and cost lines every summary opens with."""
    title = f"SIMULATED {what}" if r.simulated else what.capitalize()
    return [
        f"{title} of {r.job!r} → {r.output_path}",
        f"  rows         {r.rows:,}   {r.statuses()}",
        f"  tokens       prompt {r.prompt_tokens:,}   completion {r.completion_tokens:,}",
        f"  cost         {cost}" + ("   (simulated: nothing billed)" if r.simulated else ""),
    ]


def _tail(r: RunResult) -> list[str]:
    """What every summary closes with: the unanswered rows and the notes."""
    report = [f"  report       {r.report_path}"] if r.report_path is not None else []
    return [*_unanswered_lines(r), *_hints(r), *(f"  note         {n}" for n in r.notes), *report]


def _hints(r: RunResult) -> list[str]:
    """The likely cause, when the statuses point at one."""
    bad = r.by_status.get("schema_invalid", 0)
    if bad and not r.by_status.get("ok") and not r.stopped:
        return [
            f"  HINT         no reply matched the output schema ({bad:,} schema_invalid, none ok): the server most "
            "likely ignores response_format (structured output). Check that it supports json_schema, or drop "
            "[output_schema] and parse the text yourself"
        ]
    return []


def _unanswered_lines(r: RunResult) -> list[str]:
    """How many rows have no accepted answer, and the command that sends just those again."""
    bad = r.unanswered
    if not bad or r.stopped:
        return []
    counts = ", ".join(
        f"{n:,} {k}"
        for k, n in sorted(bad.items(), key=lambda kv: STATUS_ORDER.index(kv[0]) if kv[0] in STATUS_ORDER else 99)
    )
    resend = sorted(k for k in bad if k in RETRYABLE_BY_FLAG)
    how = []
    if "not_sent" in bad or "failed" in bad:
        how.append("run the job again to send not_sent rows and retryable failures")
    if resend:
        how.append(f"`--retry {','.join(resend)}` re-sends rows that ended so")
    return [f"  UNANSWERED   {counts}" + (f" — {'; '.join(how)}" if how else "")]
