"""What a kill -9 costs: rows paid twice per kill, as `batchrun run` is killed at random points and resumed.

    python benchmarks/bench_kill.py --in-flight 256 16 --kills 20
    python benchmarks/bench_kill.py --src /path/to/old/checkout ...   # the same against another version

Each kill loses the requests in flight (the server answered or will answer them; nobody receives the
reply) and whatever was received but not yet committed to the ledger. The second part is batchrun's
to make small: the commit window. The simulator (own process) counts bodies it answered more than once.
Replies take 0.5 s ± 50 %, and --slow-rate of them take --slow-seconds more, so the run has lulls
(few replies arriving) — the case a commit-on-arrival window gets wrong.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SimProcess, texts

JOB = """
name = "kill"

[input]
path = "input.parquet"
id_column = "id"

[prompt]
template = "{{{{ text }}}}"

[request]
model = "gpt-4o-mini"
max_tokens = 100

[limits]
max_in_flight = {in_flight}

[endpoint]
base_url = "{base_url}"
api_key_env = "BATCHRUN_BENCH_KEY"
"""


def trial(src: Path | None, in_flight: int, args: argparse.Namespace) -> dict[str, float]:
    rows, kills, seed = args.rows, args.kills, args.seed
    rng = random.Random(seed)
    env = {**os.environ, "BATCHRUN_BENCH_KEY": "sk-bench"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    sim_config = {"latency_ms": 500, "jitter": 0.5, "slow_rate": args.slow_rate, "slow_seconds": args.slow_seconds}
    with SimProcess(**sim_config, seed=seed) as sim, tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pl.DataFrame({"id": [f"r{i}" for i in range(rows)], "text": texts(rows, (20, 40), seed)}).write_parquet(
            d / "input.parquet"
        )
        (d / "kill.toml").write_text(JOB.format(in_flight=in_flight, base_url=sim.base_url))
        cmd = [sys.executable, "-m", "batchrun", "run", str(d / "kill.toml"), "-q"]
        done = 0
        for _ in range(kills):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(*args.segment))
            if proc.poll() is not None:
                break  # finished before this kill
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done += 1
        final = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert final.returncode in (0, 6), final.stderr
        st = sim.stats()
        out = pl.read_parquet(d / "kill.parquet")
        assert out.height == rows and out["id"].to_list() == [f"r{i}" for i in range(rows)]
    resent = st["duplicate_sends"]
    return {"kills": done, "resent": resent, "per_kill": resent / max(done, 1), "answered": st["ok"]}


def lull_trial(src: Path | None, fast: int, wait_s: float, seed: int) -> tuple[int, int]:
    """`fast` rows answered at once, then 20 rows that take 30 s: a lull. Kill -9 `wait_s` after the fast
    answers were all sent back; (answered by the server, kept in the ledger)."""
    import sqlite3

    env = {**os.environ, "BATCHRUN_BENCH_KEY": "sk-bench"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    # replies spread over ~0.6 s (300 ms ± 90 %), then the lull: the last of them land just before it
    with (
        SimProcess(latency_ms=300, jitter=0.9, slow_seconds=30, seed=seed) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        d = Path(tmp)
        texts_ = [f"fast row {i} seed {seed}" for i in range(fast)] + [f"slow {i} [[sim:slow]]" for i in range(20)]
        pl.DataFrame({"id": [f"r{i}" for i in range(len(texts_))], "text": texts_}).write_parquet(d / "input.parquet")
        (d / "kill.toml").write_text(JOB.format(in_flight=256, base_url=sim.base_url))
        cmd = [sys.executable, "-m", "batchrun", "run", str(d / "kill.toml"), "-q"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while sim.stats()["ok"] < fast and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(wait_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        answered = sim.stats()["ok"]
        kept = 0
        for db_path in d.rglob("*.sqlite"):
            db = sqlite3.connect(db_path)
            try:
                kept += db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            finally:
                db.close()
    return answered, kept


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--in-flight", type=int, nargs="+", default=[256, 16])
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--slow-rate", type=float, default=0.03, help="share of replies that take --slow-seconds more")
    ap.add_argument("--slow-seconds", type=float, default=4.0)
    ap.add_argument("--segment", type=float, nargs=2, default=(1.0, 3.0), help="seconds from start to kill")
    ap.add_argument("--src", type=Path, help="run the CLI from this checkout instead (PYTHONPATH)")
    ap.add_argument("--compare", type=Path, help="a second checkout: both run, alternating, same seeds")
    ap.add_argument("--lull", type=int, default=0, help="instead: this many kill-in-a-lull trials per version")
    ap.add_argument("--lull-wait", type=float, default=0.25, help="seconds between the last fast answer and the kill")
    args = ap.parse_args()
    sides: list[tuple[str, Path | None]] = [("this", args.src)]
    if args.compare:
        sides.append((str(args.compare), args.compare))
    if args.lull:
        print(f"kill -9 {args.lull_wait:g} s into a lull, 100 answers received before it; {args.lull} trials")
        print(f"{'version':<28} {'answered':>9} {'in ledger':>10} {'lost':>6}")
        for trial_no in range(args.lull):
            for label, src in sides:
                answered, kept = lull_trial(src, 100, args.lull_wait, args.seed + trial_no)
                print(f"{label:<28} {answered:>9} {kept:>10} {answered - kept:>6}", flush=True)
        return
    print(f"{'version':<28} {'in flight':>9} {'kills':>6} {'re-sent':>8} {'per kill':>9} {'answered':>9}")
    for n in args.in_flight:
        for label, src in sides:
            r = trial(src, n, args)
            print(
                f"{label:<28} {n:>9} {r['kills']:>6.0f} {r['resent']:>8.0f} {r['per_kill']:>9.1f} {r['answered']:>9.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
