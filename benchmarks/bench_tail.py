"""A slow tail with no known limits: 30 % of replies take 2 s, the rest 20 ms, max_in_flight 256.

    python benchmarks/bench_tail.py [--rows 1000] [--src CHECKOUT ...]

The in-flight target once counted the slow replies against itself (throughput × least latency, while
the slow ones held the slots), so a 1,000-row run took ~8× the least the tail allows. Each checkout
runs the same job against its own in-process simulator in a fresh process, in one invocation; the
least time is (slow rows × 2 s) / 256 plus the fast rows' share.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOB = """
[input]
path = "in.csv"
[prompt]
template = "{{{{ text }}}}"
[request]
model = "gpt-4o-mini"
max_tokens = 50
[limits]
max_in_flight = 256
{limits}
[endpoint]
{endpoint}
base_url = "{base_url}"
api_key_env = "BENCH_KEY"
"""


def child(rows: int, folder: str) -> None:
    import polars as pl

    import batchrun
    from batchrun.jobs import load_job
    from batchrun.sim import SimConfig, SimServer

    sim = SimServer(SimConfig().updated({"latency_ms": 20, "slow_rate": 0.3, "slow_seconds": 2.0, "seed": 3})).start()
    d = Path(folder)
    pl.DataFrame({"text": [f"row {i}" for i in range(rows)]}).write_csv(d / "in.csv")
    (d / "job.toml").write_text(JOB.format(base_url=sim.base_url, limits="", endpoint=""))
    os.environ["BENCH_KEY"] = "x"
    t = time.perf_counter()
    result = batchrun.run(load_job(d / "job.toml"), cache="off")
    wall = time.perf_counter() - t
    slow = sim.stats()["faults"].get("slow", 0)
    sim.stop()
    print(f"RESULT {wall:.2f} {slow} {result.rows}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--src", action="append", default=[])
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.rows, args.child)
        return
    for src in args.src or [str(Path(__file__).resolve().parent.parent)]:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [sys.executable, __file__, "--rows", str(args.rows), "--child", tmp],
                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src},
            )  # fmt: skip
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            raise SystemExit(proc.stdout + proc.stderr)
        wall, slow, rows = line[-1].split()[1:]
        least = int(slow) * 2.0 / 256
        print(f"{src}: {rows} rows, {slow} slow   wall {float(wall):5.1f} s   least ≈ {least:.1f} s", flush=True)


if __name__ == "__main__":
    main()
