"""The online engine end to end: real openai SDK → simulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

import batchrun
from batchrun import arun as run_async
from batchrun.errors import EndpointError, QuotaExhausted
from batchrun.jobs import Job, load_job
from batchrun.sim import SimServer

from .conftest import REPO, start_cli_run, structured_job, wait_for_ok

SimFactory = Callable[..., SimServer]

RICH_SCHEMA = (
    '{type="object", properties={label={type="string", enum=["a","b"]}, score={type="number"}, '
    'tags={type="array", items={type="string"}}, meta={type="object", properties={n={type="integer"}}}}}'
)


def job_for(
    write_job: Callable[..., Path],
    sim: SimServer,
    rows: list[str],
    *,
    limits: str = "",
    attempts: int = 4,
    extra: str = "",
) -> Job:
    csv = "id,text\n" + "\n".join(f"r{i:04d},{t}" for i, t in enumerate(rows)) + "\n"
    return load_job(
        write_job(
            structured_job(
                sim.base_url,
                max_tokens=120,
                schema=RICH_SCHEMA,
                limits=f"max_attempts = {attempts}\n{limits}",
                extra=extra,
            ),
            csv=csv,
        )
    )


def run(job: Job) -> batchrun.RunResult:
    return asyncio.run(run_async(job))


def test_statuses_land_in_the_right_rows(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(slow_seconds=0.2)
    markers = [
        "plain",
        "[[sim:refuse]]",
        "[[sim:filter]]",
        "[[sim:badjson]]",
        "[[sim:long]]",
        "[[sim:400]]",
        "[[sim:500]]",
        "[[sim:500*2]]",
        "[[sim:reset*1]]",
        "[[sim:truncate*1]]",
        "[[sim:503*1]]",
        "[[sim:slow]]",
        "plain again",
    ]
    job = job_for(write_job, sim, [f"row {i} {m}" for i, m in enumerate(markers)], attempts=3)
    result = run(job)
    df = result.frame()
    assert df["id"].to_list() == [f"r{i:04d}" for i in range(len(markers))]  # input order
    status = dict(zip(df["id"], df["status"], strict=True))
    expect = [
        "ok",
        "refused",
        "filtered",
        "schema_invalid",
        "truncated",
        "failed",
        "failed",
        "ok",
        "ok",
        "ok",
        "ok",
        "ok",
        "ok",
    ]
    assert [status[f"r{i:04d}"] for i in range(len(markers))] == expect
    rows = {r["id"]: r for r in df.iter_rows(named=True)}
    assert rows["r0001"]["raw_response"].startswith("I'm sorry") and rows["r0001"]["label"] is None
    assert rows["r0003"]["raw_response"] and "not valid JSON" in rows["r0003"]["error"]
    assert "max_tokens (120)" in rows["r0004"]["error"] and rows["r0004"]["finish_reason"] == "length"
    assert rows["r0005"]["attempts"] == 1 and "400" in rows["r0005"]["error"]
    assert rows["r0006"]["attempts"] == 3 and rows["r0006"]["error"].startswith("500")
    assert rows["r0007"]["attempts"] == 3 and rows["r0007"]["label"] in ("a", "b")
    assert rows["r0008"]["attempts"] == 2 and rows["r0009"]["attempts"] == 2
    ok = df.filter(pl.col("status") == "ok")
    assert ok["prompt_tokens"].min() > 0 and ok["cost_usd"].min() > 0 and ok["request_id"].null_count() == 0
    assert result.by_status["ok"] == 7 and result.retries >= 5


def test_parquet_schema_does_not_depend_on_first_rows(
    make_sim: SimFactory, write_job: Callable[..., Path], tmp_path: Path
) -> None:
    sim = make_sim()
    good = run(job_for(write_job, sim, ["fine", "fine too"]))
    good_schema = pq.read_schema(good.output_path)
    (tmp_path / "job.parquet").rename(tmp_path / "good.parquet")
    bad = run(job_for(write_job, sim, ["[[sim:400]]", "[[sim:refuse]]"]))
    assert set(bad.by_status) == {"failed", "refused"}
    assert pq.read_schema(bad.output_path).equals(good_schema)
    types = {f.name: str(f.type) for f in good_schema}
    assert types["label"] == "string" and types["score"] == "double" and types["tags"].startswith("list<")
    assert types["meta"] == "struct<n: int64>" and types["attempts"] == "int32"


def test_order_kept_under_jitter_and_many_rows(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(latency_ms=20, jitter=0.9, seed=3)
    job = job_for(write_job, sim, [f"text {i}" for i in range(600)], extra="\n[output]\nrow_group_size = 50\n")
    df = run(job).frame()
    assert df["id"].to_list() == [f"r{i:04d}" for i in range(600)]
    assert (df["status"] == "ok").all()
    assert pq.ParquetFile(job.output_path).num_row_groups >= 10


def test_429s_pause_everyone_and_the_run_completes(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    # the job says nothing about limits; the server allows 60 requests/s-ish bursts of tokens only
    sim = make_sim(tpm=40_000, latency_ms=5)
    job = job_for(write_job, sim, [f"text {i}" for i in range(150)], limits="max_in_flight = 64")
    result = run(job)
    assert result.by_status == {"ok": 150}
    stats = sim.stats()
    assert result.limits[1] == 40_000  # learned from the headers
    assert stats["peak_tpm_60s"] <= 40_000
    assert stats["rate_limited"] <= 0.05 * 150


def test_wrong_limits_are_corrected_from_headers(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(rpm=600, tpm=30_000, latency_ms=5)
    job = job_for(write_job, sim, [f"text {i}" for i in range(120)], limits="rpm = 6000\ntpm = 300000")
    result = run(job)
    assert result.by_status == {"ok": 120}
    assert result.limits == (600, 30_000)
    assert sim.stats()["rate_limited"] <= 0.05 * 120 + 1
    assert sim.stats()["peak_tpm_60s"] <= 30_000


def test_quota_exhaustion_stops_and_keeps_finished_rows(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(quota_after_requests=20)
    job = job_for(write_job, sim, [f"text {i}" for i in range(200)], limits="max_in_flight = 4")
    with pytest.raises(QuotaExhausted, match="run the job again") as info:
        run(job)
    result = info.value.result  # type: ignore[attr-defined]
    df = pl.read_parquet(job.output_path)
    assert df.height == 200 and df["id"].to_list() == [f"r{i:04d}" for i in range(200)]
    counts = dict(df["status"].value_counts().iter_rows())
    assert counts["ok"] == 20 and counts["not_sent"] == 180
    assert result.by_status["ok"] == 20
    assert sim.stats()["quota_rejected"] <= 4  # stopped dispatching at once


def test_model_without_access_stops_the_run(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(models=("gpt-4o",))
    job = job_for(write_job, sim, [f"text {i}" for i in range(50)], limits="max_in_flight = 2")
    with pytest.raises(EndpointError, match="does not exist or you do not have access"):
        run(job)
    assert sim.stats()["by_endpoint"]["chat"] <= 3


def test_embeddings_job_groups_rows_and_keeps_vectors_in_order(
    make_sim: SimFactory, write_job: Callable[..., Path]
) -> None:
    sim = make_sim()
    rows = "\n".join(f"e{i},sentence number {i}" for i in range(2500))
    toml = f"""
[input]
path = "input.csv"
id_column = "id"
[prompt]
template = "{{{{ text }}}}"
[request]
kind = "embeddings"
model = "text-embedding-3-small"
dimensions = 16
inputs_per_request = 2048  # OpenAI's grouping (the simulator is on loopback, where 32 is the default)
[endpoint]
base_url = "{sim.base_url}"
"""
    job = load_job(write_job(toml, csv="id,text\n" + rows + "\n"))
    result = run(job)
    df = result.frame()
    assert result.requests_sent == 2  # 2,048 + 452 inputs
    assert df.height == 2500 and (df["status"] == "ok").all()
    assert str(pq.read_schema(job.output_path).field("embedding").type) == "fixed_size_list<element: float>[16]"
    from batchrun.sim.content import embedding

    assert df["embedding"][1234].to_list() == pytest.approx(embedding("sentence number 1234", 16), rel=1e-6)


def test_map_api_returns_a_dataframe(sim: SimServer) -> None:
    df = pl.DataFrame({"text": ["good", "bad", "meh"]})
    schema = {"type": "object", "properties": {"sentiment": {"type": "string", "enum": ["pos", "neg", "neu"]}}}
    out = batchrun.map(
        df, prompt="Sentiment of: {{ text }}", schema=schema, model="gpt-4o-mini", max_tokens=50, base_url=sim.base_url
    )
    assert out["text"].to_list() == ["good", "bad", "meh"]
    assert set(out["sentiment"].to_list()) <= {"pos", "neg", "neu"} and (out["status"] == "ok").all()


def test_demo_job_through_the_cli_uses_the_simulator(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    out = tmp_path / "demo.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", str(REPO / "jobs" / "classify_reviews.toml"), "-o", str(out), "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "SIMULATOR" in proc.stderr and "SIMULATED run" in proc.stdout
    df = pl.read_parquet(out)
    assert df.height == 360 and (df["status"] == "ok").all()
    assert set(df["sentiment"].unique().to_list()) <= {"positive", "negative", "neutral", "mixed"}


def test_quota_stop_exit_code_through_cli(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(insufficient_quota=True)
    job = job_for(write_job, sim, ["a", "b"])
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", str(job.source_path), "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3
    assert "out of quota" in proc.stderr and "not_sent 2" in proc.stdout


def test_azure_endpoint_routes_to_the_deployment(
    sim: SimServer, write_job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-secret")
    toml = f"""
[input]
path = "input.csv"
id_column = "id"
[prompt]
template = "{{{{ text }}}}"
[request]
model = "gpt-4o-mini"
max_tokens = 300
[endpoint]
azure_endpoint = "{sim.url}"
azure_api_version = "2024-10-21"
azure_deployment = "gpt-4o-mini"
api_key_env = "AZURE_OPENAI_API_KEY"
"""
    job = load_job(write_job(toml, csv="id,text\na,hello\nb,world\n"))
    result = run(job)
    assert result.by_status == {"ok": 2}
    assert sim.stats()["by_endpoint"]["azure"] == 2


def test_api_key_never_appears_in_output_or_messages(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    secret = "sk-" + "proj-" + "THISISASECRETKEYTHATMUSTNEVERLEAK0123456789"  # split: no key-shaped literal in git
    sim = make_sim()
    job = job_for(write_job, sim, ["fine", "[[sim:400]]", "[[sim:500]]"], attempts=2)
    env = {**os.environ, "BATCHRUN_TEST_KEY": secret}
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", str(job.source_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 6, proc.stderr  # two rows failed: cron is told
    assert secret not in proc.stdout and secret not in proc.stderr
    for path in job.output_path.parent.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_ctrl_c_finishes_in_flight_and_writes_everything(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    import signal

    sim = make_sim(latency_ms=200)
    job = job_for(write_job, sim, [f"text {i}" for i in range(300)], limits="max_in_flight = 4")
    proc = start_cli_run(job.source_path, capture=True)
    wait_for_ok(sim, 8, timeout=30, proc=proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Ctrl+C" in err and "STOPPED" in out and "not_sent" in out
    df = pl.read_parquet(job.output_path)
    assert df.height == 300 and df["id"].to_list() == [f"r{i:04d}" for i in range(300)]
    counts = dict(df["status"].value_counts().iter_rows())
    assert counts.get("ok", 0) >= 8 and counts["not_sent"] >= 200
    assert set(counts) <= {"ok", "not_sent"}
    assert counts["ok"] == sim.stats()["ok"]  # every reply the server sent was written


def test_bad_replies_can_be_retried(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim()
    job = job_for(write_job, sim, ["a [[sim:badjson*1]]", "b [[sim:long]]", "c [[sim:badjson]]"])
    job = job.model_copy(update={"request": job.request.model_copy(update={"retry_bad_replies": 1})})
    df = run(job).frame()
    assert df["status"].to_list() == ["ok", "truncated", "schema_invalid"]
    assert df["attempts"].to_list() == [2, 2, 2]


def test_rows_naming_their_own_model_get_that_models_limits_and_price() -> None:
    asyncio.run(_own_model_limits_and_price())


async def _own_model_limits_and_price() -> None:
    from batchrun.engine import Engine, EngineOptions, WorkItem
    from batchrun.limits import RateLimiter
    from batchrun.pricing import ModelPrice
    from batchrun.prompts import Request
    from batchrun.replies import ReplyParser

    job_limiter = RateLimiter(100, 10_000)
    prices = {m: ModelPrice(m, input=i, output=o) for m, i, o in (("gpt-4o", 2.5, 10.0), ("gpt-4o-mini", 0.15, 0.6))}
    engine = Engine(
        client=None,  # type: ignore[arg-type]  # nothing is sent here
        model="gpt-4o-mini", kind="chat", limiter=job_limiter, parser=ReplyParser(None, 10),
        price=prices["gpt-4o-mini"], options=EngineOptions(), on_result=lambda *_: None, price_for=prices.get,
    )  # fmt: skip

    def item(model: str | None) -> WorkItem:
        return WorkItem((0,), (Request(0, "a", {}, prompt_tokens=1000, max_output_tokens=100, model=model),))

    own, other = item(None), item("gpt-4o")
    assert engine._limiter(own) is job_limiter and engine._limiter(item("gpt-4o-mini")) is job_limiter
    assert engine._limiter(other) is not job_limiter and engine._limiter(other) is engine._limiter(item("gpt-4o"))
    assert engine._limiter(other).limits == (None, None)  # learnt from that model's replies' headers
    assert engine._worst_cost(own, 0) == pytest.approx((1000 * 0.15 + 100 * 0.6) / 1e6)
    assert engine._worst_cost(other, 0) == pytest.approx((1000 * 2.5 + 100 * 10.0) / 1e6)
