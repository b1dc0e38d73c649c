"""The ledger's cost: run time with vs without it, and how long resuming a 99 %-done 1M-row job takes.

    python benchmarks/bench_ledger.py [--requests 20000] [--resume-rows 1000000]

overhead — the ceiling workload (zero latency, no limits) with the ledger off and on (a fresh
           ledger each time), alternating, best of 2 each. Target: ≤ 10 % slower.
resume   — a 1M-row job whose ledger already holds answers for 99 % of its rows (written directly,
           with the same fingerprints a run computes), then `run`: read, render, fingerprint, look up,
           send the missing 1 %, rebuild the 1M-row Parquet. Target: seconds, not a rescan.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from _common import SimProcess, make_job, texts

from batchrun import arun as run_async
from batchrun.ledger import Ledger
from batchrun.prompts import Renderer
from batchrun.sinks import RowResult
from batchrun.sources import open_source


def overhead(sim: SimProcess, tmp: Path, n: int) -> None:
    job = make_job(tmp, sim.base_url, texts(n, words=(20, 40)), max_tokens=20, schema=True, name="ovh")
    best: dict[str, float] = {}
    for mode in ("off", "use", "off", "use"):
        job.ledger_file.unlink(missing_ok=True)
        sim.reset()
        t = time.perf_counter()
        result = asyncio.run(run_async(job, cache=mode))
        wall = time.perf_counter() - t
        assert result.by_status.get("ok") == n, result.by_status
        best[mode] = min(best.get(mode, wall), wall)
    print(
        f"overhead: {n:,} requests  without ledger {best['off']:.2f} s ({n / best['off']:,.0f} req/s)  "
        f"with ledger {best['use']:.2f} s ({n / best['use']:,.0f} req/s)  "
        f"ratio {best['use'] / best['off']:.3f}",
        flush=True,
    )


def resume(sim: SimProcess, tmp: Path, rows: int) -> None:
    job = make_job(tmp, sim.base_url, texts(rows, words=(8, 20)), max_tokens=20, schema=True, name="res")
    source = open_source(job.input)
    renderer = Renderer(job, source.columns)
    ledger = Ledger(job.ledger_file, job=job.name)
    t = time.perf_counter()
    kept = 0
    fingerprinter = renderer.fingerprinter(sim.base_url, job.request.model)
    for batch in source.batches(50_000):
        for req in renderer.render(batch):
            if req.row % 100 == 99:
                continue  # 1 % not done yet
            fp = fingerprinter.of(req.body["messages"][-1]["content"])
            ledger.record(
                fp,
                RowResult(
                    row=req.row,
                    row_id=req.row_id,
                    status="ok",
                    attempts=1,
                    prompt_tokens=req.prompt_tokens,
                    completion_tokens=8,
                    cost_usd=1e-6,
                    latency_ms=1.0,
                    finish_reason="stop",
                    model="gpt-4o-mini",
                    request_id="req_x",
                    output={"label": "a"},
                ),
                sim.base_url,
            )
            kept += 1
        ledger.flush()
    ledger.close()
    print(f"resume: prepared a ledger with {kept:,} of {rows:,} answers in {time.perf_counter() - t:.1f} s", flush=True)
    sim.reset()
    t = time.perf_counter()
    result = asyncio.run(run_async(job))
    wall = time.perf_counter() - t
    assert result.by_status.get("ok") == rows, result.by_status
    print(
        f"resume: {rows:,} rows, {result.cached_rows:,} from the ledger, {result.requests_sent:,} sent, "
        f"{wall:.1f} s wall ({rows / wall:,.0f} rows/s); simulator saw {sim.stats()['requests']:,} requests",
        flush=True,
    )
    print(json.dumps({"resume_wall_s": wall, "rows": rows}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--resume-rows", type=int, default=1_000_000)
    ap.add_argument("--only", choices=["overhead", "resume"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, SimProcess(text_tokens=[3, 6]) as sim:
        if args.only in (None, "overhead"):
            overhead(sim, Path(d), args.requests)
        if args.only in (None, "resume"):
            resume(sim, Path(d), args.resume_rows)


if __name__ == "__main__":
    main()
