"""Every paid answer reaches the output: for every row whose ledger answer has text, the output has that
text — in Parquet, CSV and JSONL, fresh or from the ledger — whatever status the reply ended in."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

import batchrun
from batchrun.jobs import load_job
from batchrun.sim import SimServer

SimFactory = Callable[..., SimServer]

JOB = """
name = "answers"

[input]
path = "input.csv"
id_column = "id"

[prompt]
template = "{{{{ text }}}}"

[request]
model = "gpt-4o-mini"
max_tokens = {max_tokens}

[limits]
max_attempts = 2

[endpoint]
base_url = "{base_url}"
api_key_env = "BATCHRUN_TEST_KEY"
{extra}
"""
SCHEMA = '[output_schema]\nschema = {type="object", properties={label={type="string", enum=["a","b"]}}}'
MARKERS = ["", "", "[[sim:long]]", "[[sim:refuse]]", "[[sim:filter]]", "[[sim:400]]", "[[sim:badjson]]"]


def write(tmp: Path, base_url: str, rows: list[str], *, max_tokens: int, structured: bool) -> Path:
    pl.DataFrame({"id": [f"r{i:03d}" for i in range(len(rows))], "text": rows}).write_csv(tmp / "input.csv")
    path = tmp / "answers.toml"
    path.write_text(JOB.format(max_tokens=max_tokens, base_url=base_url, extra=SCHEMA if structured else ""))
    return path


def ledger_texts(path: Path) -> dict[str, tuple[str, str | None]]:
    """row id → (status, raw text) as the ledger keeps them."""
    db = sqlite3.connect(load_job(path).ledger_file)
    try:
        return {rid: (status, raw) for rid, status, raw in db.execute("SELECT row_id, status, raw_text FROM results")}
    finally:
        db.close()


def test_a_plain_text_job_with_max_tokens_5_keeps_every_truncated_text(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(text_tokens=(20, 40))
    path = write(tmp_path, sim.base_url, [f"tell me about item {i}" for i in range(30)], max_tokens=5, structured=False)
    result = batchrun.run(path)
    assert result.by_status == {"truncated": 30}
    df = result.frame()
    assert df["output"].null_count() == 0 and df["raw_response"].null_count() == 0
    assert (df["output"] == df["raw_response"]).all()
    assert df["completion_tokens"].to_list() == [5] * 30 and set(df["finish_reason"]) == {"length"}


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_nothing_paid_is_missing_from_any_output(
    make_sim: SimFactory, tmp_path: Path, structured: bool, seed: int
) -> None:
    rng = random.Random(seed)
    sim = make_sim(seed=seed)
    rows = [f"row {i} {rng.choice(MARKERS)}".strip() for i in range(60)]
    path = write(tmp_path, sim.base_url, rows, max_tokens=120, structured=structured)
    first = batchrun.run(path)
    statuses = set(first.by_status)
    assert {"ok", "truncated", "refused"} <= statuses  # the markers did force a spread of outcomes
    kept = ledger_texts(path)
    outputs = {"parquet": first.frame()}
    for suffix in ("csv", "jsonl"):  # the same job written elsewhere: answered from the ledger, the same text
        job = load_job(path)
        other = job.model_copy(update={"output": job.output.model_copy(update={"path": tmp_path / f"out.{suffix}"})})
        r = batchrun.run(other)
        assert r.requests_sent == 0  # every marker's outcome is final: nothing is paid twice
        frame = pl.read_csv(tmp_path / "out.csv") if suffix == "csv" else pl.read_ndjson(tmp_path / "out.jsonl")
        outputs[suffix] = frame
    for name, df in outputs.items():
        by_id = {row["id"]: row for row in df.iter_rows(named=True)}
        for rid, (status, raw) in kept.items():
            row = by_id[rid]
            assert row["status"] == status, (name, rid)
            if raw is None:
                continue
            assert row["raw_response"] == raw, (name, rid, status)
            if not structured and status in ("ok", "truncated", "refused"):
                assert row["output"] == raw, (name, rid, status)


def test_ledger_answers_carry_the_same_text_as_the_paid_run(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    path = write(tmp_path, sim.base_url, ["a [[sim:long]]", "b", "c [[sim:refuse]]"], max_tokens=30, structured=False)
    paid = batchrun.run(path).frame()
    cached = batchrun.run(path).frame()
    assert cached["from_cache"].to_list() == [True] * 3
    for col in ("output", "raw_response", "status", "finish_reason", "completion_tokens"):
        assert paid[col].to_list() == cached[col].to_list(), col
    assert json.dumps(paid["output"].to_list())  # text, never null, for every reply that had text
    assert paid["output"].null_count() == 0
