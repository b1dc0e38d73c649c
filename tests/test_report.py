"""What a run leaves to look at: run events in the ledger, the HTML report (its numbers equal the
summary's and the Parquet's; a real browser renders its charts), and the everyday commands — init,
show, export, report, --version, run -v."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from batchrun import arun
from batchrun.jobs import load_job
from batchrun.plan import make_plan
from batchrun.report import Report, render
from batchrun.sim import SimServer
from batchrun.starter import write_starter
from batchrun.viewer import export, select_rows, show

from .conftest import structured_job

ROWS = 30
CSV = "id,text\n" + "".join(
    f"r{i:03d},{'[[sim:refuse]] ' if i % 10 == 3 else ''}{'[[sim:500*1]] ' if i % 10 == 5 else ''}text {i}\n"
    for i in range(ROWS)
)


def _data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert found is not None
    return json.loads(found.group(1))


@pytest.fixture
def finished(make_sim: Callable[..., SimServer], write_job: Callable[..., Path]):  # type: ignore[no-untyped-def]
    sim = make_sim(latency_ms=5)
    job = load_job(write_job(structured_job(sim.base_url), csv=CSV))
    result = asyncio.run(arun(job))
    return job, result


def test_a_run_writes_its_report_and_its_numbers_equal_the_summary_and_the_parquet(finished) -> None:  # type: ignore[no-untyped-def]
    job, result = finished
    assert result.report_path == job.report_path and job.report_path.name == "job.report.html"
    page = job.report_path.read_text()
    data = _data(page)
    frame = pl.read_parquet(job.output_path)
    by_status = dict(frame.group_by("status").len().iter_rows())
    assert data["by_status"] == by_status == result.by_status == data["summary_by_status"]
    assert data["rows"] == frame.height == ROWS
    assert data["output_cost_usd"] == pytest.approx(frame["cost_usd"].fill_null(0).sum())
    assert data["run_cost_usd"] == pytest.approx(result.cost_usd)
    # one event per request sent, the 500s among them as retried
    assert data["requests"] == result.requests_sent
    assert data["outcomes"].get("retried", 0) == result.retries == 3
    with sqlite3.connect(job.ledger_file) as db:
        events = sum(len(json.loads(t)) for (t,) in db.execute("SELECT events FROM request_events"))
        assert events == result.requests_sent
        assert db.execute("SELECT COUNT(*) FROM run_marks WHERE kind = 'limits'").fetchone()[0] >= 1
    for chart in ("status", "requests", "tokens", "latency"):
        assert f'data-chart="{chart}"' in page
    assert "--retry refused" in page  # the refused rows say how to send them again
    assert "http" not in page.replace("http_status", "")  # nothing to fetch: it opens offline


def test_the_report_marks_rate_limits_and_pauses() -> None:
    events = [
        {"sent_at": 100.0 + i, "latency_ms": 200.0, "http_status": 429 if i in (3, 4) else 200,
         "outcome": "rate_limited" if i in (3, 4) else "ok", "rows": 1, "row_id": f"r{i}", "reserved_tokens": 50,
         "prompt_tokens": 20, "completion_tokens": 10, "cached_tokens": 0, "attempt": 1, "waited_ms": 0.0,
         "cost_usd": 0.001, "service_tier": "default", "error": "rate limited" if i in (3, 4) else None}
        for i in range(10)
    ]  # fmt: skip
    marks = [{"at": 100.0 + i, "kind": "limits", "rpm": 60, "tpm": 1000, "in_flight": 2,
              "note": "paused" if i == 5 else None} for i in range(10)]  # fmt: skip
    report = Report(
        job="j", job_path="jobs/j.toml", run={"id": 1, "started_at": 100.0, "finished_at": 111.0}, summary={},
        by_status={"ok": 10}, cost_by_status={"ok": 0.01}, cost_by_model={"m": 0.01}, cost_by_tier={},
        output_cost=0.01, rows=10, events=events, marks=marks, slowest=[], dearest=[], errors=[], budget=1.0,
        spent=0.01,
    )  # fmt: skip
    page = render(report)
    assert page.count('class="mark429"') == 4  # two 429s, on both throughput charts
    assert 'class="limit"' in page and 'fill="#ddd"' in page  # the limit line and the pause band
    assert _data(page)["outcomes"] == {"ok": 8, "rate_limited": 2}


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (apt-get install chromium)")
def test_chromium_renders_the_report_with_no_console_errors(finished) -> None:  # type: ignore[no-untyped-def]
    job, _ = finished
    done = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--dump-dom", job.report_path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert dom.count('<svg class="chart"') >= 4 and "<path" in dom and 'class="bar"' in dom
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []


def test_report_false_keeps_no_events_and_writes_no_report(
    make_sim: Callable[..., SimServer], write_job: Callable[..., Path]
) -> None:
    sim = make_sim(latency_ms=1)
    job = load_job(write_job(structured_job(sim.base_url, extra="[output]\nreport = false"), csv=CSV))
    result = asyncio.run(arun(job))
    assert result.report_path is None and not job.report_path.exists()
    with sqlite3.connect(job.ledger_file) as db:
        assert db.execute("SELECT COUNT(*) FROM request_events").fetchone()[0] == 0


def test_init_writes_a_job_that_plan_accepts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pl.DataFrame({"order id": ["a", "a", "b"], "review_id": ["x1", "x2", "x3"], "text": ["good", "bad", "ok"],
                  "stars": [5, 1, 3]}).write_parquet(data / "My Reviews.parquet")  # fmt: skip
    path = write_starter(data / "My Reviews.parquet", tmp_path / "jobs" / "reviews.toml")
    text = path.read_text()
    assert 'id_column = "review_id"' in text and '{{ row["order id"] }}' in text and "{{ stars }}" in text
    plan = make_plan(load_job(path))
    assert plan.rows == 3 and plan.requests == 3 and plan.cost_online_expected is not None
    with pytest.raises(Exception, match="exists"):
        write_starter(data / "My Reviews.parquet", path)
    (data / "book.txt").write_text("Chapter 1\n\nIt was a bright cold day.\n\nThe clocks struck thirteen.\n")
    book = write_starter(data / "book.txt", tmp_path / "jobs" / "book.toml")
    assert make_plan(load_job(book)).document is not None


def test_show_filters_by_status_and_export_round_trips_every_format(finished, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job, result = finished
    refused = select_rows(job, status=("refused",), n=None)
    assert refused.height == result.by_status["refused"] == 3 and set(refused["status"]) == {"refused"}
    text = show(job, status=("refused",), n=2, columns=("id", "status"))
    assert "r003" in text and "r005" not in text and "2 of 3 row(s) with status refused" in text
    with pytest.raises(Exception, match="not in the output"):
        show(job, columns=("nope",))
    original = pl.read_parquet(job.output_path)
    for suffix in ("csv", "jsonl", "xlsx", "parquet"):
        out = export(job, tmp_path / "exports" / f"out.{suffix}")
        back = {"csv": pl.read_csv, "jsonl": pl.read_ndjson, "xlsx": pl.read_excel, "parquet": pl.read_parquet}[suffix](
            out
        )
        assert back.height == original.height and back["id"].to_list() == original["id"].to_list()
        assert back["status"].to_list() == original["status"].to_list()
    with pytest.raises(Exception, match="by the file's suffix"):
        export(job, tmp_path / "out.txt")


def test_cli_version_report_and_verbose(finished, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job, _ = finished
    cli = [sys.executable, "-m", "batchrun"]
    version = subprocess.run([*cli, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and re.match(r"batchrun \d+\.\d+", version.stdout)
    out = tmp_path / "again.html"
    made = subprocess.run([*cli, "report", str(job.source_path), "-o", str(out)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert made.returncode == 0, made.stderr and out.exists()
    assert _data(out.read_text())["by_status"] == _data(job.report_path.read_text())["by_status"]
    env = {"BATCHRUN_TEST_KEY": "x", "PATH": "/usr/bin:/bin"}
    verbose = subprocess.run([*cli, "run", str(job.source_path), "-q", "-v", "--refresh"], capture_output=True,
                             text=True, timeout=120, env=env)  # fmt: skip
    lines = [x for x in verbose.stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d ok +200 +r\d+ try 1 ", x)]
    assert len(lines) == ROWS, verbose.stderr[-2000:]  # each request, as it was answered


def test_the_last_minute_windows_are_the_sliding_sums_they_chart() -> None:
    """The difference-array windows equal the sum, at each instant, of the weights in (t - 60, t]."""
    import random

    from batchrun.report import _last_minute

    rng = random.Random(7)
    times = [rng.uniform(0, 300) for _ in range(2_000)] + [0.0, 60.0, 120.0]  # some exactly on an instant
    weights = [rng.randint(0, 500) for _ in times]
    at = [300 * i / 120 for i in range(121)]
    brute = [float(sum(w for t, w in zip(times, weights, strict=True) if x - 60 < t <= x)) for x in at]
    assert _last_minute(times, weights, at) == brute
    assert _last_minute(times, None, at) == [float(sum(1 for t in times if x - 60 < t <= x)) for x in at]


def test_the_reports_request_totals_are_the_same_from_the_ledger_and_from_dicts(tmp_path: Path) -> None:
    """A run's events summed as the ledger keeps them (a JSON array per commit) and as dicts agree."""
    from batchrun.events import REQUEST_COLUMNS, SCHEMA, RequestTotals, read_request_totals

    rows = [
        [100.0 + i, 250.0 if i % 5 else None, 200, ("ok", "rate_limited", "retried", "ok", "failed")[i % 5], 1,
         f"r{i}", 50, 20 + i, 10, i % 3, 1, 0.0, 0.001, None, None if i % 5 in (0, 3) else f"error {i % 2}"]
        for i in range(40)
    ]  # fmt: skip
    db = sqlite3.connect(tmp_path / "l.sqlite")
    db.executescript(SCHEMA)
    for chunk in (rows[:15], rows[15:]):
        db.execute("INSERT INTO request_events VALUES (1, ?, ?)", (chunk[0][0], json.dumps(chunk)))
    db.execute("INSERT INTO request_events VALUES (2, 0, ?)", (json.dumps(rows[:3]),))  # another run's
    ours = read_request_totals(db, 1)
    theirs = RequestTotals.of(dict(zip(REQUEST_COLUMNS, r, strict=True)) for r in rows)
    assert ours == theirs and ours.requests == 40
    assert ours.outcomes == {"ok": 16, "rate_limited": 8, "retried": 8, "failed": 8}
    assert len(ours.limited) == 8 and len(ours.ok_latencies) == 8  # the ok rows at i % 5 == 0 have no latency
    assert sum(ours.causes.values()) == 24
