"""A peer tool on the same workloads, same simulator, same run: LiteLLM's batch_completion.

    python benchmarks/bench_peer.py --peer-python /path/to/venv-with-litellm/bin/python [--requests 3000]

LiteLLM is not a batchrun dependency: install it in its own virtualenv
(`python3 -m venv /tmp/peer && /tmp/peer/bin/pip install litellm`) and pass that interpreter.
Workload: the utilization benchmark's (RPM 6,000, TPM 600,000, 300 ms ± 30 %, ~400 tokens charged
per request). Both tools send the same prompts; reports wall time, rows done, 429s, peak TPM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
from pathlib import Path

from _common import SimProcess, make_job, texts

from batchrun import arun as run_async

RPM, TPM = 6_000, 600_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer-python", required=True)
    ap.add_argument("--requests", type=int, default=3000)
    args = ap.parse_args()
    rows = texts(args.requests)
    peer = Path(__file__).parent / "peers" / "litellm_batch.py"
    print(f"{'tool':22} {'wall s':>7} {'ok':>6} {'failed':>6} {'429s':>6} {'peak TPM/60s':>13}")
    with tempfile.TemporaryDirectory() as d, SimProcess(rpm=RPM, tpm=TPM, latency_ms=300, jitter=0.3, seed=7) as sim:
        prompts = Path(d) / "prompts.json"
        prompts.write_text(json.dumps(rows))
        sim.reset()
        out = subprocess.run(
            [args.peer_python, str(peer), str(prompts), sim.base_url, "200"], capture_output=True, text=True, check=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        s = sim.stats()
        print(
            f"{'litellm batch_completion':22} {r['wall_s']:7.1f} {r['ok']:6d} {r['errors']:6d} {s['rate_limited']:6d} "
            f"{s['peak_tpm_60s']:13,d}",
            flush=True,
        )
        sim.reset()
        job = make_job(Path(d), sim.base_url, rows, max_tokens=200, rpm=RPM, tpm=TPM, max_in_flight=512)
        res = asyncio.run(run_async(job))
        s = sim.stats()
        failed = sum(n for k, n in res.by_status.items() if k != "ok")
        print(
            f"{'batchrun':22} {res.wall_seconds:7.1f} {res.by_status.get('ok', 0):6d} {failed:6d} "
            f"{s['rate_limited']:6d} {s['peak_tpm_60s']:13,d}"
        )


if __name__ == "__main__":
    main()
