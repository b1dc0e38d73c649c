"""Token counting speed: batchrun's counter vs raw tiktoken (both of its ways), same texts, same run.

    python benchmarks/bench_tokens.py [--rows 1000000] [--repeat 3]

Prints tokens/s for both and the ratio (target ≥ 0.9). Each side is timed `repeat` times,
alternating, and the best of each is compared, since this machine is noisy.
"""

from __future__ import annotations

import argparse
import time

from _common import texts

from batchrun.tokens import TokenCounter, get_encoding


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = texts(args.rows, words=(8, 40))
    counter = TokenCounter("gpt-4o-mini")
    enc = get_encoding("o200k_base")
    best_raw = best_batch = best_ours = float("inf")
    total = 0
    for _ in range(args.repeat):
        t = time.perf_counter()
        raw = [enc.encode_ordinary(x) for x in rows]
        best_raw = min(best_raw, time.perf_counter() - t)
        total = sum(len(x) for x in raw)
        del raw
        t = time.perf_counter()
        enc.encode_ordinary_batch(rows)
        best_batch = min(best_batch, time.perf_counter() - t)
        t = time.perf_counter()
        ours = counter.count_texts(rows)
        best_ours = min(best_ours, time.perf_counter() - t)
        assert sum(ours) == total
    print(f"rows {args.rows:,}  tokens {total:,}")
    print(f"raw tiktoken encode_ordinary_batch: {total / best_batch:,.0f} tokens/s ({best_batch:.2f} s)")
    print(f"raw tiktoken encode_ordinary loop : {total / best_raw:,.0f} tokens/s ({best_raw:.2f} s)")
    print(f"batchrun TokenCounter.count_texts : {total / best_ours:,.0f} tokens/s ({best_ours:.2f} s)")
    print(f"ratio batchrun / fastest raw: {min(best_raw, best_batch) / best_ours:.3f}")


if __name__ == "__main__":
    main()
