"""The compatibility matrix (issue 16): each way a third-party OpenAI-compatible server was seen to differ
from OpenAI is a simulator switch, and batchrun must adapt to each — Batch API servers that cannot list
files or batches, transient 500s on upload and create, reset headers as Unix times, a server that ignores
response_format, one that queues instead of answering 429 — with honest summaries and status."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import polars as pl
import pytest

import batchrun
from batchrun.batch_api import BatchClient
from batchrun.errors import EndpointError, ExitCode
from batchrun.jobs import load_job
from batchrun.plan import make_plan
from batchrun.plan_format import format_plan
from batchrun.retries import Action, classify
from batchrun.sim import SimServer

from .test_batch import FAST, texts, write_batch_job

ENV = {**os.environ, "BATCHRUN_TEST_KEY": "sk-test"}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args], capture_output=True, text=True, timeout=120, env=env or ENV
    )


def _shard_batches(sim: SimServer) -> Counter[str]:
    """Batches on the server per shard tag, read from the simulator itself (it may not list them)."""
    return sim.call(lambda: Counter(b.metadata["batchrun_shard"] for b in sim.sim.batches.batches.values()))


# -- Batch API recovery on servers that cannot list ----------------------------------------------------------


@pytest.mark.slow
def test_no_file_listing_a_crash_at_upload_recovers_with_one_batch_per_shard(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST, list_files=False)
    path = write_batch_job(tmp_path, sim, texts(25))  # 3 shards
    killed = _cli("run", str(path), "-q", "--wait", env={**ENV, "BATCHRUN_FAILPOINT": "upload"})
    assert killed.returncode == 86, killed.stderr  # killed after the server stored the file, before the ledger knew
    done = _cli("run", str(path), "-q", "--wait")
    assert done.returncode == ExitCode.DONE, done.stderr
    assert "listing files" not in done.stderr and "may have been kept by the server" in done.stderr
    assert pl.read_parquet(tmp_path / "job.parquet")["status"].to_list() == ["ok"] * 25
    shards = _shard_batches(sim)
    assert len(shards) == 3 and set(shards.values()) == {1}, shards
    assert sim.stats()["batches"]["files_uploaded"] == 4  # the orphan, reported, and the three that ran
    left = sim.call(lambda: [f.filename for f in sim.sim.batches.files.values() if f.purpose == "batch"])
    assert len(left) == 1 and f"an upload of {left[0]} may have been kept" in done.stderr


def test_no_file_listing_a_transient_500_on_upload_is_uploaded_again(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST, list_files=False, upload_500s=1)
    path = write_batch_job(tmp_path, sim, texts(25))
    done = _cli("run", str(path), "-q", "--wait")
    assert done.returncode == ExitCode.DONE, done.stderr
    assert "may have been kept by the server" in done.stderr
    shards = _shard_batches(sim)
    assert len(shards) == 3 and set(shards.values()) == {1}, shards
    assert sim.stats()["batches"]["files_uploaded"] == 4
    # the collected shards' files were deleted; the one left is the orphan the run reported by name
    left = sim.call(lambda: [f.filename for f in sim.sim.batches.files.values() if f.purpose == "batch"])
    assert len(left) == 1 and f"an upload of {left[0]} may have been kept" in done.stderr


@pytest.mark.parametrize("list_batches", [True, False])
def test_a_transient_500_on_batches_create_is_created_once(make_sim, tmp_path: Path, list_batches: bool) -> None:
    sim = make_sim(**FAST, create_500s=1, list_batches=list_batches)
    path = write_batch_job(tmp_path, sim, texts(25))
    done = _cli("run", str(path), "-q", "--wait")
    assert done.returncode == ExitCode.DONE, done.stderr
    shards = _shard_batches(sim)
    assert len(shards) == 3 and set(shards.values()) == {1}, shards
    assert ("may have been created twice" in done.stderr) == (not list_batches)


@pytest.mark.slow
def test_no_batch_listing_a_crash_at_create_finishes_and_says_what_it_could_not_check(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST, list_batches=False)
    path = write_batch_job(tmp_path, sim, texts(25))
    killed = _cli("run", str(path), "-q", "--wait", env={**ENV, "BATCHRUN_FAILPOINT": "create"})
    assert killed.returncode == 86, killed.stderr
    done = _cli("run", str(path), "-q", "--wait")
    assert done.returncode == ExitCode.DONE, done.stderr
    assert "may have been created twice" in done.stderr and "cancel the one batchrun does not report" in done.stderr
    assert pl.read_parquet(tmp_path / "job.parquet")["status"].to_list() == ["ok"] * 25


def test_a_failed_call_is_named_as_what_it_was(make_sim) -> None:
    sim = make_sim(**FAST, create_500s=1000)

    async def go() -> str:
        async with openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as client:
            api = BatchClient(client, max_attempts=3, sleep=lambda _s: asyncio.sleep(0))
            up = await client.files.create(file=("a.jsonl", b'{"custom_id":"x"}\n'), purpose="batch")
            with pytest.raises(EndpointError) as err:
                await api.create(up.id, "/v1/chat/completions", {"batchrun_job": "j", "batchrun_shard": "1.1.0"})
            return str(err.value)

    message = asyncio.run(go())
    assert message.startswith("batches.create answered 500"), message
    assert "listing" not in message


def test_batch_probe_tells_no_batch_api_from_a_broken_one(make_sim) -> None:
    async def probe(sim: SimServer, **kw: Any) -> BatchClient:
        async with openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as client:
            api = BatchClient(client, max_attempts=2, sleep=lambda _s: asyncio.sleep(0), **kw)
            await api.probe()
            return api

    with pytest.raises(EndpointError, match="has no Batch API"):
        asyncio.run(probe(make_sim(batch_api=False)))
    api = asyncio.run(probe(make_sim(list_batches=False)))  # 405 on GET /batches: there, but cannot list
    assert api.can_list_batches is False


# -- rate limits in other dialects -------------------------------------------------------------------------


JOB = """
[input]
path = "input.csv"

[prompt]
template = "{{{{ text }}}}"

[request]
model = "gpt-4o-mini"
max_tokens = 100
{request}

{schema}

[limits]
max_in_flight = 16
{limits}

[endpoint]
base_url = "{base_url}"
api_key_env = "BATCHRUN_TEST_KEY"
timeout_s = 10
"""

LABEL = """
[output_schema]
name = "label"
schema = { type = "object", properties = { label = { type = "string" } }, required = ["label"], additionalProperties = false }
"""


def _online_job(tmp: Path, sim: SimServer, rows: int, *, schema: str = "", limits: str = "", request: str = "") -> Path:
    pl.DataFrame({"text": [f"row {i}" for i in range(rows)]}).write_csv(tmp / "input.csv")
    path = tmp / "job.toml"
    path.write_text(JOB.format(base_url=sim.base_url, schema=schema, limits=limits, request=request))
    return path


def test_epoch_reset_headers_without_retry_after_wait_the_right_few_seconds(make_sim) -> None:
    # the server's 429 carries x-ratelimit-reset-requests as a Unix time, with no Retry-After and no
    # "try again in": the wait is the time until then (a few seconds here), not 1.8e9 s
    sim = make_sim(rpm=20, reset_headers_epoch=True)
    client = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    for _ in range(19):
        client.chat.completions.create(**body)
    time.sleep(1.2)  # a little refill: the bucket is not empty, so the reset is a few seconds away
    client.chat.completions.create(**body)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(**body)
    headers = err.value.response.headers
    assert "retry-after" not in headers and float(headers["x-ratelimit-reset-requests"]) > 1e9
    failure = classify(err.value)
    assert failure.action is Action.RATE_LIMITED and failure.wait is not None
    assert 0 < failure.wait <= 60 and failure.wait == pytest.approx(
        float(headers["x-ratelimit-reset-requests"]) - time.time(), abs=1.5
    )


def test_a_server_that_queues_instead_of_429_is_run_without_refusals(make_sim, tmp_path: Path) -> None:
    sim = make_sim(rpm=120, queue_when_limited=True)
    path = _online_job(tmp_path, sim, 130)
    proc = _cli("run", str(path), "-q")
    assert proc.returncode == ExitCode.DONE, proc.stderr
    stats = sim.stats()
    # whether any request had to queue depends on how soon the limiter learnt rpm 120 from the first
    # replies' headers (often before the 121st send): what must hold is that none was refused
    assert stats["rate_limited"] == 0 and stats["ok"] == 130


def test_least_time_counts_what_the_server_admitted_not_what_it_refused(make_sim, tmp_path: Path) -> None:
    sim = make_sim(rpm=60)
    path = _online_job(tmp_path, sim, 70, limits="rpm = 60")
    result = batchrun.run(load_job(path), progress=False)
    assert result.rate_limited >= 0 and result.by_status == {"ok": 70}
    assert result.minimum_seconds == pytest.approx(10.0, abs=0.01)  # 70 admitted at 60 RPM, whatever was refused
    assert result.wall_seconds >= result.minimum_seconds - 1.0


# -- replies -----------------------------------------------------------------------------------------------


def test_a_server_ignoring_response_format_is_named_as_the_likely_cause(make_sim, tmp_path: Path) -> None:
    sim = make_sim(ignore_response_format=True)
    path = _online_job(tmp_path, sim, 30, schema=LABEL)
    proc = _cli("run", str(path))
    assert proc.returncode == ExitCode.ROWS_FAILED, proc.stderr
    assert "ignores response_format" in proc.stdout + proc.stderr


def test_retry_bad_replies_applies_in_batch_mode(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST)
    marks = {i: "[[sim:badjson*1]]" for i in range(0, 12, 3)}  # four rows answer bad JSON once
    path = write_batch_job(tmp_path, sim, texts(12, marks), batch="max_lines = 100")
    path.write_text(path.read_text().replace("max_tokens = 40", "max_tokens = 40\nretry_bad_replies = 1"))
    done = _cli("run", str(path), "-q", "--wait")
    assert done.returncode == ExitCode.DONE, done.stderr
    assert pl.read_parquet(tmp_path / "job.parquet")["status"].to_list() == ["ok"] * 12
    shards = sim.call(lambda: [b for b in sim.sim.batches.batches.values()])
    assert len(shards) == 2  # the first round, and the round that asked the four again


def test_without_retry_bad_replies_a_bad_batch_reply_stands(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST)
    path = write_batch_job(tmp_path, sim, texts(6, {0: "[[sim:badjson*1]]"}), batch="max_lines = 100")
    done = _cli("run", str(path), "-q", "--wait")
    assert done.returncode == ExitCode.ROWS_FAILED, done.stderr
    df = pl.read_parquet(tmp_path / "job.parquet")
    assert df["status"].to_list() == ["schema_invalid"] + ["ok"] * 5 and df["raw_response"][0]


# -- honest counts -----------------------------------------------------------------------------------------


def test_failures_are_not_counted_as_answered_without_a_request(make_sim, tmp_path: Path) -> None:
    sim = make_sim(error_500_rate=1.0)
    pl.DataFrame({"text": ["same"] * 20}).write_csv(tmp_path / "input.csv")  # one request, 19 identical rows
    path = tmp_path / "job.toml"
    path.write_text(JOB.format(base_url=sim.base_url, schema="", limits="max_attempts = 2", request=""))
    with pytest.raises(EndpointError) as err:  # not one reply: the endpoint's fault
        batchrun.run(load_job(path), progress=False)
    result = err.value.result  # type: ignore[attr-defined]
    assert result.by_status == {"failed": 20}
    assert result.cached_rows == 0


def test_status_counts_this_jobs_runs_by_mode_and_batch_lines_by_status(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST, ignore_response_format=True, text_tokens=(5, 10))
    path = write_batch_job(tmp_path, sim, texts(12), batch="max_lines = 100")
    done = _cli("run", str(path), "-q", "--wait")
    assert done.returncode == ExitCode.ROWS_FAILED, done.stderr
    status = _cli("status", str(path))
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert "in 1 invocation(s) (1 batch)" in out, out
    assert "12 schema_invalid; 0 to send again" in out and "ok" not in out.split("answers kept")[1].split("\n")[0]


def test_keys_a_mode_cannot_use_are_warned_not_dropped(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST)
    path = write_batch_job(tmp_path, sim, texts(5), batch="max_lines = 100")
    path.write_text(path.read_text() + "\n[limits]\nrpm = 500\nmax_in_flight = 8\n")
    done = _cli("run", str(path), "-q", "--wait")
    assert done.returncode == ExitCode.DONE, done.stderr
    assert "[limits] max_in_flight, rpm do not apply to the Batch API" in done.stderr


def test_batch_mode_writes_the_audit_log(make_sim, tmp_path: Path) -> None:
    sim = make_sim(**FAST)
    path = write_batch_job(tmp_path, sim, texts(5), batch="max_lines = 100", output="job.parquet")
    path.write_text(path.read_text().replace('path = "job.parquet"', 'path = "job.parquet"\naudit = "audit.jsonl"'))
    done = _cli("run", str(path), "-q", "--wait")
    assert done.returncode == ExitCode.DONE, done.stderr
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and {ln["mode"] for ln in lines} == {"batch"}
    assert all(ln["response"]["status_code"] == 200 for ln in lines)
    assert sorted(r for ln in lines for r in ln["row_ids"]) == sorted(f"r{i}" for i in range(5))


@pytest.mark.parametrize("kind", ["embeddings", "document"])
def test_a_dead_endpoint_is_the_endpoint_exit_code_in_every_kind_of_job(make_sim, tmp_path: Path, kind: str) -> None:
    # one embeddings group or a short document is too few requests for the breaker; not one reply is still
    # the endpoint's fault, not the rows'
    sim = make_sim()
    port = sim.port
    sim.stop()
    if kind == "embeddings":
        pl.DataFrame({"text": [f"row {i}" for i in range(50)]}).write_csv(tmp_path / "input.csv")
        head = '[input]\npath = "input.csv"\n[prompt]\ntemplate = "{{ text }}"\n'
        head += '[request]\nkind = "embeddings"\nmodel = "text-embedding-3-small"\n'
    else:
        (tmp_path / "book.txt").write_text("Chapter 1\n\nHello.\n\nAgain.\n", encoding="utf-8")
        head = '[input]\npath = "book.txt"\n[prompt]\nsystem = "Translate into French."\n'
        head += '[request]\nmodel = "gpt-4o-mini"\nmax_tokens = 500\n'
    path = tmp_path / "job.toml"
    path.write_text(
        head + f'[limits]\nmax_attempts = 2\n[endpoint]\nbase_url = "http://127.0.0.1:{port}/v1"\n'
        'api_key_env = "BATCHRUN_TEST_KEY"\ntimeout_s = 3\n'
    )
    proc = _cli("run", str(path), "-q")
    assert proc.returncode == ExitCode.ENDPOINT, proc.stdout + proc.stderr
    assert "could not be reached" in proc.stderr and "Traceback" not in proc.stderr


# -- your own hardware ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "local"),
    [("http://127.0.0.1:8000/v1", True), ("http://localhost:11434/v1", True), ("http://10.1.2.3/v1", True),
     ("http://192.168.1.9:8080/v1", True), ("http://gpu-box.local:8000/v1", True), ("http://[::1]:8000/v1", True),
     ("https://api.openai.com/v1", False), ("https://8.8.8.8/v1", False), (None, False)],
)  # fmt: skip
def test_local_urls(url: str | None, local: bool) -> None:
    from batchrun.pricing import is_local_url

    assert is_local_url(url) is local


@pytest.mark.filterwarnings("ignore::batchrun.tokens.UnknownModelWarning")
def test_a_model_of_your_own_on_your_own_server_costs_nothing_and_a_budget_runs(make_sim, tmp_path: Path) -> None:
    sim = make_sim(models=("llama-3.1-8b-instruct", "gpt-4o-mini"))
    path = _online_job(tmp_path, sim, 5)
    path.write_text(path.read_text().replace("gpt-4o-mini", "llama-3.1-8b-instruct") + "\n[budget]\nmax_usd = 1\n")
    plan = batchrun.make_plan(load_job(path))
    assert plan.price_known and plan.cost_online_worst == 0.0
    assert any("runs on your own server" in n for n in plan.notes)
    result = batchrun.run(load_job(path))  # a budget with an unpriced model would be refused elsewhere
    assert result.by_status == {"ok": 5} and result.cost_usd == 0.0 and result.prompt_tokens > 0
    # a local proxy in front of OpenAI (LiteLLM on localhost) still costs what OpenAI charges
    proxy = _online_job(tmp_path, sim, 5)
    assert batchrun.make_plan(load_job(proxy)).cost_online_worst > 0
    # and [pricing] local = true prices every model at $0
    proxy.write_text(proxy.read_text() + "\n[pricing]\nlocal = true\n")
    assert batchrun.make_plan(load_job(proxy)).cost_online_worst == 0.0


def test_a_server_that_queues_is_not_flooded_even_when_the_job_states_limits(make_sim, tmp_path: Path) -> None:
    # a 2-slot server (llama.cpp, one GPU): no rate-limit headers, no 429, latency grows with its queue.
    # The demo job's limits (rpm 500) once let the in-flight target follow rate × latency up to
    # max_in_flight: 232 requests queued on 2 slots. Without headers the target is found from the replies.
    sim = make_sim(latency_ms=50, slots=2, rate_headers=False)
    path = _online_job(tmp_path, sim, 240, limits="rpm = 500\nmax_in_flight = 256")
    path.write_text(path.read_text().replace("max_in_flight = 16\n", ""))
    result = batchrun.run(load_job(path))
    stats = sim.stats()
    assert result.by_status == {"ok": 240} and stats["requests"] == 240  # nothing timed out, nothing re-sent
    # before the queue shows (k + the headroom of 16, and stragglers) ~20–30 wait on 2 slots; the flood
    # this guards against was 232
    assert stats["queue_peak"] <= 45, stats["queue_peak"]
    # then it settles near the server's 2 slots: the fastest recent reply is ~L/k times the fastest ever,
    # and in flight goes to ~2 × the capacity + 2 (6, so 4 wait); 19 waited to the end before. (A stall of
    # our event loop as the first replies came in once made it 20 in CI: the next test.)
    assert stats["queue_late_peak"] <= 8, stats["queue_late_peak"]


def test_a_server_whose_first_answers_were_slow_is_not_flooded_either(make_sim, tmp_path: Path) -> None:
    # the same 2-slot server warming up: its first 2 answers take 6 times its time, so the fastest reply
    # ever (what a queue is measured against) was a slow one, and every reply after it waits in a queue —
    # as when a GC pause or a busy machine holds up our own event loop as the first replies come in. Before
    # the probe (gate.InFlight.probe) the queue went unseen: ~20 waited on 2 slots to the end.
    sim = make_sim(latency_ms=50, slots=2, rate_headers=False, warmup_ms=250, warmup_requests=2)
    path = _online_job(tmp_path, sim, 240, limits="max_in_flight = 256")
    path.write_text(path.read_text().replace("max_in_flight = 16\n", ""))
    result = batchrun.run(load_job(path))
    stats = sim.stats()
    assert result.by_status == {"ok": 240} and stats["requests"] == 240
    assert stats["queue_late_peak"] <= 8, stats["queue_late_peak"]


def test_a_server_that_says_nothing_and_does_not_queue_gets_full_throughput(make_sim, tmp_path: Path) -> None:
    # no rate-limit headers, 200 ms ± 30 % whatever the load: 16 in flight (the start) would take 5 s for
    # 400 rows; the target follows the rate the replies come back at, and nothing mistakes it for a queue
    sim = make_sim(latency_ms=200, jitter=0.3, rate_headers=False)
    path = _online_job(tmp_path, sim, 400, limits="max_in_flight = 256")
    path.write_text(path.read_text().replace("max_in_flight = 16\n", ""))
    result = batchrun.run(load_job(path))
    assert result.by_status == {"ok": 400} and sim.stats()["requests"] == 400
    assert result.wall_seconds - (result.startup_seconds or 0) < 3.5, result.wall_seconds


def test_a_server_that_says_its_slots_and_context_is_sized_by_them(make_sim, tmp_path: Path) -> None:
    # llama.cpp's /props says 2 slots of 700 tokens: at most 4 in flight (2 × its slots), and a row that
    # cannot fit is too_long before it is sent, as it would be with a model the price table knows
    sim = make_sim(latency_ms=50, slots=2, rate_headers=False, server_context=700)
    path = _online_job(tmp_path, sim, 40, limits="max_in_flight = 256")
    path.write_text(path.read_text().replace("max_in_flight = 16\n", "") + "[pricing]\nlocal = true\n")
    frame = pl.read_csv(tmp_path / "input.csv")
    frame.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("word " * 800)).otherwise(pl.col("text"))
                       .alias("text")).write_csv(tmp_path / "input.csv")  # fmt: skip
    before = make_plan(load_job(path))  # the plan, too, sizes rows by the server's context, and bills nothing
    assert before.context_window == 700 and before.too_long_count == 1 and before.cost_online_expected == 0
    assert "2 slots, 700 tokens of context a request" in before.own_server and before.recommended_mode == "online"
    assert before.server_rows_per_s is None and "not measured yet" in format_plan(before)
    result = batchrun.run(load_job(path))
    stats = sim.stats()
    assert result.by_status == {"ok": 39, "too_long": 1} and stats["requests"] == 39
    # with no limits to time it by, the next plan times the rest at the rate the server answered: 2 slots of
    # ~50 ms is at most ~40 rows/s; 20 new rows at that rate
    frame = pl.read_csv(tmp_path / "input.csv")
    pl.concat([frame, pl.DataFrame({"text": [f"new {i}" for i in range(20)]})]).write_csv(tmp_path / "input.csv")
    after = make_plan(load_job(path))
    assert after.server_answers_measured == 39 and 3 < after.server_rows_per_s < 45, after.server_rows_per_s
    assert after.finish_rows == 20 and after.minutes_on_server == pytest.approx(20 / after.server_rows_per_s / 60)
    assert "20 row(s) to send → about" in format_plan(after)
    assert (
        "700-token context window"
        in pl.read_parquet(result.output_path).filter(pl.col("status") == "too_long")["error"][0]
    )
    assert stats["queue_peak"] <= 2, stats["queue_peak"]  # 4 in flight on 2 slots
    from batchrun.endpoints import server_facts

    assert server_facts(sim.base_url, "gpt-4o-mini").slots == 2  # llama.cpp's /props
    vllm = make_sim(server_context=32768)  # no /props: max_model_len from /v1/models, as vLLM serves it
    assert server_facts(vllm.base_url, "a-model-it-does-not-serve") is None
    assert server_facts(vllm.base_url, "gpt-4o-mini").context == 32768


EMBED_JOB = """
[input]
path = "input.csv"
[prompt]
template = "{{{{ text }}}}"
[request]
kind = "embeddings"
model = "{model}"
{request}
[limits]
max_attempts = 2
[endpoint]
base_url = "{base_url}"
api_key_env = "BATCHRUN_TEST_KEY"
timeout_s = {timeout}
"""


@pytest.mark.filterwarnings("ignore::batchrun.tokens.UnknownModelWarning")
def test_embeddings_on_your_own_server_are_split_on_timeout_and_sized_from_the_first_reply(
    make_sim, tmp_path: Path
) -> None:
    # 30 ms per input: 64 inputs take ~2 s, past the 1.2 s timeout; 16 take 0.5 s
    sim = make_sim(models=("nomic-embed-text",), latency_per_input_ms=30, embedding_dimensions=48)
    pl.DataFrame({"text": [f"row {i}" for i in range(64)]}).write_csv(tmp_path / "input.csv")
    path = tmp_path / "job.toml"
    path.write_text(EMBED_JOB.format(model="nomic-embed-text", request="inputs_per_request = 64",
                                     base_url=sim.base_url, timeout=1.2))  # fmt: skip
    result = batchrun.run(load_job(path))
    df = result.frame()
    assert result.by_status == {"ok": 64} and result.cost_usd == 0.0  # your own model: $0
    # the 64 were halved until each half fit: never the whole again
    assert sim.stats()["by_endpoint"]["embeddings"] <= 1 + 2 + 4
    kind = df.to_arrow().schema.field("embedding").type
    assert str(kind).startswith("fixed_size_list") and kind.list_size == 48  # learnt from the first reply


def test_inputs_per_request_defaults_to_32_on_your_own_server(make_sim, tmp_path: Path) -> None:
    sim = make_sim()
    pl.DataFrame({"text": [f"row {i}" for i in range(100)]}).write_csv(tmp_path / "input.csv")
    path = tmp_path / "job.toml"
    path.write_text(EMBED_JOB.format(model="text-embedding-3-small", request="dimensions = 256",
                                     base_url=sim.base_url, timeout=30))  # fmt: skip
    assert batchrun.make_plan(load_job(path)).requests == 4  # 32 + 32 + 32 + 4
    assert batchrun.run(load_job(path)).by_status == {"ok": 100} and sim.stats()["by_endpoint"]["embeddings"] == 4
