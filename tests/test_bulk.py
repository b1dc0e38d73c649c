"""BulkWrite: a shard's results and their spend in one transaction, inserted from a thread of its own —
all of them committed, or none (the shard's result file is then read again)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from batchrun import bulk
from batchrun.bulk import BulkWrite
from batchrun.ledger import Ledger
from batchrun.sinks import RowResult


def _ok(i: int) -> RowResult:
    return RowResult(row=-1, row_id=f"r{i}", status="ok", attempts=1, prompt_tokens=10, completion_tokens=2,
                     cost_usd=0.001, output={"label": "a", "n": i})  # fmt: skip


def test_every_row_and_its_spend_are_committed_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "CHUNK_ROWS", 7)  # many chunks through the queue, and a last partial one
    ledger = Ledger(tmp_path / "l.sqlite", job="j")
    fps = [f"{i:032x}" for i in range(100)]
    with BulkWrite(ledger) as b:
        for i, fp in enumerate(fps):
            b.record(fp, _ok(i), "http://x/v1")
            b.record_spend(0.001, "http://x/v1")
        b.record("f" * 32, RowResult(row=-1, row_id="t", status="rate_limited", retryable=True), "http://x/v1")
    assert set(ledger.answered(fps)) == set(fps) and not ledger.answered(["f" * 32])  # not final: not kept
    found = ledger.lookup(fps[:3], {})
    assert [found[fp].output for fp in fps[:3]] == [{"label": "a", "n": i} for i in range(3)]
    assert ledger.spent() == pytest.approx(0.1)
    ledger.close()


def test_a_failure_while_reading_keeps_nothing_of_the_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "CHUNK_ROWS", 5)
    ledger = Ledger(tmp_path / "l.sqlite", job="j")
    fps = [f"{i:032x}" for i in range(40)]
    with pytest.raises(ValueError, match="a corrupt line"), BulkWrite(ledger) as b:
        for i, fp in enumerate(fps):  # 30 rows handed over (6 chunks inserted), then the reader fails
            if i == 30:
                raise ValueError("a corrupt line")
            b.record(fp, _ok(i), "http://x/v1")
            b.record_spend(0.001, "http://x/v1")
    assert ledger.answered(fps) == {} and ledger.spent() == 0.0  # rolled back: answers and spend alike
    with BulkWrite(ledger) as b:  # and the ledger is usable: the shard read again is kept whole
        for i, fp in enumerate(fps):
            b.record(fp, _ok(i), "http://x/v1")
    assert len(ledger.answered(fps)) == 40
    ledger.close()


def test_a_failed_insert_is_raised_in_the_readers_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "CHUNK_ROWS", 5)

    def broken(*_a: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(bulk, "insert_rows", broken)
    ledger = Ledger(tmp_path / "l.sqlite", job="j")
    fps = [f"{i:032x}" for i in range(200)]
    with pytest.raises(sqlite3.OperationalError, match="disk is full"), BulkWrite(ledger) as b:
        for i, fp in enumerate(fps):
            b.record(fp, _ok(i), "http://x/v1")
    monkeypatch.undo()
    assert ledger.answered(fps) == {}
    ledger.close()
