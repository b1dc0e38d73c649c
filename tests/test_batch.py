"""Batch API mode against the simulator: sharding, the whole lifecycle, every way a batch can end,
crash safety at each step, Azure's dialect, and the same Parquet as an online run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import batchrun as runner
from batchrun.batch_api import BatchInfo
from batchrun.batch_book import describe_batches
from batchrun.errors import EndpointError
from batchrun.jobs import load_job
from batchrun.ledger import Ledger
from batchrun.lifecycle import RunOptions, cancel_job, run_job
from batchrun.plan import make_plan
from batchrun.plan_format import format_plan
from batchrun.retries import Action, line_failure
from batchrun.shards import LineTooLarge, Shard, ShardLimits, ShardWriter
from batchrun.sim import SimServer

from .conftest import LABEL_SCHEMA

FAST = {"batch_validate_seconds": 0.05, "batch_run_seconds": 0.2, "batch_finalize_seconds": 0.05}

BATCH_JOB = """
name = "{name}"
mode = "{mode}"
{top}

[input]
path = "input.csv"
id_column = "id"

[prompt]
system = "Label it."
template = "{{{{ text }}}}"

[request]
model = "gpt-4o-mini"
max_tokens = 40

[output_schema]
name = "label"
schema = {schema}

[endpoint]
base_url = "{base_url}"
api_key_env = "BATCHRUN_TEST_KEY"

[batch]
poll_seconds = 0.05
poll_max_seconds = 0.2
{batch}
"""


def write_batch_job(
    tmp: Path,
    sim: SimServer,
    texts: list[str],
    *,
    batch: str = "max_lines = 10",
    mode: str = "batch",
    top: str = "",
    name: str = "job",
    output: str | None = None,
) -> Path:
    pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).write_csv(tmp / "input.csv")
    text = BATCH_JOB.format(name=name, mode=mode, top=top, schema=LABEL_SCHEMA, base_url=sim.base_url, batch=batch)
    if output:
        text = text.replace("[batch]", f'[output]\npath = "{output}"\n\n[batch]')
    path = tmp / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def texts(n: int, marker: dict[int, str] | None = None) -> list[str]:
    marker = marker or {}
    return [f"item {i} is fine {marker.get(i, '')}".strip() for i in range(n)]


def server_batches(sim: SimServer) -> list[Any]:
    c = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    return list(c.batches.list(limit=100))


def server_files(sim: SimServer) -> list[Any]:
    c = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    return list(c.files.list())


def run_until_done(job_path: Path, *, ticks: int = 200, **kw: Any) -> runner.RunResult:
    job = load_job(job_path)
    for _ in range(ticks):
        result = runner.run(job, **kw)
        if result.waiting is None:
            return result
        time.sleep(0.05)
    raise AssertionError(f"not done after {ticks} ticks: {result.waiting}")


# -- shards ------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 400), st.integers(1, 50)), min_size=1, max_size=80),
    max_lines=st.integers(1, 12),
    max_bytes=st.integers(700, 3000),
    max_tokens=st.one_of(st.none(), st.integers(50, 300)),
)
def test_shards_respect_every_limit_and_keep_order(
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[tuple[int, int]],
    max_lines: int,
    max_bytes: int,
    max_tokens: int | None,
) -> None:
    tmp = tmp_path_factory.mktemp("shards")
    done: list[tuple[Shard, list[str]]] = []
    writer = ShardWriter(
        tmp, "t", "/v1/chat/completions", ShardLimits(max_lines, max_bytes, max_tokens),
        lambda shard, lines: done.append((shard, [ln.custom_id for ln in lines])),
    )  # fmt: skip
    sent = []
    for i, (chars, tokens) in enumerate(sizes):
        body = {"model": "m", "messages": [{"role": "user", "content": "é" * chars}]}
        try:
            writer.add(f"c{i}", f"r{i}", json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(), tokens)
            sent.append(f"c{i}")
        except LineTooLarge:
            line = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            size = len(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode()) + 1
            assert (max_tokens is not None and tokens > max_tokens) or size > max_bytes
    writer.close()
    assert [cid for _, ids in done for cid in ids] == sent
    for shard, ids in done:
        data = shard.path.read_bytes()
        assert len(data) == shard.bytes <= max_bytes  # bytes as written, UTF-8
        assert data.count(b"\n") == shard.lines == len(ids) <= max_lines
        assert max_tokens is None or shard.tokens <= max_tokens
        lines = [json.loads(x) for x in data.splitlines()]
        assert [x["custom_id"] for x in lines] == ids
        assert all(x["method"] == "POST" and x["url"] == "/v1/chat/completions" for x in lines)


def test_azure_batches_are_normalised() -> None:
    info = BatchInfo.from_api(
        {
            "id": "batch_1",
            "status": "InProgress",
            "created_at": "2026-11-20T10:00:00Z",
            "request_counts": None,
            "errors": None,
            "output_file_id": "",
        }
    )
    assert info.status == "in_progress" and info.total == 0 and info.output_file_id is None
    assert info.created_at == datetime(2026, 11, 20, 10, tzinfo=UTC).timestamp()
    assert BatchInfo.from_api({"id": "b", "status": "Validating"}).status == "validating"
    failed = BatchInfo.from_api(
        {"id": "b", "status": "failed", "errors": {"data": [{"code": "token_limit_exceeded", "line": None}]}}
    )
    assert failed.token_limit_exceeded and failed.terminal


def test_result_lines_are_classified_by_status_code_not_only_error() -> None:
    assert line_failure(400, {"error": {"message": "bad"}}, None).action is Action.ROW_FAILED
    assert line_failure(500, {"error": {"message": "oops"}}, None).action is Action.RETRY
    assert line_failure(429, {"error": {"message": "slow"}}, None).action is Action.RETRY
    expired = line_failure(None, None, {"code": "batch_expired", "message": "window passed"})
    assert expired.action is Action.RETRY and "batch_expired" in expired.message


# -- end to end ----------------------------------------------------------------------------------------


def test_batch_run_matches_the_online_run(make_sim, tmp_path: Path) -> None:
    """The same job online and through the Batch API: same schema, row order and answers."""
    sim = make_sim(**FAST)
    rows = texts(60) + texts(5)  # five duplicates: sent once
    batch_dir, online_dir = tmp_path / "b", tmp_path / "o"
    batch_dir.mkdir()
    online_dir.mkdir()
    b = run_until_done(write_batch_job(batch_dir, sim, rows))
    assert b.mode == "batch" and len(b.batch_ids) == 6  # 60 distinct requests, 10 a shard
    online = write_batch_job(online_dir, sim, rows, mode="online")
    o = runner.run(load_job(online))
    bf, of = b.frame(), o.frame()
    assert bf.schema == of.schema
    assert bf["id"].to_list() == of["id"].to_list() == [f"r{i}" for i in range(65)]
    assert bf["status"].to_list() == ["ok"] * 65
    assert bf["label"].to_list() == of["label"].to_list()  # the simulator answers by content
    assert bf["from_cache"].sum() == 5  # the duplicates, answered by the same line
    stats = sim.stats()["batches"]
    assert stats["batches_created"] == 6 and stats["files_uploaded"] == 6
    assert stats["files_deleted"] == 12  # inputs and outputs deleted after collection (the default)
    assert not list((batch_dir / "job.parquet.shards").glob("*.jsonl"))  # shards not kept by default
    # costs are the batch price: half of what the online run paid for the same tokens
    assert b.cost_usd == pytest.approx(o.cost_usd / 2, rel=0.05)


def test_without_wait_it_submits_and_a_later_run_collects(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST)
    job_path = write_batch_job(tmp_path, sim, texts(25), batch="max_lines = 10\nkeep_shards = true")
    plan = make_plan(load_job(job_path))
    assert plan.batch_shards == 3 and plan.batch_queue_limit == 2_000_000  # tier 1, gpt-4o-mini
    assert "3 shard file(s)" in format_plan(plan) and "fit in the queue at once" in format_plan(plan)
    first = runner.run(load_job(job_path))
    assert first.waiting is not None and "3 shard(s)" in first.waiting
    assert not (tmp_path / "job.parquet").exists()
    status = "\n".join(describe_batches(load_job(job_path).ledger_file))
    assert status.count("submitted") == 3
    time.sleep(0.5)
    result = asyncio_run(run_job(load_job(job_path), RunOptions(start=False)))  # `batchrun collect`
    assert result.waiting is None and result.by_status == {"ok": 25}
    assert len(list((tmp_path / "job.parquet.shards").glob("*.jsonl"))) == 3  # keep_shards
    # nothing left: collect has nothing to do, and run again sends nothing
    again = asyncio_run(run_job(load_job(job_path), RunOptions(start=False)))
    assert again.waiting is not None and "nothing to collect" in again.waiting
    rerun = run_until_done(job_path)
    assert rerun.cached_rows == 25 and sim.stats()["batches"]["batches_created"] == 3


def asyncio_run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def test_50k_and_one_rows_two_shards_end_to_end(make_sim, tmp_path: Path) -> None:
    """A full shard and one line at the real limits (50,000 lines a shard): 2 shards, every row back
    in order."""
    sim = make_sim(**FAST)
    n = 50_001
    path = write_batch_job(tmp_path, sim, [], batch="")
    pl.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"item {i}" for i in range(n)]}).write_csv(
        tmp_path / "input.csv"
    )
    result = runner.run(load_job(path), wait=True)
    assert len(result.batch_ids) == 2
    df = result.frame()
    assert df.height == n and df["id"].to_list() == [f"r{i}" for i in range(n)]
    assert df["status"].value_counts().to_dicts() == [{"status": "ok", "count": n}]
    assert df.schema["label"] == pl.String and df["prompt_tokens"].null_count() == 0


# -- how batches end ---------------------------------------------------------------------------------


def test_per_line_errors_final_or_sent_again(make_sim, tmp_path: Path) -> None:
    """A 400 line is that row's final answer; a 500 line goes into the next round's batch."""
    sim = make_sim(**FAST)
    rows = texts(20, {3: "[[sim:400]]", 7: "[[sim:500*1]]", 12: "[[sim:500*1]]"})
    result = run_until_done(write_batch_job(tmp_path, sim, rows))
    df = result.frame()
    by_id = dict(zip(df["id"], df["status"], strict=True))
    assert by_id["r3"] == "failed" and "400" in df.filter(pl.col("id") == "r3")["error"][0]
    assert by_id["r7"] == by_id["r12"] == "ok"
    assert sum(s == "ok" for s in by_id.values()) == 19
    assert result.retries == 2  # only the two 500s were sent again, in round 2
    assert sim.stats()["batches"]["batches_created"] == 3


def test_lines_that_never_succeed_fail_after_max_attempts(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST)
    path = write_batch_job(tmp_path, sim, texts(5, {2: "[[sim:500]]"}), top="", batch="max_lines = 10")
    text = path.read_text().replace("[batch]", "[limits]\nmax_attempts = 3\n\n[batch]")
    path.write_text(text)
    df = run_until_done(path).frame()
    row = df.filter(pl.col("id") == "r2")
    assert row["status"][0] == "failed" and "after 3 batch submissions" in row["error"][0]
    assert sim.stats()["batches"]["batches_created"] == 3


def test_validation_failure_fails_the_bad_line_and_resubmits_the_rest(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST)
    result = run_until_done(write_batch_job(tmp_path, sim, texts(8, {5: "[[sim:badline]]"})))
    df = result.frame()
    bad = df.filter(pl.col("id") == "r5")
    assert bad["status"][0] == "failed" and "batch validation" in bad["error"][0]
    assert df.filter(pl.col("id") != "r5")["status"].to_list() == ["ok"] * 7
    assert sim.stats()["batches"]["by_status"] == {"failed": 1, "completed": 1}


def test_expired_batch_keeps_partial_output_and_resubmits_the_rest(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST, batch_expire=True, batch_expire_done_fraction=0.5)
    path = write_batch_job(tmp_path, sim, texts(20), batch="max_lines = 20")
    first = runner.run(load_job(path))
    assert first.waiting is not None
    deadline = time.monotonic() + 10
    while sim.stats()["batches"]["by_status"].get("expired", 0) < 1 and time.monotonic() < deadline:
        server_batches(sim)  # reading batches advances them
        time.sleep(0.05)
    sim.configure(batch_expire=False)
    result = run_until_done(path)
    assert result.by_status == {"ok": 20}
    assert result.retries == 10  # the unfinished half, in a second batch
    counts = Counter(sim.stats()["ok_bodies"].values()) if "ok_bodies" in sim.stats() else None
    assert counts is None or set(counts) == {1}  # no request answered (paid) twice


def test_completed_with_no_output_file(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST)
    result = run_until_done(write_batch_job(tmp_path, sim, [f"x{i} [[sim:400]]" for i in range(4)]))
    batch = server_batches(sim)[0]
    assert batch.status == "completed" and batch.output_file_id is None and batch.error_file_id
    assert result.by_status == {"failed": 4}


def test_cancel_keeps_what_finished_and_a_later_run_sends_the_rest(make_sim, tmp_path: Path) -> None:
    sim = make_sim(batch_validate_seconds=0.05, batch_run_seconds=1.0, batch_finalize_seconds=0.05)
    path = write_batch_job(tmp_path, sim, texts(30), batch="max_lines = 30")
    assert runner.run(load_job(path)).waiting is not None
    time.sleep(0.6)  # about half of the batch is done
    message = asyncio_run(cancel_job(load_job(path)))
    assert "1 batch(es) cancelled" in message
    df = pl.read_parquet(tmp_path / "job.parquet")
    done = df.filter(pl.col("status") == "ok").height
    assert 0 < done < 30 and df.filter(pl.col("status") == "not_sent").height == 30 - done
    assert server_batches(sim)[0].status == "cancelled"
    result = run_until_done(path)
    assert result.by_status == {"ok": 30} and result.cached_rows == done


def test_token_limit_exceeded_waits_for_the_queue(make_sim, tmp_path: Path) -> None:
    """The server's queue holds about one shard; the job does not know: refused batches are sent again later."""
    # a shard stays queued for a second (not FAST's 0.3 s), so the next is submitted while it still is:
    # on a loaded machine the first had once finished before the second went, and nothing was refused
    sim = make_sim(**{**FAST, "batch_run_seconds": 1.0})
    path = write_batch_job(tmp_path, sim, texts(30), batch="max_lines = 10\nenqueued_token_limit = 100000000")
    shard_tokens = make_plan(load_job(path)).prompt_tokens_total / 3  # the simulator counts the same way
    sim.configure(batch_queue_limit_tokens=int(shard_tokens * 1.5))  # one shard fits, two do not
    result = run_until_done(path)
    assert result.by_status == {"ok": 30}
    stats = sim.stats()["batches"]
    assert stats["by_status"]["completed"] == 3 and stats["by_status"].get("failed", 0) >= 1
    # each shard's input file was uploaded once, however many times it was submitted
    assert stats["files_uploaded"] == 3


def test_the_job_queue_limit_is_kept_before_submitting(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST, batch_queue_limit_tokens=600)
    path = write_batch_job(tmp_path, sim, texts(30), batch="max_lines = 10\nenqueued_token_limit = 600")
    result = run_until_done(path)
    assert result.by_status == {"ok": 30}
    assert sim.stats()["batches"]["by_status"] == {"completed": len(result.batch_ids)}  # never refused


def test_online_fallback_when_the_deadline_is_near(make_sim, tmp_path: Path) -> None:
    sim = make_sim(batch_validate_seconds=0.05, batch_run_seconds=60, batch_finalize_seconds=0.05)
    # a 4-second deadline: the fallback starts in its last second
    path = write_batch_job(tmp_path, sim, texts(12), top="deadline_hours = 0.0011", batch="online_fallback = true")
    result = runner.run(load_job(path), wait=True)
    assert result.by_status == {"ok": 12}
    assert result.mode == "batch → online"
    assert server_batches(sim)[0].status == "cancelled"
    assert sim.stats()["ok"] >= 10  # the unfinished rows went online


def test_server_without_batch_api_is_refused_before_anything_is_written(make_sim, tmp_path: Path) -> None:
    sim = make_sim(batch_api=False)
    path = write_batch_job(tmp_path, sim, texts(3))
    with pytest.raises(EndpointError, match="no Batch API"):
        runner.run(load_job(path))
    assert not (tmp_path / "job.parquet.shards").exists()


def test_azure_batches(make_sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = make_sim(**FAST, azure_batch_style=True)
    path = write_batch_job(tmp_path, sim, texts(12))
    text = path.read_text().replace(
        f'base_url = "{sim.base_url}"',
        f'azure_endpoint = "{sim.url}"\nazure_api_version = "2024-10-21"\nazure_deployment = "gpt-4o-mini"',
    )
    path.write_text(text)
    monkeypatch.setenv("BATCHRUN_TEST_KEY", "azure-test-key")
    result = run_until_done(path)
    assert result.by_status == {"ok": 12} and len(result.batch_ids) == 2


# -- crash safety --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("point", ["upload", "create", "poll", "download", "ingest"])
def test_a_kill_at_any_step_never_uploads_or_submits_a_shard_twice(make_sim, tmp_path: Path, point: str) -> None:
    sim = make_sim(**FAST)
    path = write_batch_job(tmp_path, sim, texts(25))  # 3 shards
    env = {**os.environ, "BATCHRUN_FAILPOINT": point}
    cmd = [sys.executable, "-m", "batchrun", "run", str(path), "-q", "--wait"]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert killed.returncode == 86, killed.stderr
    env.pop("BATCHRUN_FAILPOINT")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    df = pl.read_parquet(tmp_path / "job.parquet")
    assert df["status"].to_list() == ["ok"] * 25
    batches = server_batches(sim)
    shards = Counter(b.metadata["batchrun_shard"] for b in batches)
    assert len(shards) == 3 and set(shards.values()) == {1}, shards
    stats = sim.stats()["batches"]
    assert stats["files_uploaded"] == 3 and stats["batches_created"] == 3
    # a shard's results read again after the kill are paid for once: the ledger's spend is the output's
    ledger = Ledger(load_job(path).ledger_file, job=load_job(path).name)
    assert ledger.spent() == pytest.approx(float(df["cost_usd"].sum())) and ledger.spent() > 0
    ledger.close()


def test_plan_counts_queue_waves(make_sim, tmp_path: Path) -> None:
    sim = make_sim()
    path = write_batch_job(tmp_path, sim, texts(30), batch="max_lines = 10\nenqueued_token_limit = 400")
    plan = make_plan(load_job(path))
    assert plan.batch_largest_shard_tokens <= 400 and plan.batch_shards >= 3
    assert "waves" in format_plan(plan)


def test_auto_mode_runs_online_when_the_server_has_no_batch_api(make_sim, tmp_path: Path) -> None:
    sim = make_sim(batch_api=False)
    path = write_batch_job(tmp_path, sim, texts(3), mode="auto")
    job = load_job(path).model_copy(update={"deadline_hours": 48.0})
    from unittest import mock

    with mock.patch("batchrun.lifecycle.choose_mode", return_value=("batch", "test")):
        result = runner.run(job)
    assert result.mode == "online" and result.by_status == {"ok": 3}
    assert "no Batch API" in result.notes[0]
