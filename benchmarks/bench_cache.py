"""Prompt caching: what a shared instruction prefix saves, through the simulator's prompt cache.

    python benchmarks/bench_cache.py [--rows 2000] [--prefix-tokens 1500]

A job of N rows sharing one ~1,500-token system prompt (plus a varied row part), run twice against
one simulator process (reset between): with the simulator's prompt cache (OpenAI's rules: ≥ 1,024
tokens, 128-token steps, routed by the first 256 tokens) and without. Reports the cached share of
the shared prefix's tokens, the run's cost, and the ideal (every request after the first hitting
every cacheable prefix step). What it does not measure yet: cache-aware ordering (one prefix here, so
order cannot matter) and prompt_cache_key spreading — both not built.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from _common import SimProcess, texts

from batchrun import arun
from batchrun.jobs import parse_job
from batchrun.pricing import default_table

MODEL = "gpt-5-mini"


def job_for(tmp: Path, base_url: str, rows: int, prefix_tokens: int, name: str):  # type: ignore[no-untyped-def]
    import polars as pl

    pl.DataFrame({"text": texts(rows, (20, 40))}).write_parquet(tmp / f"{name}.parquet")
    rule = "Rule: label the review by topic and tone, never by its length or its language. "
    system = "You label product reviews. " + rule * max(1, prefix_tokens // 17)
    return parse_job(
        {
            "name": name,
            "input": {"path": f"{name}.parquet"},
            "prompt": {"system": system, "template": "{{ text }}"},
            "request": {"model": MODEL, "max_tokens": 100},
            "endpoint": {"base_url": base_url, "api_key_env": "BATCHRUN_BENCH_KEY"},
            "limits": {"max_in_flight": 64},
            "output": {"path": f"{name}.out.parquet"},
        },
        tmp / f"{name}.toml",
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--prefix-tokens", type=int, default=1500)
    args = ap.parse_args()
    os.environ.setdefault("BATCHRUN_BENCH_KEY", "x")
    import polars as pl

    price = default_table().lookup(MODEL)
    assert price is not None and price.cached_input is not None
    print(
        "| prompt cache | rows | prompt tokens | cached tokens | cached share of the shared prefix | cost $ | ideal $ |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    ideal_step = 0
    for cache in (True, False):
        with tempfile.TemporaryDirectory() as d, SimProcess(prompt_cache=cache, latency_ms=50, models=[MODEL]) as sim:
            tmp = Path(d)
            job = job_for(tmp, sim.base_url, args.rows, args.prefix_tokens, "cache" if cache else "nocache")
            result = await arun(job, cache="off")
            frame = pl.read_parquet(job.output_path)
            prompt = int(frame["prompt_tokens"].sum())
            cached = int(frame["cached_tokens"].fill_null(0).sum())
            # the shared prefix's cacheable part: the longest hit any row got (all rows share one prefix,
            # so every row after the first could have had it); the ideal is every one of them hitting it
            step = int(frame["cached_tokens"].fill_null(0).max() or 0) or ideal_step
            ideal_step = step
            shared = step * (len(frame) - 1)
            ideal = sum(
                price.cost(p, c, cached_tokens=(0 if i == 0 else step))
                for i, (p, c) in enumerate(zip(frame["prompt_tokens"], frame["completion_tokens"], strict=True))
            )
            print(
                f"| {'on' if cache else 'off'} | {sum(result.by_status.values()):,} | {prompt:,} | {cached:,} | "
                f"{cached / max(shared, 1):.1%} | {result.cost_usd:.4f} | {ideal:.4f} |"
            )


if __name__ == "__main__":
    asyncio.run(main())
