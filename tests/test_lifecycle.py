"""A run's edges, as cron and a person meet them: the lock, signals, kill -9 in a lull, exit codes,
spend that survives every cache mode, what the cache reuses after a change, progress, and the
Python API inside a running event loop. Subprocesses through the CLI against the simulator."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

import batchrun
from batchrun.errors import BudgetExceeded, ExitCode
from batchrun.jobs import Job, load_job
from batchrun.ledger import Ledger
from batchrun.sim import SimServer

from .conftest import wait_for_ok
from .test_batch import FAST, write_batch_job
from .test_batch import texts as batch_texts

SimFactory = Callable[..., SimServer]
ENV = {**os.environ, "BATCHRUN_TEST_KEY": "sk-test"}
PRICE_IN, PRICE_OUT = 0.15e-6, 0.60e-6  # gpt-4o-mini, data/prices.toml

TEXT_JOB = """
name = "{name}"

[input]
path = "input.csv"
id_column = "id"

[prompt]
template = "{{{{ text }}}}"

[request]
model = "gpt-4o-mini"
max_tokens = {max_tokens}

[limits]
max_in_flight = {in_flight}
max_attempts = {attempts}

[endpoint]
base_url = "{base_url}"
api_key_env = "BATCHRUN_TEST_KEY"
{extra}
"""


def write(
    tmp: Path,
    base_url: str,
    rows: list[str],
    *,
    name: str = "job",
    max_tokens: int = 150,
    in_flight: int = 8,
    attempts: int = 3,
    extra: str = "",
) -> Path:
    pl.DataFrame({"id": [f"r{i:05d}" for i in range(len(rows))], "text": rows}).write_csv(tmp / "input.csv")
    path = tmp / f"{name}.toml"
    path.write_text(
        TEXT_JOB.format(
            name=name, max_tokens=max_tokens, in_flight=in_flight, attempts=attempts, base_url=base_url, extra=extra
        ),
        encoding="utf-8",
    )
    return path


def cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args], capture_output=True, text=True, env=ENV, timeout=120, **kw
    )  # type: ignore[call-overload]


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )


def billed(sim: SimServer) -> float:
    st = sim.stats()
    return st["prompt_tokens"] * PRICE_IN + st["completion_tokens"] * PRICE_OUT


def recorded_spend(job: Job) -> float:
    ledger = Ledger(job.ledger_file, job=job.name)
    try:
        return ledger.spent()
    finally:
        ledger.close()


# -- one run per job -------------------------------------------------------------------------------


def test_a_second_run_of_the_same_job_is_refused_with_the_holders_pid(make_sim: SimFactory, tmp_path: Path) -> None:
    # 200 ms replies, 8 in flight: the first run lasts ≥ 5 s, longer than the second's start-up on a
    # loaded CI machine (with 60 ms it had once finished, lock released, before the second got there)
    sim = make_sim(latency_ms=200)
    path = write(tmp_path, sim.base_url, [f"row {i}" for i in range(200)], in_flight=8)
    first = start("run", str(path), "-q")
    wait_for_ok(sim, 5, proc=first)
    second = cli("run", str(path), "-q")
    assert second.returncode == ExitCode.LOCKED, second.stderr
    assert f"PID {first.pid}" in second.stderr and "already running" in second.stderr
    assert "Traceback" not in second.stderr
    _out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    st = sim.stats()
    assert st["ok"] == 200 and st["duplicate_sends"] == 0  # every row paid once
    assert pl.read_parquet(load_job(path).output_path)["status"].to_list() == ["ok"] * 200


def test_wait_lock_waits_for_the_first_run_then_sends_nothing(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(latency_ms=40)
    path = write(tmp_path, sim.base_url, [f"row {i}" for i in range(100)], in_flight=8)
    first = start("run", str(path), "-q")
    wait_for_ok(sim, 5, proc=first)
    second = cli("run", str(path), "-q", "--wait-lock", "60")
    first.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert sim.stats()["ok"] == 100  # the second run found every answer in the ledger
    assert "100 rows answered without a request" in second.stdout


def test_a_kill_9_never_leaves_a_lock_behind(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(latency_ms=50)
    path = write(tmp_path, sim.base_url, [f"row {i}" for i in range(200)], in_flight=4)
    first = start("run", str(path), "-q")
    wait_for_ok(sim, 10, proc=first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert load_job(path).ledger_file.with_suffix(".sqlite.lock").exists()  # the file stays; the lock does not
    again = cli("run", str(path), "-q")
    assert again.returncode == 0, again.stderr
    assert sim.stats()["ok"] >= 200


# -- signals ---------------------------------------------------------------------------------------


def test_sigterm_finishes_in_flight_writes_the_output_and_exits_143(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(latency_ms=150)
    n = 120  # ~100 of them still unsent when the signal comes
    path = write(tmp_path, sim.base_url, [f"row {i}" for i in range(n)], in_flight=8)
    job = load_job(path)
    proc = start("run", str(path), "-q")
    wait_for_ok(sim, 30, proc=proc)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.SIGTERM, err
    assert "Traceback" not in err and "SIGTERM" in err
    df = pl.read_parquet(job.output_path)
    assert df.height == n and set(df["status"].unique().to_list()) == {"ok", "not_sent"}
    answered = sim.stats()["ok"]
    assert df.filter(pl.col("status") == "ok").height == answered  # in-flight ones finished and were written
    again = cli("run", str(path), "-q")
    assert again.returncode == 0, again.stderr
    st = sim.stats()
    assert st["ok"] == n and st["duplicate_sends"] == 0  # the rerun sent only the rows never answered


def test_a_second_ctrl_c_stops_at_once_with_130_and_no_traceback(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(latency_ms=3000)  # every request is still in flight when the signals come
    path = write(tmp_path, sim.base_url, [f"row {i}" for i in range(50)], in_flight=8)
    proc = start("run", str(path), "-q")
    deadline = time.monotonic() + 30
    while sim.stats()["requests"] < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.SIGINT, err
    assert time.monotonic() - t0 < 2.5  # did not wait for the 3 s replies
    assert "Traceback" not in err and "CancelledError" not in err
    df = pl.read_parquet(load_job(path).output_path)
    assert df.height == 50 and df["status"].to_list() == ["not_sent"] * 50
    assert "STOPPED" in out


def test_kill_9_in_a_lull_loses_no_answer_received_before_it(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(slow_seconds=30)
    fast = [f"row {i}" for i in range(60)]
    slow = [f"slow {i} [[sim:slow]]" for i in range(10)]
    path = write(tmp_path, sim.base_url, fast + slow, in_flight=256)
    job = load_job(path)
    proc = start("run", str(path), "-q")
    wait_for_ok(sim, 60, proc=proc)  # the fast ones are answered; the slow ones hold the run in a lull
    time.sleep(0.25)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    db = sqlite3.connect(job.ledger_file)
    try:
        (kept,) = db.execute("SELECT COUNT(*) FROM results").fetchone()
    finally:
        db.close()
    assert kept == 60  # every answer received ≥ 0.2 s before the kill was committed


# -- exit codes ------------------------------------------------------------------------------------


def test_all_rows_failed_exits_6_with_how_to_resend(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()  # two rows answered, one that always gets a 500 (a dead endpoint is exit 5: test_compat)
    path = write(tmp_path, sim.base_url, ["a", "[[sim:500]] b", "[[sim:500]] c", "d"], attempts=2)
    done = cli("run", str(path), "-q")
    assert done.returncode == ExitCode.ROWS_FAILED, done.stderr
    assert "UNANSWERED" in done.stdout and "2 failed" in done.stdout


def test_a_clean_run_exits_0_and_accept_can_count_truncated(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    path = write(tmp_path, sim.base_url, ["fine", "also fine", "[[sim:long]] cut"])
    first = cli("run", str(path), "-q")
    assert first.returncode == ExitCode.ROWS_FAILED and "1 truncated" in first.stdout
    again = cli("run", str(path), "-q", "--accept", "truncated")
    assert again.returncode == 0, again.stdout


def test_batch_mode_exits_7_while_pending_and_0_when_done(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(**{**FAST, "batch_run_seconds": 4.0})
    path = write_batch_job(tmp_path, sim, batch_texts(12))
    submitted = cli("run", str(path), "-q")
    assert submitted.returncode == ExitCode.PENDING, submitted.stderr
    assert "output not written yet" in submitted.stdout
    codes = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        codes.append(cli("collect", str(path), "-q").returncode)
        if codes[-1] != ExitCode.PENDING:
            break
    assert codes[-1] == 0 and set(codes[:-1]) <= {ExitCode.PENDING}
    assert pl.read_parquet(load_job(path).output_path).height == 12


# -- spend -----------------------------------------------------------------------------------------


def test_spend_is_recorded_in_every_cache_mode_and_equals_what_the_server_billed(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    sim = make_sim()
    path = write(tmp_path, sim.base_url, [f"row {i}" for i in range(40)])
    job = load_job(path)
    assert batchrun.run(job).requests_sent == 40
    batchrun.run(job, cache="refresh")
    batchrun.run(job, cache="off")
    assert sim.stats()["ok"] == 120
    assert recorded_spend(job) == pytest.approx(billed(sim), rel=1e-9)  # --refresh kept the replaced answers' cost


def test_the_budget_counts_no_cache_and_refresh_runs(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    rows = [f"row {i}" for i in range(60)]
    probe = write(tmp_path, sim.base_url, rows, name="probe")
    one_run = batchrun.run(load_job(probe)).cost_usd
    before = billed(sim)
    path = write(tmp_path, sim.base_url, rows, extra=f"\n[budget]\nmax_usd = {one_run * 1.5}\n")
    job = load_job(path)
    first = batchrun.run(job, over_budget=True)  # the plan's guess of half max_tokens per reply is pessimistic
    assert first.by_status == {"ok": 60}
    with pytest.raises(BudgetExceeded) as info:
        batchrun.run(job, cache="off")  # earlier spend counts: it stops about half way
    assert 0 < info.value.result.by_status.get("ok", 0) < 60  # type: ignore[attr-defined]
    with pytest.raises(BudgetExceeded):
        batchrun.run(job, cache="refresh")
    spent = recorded_spend(job)
    assert spent <= one_run * 1.5 + 1e-12
    assert spent == pytest.approx(billed(sim) - before, rel=1e-9)
    # the stopped --refresh did not overwrite the complete output with not_sent rows
    assert pl.read_parquet(job.output_path)["status"].to_list() == ["ok"] * 60


def test_jobs_sharing_a_ledger_keep_their_own_budgets(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    rows = [f"row {i}" for i in range(30)]
    cost = batchrun.run(load_job(write(tmp_path, sim.base_url, rows, name="probe"))).cost_usd
    # one request in flight: the budget reserves one worst case, so 1.5× one run's cost lets each job
    # finish on its own, and would stop b half way if a's spend counted against it
    shared = f'\n[output]\nledger = "shared.sqlite"\npath = "{{}}.parquet"\n[budget]\nmax_usd = {cost * 1.5}\n'
    a = load_job(write(tmp_path, sim.base_url, rows, name="a", in_flight=1, extra=shared.format("a")))
    assert batchrun.run(a, over_budget=True).by_status == {"ok": 30}
    b_rows = [r + " b" for r in rows]  # its own rows (written after a ran: both read input.csv)
    b = load_job(write(tmp_path, sim.base_url, b_rows, name="b", in_flight=1, extra=shared.format("b")))
    result = batchrun.run(b, over_budget=True)
    assert result.by_status == {"ok": 30} and result.requests_sent == 30  # a's spend is not b's
    status = cli("status", str(a.source_path)).stdout
    assert re.search(r"^\s+a\s+\$[0-9.]+ for 30 paid request\(s\)$", status, re.M), status
    assert re.search(r"^\s+b\s+\$[0-9.]+ for 30 paid request\(s\)$", status, re.M), status


# -- what the cache reuses -------------------------------------------------------------------------


def test_raising_max_tokens_resends_only_the_truncated_rows(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(text_tokens=(5, 60), seed=3)
    rows = [f"row {i}" for i in range(80)]
    path = write(tmp_path, sim.base_url, rows, max_tokens=30)
    first = batchrun.run(load_job(path))
    truncated = first.by_status.get("truncated", 0)
    assert 0 < truncated < 80
    sent = sim.stats()["ok"]
    path.write_text(path.read_text().replace("max_tokens = 30", "max_tokens = 200"))
    again = batchrun.run(load_job(path))
    assert sim.stats()["ok"] - sent == truncated  # only the rows cut off at 30 tokens went again
    assert again.by_status == {"ok": 80}


def test_output_elsewhere_reuses_the_jobs_ledger(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    path = write(tmp_path, sim.base_url, [f"row {i}" for i in range(25)])
    assert cli("run", str(path), "-q").returncode == 0
    moved = cli("run", str(path), "-q", "-o", str(tmp_path / "elsewhere" / "out.parquet"))
    assert moved.returncode == 0, moved.stderr
    assert sim.stats()["ok"] == 25  # nothing sent again
    assert pl.read_parquet(tmp_path / "elsewhere" / "out.parquet").height == 25


def test_retry_resends_only_rows_with_those_statuses(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    rows = ["a", "b", "[[sim:400]] bad", "[[sim:long*1]] cut", "c"]
    path = write(tmp_path, sim.base_url, rows)
    first = batchrun.run(load_job(path))
    assert first.by_status == {"ok": 3, "failed": 1, "truncated": 1}
    sent = sim.stats()["requests"]
    again = batchrun.run(load_job(path), retry={"truncated"})
    assert sim.stats()["requests"] - sent == 1
    assert again.by_status == {"ok": 4, "failed": 1}


def test_a_ledger_beside_the_output_is_adopted(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    path = write(tmp_path, sim.base_url, [f"row {i}" for i in range(10)])
    job = load_job(path)
    batchrun.run(job)
    legacy = job.output_path.with_name(job.output_path.name + ".ledger.sqlite")
    job.ledger_file.rename(legacy)  # where versions before 0.2 kept it
    result = batchrun.run(job)
    assert result.cached_rows == 10 and sim.stats()["ok"] == 10
    assert job.ledger_file.exists() and not legacy.exists()
    assert any("ledger moved" in n for n in result.notes)


# -- progress and the Python API -------------------------------------------------------------------


def test_progress_moves_per_row(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(latency_ms=5)
    path = write(tmp_path, sim.base_url, [f"row {i}" for i in range(2000)], in_flight=64)
    job = load_job(path)
    seen: list[int] = []

    import tqdm

    original = tqdm.tqdm.update

    def update(self: tqdm.tqdm, n: float = 1) -> bool | None:
        seen.append(int(n))
        return original(self, n)

    tqdm.tqdm.update = update  # type: ignore[method-assign]
    try:
        batchrun.run(job, progress=True)
    finally:
        tqdm.tqdm.update = original  # type: ignore[method-assign]
    assert sum(seen) == 2000
    assert len(seen) > 100 and max(seen) < 500  # per row as answers arrive, not one jump per row group


def test_run_and_map_work_inside_a_running_event_loop(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    path = write(tmp_path, sim.base_url, [f"row {i}" for i in range(5)])
    df = pl.DataFrame({"text": ["x", "y"]})

    async def notebook_cell() -> tuple[batchrun.RunResult, batchrun.RunResult, pl.DataFrame, pl.DataFrame]:
        sync_in_loop = batchrun.run(path)  # what a Jupyter user types: runs on a worker thread
        awaited = await batchrun.arun(path)
        mapped = batchrun.map(
            df, prompt="{{ text }}", model="gpt-4o-mini", base_url=sim.base_url, api_key_env="BATCHRUN_TEST_KEY"
        )
        amapped = await batchrun.amap(
            df, prompt="{{ text }}", model="gpt-4o-mini", base_url=sim.base_url, api_key_env="BATCHRUN_TEST_KEY",
            ledger=tmp_path / "map.sqlite", max_usd=1.0,
        )  # fmt: skip
        return sync_in_loop, awaited, mapped, amapped

    first, second, mapped, amapped = asyncio.run(notebook_cell())
    assert first.by_status == {"ok": 5} and second.cached_rows == 5
    assert mapped["status"].to_list() == ["ok", "ok"] and amapped.height == 2
    again = batchrun.map(
        df, prompt="{{ text }}", model="gpt-4o-mini", base_url=sim.base_url, api_key_env="BATCHRUN_TEST_KEY",
        ledger=tmp_path / "map.sqlite",
    )  # fmt: skip
    assert again["from_cache"].to_list() == [True, True]
