"""Ceiling: how fast the engine can go when nothing holds it back, next to a minimal raw client.

    python benchmarks/bench_ceiling.py [--requests 20000] [--concurrency 256]

Simulator in its own process, zero latency, no limits. The same request bodies are sent by
  raw      — a bare aiohttp client: N concurrent POSTs, JSON decode of the reply, nothing else
  sdk      — the openai SDK alone (AsyncOpenAI.post, raw response, JSON decode), 32 concurrent
  batchrun — a whole run: read Parquet, render, count, limiter, openai SDK, parse, write Parquet,
             record each request's run event in the ledger and write the HTML run report
  no-events — the same run with [output] report = false (no run events, no report)
in the same run, one after the other. Reports requests/s, client CPU ms per request, the ratio
batchrun / raw (target ≥ 0.80) and what run events and the report cost (target ≤ 5 % of req/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiohttp
import openai
from _common import SimProcess, make_job, texts

from batchrun import arun as run_async
from batchrun.engine import HTTP_RESPONSE
from batchrun.prompts import Renderer
from batchrun.sources import open_source


async def raw_client(url: str, bodies: list[bytes], concurrency: int) -> None:
    queue = iter(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"content-type": "application/json", "authorization": "Bearer x"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in queue:
                async with session.post(url, data=body, headers=headers) as r:
                    json.loads(await r.read())

        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())


async def sdk_client(base_url: str, bodies: list[dict], concurrency: int) -> None:
    """The same requests through the openai SDK alone (AsyncOpenAI.post, raw response), no engine."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    queue = iter(bodies)

    async def worker() -> None:
        for body in queue:
            r = await client.post("/chat/completions", body=body, cast_to=HTTP_RESPONSE)
            json.loads(r.content)

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    await client.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--sdk-concurrency", type=int, default=32)
    args = ap.parse_args()
    rows = texts(args.requests, words=(20, 40))
    with tempfile.TemporaryDirectory() as d, SimProcess(text_tokens=[5, 10]) as sim:
        tmp = Path(d)
        job = make_job(tmp, sim.base_url, rows, max_tokens=20, max_in_flight=args.concurrency)
        src = open_source(job.input)
        dicts = [r.body for b in src.batches() for r in Renderer(job, src.columns).render(b)]
        bodies = [json.dumps(d).encode() for d in dicts]
        results = {}
        quiet = job.model_copy(update={"output": job.output.model_copy(update={"report": False})})
        for label in ("raw", "sdk", "batchrun", "no-events", "raw", "sdk", "no-events", "batchrun"):
            sim.reset()
            sim_cpu0 = sim.cpu_seconds()
            cpu0, t0 = time.process_time(), time.perf_counter()
            if label == "raw":
                asyncio.run(raw_client(sim.base_url + "/chat/completions", bodies, args.concurrency))
            elif label == "sdk":
                asyncio.run(sdk_client(sim.base_url, dicts, args.sdk_concurrency))
            else:
                # no cache: each pass sends every row (the job's ledger would answer the second one)
                result = asyncio.run(run_async(job if label == "batchrun" else quiet, cache="off"))
                assert result.by_status == {"ok": args.requests}, result.by_status
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            ok = sim.stats()["ok"]
            assert ok == args.requests, ok
            best = results.get(label)
            if best is None or wall < best[0]:
                results[label] = (wall, cpu, sim.cpu_seconds() - sim_cpu0)
        print(f"{'client':9} {'req/s':>8} {'wall s':>7} {'client CPU ms/req':>18} {'server CPU ms/req':>18}")
        for label, (wall, cpu, scpu) in results.items():
            n = args.requests
            print(f"{label:9} {n / wall:8,.0f} {wall:7.2f} {1000 * cpu / n:18.3f} {1000 * scpu / n:18.3f}")
        print(f"batchrun / raw aiohttp throughput: {results['raw'][0] / results['batchrun'][0]:.3f}")
        print(f"batchrun / openai SDK alone:       {results['sdk'][0] / results['batchrun'][0]:.3f}")
        cost = 1 - results["no-events"][0] / results["batchrun"][0]
        print(f"run events + report cost:          {cost:.1%} of requests/s")
        print("(best of 2 each, alternating)")


if __name__ == "__main__":
    main()
