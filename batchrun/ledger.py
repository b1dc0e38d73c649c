"""The run ledger: one SQLite file (WAL) recording every result a job has paid for.

Results are keyed by the request's fingerprint — a hash of exactly what is sent
(endpoint, model, messages, parameters, schema) — so the ledger is also the
cache: a re-run, a resumed run, or a nightly run over a file with new rows
appended sends only the requests whose fingerprint has no final result yet.

Durability: results are committed in batches of at most `COMMIT_ROWS` rows or
`COMMIT_SECONDS` seconds, whichever comes first, and a result is committed
before it is written to the Parquet output. A hard crash (kill -9, power loss)
can therefore lose at most the requests in flight plus the last commit window;
those rows are sent again on resume.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sinks import RowResult

COMMIT_ROWS = 200
COMMIT_SECONDS = 0.25
SCHEMA_VERSION = "1"
SIMULATOR = "batchrun-simulator"
# statuses that are the final answer for a request; others (not_sent, retryable failures) are re-sent
FINAL_STATUSES = frozenset({"ok", "refused", "filtered", "truncated", "schema_invalid", "failed"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    fingerprint TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    error TEXT,
    attempts INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost_usd REAL,
    latency_ms REAL,
    finish_reason TEXT,
    model TEXT,
    request_id TEXT,
    output TEXT,
    raw_text TEXT,
    row_id TEXT,
    endpoint TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    rows INTEGER,
    summary TEXT
);
"""


class Fingerprinter:
    """The cache key of a request: a hash of what is actually sent, and where.

    A job's requests differ only in the rendered row text; everything else (endpoint, model,
    parameters, system and few-shot messages, schema) is hashed once, canonically, and each
    row's fingerprint is the hash of that digest and the row's text.
    """

    def __init__(self, endpoint: str, kind: str, constant: dict[str, Any]) -> None:
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


@dataclass(frozen=True, slots=True)
class LedgerStats:
    results: int
    by_status: dict[str, int]
    cost_usd: float
    runs: int
    last_run: dict[str, Any] | None


class Ledger:
    """Append-mostly store of final results by fingerprint. Not thread-safe: one user at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        self.pending: list[tuple[Any, ...]] = []
        self.last_commit = time.monotonic()
        self.run_id: int | None = None
        # lookups (producer thread) and commits (writer thread) may overlap
        self.lock = threading.Lock()

    def close(self) -> None:
        self.flush()
        self.db.close()

    # -- reading -------------------------------------------------------------------------------

    def lookup(self, fingerprints: Sequence[str]) -> dict[str, RowResult]:
        """Final results already paid for, by fingerprint (row and row_id left for the caller)."""
        found: dict[str, RowResult] = {}
        with self.lock:
            self._lookup(fingerprints, found)
        return found

    def _lookup(self, fingerprints: Sequence[str], found: dict[str, RowResult]) -> None:
        for start in range(0, len(fingerprints), 900):  # SQLite's bound-parameter limit
            chunk = list(fingerprints[start : start + 900])
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                "SELECT fingerprint, status, error, attempts, prompt_tokens, completion_tokens, cost_usd, "
                f"latency_ms, finish_reason, model, request_id, output, raw_text FROM results "
                f"WHERE fingerprint IN ({marks})",
                chunk,
            ):
                fp, status, error, attempts, pt, ct, cost, lat, finish, model, rid, output, raw = row
                found[fp] = RowResult(
                    row=-1,
                    row_id="",
                    status=status,
                    error=error,
                    attempts=attempts,
                    prompt_tokens=pt,
                    completion_tokens=ct,
                    cost_usd=cost,
                    latency_ms=lat,
                    finish_reason=finish,
                    model=model,
                    request_id=rid,
                    output=json.loads(output) if output is not None else None,
                    raw_text=raw,
                    from_cache=True,
                )

    def spent(self) -> float:
        """Dollars recorded for every result in the ledger (all runs), the simulator's excluded."""
        with self.lock:
            (total,) = self.db.execute(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM results WHERE endpoint IS NOT ?", (SIMULATOR,)
            ).fetchone()
        return float(total)

    def stats(self) -> LedgerStats:
        by_status = dict(self.db.execute("SELECT status, COUNT(*) FROM results GROUP BY status").fetchall())
        (runs,) = self.db.execute("SELECT COUNT(*) FROM runs").fetchone()
        last = self.db.execute(
            "SELECT started_at, finished_at, rows, summary FROM runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        last_run = None
        if last:
            last_run = {
                "started_at": last[0],
                "finished_at": last[1],
                "rows": last[2],
                "summary": json.loads(last[3]) if last[3] else None,
            }
        return LedgerStats(
            results=sum(by_status.values()), by_status=by_status, cost_usd=self.spent(), runs=runs, last_run=last_run
        )

    # -- writing -------------------------------------------------------------------------------

    def record(self, fp: str, result: RowResult, endpoint: str) -> None:
        """Queue a final result; committed with the next flush (see COMMIT_ROWS / COMMIT_SECONDS)."""
        if result.status not in FINAL_STATUSES or result.retryable or result.from_cache:
            return
        output = None if result.output is None else json.dumps(result.output, ensure_ascii=False)
        self.pending.append(
            (
                fp,
                result.status,
                result.error,
                result.attempts,
                result.prompt_tokens,
                result.completion_tokens,
                result.cost_usd,
                result.latency_ms,
                result.finish_reason,
                result.model,
                result.request_id,
                output,
                result.raw_text,
                result.row_id,
                endpoint,
                time.time(),
            )
        )

    def due(self) -> bool:
        return len(self.pending) >= COMMIT_ROWS or (
            bool(self.pending) and time.monotonic() - self.last_commit >= COMMIT_SECONDS
        )

    def take(self) -> list[tuple[Any, ...]]:
        """The queued results, handed over for `write` (swap, so `record` can go on meanwhile)."""
        batch, self.pending = self.pending, []
        self.last_commit = time.monotonic()
        return batch

    def write(self, batch: list[tuple[Any, ...]]) -> None:
        """Commit a batch of results in one transaction."""
        if not batch:
            return
        with self.lock, self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", batch)

    def flush(self) -> None:
        self.write(self.take())

    def forget(self, fingerprints: Iterable[str]) -> None:
        """Drop cached results (for --refresh)."""
        with self.db:
            self.db.executemany("DELETE FROM results WHERE fingerprint = ?", [(fp,) for fp in fingerprints])

    def start_run(self) -> None:
        cur = self.db.execute("INSERT INTO runs (started_at) VALUES (?)", (time.time(),))
        self.run_id = cur.lastrowid

    def finish_run(self, rows: int, summary: dict[str, Any]) -> None:
        self.flush()
        if self.run_id is not None:
            self.db.execute(
                "UPDATE runs SET finished_at = ?, rows = ?, summary = ? WHERE id = ?",
                (time.time(), rows, json.dumps(summary), self.run_id),
            )


def ledger_path(output: Path) -> Path:
    """Where a job's ledger lives by default: beside its output."""
    return output.with_name(output.name + ".ledger.sqlite")
