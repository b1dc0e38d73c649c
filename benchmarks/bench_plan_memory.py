"""Memory of `batchrun plan` (and of opening the input, which every run does first): peak RSS at two
input sizes, each in a fresh process.

    python benchmarks/bench_plan_memory.py [--small 1000000] [--large 3000000] [--src CHECKOUT ...]

The input is a CSV of ~100-byte texts with an id column (so the id checks run too), written once by
the parent; the child only plans. Target: peak(large) / peak(small) ≤ 1.2 and ≤ 300 MB at 3M rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import WORDS

JOB = """
[input]
path = "in{rows}.csv"
id_column = "id"

[prompt]
template = "Classify: {{{{ text }}}}"

[request]
model = "gpt-4o-mini"
max_tokens = 20
"""


def child(job: str) -> None:
    from batchrun.jobs import load_job
    from batchrun.plan import make_plan

    t = time.perf_counter()
    plan = make_plan(load_job(job))
    print(
        json.dumps(
            {
                "rows": plan.rows,
                "prompt_tokens": plan.prompt_tokens_total,
                "wall_s": time.perf_counter() - t,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def write_csv(path: Path, rows: int) -> None:
    rng = random.Random(rows)
    with path.open("w", encoding="utf-8") as f:
        f.write("id,text\n")
        for i in range(rows):
            text = " ".join(rng.choice(WORDS) for _ in range(14))[:100]
            f.write(f"id{i:08d},{text}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=1_000_000)
    ap.add_argument("--large", type=int, default=3_000_000)
    ap.add_argument("--child")
    ap.add_argument("--src", action="append", default=[], help="checkouts to compare (PYTHONPATH); default: this one")
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for rows in (args.small, args.large):
            write_csv(d / f"in{rows}.csv", rows)
            (d / f"plan{rows}.toml").write_text(JOB.format(rows=rows))
        for src in args.src or [str(Path(__file__).resolve().parent.parent)]:
            env = {**os.environ, "PYTHONPATH": src}
            results = []
            for rows in (args.small, args.large):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(d / f"plan{rows}.toml")],
                    capture_output=True, text=True, env=env,
                )  # fmt: skip
                if out.returncode:
                    raise SystemExit(out.stderr)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r["file_mb"] = (d / f"in{rows}.csv").stat().st_size / 1e6
                results.append(r)
                print(
                    f"{src}: {r['rows']:>10,} rows  CSV {r['file_mb']:6.0f} MB  peak RSS {r['peak_rss_mb']:6.0f} MB  "
                    f"plan {r['wall_s']:6.1f} s",
                    flush=True,
                )
            ratio = results[1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
            print(f"{src}: ratio large/small peak RSS: {ratio:.2f}", flush=True)


if __name__ == "__main__":
    main()
