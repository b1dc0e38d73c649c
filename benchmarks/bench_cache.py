"""Prompt caching: what cache-aware dispatch saves on rows that share long instruction prefixes.

    python benchmarks/bench_cache.py [--rows 2000] [--prefixes 4] [--prefix-tokens 1500]

A job of N rows whose system prompt is one of K instruction blocks of ~1,500 tokens (the row's own
`shop` column picks it; rows in shuffled order) plus a varied row part, against the simulator's prompt
cache with OpenAI's documented rules (≥ 1,024 tokens, 128-token steps, routed by the first 256 tokens
and prompt_cache_key, and ~15 requests a minute per machine before requests overflow to others —
modelled as a random one of 512 machines, each with its own cache). Runs, each on a fresh simulator:

* cache-aware: dispatch ordered by prefix within the window, prompt_cache_key spread per prefix;
* keys, shuffled order: the keys without the ordering;
* ordered, no keys: the ordering without prompt_cache_key (overflow decides);
* shuffled, no keys: neither (what a tool unaware of the cache gets);
* cache off: the simulator without a prompt cache (the price without caching).

Prints each run's cached tokens, the cached share of the cacheable prefix tokens (every row's prefix
steps), its cost, and the plan's forecast of that cost (the plan runs first, on the same job).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

from _common import SimProcess, texts

from batchrun import arun, make_plan
from batchrun.jobs import parse_job
from batchrun.prefixes import cacheable
from batchrun.pricing import default_table

MODEL = "gpt-5-mini"
REPLY_TOKENS = 40
"""The simulator's replies are this long (text_tokens), and the job says so (expected_output_tokens), so
the plan's whole bill can be held against the run's."""
RULE = "Rule: label the review by topic and tone, never by its length or its language. "


def job_for(tmp: Path, base_url: str, args: argparse.Namespace, name: str, order: bool, keys: bool):  # type: ignore[no-untyped-def]
    import polars as pl

    rng = random.Random(7)
    shops = [i % args.prefixes for i in range(args.rows)]
    rng.shuffle(shops)
    pl.DataFrame({"shop": shops, "text": texts(args.rows, (20, 40))}).write_parquet(tmp / f"{name}.parquet")
    # one instruction block per shop, each ~prefix_tokens long and different from its first words
    system = (
        "".join(
            f"{{% {'if' if i == 0 else 'elif'} shop == {i} %}}Shop {i}: you label product reviews. "
            + RULE * max(1, args.prefix_tokens // 17)
            for i in range(args.prefixes)
        )
        + "{% endif %}"
    )
    return parse_job(
        {
            "name": name,
            "input": {"path": f"{name}.parquet"},
            "prompt": {"system": system, "template": "{{ text }}"},
            "request": {
                "model": MODEL,
                "max_tokens": 100,
                "expected_output_tokens": REPLY_TOKENS,
                "cache_order": order,
                "prompt_cache_key": "auto" if keys else "off",
            },
            "endpoint": {"base_url": base_url, "api_key_env": "BATCHRUN_BENCH_KEY"},
            "limits": {"max_in_flight": 64, "rpm": 3000},
            "output": {"path": f"{name}.out.parquet"},
        },
        tmp / f"{name}.toml",
    )


RUNS = (
    ("cache-aware (ordered, keys)", True, True, True),
    ("keys, shuffled order", False, True, True),
    ("ordered, no keys", True, False, True),
    ("shuffled, no keys", False, False, True),
    ("cache off", False, False, False),
)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--prefixes", type=int, default=4)
    ap.add_argument("--prefix-tokens", type=int, default=1500)
    args = ap.parse_args()
    os.environ.setdefault("BATCHRUN_BENCH_KEY", "x")
    import polars as pl

    print(f"{args.rows:,} rows, {args.prefixes} instruction prefixes of ~{args.prefix_tokens:,} tokens, shuffled")
    price = default_table().lookup(MODEL)
    assert price is not None
    print(
        "| run | wall s | cached tokens (plan's forecast) | cached share of cacheable prefix | keys | overflowed "
        "| cost $ (plan's forecast) | prompt cost $ (plan's forecast) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, order, keys, cache in RUNS:
        sim_config = {
            "prompt_cache": cache, "cache_route_rpm": 15, "latency_ms": 50, "models": [MODEL], "rpm": 3000,
            "text_tokens": [REPLY_TOKENS, REPLY_TOKENS],
        }  # fmt: skip
        with tempfile.TemporaryDirectory() as d, SimProcess(**sim_config) as sim:
            tmp = Path(d)
            job = job_for(tmp, sim.base_url, args, "bench_cache", order, keys)
            plan = make_plan(job)
            started = time.perf_counter()
            result = await arun(job, cache="off")
            wall = time.perf_counter() - started
            stats = sim.stats()
            frame = pl.read_parquet(job.output_path)
            cached = int(frame["cached_tokens"].fill_null(0).sum())
            # what the cache could serve: every row's shared prefix in whole steps, but the first of each
            prefix = cacheable(int(frame["cached_tokens"].fill_null(0).max() or 0))
            possible = prefix * (len(frame) - args.prefixes) if cache else 0
            # the whole bill, and its prompt side (what caching changes)
            prompt_cost = result.cost_usd - int(frame["completion_tokens"].sum()) * price.output / 1e6
            planned = plan.cost_online_expected or 0.0
            planned_prompt = planned - plan.output_tokens_expected * price.output / 1e6
            if not cache:
                print(f"| {label} | {wall:.1f} | — | — | — | — | {result.cost_usd:.4f} | {prompt_cost:.4f} |")
                continue
            print(
                f"| {label} | {wall:.1f} | {cached:,} ({plan.cached_tokens_expected:,}) | {cached / max(possible, 1):.1%} "
                f"| {stats.get('cache_keys', 0):,} | {stats.get('cache_overflowed', 0):,} | {result.cost_usd:.4f} "
                f"({planned:.4f}, {(result.cost_usd - planned) / planned:+.1%}) "
                f"| {prompt_cost:.4f} ({planned_prompt:.4f}, {(prompt_cost - planned_prompt) / planned_prompt:+.1%}) |"
            )


if __name__ == "__main__":
    asyncio.run(main())
