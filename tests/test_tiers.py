"""Service tiers: flex that finishes (unbilled 'resource unavailable' refusals, fallback to the default
tier) and billing by the tier the response says served the row — through the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from batchrun import arun
from batchrun.jobs import Job, load_job
from batchrun.pricing import default_table
from batchrun.sim import SimServer

from .conftest import structured_job

SimFactory = Callable[..., SimServer]
MODEL = "gpt-5-mini"


def _job(write_job: Callable[..., Path], sim: SimServer, rows: int, request: str) -> Job:
    csv = "id,text\n" + "\n".join(f"r{i:04d},text number {i}" for i in range(rows)) + "\n"
    text = structured_job(sim.base_url, max_tokens=60).replace('model = "gpt-4o-mini"', f'model = "{MODEL}"\n{request}')
    return load_job(write_job(text, csv=csv))


def _billed(sim: SimServer) -> float:
    """What the server's token counts cost, tier by tier, at the table's prices."""
    price = default_table().lookup(MODEL)
    assert price is not None
    return sum(price.tier(tier).cost(p, c) for tier, (p, c) in sim.stats()["tier_tokens"].items())


def test_flex_with_refusals_finishes_every_row_and_bills_what_each_tier_served(
    make_sim: SimFactory, write_job: Callable[..., Path]
) -> None:
    sim = make_sim(flex_unavailable_rate=0.2, latency_ms=5, flex_latency_factor=2.0, models=(MODEL,))
    job = _job(write_job, sim, 200, 'service_tier = "flex"\nflex_fallback_after = 2')
    result = asyncio.run(arun(job))
    assert result.by_status == {"ok": 200}
    stats = sim.stats()
    assert stats["flex_unavailable"] > 10  # ~20 % of flex sends were refused
    assert stats["rate_limited"] == 0  # and none of them was taken for the account's rate limit
    frame = pl.read_parquet(job.output_path)
    tiers = frame["service_tier"].value_counts().sort("service_tier")
    fell_back = frame.filter(pl.col("service_tier") == "default")
    assert set(tiers["service_tier"]) == {"flex", "default"}
    assert 0 < fell_back.height < 40  # 0.2² of rows are refused twice in a row
    # each row billed at the price of the tier that served it; the refusals cost nothing
    price = default_table().lookup(MODEL)
    assert price is not None and price.flex is not None
    for row in frame.iter_rows(named=True):
        want = price.tier(row["service_tier"]).cost(row["prompt_tokens"], row["completion_tokens"])
        assert row["cost_usd"] == pytest.approx(want)
    assert result.cost_usd == pytest.approx(_billed(sim))
    assert price.flex.input == pytest.approx(price.input * 0.5)  # flex: Batch API rates
    assert any("flex had no capacity" in n for n in result.notes)
    assert any("service tiers" in n and "flex" in n and "default" in n for n in result.notes)


def test_flex_fallback_never_keeps_every_row_on_flex(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(flex_unavailable_rate=0.3, latency_ms=2, models=(MODEL,))
    job = _job(write_job, sim, 60, 'service_tier = "flex"\nflex_fallback = "never"')
    result = asyncio.run(arun(job))
    assert result.by_status == {"ok": 60}
    assert (pl.read_parquet(job.output_path)["service_tier"] == "flex").all()
    assert sim.stats()["by_tier"] == {"flex": 60}


def test_priority_served_as_default_is_billed_as_default(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(priority_served_as="default", models=(MODEL,))
    job = _job(write_job, sim, 20, 'service_tier = "priority"')
    result = asyncio.run(arun(job))
    frame = pl.read_parquet(job.output_path)
    assert (frame["service_tier"] == "default").all()
    price = default_table().lookup(MODEL)
    assert price is not None and price.priority is not None and price.priority.input > price.input
    assert result.cost_usd == pytest.approx(_billed(sim))
    assert result.cost_usd == pytest.approx(
        sum(price.cost(p, c) for p, c in zip(frame["prompt_tokens"], frame["completion_tokens"], strict=True))
    )


def test_priority_is_billed_at_the_priority_price(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(models=(MODEL,))
    job = _job(write_job, sim, 10, 'service_tier = "priority"')
    result = asyncio.run(arun(job))
    price = default_table().lookup(MODEL)
    assert price is not None and price.priority is not None
    frame = pl.read_parquet(job.output_path)
    assert (frame["service_tier"] == "priority").all()
    assert result.cost_usd == pytest.approx(
        sum(price.priority.cost(p, c) for p, c in zip(frame["prompt_tokens"], frame["completion_tokens"], strict=True))
    )


def test_a_flex_job_gets_the_long_timeout_unless_it_chose_one(write_job: Callable[..., Path]) -> None:
    from batchrun.endpoints import _timeout

    base = structured_job("http://127.0.0.1:9/v1")
    flex = load_job(
        write_job(base.replace("max_tokens = 100", 'max_tokens = 100\nservice_tier = "flex"'), csv="id,text\n")
    )
    assert _timeout(flex).read == 900.0
    chosen = load_job(
        write_job(
            base.replace("max_tokens = 100", 'max_tokens = 100\nservice_tier = "flex"').replace(
                'api_key_env = "BATCHRUN_TEST_KEY"', 'api_key_env = "BATCHRUN_TEST_KEY"\ntimeout_s = 60'
            ),
            csv="id,text\n",
            name="chosen.toml",
        )
    )
    assert _timeout(chosen).read == 60.0


def test_the_plan_prices_flex_and_priority(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    from batchrun.plan import make_plan
    from batchrun.plan_format import format_plan

    sim = make_sim(models=(MODEL,))
    plan = make_plan(_job(write_job, sim, 30, ""))
    flex, priority = plan.cost_tiers["flex"], plan.cost_tiers["priority"]
    assert flex == pytest.approx([plan.cost_batch_expected, plan.cost_batch_worst])  # flex: Batch API rates
    assert priority[0] is not None and plan.cost_online_expected is not None
    assert priority[0] > plan.cost_online_expected
    text = format_plan(plan)
    assert "online, flex" in text and "online, priority" in text


def test_prompt_cache_hits_are_recorded_per_row_and_priced_at_the_cached_rate(
    make_sim: SimFactory, write_job: Callable[..., Path]
) -> None:
    sim = make_sim(prompt_cache=True, latency_ms=20, models=(MODEL,))
    rules = " ".join(f"Rule {i}: label the text by its topic and tone, never by its length." for i in range(120))
    job = _job(write_job, sim, 80, "")
    text = job.source_path.read_text().replace('system = "Label it."', f'system = "Label it. {rules}"')
    if 'system = "Label it.' not in text:  # the structured job has no system prompt: give it one
        text = text.replace("[prompt]\n", f'[prompt]\nsystem = "Label it. {rules}"\n', 1)
    job = load_job(write_job(text, name="cached.toml"))
    result = asyncio.run(arun(job))
    assert result.by_status == {"ok": 80}
    frame = pl.read_parquet(job.output_path)
    assert frame["prompt_tokens"].min() >= 1024  # long enough to be cached
    cached = frame["cached_tokens"].sum()
    assert cached == sim.stats()["cached_tokens"] > 0
    assert (frame["cached_tokens"] % 128 == 0).all()  # hits come in 128-token steps from 1,024
    price = default_table().lookup(MODEL)
    assert price is not None
    for row in frame.iter_rows(named=True):
        want = price.cost(row["prompt_tokens"], row["completion_tokens"], cached_tokens=row["cached_tokens"])
        assert row["cost_usd"] == pytest.approx(want)
    assert any(n.startswith("prompt cache:") for n in result.notes)
