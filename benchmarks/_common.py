"""Shared by the benchmarks: a simulator in its own process, and jobs made on the fly."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl

from batchrun.jobs import Job, parse_job

WORDS = [
    "battery",
    "arrived",
    "broken",
    "great",
    "value",
    "works",
    "perfectly",
    "returned",
    "cheap",
    "sturdy",
    "recommend",
    "quality",
    "price",
    "delivery",
    "colour",
    "fits",
    "comfortable",
    "loud",
    "quiet",
    "support",
    "manual",
    "easy",
    "setup",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimProcess:
    """`batchrun sim` in a subprocess, so the server has its own interpreter (and core)."""

    def __init__(self, **config: Any) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchrun", "sim", "--port", str(self.port), "--config", json.dumps(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("simulator did not start")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/sim/stats", timeout=5) as r:
            return json.loads(r.read())

    def reset(self) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/sim/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=5).read()

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().split(")")[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # requests still sleeping in it (slow-reply trials)
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def texts(n: int, words: tuple[int, int] = (150, 190), seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) for _ in range(n)]


def make_job(
    tmp: Path,
    base_url: str,
    rows: list[str],
    *,
    max_tokens: int,
    rpm: int | None = None,
    tpm: int | None = None,
    max_in_flight: int = 256,
    schema: bool = False,
    name: str = "bench",
) -> Job:
    pl.DataFrame({"text": rows}).write_parquet(tmp / f"{name}.parquet")
    limits: dict[str, Any] = {"max_in_flight": max_in_flight}
    if rpm:
        limits["rpm"] = rpm
    if tpm:
        limits["tpm"] = tpm
    data: dict[str, Any] = {
        "name": name,
        "input": {"path": f"{name}.parquet"},
        "prompt": {"template": "{{ text }}"},
        "request": {"model": "gpt-4o-mini", "max_tokens": max_tokens},
        "endpoint": {"base_url": base_url, "api_key_env": "BATCHRUN_BENCH_KEY"},
        "limits": limits,
        "output": {"path": f"{name}.out.parquet"},
    }
    if schema:
        data["output_schema"] = {
            "name": "label",
            "schema": {"type": "object", "properties": {"label": {"type": "string", "enum": ["a", "b", "c"]}}},
        }
    return parse_job(data, tmp / f"{name}.toml")
