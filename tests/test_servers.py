"""Servers that are not OpenAI: reset headers in every form, and a dead or broken endpoint that must stop
a run fast (issue 16, first part)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import openai
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrun.engine import HTTP_RESPONSE
from batchrun.errors import ExitCode
from batchrun.headers import MAX_WAIT_SECONDS, format_duration, parse_reset, read_headers
from batchrun.retries import Action, classify
from batchrun.sim import SimServer

SimFactory = Callable[..., SimServer]
NOW = 1_796_166_000.0  # a fixed "now" (2026-12-02), so timestamps turn into known delays


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("6m0s", 360.0), ("8.64s", 8.64), ("120ms", 0.12), ("1h2m", 3720.0), ("30", 30.0), ("0.5", 0.5),
        (str(NOW + 2), 2.0), (str(int(NOW) + 7), 7.0), (str(int((NOW + 3) * 1000)), 3.0),
        (str(NOW - 50), 0.0),
        (datetime.fromtimestamp(NOW + 4, UTC).isoformat().replace("+00:00", "Z"), 4.0),
        (datetime.fromtimestamp(NOW + 5, UTC).isoformat(), 5.0),
        (format_datetime(datetime.fromtimestamp(NOW + 9, UTC), usegmt=True), 9.0),
    ],
)  # fmt: skip
def test_reset_values_in_every_form_become_delays(value: str, seconds: float) -> None:
    assert parse_reset(value, now=NOW) == pytest.approx(seconds, abs=1e-6)


@given(st.floats(min_value=0, max_value=86_400, allow_nan=False))
def test_go_durations_round_trip(seconds: float) -> None:
    assert parse_reset(format_duration(seconds), now=NOW) == pytest.approx(seconds, abs=1e-3)


@pytest.mark.parametrize("value", ["", "soon", "12parsecs", "2026-13-45T00:00:00Z"])
def test_unreadable_reset_values_are_ignored(value: str) -> None:
    assert parse_reset(value, now=NOW) is None


def _rate_limit_error(headers: dict[str, str]) -> openai.RateLimitError:
    http = sys.modules[HTTP_RESPONSE.__module__.split(".")[0]]  # httpx2 (or httpx), as the SDK uses
    request = http.Request("POST", "http://127.0.0.1/v1/chat/completions")
    body = {"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}}
    response = HTTP_RESPONSE(429, headers=headers, json=body, request=request)
    return openai.RateLimitError("Rate limit reached for requests", response=response, body=body["error"])


def test_a_429_with_unix_timestamp_resets_waits_the_right_few_seconds() -> None:
    reset = str(int(time.time()) + 3)  # a server's "reset at" as a Unix time, and no Retry-After
    failure = classify(_rate_limit_error({"x-ratelimit-reset-requests": reset}))
    assert failure.action is Action.RATE_LIMITED
    assert failure.wait is not None and 1.5 <= failure.wait <= 3.5  # not 1,796,166,306 s


def test_a_wait_past_the_cap_is_capped_and_said() -> None:
    failure = classify(_rate_limit_error({"retry-after": str(7 * 86_400)}))
    assert failure.wait == MAX_WAIT_SECONDS and "asking again" in failure.message
    far = str(int(time.time()) + 86_400)
    assert read_headers({"x-ratelimit-reset-tokens": far}).reset_tokens == MAX_WAIT_SECONDS


JOB = """
[input]
path = "input.csv"

[prompt]
template = "{{{{ text }}}}"

[request]
model = "gpt-4o-mini"
max_tokens = 100

[limits]
max_in_flight = 32
{limits}

[endpoint]
base_url = "{base_url}"
api_key_env = "BATCHRUN_TEST_KEY"
timeout_s = 5
"""


def _job(tmp: Path, base_url: str, rows: int, limits: str = "") -> Path:
    pl.DataFrame({"text": [f"row {i}" for i in range(rows)]}).write_csv(tmp / "input.csv")
    path = tmp / "job.toml"
    path.write_text(JOB.format(base_url=base_url, limits=limits))
    return path


def _run(path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", str(path), "-q"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "BATCHRUN_TEST_KEY": "sk-test"},
    )  # fmt: skip
    return proc, time.monotonic() - t0


def test_a_dead_endpoint_stops_a_1000_row_run_within_seconds(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    port = sim.port
    sim.stop()  # nothing listens there
    proc, wall = _run(_job(tmp_path, f"http://127.0.0.1:{port}/v1", 1000))
    assert proc.returncode == ExitCode.ENDPOINT, proc.stderr
    assert wall < 20 and "could not be reached the same way" in proc.stderr and "Traceback" not in proc.stderr
    df = pl.read_parquet(tmp_path / "job.parquet")
    assert df.height == 1000 and df.filter(pl.col("status") == "not_sent").height > 900


def test_the_same_server_error_for_every_row_stops_the_run(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(error_500_rate=1.0)
    proc, _ = _run(_job(tmp_path, sim.base_url, 300))
    assert proc.returncode == ExitCode.ENDPOINT, proc.stdout + proc.stderr
    assert sim.stats()["requests"] < 150  # not 6 tries × 300 rows
    again = _run(_job(tmp_path, sim.base_url, 300, limits="fail_fast_rows = 0\nmax_attempts = 1"))[0]
    assert again.returncode == ExitCode.ROWS_FAILED  # the breaker off: every row tried (once here)


def test_batch_mode_with_nothing_listening_is_a_message_not_a_traceback(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    port = sim.port
    sim.stop()
    path = _job(tmp_path, f"http://127.0.0.1:{port}/v1", 5)
    path.write_text('mode = "batch"\n' + path.read_text())
    proc, _ = _run(path)
    assert proc.returncode == ExitCode.ENDPOINT, proc.stderr
    assert "could not reach the server" in proc.stderr and "Traceback" not in proc.stderr


def test_warnings_are_one_clear_line_each_once(tmp_path: Path) -> None:
    pl.DataFrame({"text": ["a", "b"]}).write_csv(tmp_path / "input.csv")
    path = tmp_path / "job.toml"
    path.write_text(JOB.format(base_url="http://127.0.0.1:9/v1", limits="").replace("gpt-4o-mini", "acme-llm"))
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "plan", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["batchrun: warning: model 'acme-llm' is unknown to tiktoken; counting tokens with o200k_base"]
