"""Run events: what each request did, and how the run's limits and pauses moved, kept in the ledger.

One row per request sent (not per row: an embeddings request carries many rows, a row retried has
several requests) and one row per mark (the limits in force each second, a pause, a shard's state).
They are queued in memory and written in the ledger's commit transaction (`Ledger.write`), a commit's
request events as one JSON row, so recording them costs a list append per request on the event loop and
one insert per commit.
The run report (`report.py`) reads them back. No index: inserts stay appends to the table's end, and
the report's one scan by run id is cheap next to a run.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import fastjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS request_events (
    run_id INTEGER,
    first_sent REAL NOT NULL,
    events TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_marks (
    run_id INTEGER,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    in_flight INTEGER,
    note TEXT
);
"""
REQUEST_COLUMNS = (
    "sent_at",
    "latency_ms",
    "http_status",
    "outcome",
    "rows",
    "row_id",
    "reserved_tokens",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "attempt",
    "waited_ms",
    "cost_usd",
    "service_tier",
    "error",
)
MARK_COLUMNS = ("at", "kind", "rpm", "tpm", "in_flight", "note")
OUTCOMES = ("ok", "rate_limited", "unavailable", "retried", "failed")
"""A request's outcome: answered; refused by a rate limit; flex had no capacity; failed and tried
again; failed for good (engine._OUTCOMES maps a failure's action to one of these)."""


class RequestSink(Protocol):
    """Where an engine puts each request's event: the ledger's EventLog, or a Ray worker's tape."""

    def request(self, *values: Any) -> None: ...


class EventLog:
    """The run's request events and marks, queued until the ledger's next commit."""

    def __init__(self, db: sqlite3.Connection) -> None:
        db.executescript(SCHEMA)
        self.requests: list[tuple[Any, ...]] = []
        self.marks: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()  # marks come from worker threads too (batch shards)
        self.listener: Callable[[tuple[Any, ...]], None] | None = None
        """Called with each request event as it happens (`run -v`)."""

    def request(self, *values: Any) -> None:
        """One request's event, in REQUEST_COLUMNS order (called on the event loop: an append)."""
        self.requests.append(values)
        if self.listener is not None:
            self.listener(values)

    def mark(
        self,
        at: float,
        kind: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        in_flight: int | None = None,
        note: str | None = None,
    ) -> None:
        with self.lock:
            self.marks.append((at, kind, rpm, tpm, in_flight, note))

    def take(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        with self.lock:
            requests, self.requests = self.requests, []
            marks, self.marks = self.marks, []
        return requests, marks

    @staticmethod
    def write(
        db: sqlite3.Connection, taken: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]], run_id: int | None
    ) -> None:
        """Insert taken events (inside the caller's transaction). A commit's request events are one row,
        a JSON array of REQUEST_COLUMNS rows: a row per request through `executemany` cost ~0.5 ms each in
        the ceiling benchmark (it retakes the GIL for every row, and waits for the busy event loop). The
        array is written by orjson: the standard library's 7.7 µs an event was 0.15 s of a 20,000-request
        run, on a thread that shares the GIL with the event loop."""
        requests, marks = taken
        if requests:
            db.execute(
                "INSERT INTO request_events (run_id, first_sent, events) VALUES (?, ?, ?)",
                (run_id, min(r[0] for r in requests), fastjson.dumps_text(requests)),
            )
        if marks:
            db.executemany(
                f"INSERT INTO run_marks (run_id, {', '.join(MARK_COLUMNS)}) VALUES (?, {', '.join('?' * len(MARK_COLUMNS))})",
                [(run_id, *m) for m in marks],
            )


def describe(event: Sequence[Any]) -> str:
    """A request event as one line: `14:02:07 ok 200  r0042 (+0 rows)  213+48 tok  231 ms  $0.00004`."""
    e = dict(zip(REQUEST_COLUMNS, event, strict=True))
    rows = f" +{e['rows'] - 1} rows" if e["rows"] > 1 else ""
    tokens = f"{e['prompt_tokens'] or 0}+{e['completion_tokens'] or 0} tok" if e["prompt_tokens"] is not None else ""
    waited = f"  waited {e['waited_ms'] / 1000:.1f} s" if (e["waited_ms"] or 0) >= 100 else ""
    error = f"  {e['error']}" if e["error"] else ""
    return (
        f"{time.strftime('%H:%M:%S', time.localtime(e['sent_at']))} {e['outcome']:<12} {e['http_status'] or '-':<4} "
        f"{e['row_id']}{rows} try {e['attempt']}  {tokens}  {e['latency_ms']:,.0f} ms{waited}  ${e['cost_usd'] or 0:.5f}{error}"
    )


_SENT, _LATENCY, _OUTCOME = (
    REQUEST_COLUMNS.index("sent_at"),
    REQUEST_COLUMNS.index("latency_ms"),
    REQUEST_COLUMNS.index("outcome"),
)
_PROMPT, _COMPLETION = REQUEST_COLUMNS.index("prompt_tokens"), REQUEST_COLUMNS.index("completion_tokens")
_CACHED, _ERROR = REQUEST_COLUMNS.index("cached_tokens"), REQUEST_COLUMNS.index("error")


@dataclass
class RequestTotals:
    """What the run report shows of a run's requests, gathered in one pass over its events: counts and
    sums, and the few numbers per request its charts need in flat arrays (~28 bytes a request; a dict
    per event was ~0.8 KB: 156 MB for 200,000 requests, benchmarks/RESULTS.md, issue 12 part 5)."""

    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    causes: dict[tuple[str, str], int] = field(default_factory=dict)
    """(outcome, error's first 120 characters) of the requests that failed, and how many."""
    ok_latencies: array[float] = field(default_factory=lambda: array("d"))
    ok_prompt_tokens: int = 0
    ok_cached_tokens: int = 0
    sent: array[float] = field(default_factory=lambda: array("d"))
    """Each request's sent_at (in the ledger's order, not sorted)."""
    used: array[float] = field(default_factory=lambda: array("d"))
    """When each request's tokens were used: sent_at + its latency."""
    used_tokens: array[int] = field(default_factory=lambda: array("q"))
    limited: list[float] = field(default_factory=list)
    """sent_at of the requests a rate limit refused."""

    @classmethod
    def of(cls, events: Iterable[dict[str, Any]]) -> RequestTotals:
        """From events as dicts of REQUEST_COLUMNS (a test's, or a caller's own)."""
        totals = cls()
        totals.add([[e[c] for c in REQUEST_COLUMNS] for e in events])
        return totals

    def add(self, events: Iterable[Sequence[Any]]) -> None:
        """Count events given in REQUEST_COLUMNS order (one commit's, as the ledger keeps them)."""
        outcomes, causes = self.outcomes, self.causes
        for e in events:
            outcome, latency, sent = e[_OUTCOME], e[_LATENCY], e[_SENT]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            self.requests += 1
            self.sent.append(sent)
            self.used.append(sent + (latency or 0) / 1000)
            self.used_tokens.append((e[_PROMPT] or 0) + (e[_COMPLETION] or 0))
            if outcome == "ok":
                if latency is not None:
                    self.ok_latencies.append(latency)
                self.ok_prompt_tokens += e[_PROMPT] or 0
                self.ok_cached_tokens += e[_CACHED] or 0
            else:
                key = (outcome, (e[_ERROR] or "")[:120])
                causes[key] = causes.get(key, 0) + 1
                if outcome == "rate_limited":
                    self.limited.append(sent)


def read_request_totals(db: sqlite3.Connection, run_id: int) -> RequestTotals:
    """A run's request events, summed for the report (see RequestTotals), one commit's events at a time."""
    totals = RequestTotals()
    for (text,) in db.execute("SELECT events FROM request_events WHERE run_id = ?", (run_id,)):
        totals.add(json.loads(text))
    return totals


def read_marks(db: sqlite3.Connection, run_id: int, kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
    cur = db.execute(f"SELECT {', '.join(MARK_COLUMNS)} FROM run_marks WHERE run_id = ? ORDER BY at", (run_id,))
    rows = [dict(zip(MARK_COLUMNS, r, strict=True)) for r in cur]
    return rows if kinds is None else [r for r in rows if r["kind"] in kinds]


__all__ = ["OUTCOMES", "EventLog", "RequestSink", "RequestTotals", "read_marks", "read_request_totals"]
