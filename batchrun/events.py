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
from collections.abc import Callable, Sequence
from typing import Any, Protocol

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
        the ceiling benchmark (it retakes the GIL for every row, and waits for the busy event loop)."""
        requests, marks = taken
        if requests:
            db.execute(
                "INSERT INTO request_events (run_id, first_sent, events) VALUES (?, ?, ?)",
                (run_id, min(r[0] for r in requests), json.dumps(requests, ensure_ascii=False)),
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


def read_requests(db: sqlite3.Connection, run_id: int) -> list[dict[str, Any]]:
    """A run's request events, in the order they were sent."""
    rows = [
        dict(zip(REQUEST_COLUMNS, event, strict=True))
        for (text,) in db.execute("SELECT events FROM request_events WHERE run_id = ?", (run_id,))
        for event in json.loads(text)
    ]
    rows.sort(key=lambda e: e["sent_at"])
    return rows


def read_marks(db: sqlite3.Connection, run_id: int, kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
    cur = db.execute(f"SELECT {', '.join(MARK_COLUMNS)} FROM run_marks WHERE run_id = ? ORDER BY at", (run_id,))
    rows = [dict(zip(MARK_COLUMNS, r, strict=True)) for r in cur]
    return rows if kinds is None else [r for r in rows if r["kind"] in kinds]


__all__ = ["OUTCOMES", "EventLog", "RequestSink", "read_marks", "read_requests"]
