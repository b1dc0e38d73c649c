"""Peak RSS and wall time of the CLI's 5,000-request ceiling run, one checkout beside another.

    python benchmarks/bench_ceiling_memory.py [--requests 5000] [--repeats 3] [--src CHECKOUT ...]

The ceiling workload of issue 12 (zero latency, no limits, max_tokens 200, prompts of 20–40 words) as a
user runs it: a fresh `python -m batchrun run job.toml -q --no-cache` process per run, the simulator in
its own process on core 0, the client on core 1. Each `--src` (a checkout or worktree, put first on
PYTHONPATH; default: this one) runs `--repeats` times, the checkouts alternating, so noise falls on
all of them alike. Peak RSS is the child's own (wait4's ru_maxrss). Prints whether pandas is
installed: pyarrow imports it, when it can, at its first conversion of Python values (sinks.skip_pandas_probe).
Target (issue 12, point 5): ≤ 200 MB.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from _common import SimProcess, texts

CLIENT_CORE, SERVER_CORE = 1, 0


def pin(core: int) -> None:
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {core})


def one(src: Path, base_url: str, prompts: list[str]) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of one CLI run of the ceiling job, batchrun imported from `src`."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pl.DataFrame({"text": prompts}).write_parquet(tmp / "input.parquet")
        (tmp / "job.toml").write_text(
            'name = "ceiling"\n[input]\npath = "input.parquet"\n[prompt]\ntemplate = "{{ text }}"\n'
            '[request]\nmodel = "gpt-4o-mini"\nmax_tokens = 200\n'
            f'[endpoint]\nbase_url = "{base_url}"\napi_key_env = "BATCHRUN_BENCH_KEY"\n'
            '[output]\npath = "out.parquet"\n'
        )
        env = {**os.environ, "BATCHRUN_BENCH_KEY": "sk-bench", "BATCHRUN_NO_LOCAL_MODEL": "1", "PYTHONPATH": str(src)}
        t = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchrun", "run", "job.toml", "-q", "--no-cache"],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: pin(CLIENT_CORE),
        )
        assert proc.stderr is not None
        err = proc.stderr.read()  # read before waiting: a full pipe would block the child
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"batchrun run ({src}) exited {proc.returncode}:\n{err.decode()[-3000:]}")
        return usage.ru_maxrss / 1024, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--src", action="append", type=Path, help="a checkout to import batchrun from (repeatable)")
    args = ap.parse_args()
    sources = args.src or [Path(__file__).resolve().parent.parent]
    print(f"python {sys.version.split()[0]}; pandas installed: {importlib.util.find_spec('pandas') is not None}")
    prompts = texts(args.requests, words=(20, 40), seed=3)
    seen: dict[Path, list[tuple[float, float]]] = {src: [] for src in sources}
    with SimProcess(seed=7, latency_ms=0) as sim:
        if len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(sim.proc.pid, {SERVER_CORE})
        for _ in range(args.repeats):
            for src in sources:
                rss, wall = one(src, sim.base_url, prompts)
                seen[src].append((rss, wall))
                print(f"{src}: peak {rss:6.1f} MB   wall {wall:5.2f} s", flush=True)
    for src, runs in seen.items():
        peaks = sorted(r for r, _ in runs)
        walls = sorted(w for _, w in runs)
        print(
            f"{src}: peak RSS {peaks[0]:.1f}–{peaks[-1]:.1f} MB, wall {walls[0]:.2f}–{walls[-1]:.2f} s "
            f"over {len(runs)} runs  (target ≤ 200 MB)"
        )


if __name__ == "__main__":
    main()
