"""Ray: the cluster-wide limiter's utilization, scaling where the client binds, and the cost of a lease.

    python benchmarks/bench_ray.py [--part utilization|scaling|lease|all] [--requests 3000]

utilization  3,000 requests (~377 tokens charged each), server TPM 600,000 (binding), RPM 6,000,
             latency 300 ms ± 30 %: the local engine, then `run --ray` with 4 actors, one after the
             other against one simulator (reset between). wall / minimum (target ≤ 1.03) and 429s.
scaling      zero latency, no limits (the client binds): the local engine, then 1 and 2 actors;
             requests/s and CPU ms per request (the whole machine's busy CPU less the simulator's).
lease        the limiter actor's cost: 2,000 lease calls from one worker, one after another (round
             trip), and from 4 workers at once (the actor's throughput).
The simulator runs in its own process; Ray is a local instance (num_cpus=2).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from _common import SimProcess, make_job, texts

from batchrun import arun


def machine_busy_seconds() -> float:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def with_ray(job, actors: int, per_actor: int):  # type: ignore[no-untyped-def]
    return job.model_copy(
        update={"ray": job.ray.model_copy(update={"actors": actors, "max_in_flight_per_actor": per_actor})}
    )


async def one_run(job, sim: SimProcess, *, ray: bool) -> dict[str, float]:  # type: ignore[no-untyped-def]
    sim.reset()
    busy0, sim0, t0 = machine_busy_seconds(), sim.cpu_seconds(), time.monotonic()
    result = await arun(job, cache="off", ray=ray)
    wall = time.monotonic() - t0
    client_cpu = (machine_busy_seconds() - busy0) - (sim.cpu_seconds() - sim0)
    stats = sim.stats()
    return {
        "ok": result.by_status.get("ok", 0),
        "wall": wall,
        "send_wall": wall - (result.startup_seconds or 0.0),
        "minimum": result.minimum_seconds or 0.0,
        "rate_limited": stats["rate_limited"],
        "requests": stats["requests"],
        "cpu_ms": 1000 * client_cpu / max(stats["requests"], 1),
        "startup": result.startup_seconds or 0.0,
        "notes": "; ".join(n for n in result.notes if n.startswith("Ray")),  # type: ignore[dict-item]
    }


async def utilization(tmp: Path, n: int) -> None:
    with SimProcess(rpm=6000, tpm=600_000, latency_ms=300, jitter=0.3) as sim:
        job = make_job(tmp, sim.base_url, texts(n), max_tokens=200, rpm=6000, tpm=600_000, name="util")
        print("| engine | rows ok | wall s | start-up s | minimum s | (wall − start-up) / minimum | 429s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, j, ray in (("local", job, False), ("Ray, 4 actors × 64", with_ray(job, 4, 64), True)):
            r = await one_run(j, sim, ray=ray)
            print(
                f"| {label} | {r['ok']:,} | {r['wall']:.1f} | {r['startup']:.1f} | {r['minimum']:.1f} | "
                f"**{r['send_wall'] / r['minimum']:.3f}** | {r['rate_limited']} |"
            )
            if r["notes"]:
                print(f"  ({r['notes']})")


async def scaling(tmp: Path, n: int) -> None:
    with SimProcess() as sim:
        job = make_job(tmp, sim.base_url, texts(n, (20, 30)), max_tokens=20, name="scale")
        print("| engine | requests | wall s | sending s | requests/s (sending) | client CPU ms / request |")
        print("|---|---:|---:|---:|---:|---:|")
        runs = (("local", job, False), ("Ray, 1 actor", with_ray(job, 1, 64), True))
        runs += (("Ray, 2 actors", with_ray(job, 2, 64), True),)
        for label, j, ray in runs:
            r = await one_run(j, sim, ray=ray)
            print(
                f"| {label} | {r['requests']:,} | {r['wall']:.1f} | {r['send_wall']:.1f} | "
                f"{r['requests'] / r['send_wall']:,.0f} | {r['cpu_ms']:.2f} |"
            )


async def lease_cost(calls: int = 2000) -> None:
    import ray

    from batchrun.cluster import connect, limiter_actor
    from batchrun.jobs import parse_job

    connect(None)
    job = parse_job(
        {"input": {"path": "x.csv"}, "prompt": {"template": "{{ t }}"}, "request": {"model": "gpt-4o-mini", "max_tokens": 10},
         "limits": {"rpm": 10**9, "tpm": 10**12}},
        Path("bench.toml"),
    )  # fmt: skip
    lim = limiter_actor(ray, job, None)
    await lim.join.remote("bench", None, 0.0)
    # each call hands back the last lease whole (as a worker that sent nothing would): the buckets
    # stay full, so what is timed is the call, never a wait for the rate
    t0 = time.perf_counter()
    back = (0.0, 0.0)
    for _ in range(calls):
        got = await lim.lease.remote("w0", 100, back, None)
        back = (got.requests, got.tokens)
    one = (time.perf_counter() - t0) / calls

    async def worker(w: str) -> None:
        back = (0.0, 0.0)
        for _ in range(calls // 4):
            got = await lim.lease.remote(w, 100, back, None)
            back = (got.requests, got.tokens)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(f"w{i}") for i in range(4)))
    many = (time.perf_counter() - t0) / calls
    ray.kill(lim)
    print("| leases | one worker: round trip ms | 4 workers at once: ms per lease (actor throughput) |")
    print("|---:|---:|---:|")
    print(f"| {calls:,} | {1000 * one:.2f} | {1000 * many:.2f} ({1 / many:,.0f} leases/s) |")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=["utilization", "scaling", "lease", "all"])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--scaling-requests", type=int, default=6000)
    args = ap.parse_args()
    os.environ.setdefault("BATCHRUN_BENCH_KEY", "x")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, namespace="batchrun", log_to_driver=False)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.part in ("utilization", "all"):
            await utilization(tmp, args.requests)
        if args.part in ("scaling", "all"):
            await scaling(tmp, args.scaling_requests)
        if args.part in ("lease", "all"):
            await lease_cost()


if __name__ == "__main__":
    asyncio.run(main())
