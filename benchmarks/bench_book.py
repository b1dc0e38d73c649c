"""Document jobs: how fast a book is planned, and what checked alignment costs when replies go wrong.

    python benchmarks/bench_book.py [--chapters 20 --paragraphs 400 --chunk-tokens 800]

1. Planning: read a synthetic txt book, cut it into chunks and build (and count) every request.
2. Runs against the simulator in its own process, side by side: a clean book, then the same book
   with 1 % of its paragraphs making the "model" drop an item from any multi-item chunk. Reported:
   requests and prompt tokens of the faulty run relative to the clean one (the price of halving
   down to the bad paragraph instead of padding), and that every paragraph still ends correct.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WORDS, SimProcess

from batchrun import arun as run_async
from batchrun.jobs import load_job
from batchrun.plan import make_plan
from batchrun.sim.content import sim_translate


def write_book(path: Path, chapters: int, paragraphs: int, faulty: float, seed: int = 3) -> int:
    rng = random.Random(seed)
    bad = 0
    with path.open("w", encoding="utf-8") as f:
        for c in range(chapters):
            f.write(f"CHAPTER {c + 1}\n\n")
            for _ in range(paragraphs):
                sentences = [
                    " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))).capitalize() + "."
                    for _ in range(rng.randint(1, 6))
                ]
                text = " ".join(sentences)
                if rng.random() < faulty:
                    text += " [[sim:drop]]"
                    bad += 1
                f.write(text + "\n\n")
    return bad


def job_file(folder: Path, base_url: str, chunk_tokens: int, context: int) -> Path:
    path = folder / "job.toml"
    path.write_text(
        f"""
[input]
path = "book.txt"
[prompt]
system = "Translate into French."
[request]
model = "gpt-4o-mini"
max_tokens = {4 * chunk_tokens}
[endpoint]
base_url = "{base_url}"
api_key_env = "BENCH_KEY"
[limits]
max_in_flight = 64
[document]
chunk_tokens = {chunk_tokens}
context_paragraphs = {context}
[output]
path = "out/book.parquet"
""",
        encoding="utf-8",
    )
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chapters", type=int, default=20)
    ap.add_argument("--paragraphs", type=int, default=400)
    ap.add_argument("--chunk-tokens", type=int, default=800)
    ap.add_argument("--context", type=int, default=3)
    args = ap.parse_args()
    import os

    os.environ["BENCH_KEY"] = "sk-bench"
    with SimProcess(latency_ms=20) as sim, tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for label, faulty in (("clean", 0.0), ("1 % faulty", 0.01)):
            folder = Path(tmp) / label.replace(" ", "_").replace("%", "pct")
            folder.mkdir()
            bad = write_book(folder / "book.txt", args.chapters, args.paragraphs, faulty)
            job = load_job(job_file(folder, sim.base_url, args.chunk_tokens, args.context))
            t0 = time.perf_counter()
            plan = make_plan(job)
            plan_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = asyncio.run(run_async(job))
            wall = time.perf_counter() - t0
            df = result.frame()
            ok = df.filter(df["status"] == "ok")
            right = sum(1 for t, tr in zip(ok["text"], ok["translation"], strict=True) if tr == sim_translate(t))
            rows[label] = (plan, plan_s, result, wall, bad, right)
        clean = rows["clean"][2]
        print(f"book: {args.chapters} chapters × {args.paragraphs} paragraphs, chunk_tokens {args.chunk_tokens}, "
              f"context {args.context}; simulator latency 20 ms")  # fmt: skip
        print(f"{'run':<12}{'plan s':>8}{'para/s plan':>13}{'chunks':>8}{'requests':>10}{'prompt tok':>12}"
              f"{'run s':>8}{'bad paras':>10}{'ok':>7}{'correct':>9}")  # fmt: skip
        for label, (plan, plan_s, result, wall, bad, right) in rows.items():
            print(
                f"{label:<12}{plan_s:>8.2f}{plan.rows / plan_s:>13,.0f}{plan.requests:>8,}{result.requests_sent:>10,}"
                f"{result.prompt_tokens:>12,}{wall:>8.1f}{bad:>10}{result.by_status.get('ok', 0):>7,}{right:>9,}"
            )
        faulty = rows["1 % faulty"][2]
        print(f"faulty / clean: requests {faulty.requests_sent / clean.requests_sent:.2f}×, "
              f"prompt tokens {faulty.prompt_tokens / clean.prompt_tokens:.2f}×")  # fmt: skip
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    main()
