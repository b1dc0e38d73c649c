"""Limit utilization, and wrong limits, against the simulator on loopback.

    python benchmarks/bench_limits.py [--requests 3000]

Server: RPM 6,000, TPM 600,000, latency 300 ms ± 30 %. Each request is charged ~400 tokens
(prompt ~200 + max_tokens 200), so TPM binds. The least wall time the limits allow is
(total tokens charged − one minute's TPM) / TPM, the bucket starting full. Scenarios:
  right   — the job states the real limits
  10x     — the job states 10× the real limits
  none    — the job states no limits
Reports wall / minimum and the share of requests 429'd (targets: ≤ 1.02 and ≤ 0.5 % for right;
≤ 1.10 and ≤ 1 % for wrong limits), and the simulator's peak TPM in any 60 s window.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from _common import SimProcess, make_job, texts

from batchrun import arun as run_async

RPM, TPM = 6_000, 600_000


def scenario(sim: SimProcess, tmp: Path, rows: list[str], label: str, rpm: int | None, tpm: int | None) -> dict:
    sim.reset()
    job = make_job(tmp, sim.base_url, rows, max_tokens=200, rpm=rpm, tpm=tpm, max_in_flight=512, name=label)
    result = asyncio.run(run_async(job))
    stats = sim.stats()
    charged = stats["charged_tokens"]
    minimum = max(charged - TPM, 0) / TPM * 60
    return {
        "label": label,
        "ok": result.by_status.get("ok", 0),
        "wall": result.wall_seconds,
        "minimum": minimum,
        "ratio": result.wall_seconds / minimum if minimum else float("nan"),
        "429": stats["rate_limited"],
        "429_pct": 100 * stats["rate_limited"] / len(rows),
        "peak_tpm": stats["peak_tpm_60s"],
        "peak_rpm": stats["peak_rpm_60s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--only", choices=["right", "10x", "none"])
    args = ap.parse_args()
    rows = texts(args.requests)
    scenarios = [("right", RPM, TPM), ("10x", 10 * RPM, 10 * TPM), ("none", None, None)]
    with tempfile.TemporaryDirectory() as d, SimProcess(rpm=RPM, tpm=TPM, latency_ms=300, jitter=0.3, seed=7) as sim:
        print(
            f"{'scenario':8} {'ok':>6} {'wall s':>8} {'min s':>8} {'ratio':>6} {'429s':>5} {'429 %':>6} "
            f"{'peak TPM/60s':>13} {'peak RPM/60s':>12}"
        )
        for label, rpm, tpm in scenarios:
            if args.only and label != args.only:
                continue
            r = scenario(sim, Path(d), rows, label, rpm, tpm)
            print(
                f"{r['label']:8} {r['ok']:6d} {r['wall']:8.1f} {r['minimum']:8.1f} {r['ratio']:6.3f} {r['429']:5d} "
                f"{r['429_pct']:6.2f} {r['peak_tpm']:13,d} {r['peak_rpm']:12,d}",
                flush=True,
            )


if __name__ == "__main__":
    main()
