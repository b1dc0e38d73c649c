"""batchrun next to its peers on the issue's workloads, against one simulator, in one run.

    python benchmarks/bench_peers.py [--cookbook PATH] [--oaib-python PATH] [--only ceiling,tpm,faults]
                                     [--scale 1.0]

Tools, each run as its own process (so its CPU is what `getrusage(RUSAGE_CHILDREN)` says it used):
  batchrun  `batchrun run job.toml -q` (reads Parquet, writes the typed Parquet, the ledger, the report)
  cookbook  the OpenAI cookbook's `examples/api_request_parallel_processor.py` (MIT; not in this
            repository): `--cookbook PATH`, else fetched from GitHub into a temporary folder; skipped
            with a message when neither works. Run by peers/cookbook_runner.py, which patches only its
            https-only URL match and its per-request `tiktoken.get_encoding` (offline).
  oaib      `--oaib-python` (a virtualenv with `pip install oaib`); skipped without it.
The simulator is pinned to core 0 and every client to core 1 (as the issue measured), on 2+ cores.

Workloads (max_tokens 200, the same prompts for every tool; 20-40 words unless said):
  ceiling  5,000 requests, no limits, zero latency: wall, requests/s, CPU ms per request
  tpm      3,000 requests (~200-token prompts) at RPM 6,000 / TPM 600,000, 300 ms ± 30 %: wall / the least the limits allow
           ((tokens charged − one minute's TPM) / TPM, the bucket starting full) and the 429s
  faults   2,000 requests, 5 % HTTP 500 + 2 % connection resets, 50 ms, no limits
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl
from _common import SimProcess, texts

PEERS = Path(__file__).parent / "peers"
COOKBOOK_URL = (
    "https://raw.githubusercontent.com/openai/openai-cookbook/main/examples/api_request_parallel_processor.py"
)
UNLIMITED = 1_000_000_000  # what "no limits" is for the tools that need numbers
WORKLOADS: dict[str, dict[str, Any]] = {
    "ceiling": {"requests": 5000, "words": (20, 40), "sim": {"latency_ms": 0}, "rpm": None, "tpm": None},
    "tpm": {
        "requests": 3000,
        "words": (150, 190),  # ~200 prompt tokens + 200 max_tokens charged: TPM binds for ~60 s
        "sim": {"rpm": 6000, "tpm": 600_000, "latency_ms": 300, "jitter": 0.3},
        "rpm": 6000,
        "tpm": 600_000,
    },
    "faults": {
        "requests": 2000,
        "words": (20, 40),
        "sim": {"latency_ms": 50, "error_500_rate": 0.05, "reset_rate": 0.02},
        "rpm": None,
        "tpm": None,
    },
}
MAX_TOKENS = 200
CLIENT_CORE, SERVER_CORE = 1, 0


def pin(core: int) -> None:
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {core})


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + sys) and stdout of one client process, pinned to its core."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, preexec_fn=lambda: pin(CLIENT_CORE), timeout=1800
    )
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in (0, 6):  # batchrun's 6: some rows failed (the faults workload may leave some)
        raise RuntimeError(f"{cmd[:3]} exited {out.returncode}:\n{out.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.stdout


def run_batchrun(tmp: Path, base_url: str, prompts: list[str], w: dict[str, Any]) -> dict[str, Any]:
    pl.DataFrame({"text": prompts}).write_parquet(tmp / "input.parquet")
    limits = "".join(f"{k} = {w[k]}\n" for k in ("rpm", "tpm") if w[k])
    (tmp / "job.toml").write_text(
        f'name = "peers"\n[input]\npath = "input.parquet"\n[prompt]\ntemplate = "{{{{ text }}}}"\n'
        f'[request]\nmodel = "gpt-4o-mini"\nmax_tokens = {MAX_TOKENS}\n'
        f'[endpoint]\nbase_url = "{base_url}"\napi_key_env = "BATCHRUN_BENCH_KEY"\n'
        f'[limits]\n{limits}[output]\npath = "out.parquet"\n'
    )
    env = {**os.environ, "BATCHRUN_BENCH_KEY": "sk-bench", "BATCHRUN_NO_LOCAL_MODEL": "1"}
    started = time.time()
    wall, cpu, _ = timed([sys.executable, "-m", "batchrun", "run", "job.toml", "-q", "--no-cache"], tmp, env)
    status = pl.read_parquet(tmp / "out.parquet", columns=["status"])["status"]
    ok = int((status == "ok").sum())
    return {"wall": wall, "cpu": cpu, "ok": ok, "failed": len(prompts) - ok, "phases": phases(tmp, started, wall)}


def phases(tmp: Path, started: float, wall: float) -> str:
    """Where a batchrun process's wall time went, from its ledger's request events: start-up before the
    first request, first to last request sent, the last replies, and the end (output, report, exit)."""
    from batchrun.events import read_request_totals
    from batchrun.jobs import load_job

    job = load_job(tmp / "job.toml")
    with sqlite3.connect(job.ledger_file) as db:
        run_id = db.execute("SELECT MAX(id) FROM runs").fetchone()[0]
        q = read_request_totals(db, run_id)
    if not q.requests:
        return "no requests"
    first, last, done = min(q.sent), max(q.sent), max(q.used)
    return (
        f"start-up {first - started:.2f} s, first to last send {last - first:.2f} s, "
        f"last replies {done - last:.2f} s, output/report/exit {started + wall - done:.2f} s"
    )


def run_cookbook(script: Path, tmp: Path, base_url: str, prompts: list[str], w: dict[str, Any]) -> dict[str, Any]:
    with (tmp / "requests.jsonl").open("w") as f:
        for i, text in enumerate(prompts):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": MAX_TOKENS}
            f.write(json.dumps({**body, "metadata": {"row": i}}) + "\n")
    cmd = [sys.executable, str(PEERS / "cookbook_runner.py"), str(script), "requests.jsonl", "results.jsonl",
           f"{base_url}/chat/completions", str(w["rpm"] or UNLIMITED), str(w["tpm"] or UNLIMITED), "5"]  # fmt: skip
    wall, cpu, out = timed(cmd, tmp)
    return {"wall": wall, "cpu": cpu, **json.loads(out.strip().splitlines()[-1])}


def run_oaib(python: str, tmp: Path, base_url: str, prompts: list[str], w: dict[str, Any]) -> dict[str, Any]:
    (tmp / "prompts.json").write_text(json.dumps(prompts))
    cmd = [python, str(PEERS / "oaib_runner.py"), "prompts.json", base_url, str(w["rpm"] or UNLIMITED),
           str(w["tpm"] or UNLIMITED), "64", str(MAX_TOKENS)]  # fmt: skip
    wall, cpu, out = timed(cmd, tmp)
    return {"wall": wall, "cpu": cpu, **json.loads(out.strip().splitlines()[-1])}


def find_cookbook(path: str | None, into: Path) -> tuple[Path | None, str]:
    if path:
        return Path(path), path
    target = into / "api_request_parallel_processor.py"
    try:
        with urllib.request.urlopen(COOKBOOK_URL, timeout=15) as r:
            target.write_bytes(r.read())
        return target, COOKBOOK_URL
    except OSError as exc:
        return None, f"skipped: could not fetch {COOKBOOK_URL} ({exc}); pass --cookbook PATH"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cookbook", help="path to api_request_parallel_processor.py (else fetched from GitHub)")
    ap.add_argument("--oaib-python", help="an interpreter whose environment has oaib installed")
    ap.add_argument("--only", default="ceiling,tpm,faults")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every workload's request count")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as d:
        root = Path(d)
        cookbook, where = find_cookbook(args.cookbook, root)
        print(f"cookbook: {where}")
        print(f"oaib: {args.oaib_python or 'skipped: pass --oaib-python'}")
        tools: list[tuple[str, Any]] = [("batchrun", run_batchrun)]
        if cookbook is not None:
            tools.append(("cookbook", lambda *a: run_cookbook(cookbook, *a)))
        if args.oaib_python:
            tools.append(("oaib", lambda *a: run_oaib(args.oaib_python, *a)))
        for name in args.only.split(","):
            w = WORKLOADS[name]
            n = max(1, int(w["requests"] * args.scale))
            prompts = texts(n, words=w["words"], seed=3)
            print(f"\n== {name}: {n:,} requests, simulator {w['sim']}, limits rpm={w['rpm']} tpm={w['tpm']}")
            print(f"{'tool':9} {'wall s':>7} {'req/s':>7} {'CPU ms/req':>10} {'ok':>6} {'failed':>6} {'429s':>5}"
                  f" {'wall/least':>10} {'server saw':>10}")  # fmt: skip
            for tool, fn in tools:
                # a fresh simulator per tool and workload: nothing one tool did (its 429 history,
                # open connections) reaches the next; server and client each on their own core
                with SimProcess(seed=7, **w["sim"]) as sim:
                    if len(os.sched_getaffinity(0)) > 1:
                        os.sched_setaffinity(sim.proc.pid, {SERVER_CORE})
                    tmp = root / f"{name}-{tool}"
                    tmp.mkdir()
                    r = fn(tmp, sim.base_url, prompts, w)
                    st = sim.stats()
                least = ""
                floor = max(st["charged_tokens"] - w["tpm"], 0) / w["tpm"] * 60 if w["tpm"] else 0.0
                if floor:  # 0 when the whole run fits in the first minute's bucket (a small --scale)
                    least = f"{r['wall'] / floor:10.3f}"
                print(f"{tool:9} {r['wall']:7.2f} {n / r['wall']:7.0f} {1000 * r['cpu'] / n:10.2f} {r['ok']:6d} "
                      f"{r['failed']:6d} {st['rate_limited']:5d} {least:>10} {st['requests']:10d}", flush=True)  # fmt: skip
                if "phases" in r:
                    print(f"{'':9} {r['phases']}" + (f"; the least the limits allow {floor:.2f} s" if floor else ""))


if __name__ == "__main__":
    main()
