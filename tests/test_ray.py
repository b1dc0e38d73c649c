"""`run --ray` and `batchrun.ray.process` on a local Ray instance (num_cpus=2) through the simulator.

Skipped, with a message, where the ray extra is not installed; `.ci/run` installs it and runs these
in their own step (marker `ray`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from batchrun import arun
from batchrun.errors import BudgetExceeded
from batchrun.jobs import Job, load_job
from batchrun.sim import SimServer

from .conftest import REPO, structured_job, wait_for_ok

ray = pytest.importorskip("ray", reason='the ray extra is not installed (pip install "batchrun[ray]")')
pytestmark = pytest.mark.ray

SimFactory = Callable[..., SimServer]
# the columns that differ between any two runs of one job (timing, the server's request ids, the cache)
VOLATILE = ("latency_ms", "request_id", "from_cache", "attempts")


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, namespace="batchrun", log_to_driver=False)
    yield
    ray.shutdown()


def _job(write_job: Callable[..., Path], sim: SimServer, rows: int, *, limits: str = "", ray_keys: str = "") -> Job:
    csv = "id,text\n" + "\n".join(f"r{i:04d},text number {i}" for i in range(rows)) + "\n"
    extra = f"\n[ray]\n{ray_keys}\n" if ray_keys else ""
    return load_job(write_job(structured_job(sim.base_url, max_tokens=60, limits=limits, extra=extra), csv=csv))


def _other_output(job: Job, tmp: Path) -> Job:
    out = job.output.model_copy(update={"path": tmp / "local.parquet", "ledger": tmp / "local.ledger.sqlite"})
    return job.model_copy(update={"output": out})


def _answers(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.drop([c for c in VOLATILE if c in frame.columns])


def test_two_actors_at_a_binding_tpm_limit_match_a_local_run(
    make_sim: SimFactory, write_job: Callable[..., Path], tmp_path: Path
) -> None:
    tpm = 30_000
    sim = make_sim(tpm=tpm, latency_ms=20, jitter=0.5)
    job = _job(write_job, sim, 300, limits=f"tpm = {tpm}", ray_keys="actors = 2\nmax_in_flight_per_actor = 16")
    t0 = time.monotonic()
    result = asyncio.run(arun(job, ray=True))
    wall = time.monotonic() - t0
    stats = sim.stats()
    assert result.by_status == {"ok": 300}
    assert stats["duplicate_sends"] == 0  # every row answered once
    assert stats["rate_limited"] <= 0.005 * stats["requests"]
    # the limit was binding (more than the first minute's bucket), and held: never more admitted by
    # any time than the bucket allows (full at start, refilled at tpm/60 a second)
    assert stats["charged_tokens"] > tpm
    assert stats["charged_tokens"] <= tpm + tpm / 60 * wall
    assert result.limits[1] == tpm
    # the actors' request events reach the driver's ledger: the run report counts every request
    page = job.report_path.read_text()
    figures = json.loads(page.split('id="report-data">', 1)[1].split("</script>", 1)[0])
    assert figures["requests"] == result.requests_sent and figures["outcomes"].get("ok") == 300

    # the same job run here, against a simulator with no limits: the same table, row for row
    plain = make_sim()
    local_job = _other_output(_job(write_job, plain, 300), tmp_path)
    asyncio.run(arun(local_job))
    on_ray = pl.read_parquet(job.output_path)
    here = pl.read_parquet(local_job.output_path)
    assert on_ray.schema == here.schema
    assert _answers(on_ray).equals(_answers(here))


def test_a_budget_stop_holds_across_actors(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    sim = make_sim(latency_ms=30)
    job = _job(write_job, sim, 400, ray_keys="actors = 2\nmax_in_flight_per_actor = 8")
    job = job.model_copy(update={"budget": job.budget.model_copy(update={"max_usd": 0.004})})
    with pytest.raises(BudgetExceeded) as info:
        asyncio.run(arun(job, ray=True, over_budget=True))
    result = info.value.result  # type: ignore[attr-defined]
    assert 0 < result.by_status.get("ok", 0) < 400
    # what the server billed (its token counts at the model's price) stayed under the cap
    billed = sim.stats()["prompt_tokens"] * 0.15e-6 + sim.stats()["completion_tokens"] * 0.6e-6
    assert billed <= 0.004 + 1e-9
    assert result.cost_usd <= 0.004 + 1e-9


def test_a_killed_actor_costs_at_most_its_in_flight_requests(
    make_sim: SimFactory, write_job: Callable[..., Path]
) -> None:
    per_actor = 6
    sim = make_sim(latency_ms=60)
    job = _job(write_job, sim, 240, ray_keys=f"actors = 2\nmax_in_flight_per_actor = {per_actor}")
    killed: list[str] = []

    def kill_one() -> None:
        wait_for_ok(sim, 40, timeout=60)
        for name in ray.util.list_named_actors(all_namespaces=True):
            if name["name"].startswith("batchrun-worker-"):
                ray.kill(ray.get_actor(name["name"], namespace=name["namespace"]), no_restart=True)
                killed.append(name["name"])
                return

    killer = threading.Thread(target=kill_one)
    killer.start()
    result = asyncio.run(arun(job, ray=True))
    killer.join()
    assert killed
    assert result.by_status == {"ok": 240}
    stats = sim.stats()
    assert stats["requests"] - 240 <= per_actor  # sent again: at most what the dead actor had out
    assert stats["duplicate_sends"] <= per_actor
    assert pl.read_parquet(job.output_path)["id"].to_list() == [f"r{i:04d}" for i in range(240)]


def test_resume_after_the_driver_is_killed_resends_nothing_recorded(
    make_sim: SimFactory, write_job: Callable[..., Path]
) -> None:
    sim = make_sim(latency_ms=40)
    path = write_job(
        structured_job(sim.base_url, max_tokens=60, extra="\n[ray]\nactors = 2\nmax_in_flight_per_actor = 4\n"),
        csv="id,text\n" + "\n".join(f"r{i:04d},text number {i}" for i in range(300)) + "\n",
    )
    env = {**os.environ, "BATCHRUN_TEST_KEY": "k", "PYTHONPATH": str(REPO)}
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "batchrun", "run", str(path), "-q", "--ray", address]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_ok(sim, 60, timeout=90, proc=proc)
    time.sleep(0.5)  # past a ledger commit
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = sim.stats()["requests"]
    with sqlite3.connect(load_job(path).ledger_file) as db:
        recorded = db.execute("SELECT count(*) FROM results WHERE status = 'ok'").fetchone()[0]
    assert 0 < recorded < 300
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    # the second run sent only rows the ledger did not hold: nothing recorded went out again
    assert sim.stats()["requests"] - before == 300 - recorded
    frame = pl.read_parquet(load_job(path).output_path)
    assert frame["id"].to_list() == [f"r{i:04d}" for i in range(300)]
    assert (frame["status"] == "ok").all()


def test_process_is_a_ray_data_stage_with_the_local_runs_schema_and_answers(
    make_sim: SimFactory, write_job: Callable[..., Path], tmp_path: Path
) -> None:
    import batchrun.ray

    sim = make_sim(latency_ms=10)
    job = _job(write_job, sim, 120, ray_keys="actors = 2\nmax_in_flight_per_actor = 8")
    ds = ray.data.read_csv(str(tmp_path / "input.csv")).repartition(6)
    out = batchrun.ray.process(ds, job)
    table = pl.from_arrow(ray.get(out.to_arrow_refs())[0].schema.empty_table())
    frame = pl.concat([pl.from_arrow(t) for t in ray.get(out.to_arrow_refs())]).sort("id")
    assert sim.stats()["duplicate_sends"] == 0
    assert frame.height == 120 and (frame["status"] == "ok").all()

    local_job = _other_output(_job(write_job, make_sim(), 120), tmp_path)
    asyncio.run(arun(local_job))
    here = pl.read_parquet(local_job.output_path)
    assert table.schema == here.schema
    keep = [c for c in here.columns if c not in (*VOLATILE, "row")]
    assert frame.select(keep).equals(here.select(keep))


def test_process_with_two_actors_shares_one_tpm_limit(make_sim: SimFactory, write_job: Callable[..., Path]) -> None:
    import batchrun.ray

    tpm = 20_000
    sim = make_sim(tpm=tpm, latency_ms=10)
    job = _job(write_job, sim, 200, limits=f"tpm = {tpm}")
    ds = ray.data.from_items([{"id": f"r{i:04d}", "text": f"text number {i}"} for i in range(200)])
    t0 = time.monotonic()
    rows = batchrun.ray.process(ds, job, actors=2, max_in_flight_per_actor=8).take_all()
    wall = time.monotonic() - t0
    stats = sim.stats()
    assert len(rows) == 200 and all(r["status"] == "ok" for r in rows)
    assert stats["charged_tokens"] > tpm  # binding
    assert stats["charged_tokens"] <= tpm + tpm / 60 * wall
    assert stats["rate_limited"] <= 0.005 * stats["requests"]
