"""Memory of a whole `batchrun run` at two input sizes: the nightly rerun, where the ledger already
holds an answer for every row, so the run reads and checks the input, renders and fingerprints every
row, looks each up in the ledger and writes the typed Parquet output — everything but HTTP, which has
its own figures (bench_ceiling, bench_limits).

    python benchmarks/bench_run_memory.py [--small 1000000] [--large 3000000] [--src CHECKOUT ...]

The parent writes the CSVs and, in a child, seeds each ledger (one answer per row, recorded through
`Ledger.record` under the fingerprint a run computes); each run is then a fresh `python -m batchrun run`
process whose peak RSS is read from getrusage. Target (issue 11): peak(large) / peak(small) ≤ 1.2.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_plan_memory import JOB as PLAN_JOB
from bench_plan_memory import write_csv

JOB = 'name = "mem{rows}"\n' + PLAN_JOB  # the plan benchmark's job, named per size (each its own ledger)


def seed(job_path: str) -> None:
    """Record an answer for every row, as a finished earlier run would have."""
    from batchrun.jobs import load_job
    from batchrun.ledger import Ledger, endpoint_key
    from batchrun.prompts import Renderer
    from batchrun.sinks import RowResult
    from batchrun.sources import open_source

    job = load_job(job_path)
    source = open_source(job.input)
    renderer = Renderer(job, source.columns)
    key, model = endpoint_key(job)
    fingerprinter = renderer.fingerprinter(key, model)
    ledger = Ledger(job.ledger_file, job=job.name, max_output_tokens=job.request.max_output_tokens)
    for batch in source.batches(50_000):
        _, ids, texts = renderer.texts(batch)
        for rid, text in zip(ids, texts, strict=True):
            result = RowResult(row=-1, row_id=rid, status="ok", attempts=1, prompt_tokens=20, completion_tokens=3,
                               cost_usd=0.0, output="positive", raw_text="positive")  # fmt: skip
            ledger.record(fingerprinter.of(text), result, key)
        ledger.flush()
    ledger.close()


def run(job_path: str) -> None:
    """`batchrun run JOB -q` in this process, then its peak RSS (the seeding child's is not mixed in)."""
    from batchrun.cli import main as cli

    t = time.perf_counter()
    code = 0
    try:
        cli(["run", job_path, "-q"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RESULT {code} {peak:.1f} {time.perf_counter() - t:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=1_000_000)
    ap.add_argument("--large", type=int, default=3_000_000)
    ap.add_argument("--seed")
    ap.add_argument("--run")
    ap.add_argument("--src", action="append", default=[], help="checkouts to compare (PYTHONPATH); default: this one")
    args = ap.parse_args()
    if args.seed:
        seed(args.seed)
        return
    if args.run:
        run(args.run)
        return
    here = str(Path(__file__).resolve().parent.parent)
    env_base = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}  # the simulator: nothing is sent
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for rows in (args.small, args.large):
            write_csv(d / f"in{rows}.csv", rows)
            (d / f"mem{rows}.toml").write_text(JOB.format(rows=rows))
        for src in args.src or [here]:
            env = {**env_base, "PYTHONPATH": src}
            peaks = []
            for rows in (args.small, args.large):
                job = d / f"mem{rows}.toml"
                for f in (d / ".batchrun").glob(f"mem{rows}.*"):
                    f.unlink()
                subprocess.run([sys.executable, __file__, "--seed", str(job)], check=True, env=env)
                proc = subprocess.run(
                    [sys.executable, __file__, "--run", str(job)], capture_output=True, text=True, env=env
                )
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if not line or line[-1].split()[1] != "0":
                    raise SystemExit(proc.stdout + proc.stderr)
                _, _, peak, wall = line[-1].split()
                peaks.append(float(peak))
                print(
                    f"{src}: {rows:>10,} rows  run peak RSS {float(peak):6.0f} MB  wall {float(wall):6.1f} s",
                    flush=True,
                )
            print(f"{src}: ratio large/small peak RSS: {peaks[1] / peaks[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
