"""The Batch API's part of the ledger: batch runs, their shards, and which request is in which shard.

The same SQLite file as the results (`ledger.Ledger`), so a shard's state and the answers it
brought back are committed by one connection.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ledger import Ledger, insert_rows, select_in

SHARD_FIELDS = (
    "id", "run_id", "round", "number", "path", "lines", "bytes", "tokens", "sha256", "state", "file_id",
    "batch_id", "batch_status", "completed", "failed", "submits", "note", "updated_at",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ShardRecord:
    """A shard as the ledger knows it. `state` moves written → uploading → uploaded → creating →
    submitted → collected; each step is committed before and after its API call."""

    id: int
    run_id: int
    round: int
    number: int
    path: str
    lines: int
    bytes: int
    tokens: int
    sha256: str
    state: str
    file_id: str | None
    batch_id: str | None
    batch_status: str | None
    completed: int
    failed: int
    submits: int
    note: str | None
    updated_at: float

    @property
    def filename(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True, slots=True)
class BatchRunRecord:
    id: int
    job_key: str
    state: str
    round: int
    sharding: bool
    started_at: float
    finished_at: float | None
    note: str | None


class BatchBook:
    """The Batch API's part of the ledger: batch runs, their shards, and which request is in which shard.

    Shares the ledger's connection; every method is one short transaction, so a crash leaves
    each shard in the last state that was committed.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.db = ledger.db

    # -- runs ----------------------------------------------------------------------------------

    def _runs(self, where: str, args: tuple[Any, ...], limit: int = 1) -> list[BatchRunRecord]:
        rows = self.db.execute(
            "SELECT id, job_key, state, round, sharding, started_at, finished_at, note FROM batch_runs "
            f"WHERE {where} ORDER BY id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [BatchRunRecord(*r[:4], bool(r[4]), *r[5:]) for r in rows]

    def active_run(self, job_key: str) -> BatchRunRecord | None:
        found = self._runs("job_key = ? AND state = 'active'", (job_key,))
        return found[0] if found else None

    def last_run(self, job_key: str) -> BatchRunRecord | None:
        found = self._runs("job_key = ?", (job_key,))
        return found[0] if found else None

    def recent_runs(self, limit: int) -> list[BatchRunRecord]:
        """The newest batch runs of every job sharing this ledger."""
        return self._runs("1", (), limit)

    def start_run(self, job_key: str) -> BatchRunRecord:
        with self.ledger.lock, self.db:
            self.db.execute(
                "INSERT INTO batch_runs (job_key, state, started_at) VALUES (?, 'active', ?)", (job_key, time.time())
            )
        run = self.active_run(job_key)
        assert run is not None
        return run

    def update_run(self, run_id: int, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.ledger.lock, self.db:
            self.db.execute(f"UPDATE batch_runs SET {sets} WHERE id = ?", (*fields.values(), run_id))

    def finish_run(self, run_id: int, state: str, note: str | None = None) -> None:
        """Close a batch run; its item map is dropped (the results stay in the ledger)."""
        with self.ledger.lock, self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "UPDATE batch_runs SET state = ?, finished_at = ?, note = ? WHERE id = ?",
                (state, time.time(), note, run_id),
            )
            self.db.execute(
                "DELETE FROM batch_items WHERE shard_id IN (SELECT id FROM shards WHERE run_id = ?)", (run_id,)
            )

    # -- shards --------------------------------------------------------------------------------

    def shards(self, run_id: int) -> list[ShardRecord]:
        cols = ", ".join(SHARD_FIELDS)
        rows = self.db.execute(f"SELECT {cols} FROM shards WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
        return [ShardRecord(*r) for r in rows]

    def shard(self, shard_id: int) -> ShardRecord:
        cols = ", ".join(SHARD_FIELDS)
        return ShardRecord(*self.db.execute(f"SELECT {cols} FROM shards WHERE id = ?", (shard_id,)).fetchone())

    def add_shard(self, run_id: int, round_no: int, shard: Any, items: Sequence[tuple[str, str, int]]) -> ShardRecord:
        """Record a written shard and its lines, (custom_id, row_id, attempts so far), in one transaction."""
        with self.ledger.lock, self.db:
            self.db.execute("BEGIN")
            cur = self.db.execute(
                "INSERT INTO shards (run_id, round, number, path, lines, bytes, tokens, sha256, state, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'written', ?)",
                (run_id, round_no, shard.number, str(shard.path), shard.lines, shard.bytes, shard.tokens,
                 shard.sha256, time.time()),
            )  # fmt: skip
            sid = cur.lastrowid
            insert_rows(
                self.db,
                "INSERT OR REPLACE INTO batch_items (fingerprint, shard_id, row_id, attempts, last_error)",
                [(fp, sid, row_id, attempts + 1, None) for fp, row_id, attempts in items],
            )
        assert sid is not None
        return self.shard(sid)

    def update_shard(self, shard_id: int, **fields: Any) -> ShardRecord:
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.ledger.lock, self.db:
            self.db.execute(f"UPDATE shards SET {sets} WHERE id = ?", (*fields.values(), shard_id))
        record = self.shard(shard_id)
        if "state" in fields or "batch_status" in fields:  # the shard's timeline, for the run report
            self.ledger.events.mark(
                fields["updated_at"],
                "shard",
                note=f"{record.round}.{record.number}:{record.state}/{record.batch_status or ''}",
            )
        return record

    def drop_unfinished_sharding(self, run_id: int) -> list[ShardRecord]:
        """Shards of an interrupted sharding pass that were never uploaded: forgotten, to be written again."""
        cols = ", ".join(SHARD_FIELDS)
        rows = [
            ShardRecord(*r)
            for r in self.db.execute(
                f"SELECT {cols} FROM shards WHERE run_id = ? AND state = 'written' AND round = "
                "(SELECT round FROM batch_runs WHERE id = ?)",
                (run_id, run_id),
            )
        ]
        with self.ledger.lock, self.db:
            self.db.execute("BEGIN")
            for r in rows:
                self.db.execute("DELETE FROM batch_items WHERE shard_id = ?", (r.id,))
                self.db.execute("DELETE FROM shards WHERE id = ?", (r.id,))
        return rows

    # -- items ---------------------------------------------------------------------------------

    def items(self, fingerprints: Sequence[str]) -> dict[str, tuple[int, int, str | None, str]]:
        """fingerprint → (shard id, attempts, last error, shard state) for requests already sharded."""
        found: dict[str, tuple[int, int, str | None, str]] = {}
        with self.ledger.lock:
            for fp, sid, attempts, err, state in select_in(
                self.db,
                "SELECT i.fingerprint, i.shard_id, i.attempts, i.last_error, s.state FROM batch_items i "
                "JOIN shards s ON s.id = i.shard_id WHERE i.fingerprint IN ({marks})",
                fingerprints,
            ):
                found[fp] = (sid, attempts, err, state)
        return found

    def shard_items(self, shard_id: int) -> dict[str, str | None]:
        """custom_id → row id for every line of a shard."""
        return dict(self.db.execute("SELECT fingerprint, row_id FROM batch_items WHERE shard_id = ?", (shard_id,)))

    def note_failures(self, failures: Sequence[tuple[str, str]]) -> None:
        """Remember why lines came back without a final answer: (custom_id, error)."""
        with self.ledger.lock, self.db:
            self.db.executemany("UPDATE batch_items SET last_error = ? WHERE fingerprint = ?",
                                [(err, fp) for fp, err in failures])  # fmt: skip


def describe_batches(ledger_file: Path) -> list[str]:
    """Lines for `batchrun status`: each batch run's shards and their batches (from the ledger only: `status`
    loads neither the SDK nor aiohttp, which the Batch API client needs)."""
    ledger = Ledger(ledger_file)
    try:
        book = BatchBook(ledger)
        out: list[str] = []
        for run in book.recent_runs(3):
            out.append(
                f"  batch run {run.id}   {run.state}, round {run.round}" + (f" ({run.note})" if run.note else "")
            )
            for s in book.shards(run.id):
                batch = f"{s.batch_id} {s.batch_status}" if s.batch_id else "not submitted"
                counts = (
                    f"{s.completed:,}/{s.lines:,} done, {s.failed:,} failed" if s.batch_id else f"{s.lines:,} lines"
                )
                out.append(
                    f"    round {s.round} shard {s.number}: {s.state:<9} {batch}   {counts}"
                    + (f"   [{s.note}]" if s.note else "")
                )
        return out
    finally:
        ledger.close()
