"""Prompt-cache-aware runs: prefix groups, dispatch order, prompt_cache_key spreading with warm-up, the
plan's forecast, and the flex recommendation — units with a fake clock, and one run through the
simulator's cache (OpenAI's rules, with ~15 requests a minute per machine)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from batchrun import arun
from batchrun.jobs import load_job
from batchrun.plan import make_plan
from batchrun.plan_format import format_plan
from batchrun.prefixes import CacheKeys, Forecast, cacheable, key_template, order
from batchrun.sim import SimServer

MODEL = "gpt-5-mini"
RULE = "Rule: label the review by topic and tone, never by its length or its language. "


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cacheable_prefixes_start_at_1024_tokens_and_grow_in_128_token_steps() -> None:
    assert [cacheable(n) for n in (1023, 1024, 1151, 1152, 1500)] == [0, 1024, 1024, 1152, 1408]


def test_order_puts_each_group_together_in_order_of_first_appearance() -> None:
    items = ["a1", "b1", "x", "a2", "c1", "b2", "a3"]
    assert order(items, lambda s: None if s == "x" else s[0]) == ["a1", "a2", "a3", "b1", "b2", "x", "c1"]
    assert order(["a1", "a2"], lambda s: s[0]) == ["a1", "a2"]  # one group: untouched


def test_cache_keys_warm_one_request_first_then_take_fifteen_a_minute_then_spread() -> None:
    clock = Clock()
    keys = CacheKeys("{job}-{group}-{index}", "j", warming=1, clock=clock)
    assert keys.pick("g") == 0  # a cold key's first request goes alone ...
    keys.groups["g"][0].uses.append(clock())
    assert keys.pick("g") is None  # ... the next waits for its answer (one cold key at a time here)

    async def scenario() -> list[str]:
        waiting = asyncio.create_task(keys.take("g"))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        keys.answered("g", 0)  # warm: the waiting request goes on the same key
        got = [(await waiting)[0]]
        got += [(await keys.take("g"))[0] for _ in range(13)]
        got.append((await keys.take("g"))[0])  # key 0 has had 15 this minute: a second key opens
        return got

    got = asyncio.run(scenario())
    assert got[:14] == ["j-g-0"] * 14 and got[14] == "j-g-1"
    clock.now = 61.0  # a minute on, key 0 takes requests again
    assert keys.pick("g") == 0
    assert key_template(None, openai_like=True) == "{job}-{group}-{index}"
    assert key_template(None, openai_like=False) is None and key_template("off", True) is None


def test_forecast_counts_the_shared_prefix_for_all_but_the_first_request_of_each_key() -> None:
    f = Forecast()
    head = "x" * 6000
    for i in range(40):
        f.add(
            "m",
            {"messages": [{"role": "system", "content": head}, {"role": "user", "content": f"row {i}"}]},
            1600,
            True,
        )
    f.add("m", {"messages": [{"role": "user", "content": "short"}]}, 20, True)  # too short to be cached
    count = lambda _m, text: len(text) // 4  # noqa: E731 — a stand-in tokenizer: 4 characters a token
    shared = cacheable((len("<|system|>") + 6000 + len("<|user|>row ")) // 4)
    assert f.summary() == (1, 40)
    assert f.cached(count, rate_rpm=None, spread=True)["m"] == ((40 - 3) * shared, (40 - 3) * shared)
    assert f.cached(count, rate_rpm=None, spread=False)["m"][0] == 15 * shared  # one machine: ~15 a minute


def _cache_job(write_job: Callable[..., Path], base_url: str, rows: int, **request: str) -> Path:
    rng = random.Random(3)
    shops = [i % 2 for i in range(rows)]
    rng.shuffle(shops)
    csv = "id,shop,text\n" + "\n".join(f"r{i:04d},{s},review number {i} says it is fine" for i, s in enumerate(shops))
    system = "".join(
        f"{{% {'if' if i == 0 else 'elif'} shop == {i} %}}Shop {i}: you label reviews. " + RULE * 80 for i in range(2)
    )
    extra = "".join(f'{k} = "{v}"\n' for k, v in request.items())
    text = f"""
name = "cachejob"
[input]
path = "input.csv"
id_column = "id"
[prompt]
system = \"\"\"{system}{{% endif %}}\"\"\"
template = "{{{{ text }}}}"
[request]
model = "{MODEL}"
max_tokens = 200
{extra}
[endpoint]
base_url = "{base_url}"
[limits]
max_in_flight = 16
rpm = 3000
[output]
path = "out.parquet"
"""
    return write_job(text, csv=csv + "\n")


def test_a_cache_aware_run_gets_the_hits_the_plan_forecasts_and_keys_stay_out_of_the_fingerprint(
    make_sim: Callable[..., SimServer], write_job: Callable[..., Path]
) -> None:
    sim = make_sim(prompt_cache=True, cache_route_rpm=15, latency_ms=10, models=(MODEL,))
    job = load_job(_cache_job(write_job, sim.base_url, 120, prompt_cache_key="auto"))
    plan = make_plan(job)
    assert plan.cache_groups == 2 and plan.cache_requests == 120
    assert "prompt cache" in format_plan(plan)
    result = asyncio.run(arun(job))
    assert result.by_status == {"ok": 120}
    frame = pl.read_parquet(job.output_path)
    assert frame["id"].to_list() == [f"r{i:04d}" for i in range(120)]  # output in input order
    cached = int(frame["cached_tokens"].sum())
    step = int(frame["cached_tokens"].max())
    assert cached >= 0.85 * step * 118  # ≥ 85 % of what a cache could serve (all but one per prefix)
    # the forecast counts one miss per prefix; a request that arrives while its prefix is still being
    # processed misses too, and on a loaded machine (the suite on two workers) a few more do
    assert cached == pytest.approx(plan.cached_tokens_expected, rel=0.10)
    stats = sim.stats()
    assert stats["cache_overflowed"] == 0 and stats["cache_keys"] >= 2
    page = job.report_path.read_text()  # the run report says what the cache served, as the Parquet does
    data = json.loads(page.split('id="report-data">', 1)[1].split("</script>", 1)[0])
    assert data["cached_tokens"] == cached and "Prompt cache:" in page
    # the key is in the body, not the fingerprint: the same job without keys is answered from the ledger
    again = load_job(_cache_job(write_job, sim.base_url, 120, prompt_cache_key="off"))
    assert asyncio.run(arun(again)).cached_rows == 120
    assert sim.stats()["ok"] == stats["ok"]


def test_the_plan_recommends_flex_where_the_model_offers_it(write_job: Callable[..., Path]) -> None:
    path = _cache_job(write_job, "http://127.0.0.1:9/v1", 40)
    plan = make_plan(load_job(path))
    assert plan.recommended_tier == "flex" and plan.recommended_mode == "online"
    assert 'service_tier = "flex"' in plan.recommendation and "save nothing more" in plan.recommendation
    other = load_job(write_job(path.read_text().replace(MODEL, "gpt-4o-mini"), name="mini.toml"))
    plan = make_plan(other)
    assert plan.recommended_tier is None and "flex" not in plan.cost_tiers  # gpt-4o-mini has no flex
