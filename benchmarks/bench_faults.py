"""Faults cost only the retries: the same run with and without 5 % HTTP 500s and 2 % connection resets.

    python benchmarks/bench_faults.py [--requests 2000] [--latency-ms 50] [--repeats 2]

Simulator in its own process (50 ms replies, no limits); the fault-free run and the faulty run alternate,
each on a fresh simulator, `--repeats` times, and the best of each is compared. Target (issue 12): the
faulty run within 1.2× of the fault-free one (the issue measured batchrun at 14.0 s, the cookbook at 8.1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from _common import SimProcess, make_job, texts

from batchrun import arun as run_async


def one(rows: list[str], latency_ms: float, faults: bool) -> tuple[float, int, dict[str, int]]:
    config = {"latency_ms": latency_ms, "seed": 5}
    if faults:
        config |= {"error_500_rate": 0.05, "reset_rate": 0.02}
    with SimProcess(**config) as sim, tempfile.TemporaryDirectory() as tmp:
        job = make_job(Path(tmp), sim.base_url, rows, max_tokens=50, name="faults")
        t = time.perf_counter()
        result = asyncio.run(run_async(job, cache="off"))
        wall = time.perf_counter() - t
        return wall, result.retries, result.by_status


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ["BATCHRUN_BENCH_KEY"] = "sk-bench"
    rows = texts(args.requests, words=(20, 40))
    best: dict[bool, float] = {}
    for _ in range(args.repeats):
        for faults in (False, True):
            wall, retries, statuses = one(rows, args.latency_ms, faults)
            best[faults] = min(best.get(faults, wall), wall)
            label = "faults " if faults else "clean  "
            print(f"{label} wall {wall:6.2f} s   retries {retries:4d}   {statuses}", flush=True)
    print(f"faulty / clean (best of {args.repeats}): {best[True] / best[False]:.2f}  (target ≤ 1.2)")


if __name__ == "__main__":
    main()
