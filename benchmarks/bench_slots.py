"""A server that queues (issue 17): k slots, 100 ms a request, no rate-limit headers, no 429 — what a
llama.cpp server or one GPU is. max_in_flight 256.

    python benchmarks/bench_slots.py [--rows 400] [--slots 2] [--warmup-ms 0] [--src CHECKOUT ...]

--warmup-ms adds that much to each of the server's first k answers (a server warming up; or, as the client
sees it, its own event loop held up while the first replies come in).

The least time is rows × 0.1 s / k; what matters besides is how many requests wait in the server's
queue (each one's latency grows with it, towards the client timeout) — the simulator's peak queue, over
the run and over its second half (once the controller has settled).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_tail import JOB  # the same job, with the rpm and timeout of this trial


def child(rows: int, slots: int, rpm: int, warmup_ms: float, folder: str) -> None:
    import polars as pl

    import batchrun
    from batchrun.jobs import load_job
    from batchrun.sim import SimConfig, SimServer

    config = {"latency_ms": 100, "slots": slots, "rate_headers": False, "seed": 3, "warmup_ms": warmup_ms,
              "warmup_requests": slots}  # fmt: skip
    sim = SimServer(SimConfig().updated(config)).start()
    d = Path(folder)
    pl.DataFrame({"text": [f"row {i}" for i in range(rows)]}).write_csv(d / "in.csv")
    limits = f"rpm = {rpm}" if rpm else ""
    (d / "job.toml").write_text(JOB.format(base_url=sim.base_url, limits=limits, endpoint="timeout_s = 30"))
    os.environ["BENCH_KEY"] = "x"
    t = time.perf_counter()
    result = batchrun.run(load_job(d / "job.toml"), cache="off")
    wall = time.perf_counter() - t
    stats = sim.stats()
    sim.stop()
    print(f"RESULT {wall:.2f} {stats['queue_peak']} {stats['queue_late_peak']} {stats['requests']} {result.rows} "
          f"{result.by_status.get('ok', 0)}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--rpm", type=int, default=0, help="the job's own [limits] rpm (the demo job says 500)")
    ap.add_argument("--warmup-ms", type=float, default=0.0)
    ap.add_argument("--src", action="append", default=[])
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.rows, args.slots, args.rpm, args.warmup_ms, args.child)
        return
    for src in args.src or [str(Path(__file__).resolve().parent.parent)]:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [sys.executable, __file__, "--rows", str(args.rows), "--slots", str(args.slots), "--rpm", str(args.rpm),
                 "--warmup-ms", str(args.warmup_ms), "--child", tmp],
                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src},
            )  # fmt: skip
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            raise SystemExit(proc.stdout + proc.stderr)
        wall, peak, late, sent, rows, ok = line[-1].split()[1:]
        least = int(rows) * 0.1 / args.slots + args.warmup_ms / 1000
        print(
            f"{src}: {rows} rows ({ok} ok), {sent} requests   wall {float(wall):5.1f} s   least {least:.1f} s   "
            f"server queue peak {peak}, in the second half {late}",
            flush=True,
        )


if __name__ == "__main__":
    main()
