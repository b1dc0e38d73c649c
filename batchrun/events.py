"""Run events: what each request did, and how the run's limits and pauses moved, kept in the ledger.

One row per request sent (not per row: an embeddings request carries many rows, a row retried has
several requests) and one row per mark (the limits in force each second, a pause, a shard's state).
They are queued in memory and written in the ledger's commit transaction (`Ledger.write`), so
recording them costs a list append per request on the event loop and one `executemany` per commit.
The run report (`report.py`) reads them back.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS request_events (
    run_id INTEGER,
    sent_at REAL NOT NULL,
    latency_ms REAL,
    http_status INTEGER,
    outcome TEXT NOT NULL,
    rows INTEGER NOT NULL,
    row_id TEXT,
    reserved_tokens INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cached_tokens INTEGER,
    attempt INTEGER,
    waited_ms REAL,
    cost_usd REAL,
    service_tier TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS request_events_run ON request_events (run_id);
CREATE TABLE IF NOT EXISTS run_marks (
    run_id INTEGER,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    in_flight INTEGER,
    note TEXT
);
CREATE INDEX IF NOT EXISTS run_marks_run ON run_marks (run_id);
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
OUTCOMES = ("ok", "rate_limited", "unavailable", "retried", "failed", "stopped")
"""A request's outcome: answered; refused by a rate limit; flex had no capacity; failed and tried
again; failed for good; answered nothing because the run stopped."""


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
        """Insert taken events (inside the caller's transaction)."""
        requests, marks = taken
        if requests:
            marks_q = ",".join("?" * (len(REQUEST_COLUMNS) + 1))
            db.executemany(
                f"INSERT INTO request_events (run_id, {', '.join(REQUEST_COLUMNS)}) VALUES ({marks_q})",
                [(run_id, *r) for r in requests],
            )
        if marks:
            marks_q = ",".join("?" * (len(MARK_COLUMNS) + 1))
            db.executemany(
                f"INSERT INTO run_marks (run_id, {', '.join(MARK_COLUMNS)}) VALUES ({marks_q})",
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


def read_requests(db: sqlite3.Connection, run_id: int) -> list[dict[str, Any]]:
    cur = db.execute(
        f"SELECT {', '.join(REQUEST_COLUMNS)} FROM request_events WHERE run_id = ? ORDER BY sent_at", (run_id,)
    )
    return [dict(zip(REQUEST_COLUMNS, r, strict=True)) for r in cur]


def read_marks(db: sqlite3.Connection, run_id: int, kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
    cur = db.execute(f"SELECT {', '.join(MARK_COLUMNS)} FROM run_marks WHERE run_id = ? ORDER BY at", (run_id,))
    rows = [dict(zip(MARK_COLUMNS, r, strict=True)) for r in cur]
    return rows if kinds is None else [r for r in rows if r["kind"] in kinds]


__all__ = ["OUTCOMES", "EventLog", "read_marks", "read_requests"]
