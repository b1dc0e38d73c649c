"""Many results into the ledger in one transaction, inserted by a thread of their own while the caller
reads the next ones (a Batch API shard's result file: up to 50,000 lines).

SQLite runs an INSERT with the GIL released, so on a second core the B-tree work (random fingerprints
into a million-row index) overlaps the caller's JSON parsing instead of following it: collecting 1M
results went from ~36k to ~50k rows/s (benchmarks/RESULTS.md). The rows and their spend are committed
together at the end — an answer is never kept without its cost — or not at all if the caller fails,
in which case nothing of the shard was kept and its result file is read again on the next run.
"""

from __future__ import annotations

import queue
import threading
import time
from types import TracebackType
from typing import Any

from .ledger import INSERT_RESULTS, Ledger, insert_rows
from .rows import RowResult

CHUNK_ROWS = 2_000
"""Rows handed to the inserting thread at once: few enough that it starts early, many enough that one
statement binds them in C (insert_rows)."""
QUEUED_CHUNKS = 4
"""Chunks waiting for the inserting thread at most: memory stays bounded if SQLite falls behind."""
_ABORT: list[Any] = []
"""Queued in place of the end marker when the caller failed: the transaction is rolled back."""


class BulkWrite:
    """`with BulkWrite(ledger) as bulk: bulk.record(...)`: results and spend, committed when the block ends.

    The inserting thread holds the ledger's lock from the first row to the commit, so nothing inside the
    block may use the ledger (a lookup there would wait for a commit that waits for the block to end)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._rows: list[tuple[Any, ...]] = []
        self._spend: dict[str, list[float]] = {}
        self._queue: queue.Queue[list[tuple[Any, ...]] | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._insert, name="batchrun-ledger-bulk", daemon=True)

    def __enter__(self) -> BulkWrite:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None and self._rows:
            self._put(self._rows)
        self._rows = []
        self._put(_ABORT if exc is not None else None, final=True)
        self._thread.join()
        if exc is None and self._failed is not None:
            raise self._failed

    def record(self, fp: str, result: RowResult, endpoint: str) -> None:
        """A final result (as Ledger.record), committed when the block ends."""
        row = self.ledger.row(fp, result, endpoint)
        if row is None:
            return
        self._rows.append(row)
        if len(self._rows) >= CHUNK_ROWS:
            self._put(self._rows)
            self._rows = []

    def record_spend(self, usd: float, endpoint: str, requests: int = 1) -> None:
        """A paid reply's cost (as Ledger.record_spend), committed with the results."""
        acc = self._spend.setdefault(endpoint, [0, 0.0])
        acc[0] += requests
        acc[1] += usd

    def _put(self, item: list[tuple[Any, ...]] | None, *, final: bool = False) -> None:
        # a failed inserting thread takes nothing more: stop at once, rather than wait on a full queue
        while self._thread.is_alive():
            if self._failed is not None and not final:
                raise self._failed
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        if self._failed is not None and not final:
            raise self._failed

    def _insert(self) -> None:
        ledger, db = self.ledger, self.ledger.db
        try:
            with ledger.lock:  # one transaction: nothing else writes the ledger until it ends
                db.execute("BEGIN")
                try:
                    while (chunk := self._queue.get()) is not None and chunk is not _ABORT:
                        insert_rows(db, INSERT_RESULTS, chunk)
                    if chunk is _ABORT:
                        db.execute("ROLLBACK")
                        return
                    ledger.write_spend(self._spend, time.time())
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except BaseException as exc:  # handed to the caller's thread, which raises it
            self._failed = exc
