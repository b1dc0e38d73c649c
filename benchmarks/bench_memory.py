"""Memory: peak RSS of a whole run for 100k vs 1M input rows (target ratio ≤ 1.3).

    python benchmarks/bench_memory.py [--small 100000] [--large 1000000]

Each size runs in a fresh child process (so each peak is its own) against one simulator
process (zero latency, no limits). The input is a Parquet file of short texts; the output
is the usual typed Parquet with a structured-output column.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SimProcess, make_job, texts


def child(rows: int, base_url: str, tmp: Path) -> None:
    from batchrun import arun as run_async
    from batchrun.jobs import load_job

    # the input was written by the parent: this process holds only what the run itself needs
    job = load_job(tmp / f"mem{rows}.toml")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    result = asyncio.run(run_async(job))
    print(
        json.dumps(
            {
                "rows": rows,
                "ok": result.by_status.get("ok", 0),
                "wall_s": time.perf_counter() - t,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_before_run_mb": base / 1024,
            }
        )
    )


def _write_job_file(job: object, path: Path, base_url: str) -> None:
    name = path.stem
    path.write_text(f"""
name = "{name}"
[input]
path = "{name}.parquet"
[prompt]
template = "{{{{ text }}}}"
[request]
model = "gpt-4o-mini"
max_tokens = 20
[output_schema]
name = "label"
schema = {{ type = "object", properties = {{ label = {{ type = "string", enum = ["a", "b", "c"] }} }} }}
[endpoint]
base_url = "{base_url}"
api_key_env = "BATCHRUN_BENCH_KEY"
[output]
path = "{name}.out.parquet"
""")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--large", type=int, default=1_000_000)
    ap.add_argument("--child", type=int)
    ap.add_argument("--base-url")
    ap.add_argument("--tmp")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.base_url, Path(args.tmp))
        return
    results = {}
    with tempfile.TemporaryDirectory() as d, SimProcess(text_tokens=[3, 6]) as sim:
        for rows in (args.small, args.large):
            job = make_job(
                Path(d), sim.base_url, texts(rows, words=(8, 20)), max_tokens=20, schema=True, name=f"mem{rows}"
            )
            _write_job_file(job, Path(d) / f"mem{rows}.toml", sim.base_url)
            sim.reset()
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(rows), "--base-url", sim.base_url, "--tmp", d],
                capture_output=True,
                text=True,
                check=True,
            )
            results[rows] = json.loads(out.stdout.strip().splitlines()[-1])
            print(results[rows], flush=True)
    small, large = results[args.small], results[args.large]
    print(
        f"peak RSS {args.small:,} rows: {small['peak_rss_mb']:.0f} MB; {args.large:,} rows: {large['peak_rss_mb']:.0f} MB; "
        f"ratio {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}"
    )


if __name__ == "__main__":
    main()
