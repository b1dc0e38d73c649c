"""Batch API mode at scale: building shards and collecting results for 1,000,000 rows.

    python benchmarks/bench_batch.py [--rows 1000000]

Targets: ≥ 50,000 rows/s each way, peak RSS ≤ 1 GB.

Each phase runs in a fresh child process (so each peak RSS is its own), on the same
machine and input, with no server in the loop (the phases are pure client work):

  build    input → render → count tokens → fingerprint → ledger check → JSONL shards
           (50,000 lines / 200 MB / enqueued-token limit each), recorded in the ledger
  collect  result files (written by the parent in the Batch API's output format, shuffled
           like the real ones) → parse → validate against the schema → ledger
  write    ledger → typed Parquet output in input order (the last step of a batch run)

The shards also go once through the simulator's validator to check they are well-formed.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from _common import texts


def open_job(tmp: Path):  # -> BatchJob
    """The BatchJob a `batchrun run` of the job builds (the same context and table parts)."""
    import openai

    from batchrun.batch_job import BatchJob
    from batchrun.context import Stopper, TableParts
    from batchrun.endpoints import Endpoint
    from batchrun.jobs import load_job
    from batchrun.ledger import Ledger
    from batchrun.lifecycle import RunOptions, build_context
    from batchrun.sources import open_source

    job = load_job(tmp / "batch.toml")
    # no call reaches this client: the phases measured here are local work
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused", max_retries=0)
    endpoint = Endpoint(lambda: client, "http://127.0.0.1:9/v1", job.request.model)
    ledger = Ledger(job.ledger_file, job=job.name, max_output_tokens=job.request.max_output_tokens)
    ctx = build_context(job, endpoint, ledger, RunOptions(), Stopper(say=lambda _m: None))
    return BatchJob(ctx, TableParts.build(ctx, open_source(job.input)))


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(phase: str, tmp: Path) -> None:
    base = peak_rss_mb()
    bj = open_job(tmp)
    t = time.perf_counter()
    if phase == "build":
        bj.run = bj.book.start_run(bj.job_key)
        bj.book.update_run(bj.run.id, round=1, sharding=1)
        shards = bj.build_shards(1)
        bj.book.update_run(bj.run.id, sharding=0)
        rows = sum(s.lines for s in bj.book.shards(bj.run.id))
        extra = {"shards": shards}
    elif phase == "collect":
        from batchrun.batch_api import BatchInfo

        bj.run = bj.book.active_run(bj.job_key)
        rows = 0
        for shard in bj.book.shards(bj.run.id):
            out = tmp / f"{shard.filename}.out"
            info = BatchInfo(id=f"batch_{shard.number}", status="completed", total=shard.lines)
            bj._ingest(shard, info, [out], [])
            rows += shard.lines
        extra = {}
    else:
        bj.run = bj.book.active_run(bj.job_key)
        tally = bj.write_output()
        rows = tally.rows
        extra = {"by_status": tally.by_status}
    wall = time.perf_counter() - t
    bj.ledger.close()
    print(
        json.dumps(
            {
                "phase": phase,
                "rows": rows,
                "wall_s": round(wall, 2),
                "rows_per_s": round(rows / wall),
                "peak_rss_mb": round(peak_rss_mb()),
                "rss_at_start_mb": round(base),
                **extra,
            }
        )
    )


def fake_results(tmp: Path) -> int:
    """Write each shard's output file as the Batch API would (one completion per line, shuffled)."""
    rng = random.Random(7)
    n = 0
    for shard in sorted((tmp / "batch.out.parquet.shards").glob("*.jsonl")):
        lines = []
        with shard.open("rb") as f:
            for raw in f:
                cid = json.loads(raw)["custom_id"]
                body = {
                    "id": "chatcmpl-x",
                    "object": "chat.completion",
                    "model": "gpt-4o-mini-2024-07-18",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": json.dumps({"label": rng.choice("abc")})},
                        }
                    ],
                    "usage": {"prompt_tokens": 190, "completion_tokens": 6, "total_tokens": 196},
                }
                lines.append(
                    json.dumps(
                        {
                            "id": f"batch_req_{n}",
                            "custom_id": cid,
                            "response": {"status_code": 200, "request_id": f"req_{n}", "body": body},
                            "error": None,
                        }
                    )
                )
                n += 1
        rng.shuffle(lines)
        (tmp / f"{shard.name}.out").write_text("\n".join(lines) + "\n")
    return n


def validate_with_simulator(tmp: Path) -> str:
    """Every shard through the simulator's own Batch API validation (format, ids, one model, limits)."""
    from batchrun.sim.batches import BatchRec, BatchStore, FileRec
    from batchrun.sim.server import Simulator

    sim = Simulator()
    store = BatchStore(sim)
    bad = 0
    shards = sorted((tmp / "batch.out.parquet.shards").glob("*.jsonl"))
    for i, path in enumerate(shards):
        store.files[f"f{i}"] = FileRec(f"f{i}", path.name, "batch", path.stat().st_size, 0, path)
        rec = BatchRec(f"b{i}", "/v1/chat/completions", f"f{i}", "24h", None, 0, 0.0)
        store._validate(rec)
        bad += rec.status != "in_progress"
    store.close()
    return f"{len(shards)} shards validated by the simulator, {bad} rejected"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--child")
    ap.add_argument("--tmp")
    ap.add_argument("--keep", help="build the files in this folder and keep them (to profile a phase with --child)")
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.tmp))
        return
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as d:
        tmp = Path(args.keep or d)
        tmp.mkdir(parents=True, exist_ok=True)
        # short reviews (~35 tokens each); the children load the job from its file
        pl.DataFrame({"text": texts(args.rows, words=(20, 40))}).write_parquet(tmp / "batch.parquet")
        (tmp / "batch.toml").write_text(JOB_TOML)
        results = []
        for phase in ("build", "collect", "write"):
            if phase == "collect":
                t = time.perf_counter()
                n = fake_results(tmp)
                print(f"(wrote {n:,} result lines in {time.perf_counter() - t:.1f} s, not measured)", file=sys.stderr)
            out = subprocess.run(
                [sys.executable, __file__, "--child", phase, "--tmp", str(tmp)],
                capture_output=True,
                text=True,
                check=True,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]))
            if phase == "build":
                print(validate_with_simulator(tmp))
        df = pl.read_parquet(tmp / "batch.out.parquet", columns=["status"])
        print(f"output rows {df.height:,}, statuses {df['status'].value_counts().to_dicts()}")


JOB_TOML = """
name = "batch"
mode = "batch"
[input]
path = "batch.parquet"
[prompt]
template = "{{ text }}"
[request]
model = "gpt-4o-mini"
max_tokens = 20
[output_schema]
name = "label"
schema = {type = "object", properties = {label = {type = "string", enum = ["a", "b", "c"]}}}
[endpoint]
base_url = "http://127.0.0.1:9/v1"
api_key_env = "BATCHRUN_BENCH_KEY"
[output]
path = "batch.out.parquet"
[batch]
enqueued_token_limit = 1000000000
"""


if __name__ == "__main__":
    main()
