"""Durable runs: ledger, resume after kill -9, content-addressed cache, spend cap, audit log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from batchrun import RunResult
from batchrun import arun as run_async
from batchrun.errors import BudgetExceeded, JobFileError, QuotaExhausted
from batchrun.jobs import Job, load_job
from batchrun.ledger import COMMIT_SECONDS, Ledger
from batchrun.sim import SimServer

from .conftest import start_cli_run, structured_job, wait_for_ok

SimFactory = Callable[..., SimServer]


def write_rows(path: Path, rows: list[str]) -> None:
    path.write_text("id,text\n" + "\n".join(f"r{i:05d},{t}" for i, t in enumerate(rows)) + "\n")


def make(
    write_job: Callable[..., Path],
    sim: SimServer,
    rows: list[str],
    *,
    in_flight: int = 16,
    extra: str = "",
    name: str = "job.toml",
) -> Job:
    limits = f"max_in_flight = {in_flight}\nmax_attempts = 4"
    path = write_job(structured_job(sim.base_url, limits=limits, extra=extra), name=name)
    write_rows(path.parent / "input.csv", rows)
    return load_job(path)


def run(job: Job, **kw: object) -> RunResult:
    return asyncio.run(run_async(job, **kw))  # type: ignore[arg-type]


def test_kill_9_at_random_points_then_resume(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(latency_ms=40, jitter=0.5)
    n, in_flight = 600, 8
    job = make(write_job, sim, [f"text number {i}" for i in range(n)], in_flight=in_flight)
    env = {**os.environ, "BATCHRUN_TEST_KEY": "sk-test"}
    kills = 0
    for stop_at in (60, 220, 400):
        proc = start_cli_run(job.source_path, env=env)
        wait_for_ok(sim, stop_at, proc=proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert not job.output_path.exists()  # no half-written output under the real name
    assert kills == 3
    result = run(job)
    df = result.frame()
    assert df.height == n and df["id"].to_list() == [f"r{i:05d}" for i in range(n)]
    assert (df["status"] == "ok").all()
    stats = sim.stats()
    assert stats["distinct_ok_bodies"] == n
    # re-sent after each kill: at most the requests in flight and the last commit window
    rate = 1.5 * in_flight / 0.04
    assert stats["duplicate_sends"] <= kills * (in_flight + rate * COMMIT_SECONDS + 5)
    assert result.cached_rows >= 250  # most of what was paid for before the last kill


def test_identical_requests_are_sent_once(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(latency_ms=20)
    rows = [f"text {i % 10}" for i in range(100)]  # 10 distinct texts, 10 times each
    result = run(make(write_job, sim, rows))
    assert result.by_status == {"ok": 100}
    assert sim.stats()["by_endpoint"]["chat"] == 10 and result.requests_sent == 10
    assert result.cached_rows == 90
    df = result.frame()
    first = {t: lab for t, lab in zip(rows[:10], df["label"][:10], strict=True)}
    assert all(first[t] == lab for t, lab in zip(rows, df["label"], strict=True))
    assert df["from_cache"].sum() == 90


def test_identical_row_after_its_twin_was_committed_is_not_sent_again(
    make_sim: SimFactory, write_job: Callable[..., Path]
) -> None:
    """One request in flight and slow replies: the producer is held back by the full queue while the
    first answers are committed to the ledger, after its batch's ledger lookup. The identical rows
    further down that batch must still find the answer (in session 3 one demo row was paid twice)."""
    sim = make_sim(latency_ms=60)
    rows = [f"text {i}" for i in range(8)] + ["text 0"] * 3  # the twins come after 7 other requests
    result = run(make(write_job, sim, rows, in_flight=1))
    assert result.by_status == {"ok": 11}
    assert sim.stats()["by_endpoint"]["chat"] == 8 and result.cached_rows == 3


def test_rerun_pays_only_for_changed_and_new_rows(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim()
    rows = [f"review {i}" for i in range(200)]
    job = make(write_job, sim, rows)
    first = run(job)
    assert first.requests_sent == 200
    rows[5] = "review five edited"
    write_rows(job.input.path, [*rows, *(f"new review {i}" for i in range(30))])  # nightly file grew
    second = run(job)
    assert second.requests_sent == 31 and second.cached_rows == 199
    assert second.frame().height == 230
    assert second.cached_usd == pytest.approx(first.cost_usd * 199 / 200, rel=0.05)
    # a changed parameter changes every request: all are sent again
    changed = job.model_copy(update={"request": job.request.model_copy(update={"temperature": 0.5})})
    third = run(changed)
    assert third.requests_sent == 230 and third.cached_rows == 0
    # --refresh ignores the ledger; --no-cache does not touch it
    assert run(job, cache="refresh").requests_sent == 230
    assert run(job, cache="off").requests_sent == 230
    assert run(job).requests_sent == 0


def test_quota_stop_then_resume_completes_without_paying_twice(
    make_sim: SimFactory, write_job: Callable[..., Path]
) -> None:
    sim = make_sim(quota_after_requests=80)
    job = make(write_job, sim, [f"t {i}" for i in range(300)], in_flight=4)
    with pytest.raises(QuotaExhausted):
        run(job)
    sim.configure(insufficient_quota=False)
    result = run(job)
    assert result.by_status == {"ok": 300} and result.cached_rows == 80
    assert sim.stats()["duplicate_sends"] == 0


def test_budget_stops_then_raising_it_continues(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim()
    rows = [f"text {i}" for i in range(300)]
    clean_job = make(write_job, sim, rows, name="clean.toml")  # another job: its spend is its own
    clean = run(clean_job, cache="off")
    worst_per_row = (clean.prompt_tokens / 300 * 0.15 + 100 * 0.60) / 1e6
    budget = clean.cost_usd / 3
    job = make(write_job, sim, rows, in_flight=4, extra=f"\n[budget]\nmax_usd = {budget}\n")
    with pytest.raises(BudgetExceeded, match="Nothing was sent"):
        run(job)  # the plan expects more than the budget: refused before anything is sent
    assert sim.stats()["ok"] == 300  # only the clean run's
    with pytest.raises(BudgetExceeded, match=r"raise budget\.max_usd") as info:
        run(job, over_budget=True)
    stopped = info.value.result  # type: ignore[attr-defined]
    assert 0 < stopped.by_status["ok"] < 300 and stopped.by_status["not_sent"] > 0
    assert stopped.cost_usd <= budget
    ledger = Ledger(job.ledger_file, job=job.name)
    assert ledger.spent() <= budget
    ledger.close()
    raised = job.model_copy(update={"budget": job.budget.model_copy(update={"max_usd": clean.cost_usd * 2})})
    done = run(raised, over_budget=True)  # enough in fact, though the plan's half-of-max_tokens guess says not
    assert done.by_status == {"ok": 300}
    ledger = Ledger(job.ledger_file, job=job.name)
    assert ledger.spent() == pytest.approx(clean.cost_usd, abs=4 * worst_per_row)
    ledger.close()


def test_budget_needs_a_price(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(models=("acme-llm",))
    job = make(write_job, sim, ["a"], extra="\n[budget]\nmax_usd = 1\n")
    # the simulator is on loopback, where an unknown model would be one's own ($0): say it is not
    job = job.model_copy(update={"request": job.request.model_copy(update={"model": "acme-llm"}),
                                 "pricing": job.pricing.model_copy(update={"local": False})})  # fmt: skip
    with pytest.raises(JobFileError, match="no price is known for 'acme-llm'"):
        run(job)
    assert sim.stats()["requests"] == 0


def test_fault_mix_every_row_accounted_for(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(
        error_500_rate=0.05,
        reset_rate=0.02,
        truncated_rate=0.01,
        slow_rate=0.01,
        slow_seconds=0.3,
        latency_ms=5,
        seed=11,
    )
    job = make(write_job, sim, [f"row {i}" for i in range(400)], in_flight=32)
    result = run(job)
    df = result.frame()
    assert df.height == 400 and df["id"].to_list() == [f"r{i:05d}" for i in range(400)]
    assert set(df["status"].unique().to_list()) <= {"ok", "failed"}
    failed = df.filter(pl.col("status") == "failed")
    assert failed["error"].null_count() == 0 and (failed["attempts"] == 4).all()
    assert result.retries > 0 and sim.stats()["duplicate_sends"] == 0


def test_audit_log_has_every_request_and_never_the_key(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    secret = "sk-" + "proj-" + "AUDITSECRET" * 3 + "42"  # split: no key-shaped literal in git
    sim = make_sim(rpm=1000, tpm=1_000_000)
    job = make(write_job, sim, ["a", "b", "c [[sim:500*1]]"], extra='\n[output]\naudit = "audit.jsonl"\n')
    env = {**os.environ, "BATCHRUN_TEST_KEY": secret}
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", str(job.source_path), "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in (job.source_path.parent / "audit.jsonl").read_text().splitlines()]
    assert len(lines) == 4  # three rows, one retried
    assert {tuple(x["row_ids"]) for x in lines} == {("r00000",), ("r00001",), ("r00002",)}
    ok = [x for x in lines if x["status_code"] == 200]
    assert all("x-ratelimit-remaining-tokens" in x["response_headers"] for x in ok)
    assert any(x["error"] and x["error"].startswith("500") for x in lines)
    for path in job.source_path.parent.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in proc.stdout + proc.stderr


def test_status_reads_the_ledger_without_sending(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim()
    job = make(write_job, sim, ["a", "b [[sim:refuse]]"])
    out = subprocess.run(
        [sys.executable, "-m", "batchrun", "status", str(job.source_path)], capture_output=True, text=True, check=True
    ).stdout
    assert "no runs yet" in out
    run(job)
    before = sim.stats()["requests"]
    out = subprocess.run(
        [sys.executable, "-m", "batchrun", "status", str(job.source_path)], capture_output=True, text=True, check=True
    ).stdout
    assert "answers kept   2" in out and "ok 1" in out and "refused 1" in out and "finished" in out
    assert sim.stats()["requests"] == before
