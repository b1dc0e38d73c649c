"""The run report's reading of a run's request events at scale: summed in one pass (now) against a dict
per event (the report before 2026-12-04), each in a fresh child process for its peak RSS.

    python benchmarks/bench_report.py [--events 1000000]

A synthetic ledger in a temporary folder: N request events in commits of 5,000 (as EventLog.write
keeps them: one JSON array per commit), then `events.read_request_totals` against the old
`dict(zip(REQUEST_COLUMNS, event))` per event, sorted by sent_at.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sqlite3, sys, time
from batchrun.events import REQUEST_COLUMNS, read_request_totals
db = sqlite3.connect(sys.argv[1]); way = sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if way == "totals":
    n = read_request_totals(db, 1).requests
else:
    rows = [dict(zip(REQUEST_COLUMNS, e, strict=True))
            for (text,) in db.execute("SELECT events FROM request_events WHERE run_id = 1") for e in json.loads(text)]
    rows.sort(key=lambda e: e["sent_at"])
    n = len(rows)
print(json.dumps({"n": n, "s": time.perf_counter() - t,
                  "mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


def make_ledger(path: Path, n: int) -> None:
    from batchrun.events import SCHEMA

    rng = random.Random(1)
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    t, chunk = 1.7e9, []
    for i in range(n):
        t += 0.001
        ok = rng.random() > 0.02
        chunk.append([t, 300 + rng.random() * 100, 200 if ok else 429, "ok" if ok else "rate_limited", 1,
                      f"{rng.getrandbits(64):016x}", 400, 200, 50, 0, 1, 0.0, 0.0001, None,
                      None if ok else "Rate limit reached"])  # fmt: skip
        if len(chunk) == 5000 or i == n - 1:
            db.execute("INSERT INTO request_events VALUES (1, ?, ?)", (chunk[0][0], json.dumps(chunk)))
            chunk = []
    db.commit()
    db.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ledger.sqlite"
        make_ledger(path, args.events)
        for way in ("dicts", "totals"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), way], capture_output=True, text=True, check=True
            )
            r = json.loads(out.stdout)
            print(f"{way:7} {r['n']:>10,} events  {r['s']:6.2f} s  peak +{r['mb']:5.0f} MB")


if __name__ == "__main__":
    main()
