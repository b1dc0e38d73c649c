from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from batchrun.jobs import load_job
from batchrun.plan import format_plan, make_plan
from batchrun.prompts import Renderer
from batchrun.sim import SimServer
from batchrun.sources import open_source

from .conftest import BASIC_CSV, BASIC_JOB, REPO

DEMO = REPO / "jobs" / "classify_reviews.toml"


def test_demo_plan_figures_are_consistent() -> None:
    job = load_job(DEMO)
    plan = make_plan(job)
    assert plan.rows == 360 and plan.requests == 360
    assert plan.output_tokens_worst == 360 * 200
    assert plan.output_tokens_expected == 360 * 60
    assert plan.charged_tokens_total == plan.prompt_tokens_total + plan.output_tokens_worst
    assert plan.prompt_tokens_mean * 360 == pytest.approx(plan.prompt_tokens_total)
    assert plan.prompt_tokens_max >= plan.prompt_tokens_p95 >= plan.prompt_tokens_mean
    assert plan.cost_batch_expected == pytest.approx(plan.cost_online_expected / 2)
    # gpt-4o-mini: $0.15 / 1M in, $0.60 / 1M out
    assert plan.cost_online_worst == pytest.approx((plan.prompt_tokens_total * 0.15 + 72000 * 0.60) / 1e6)
    assert plan.too_long_count == 0
    text = format_plan(plan)
    assert "rows                 360" in text and "recommended mode" in text


def test_plan_counts_equal_simulator_usage_exactly(sim: SimServer) -> None:
    job = load_job(DEMO)
    source = open_source(job.input)
    renderer = Renderer(job, source.columns)
    requests = renderer.render(next(source.batches(40)))
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    for r in requests:
        reply = client.chat.completions.create(**r.body)
        assert reply.usage is not None
        assert reply.usage.prompt_tokens == r.prompt_tokens, r.row_id


def test_rows_too_long_for_tpm_or_context_are_listed(write_job: Callable[..., Path]) -> None:
    long_text = "word " * 9000
    csv = BASIC_CSV + f"a4,{long_text}\n"
    job = load_job(
        write_job(
            BASIC_JOB.replace('model = "gpt-4o-mini"', 'model = "gpt-4"') + "\n[limits]\ntpm = 20000\nrpm = 100\n",
            csv=csv,
        )
    )
    plan = make_plan(job)
    assert plan.rows == 4 and plan.requests == 3 and plan.too_long_count == 1
    issue = plan.too_long[0]
    assert issue.row_id == "a4" and "8192-token context window" in issue.reason
    job2 = load_job(write_job(BASIC_JOB + "\n[limits]\ntpm = 2500\n", csv=csv, name="j2.toml"))
    issue2 = make_plan(job2).too_long[0]
    assert "more than the whole TPM limit (2500)" in issue2.reason


def test_time_at_limits_names_the_binding_limit(write_job: Callable[..., Path]) -> None:
    rows = "\n".join(f"r{i},text number {i}" for i in range(300))
    job = load_job(write_job(BASIC_JOB + "\n[limits]\nrpm = 100\ntpm = 1000000\n", csv="id,text\n" + rows + "\n"))
    plan = make_plan(job)
    assert plan.binding_limit == "rpm"
    assert plan.minutes_at_rpm == pytest.approx((300 - 100) / 100)
    assert plan.minutes_online == plan.minutes_at_rpm


def test_unknown_model_price_is_unknown_not_guessed(write_job: Callable[..., Path]) -> None:
    with pytest.warns(UserWarning, match="unknown to tiktoken"):
        job = load_job(write_job(BASIC_JOB.replace("gpt-4o-mini", "acme-llm-7b"), csv=BASIC_CSV))
        plan = make_plan(job)
    assert plan.price_known is False and plan.cost_online_expected is None and plan.cost_batch_worst is None
    assert "cost unknown" in " ".join(plan.notes)
    assert "unknown" in format_plan(plan)


def test_price_override_in_job(write_job: Callable[..., Path]) -> None:
    toml = BASIC_JOB.replace("gpt-4o-mini", "acme-llm") + '\n[pricing.models."acme-llm"]\ninput = 1.0\noutput = 2.0\n'
    with pytest.warns(UserWarning):
        plan = make_plan(load_job(write_job(toml, csv=BASIC_CSV)))
    assert plan.cost_online_worst == pytest.approx((plan.prompt_tokens_total * 1.0 + 3 * 50 * 2.0) / 1e6)


def test_cli_plan_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "batchrun", "plan", str(DEMO), "--json"], capture_output=True, text=True, check=True
    )
    data = json.loads(out.stdout)
    assert data["rows"] == 360 and data["model"] == "gpt-4o-mini" and data["recommended_mode"] in ("online", "batch")


def test_cli_bad_job_exits_2_with_message(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "batchrun", "plan", str(tmp_path / "x.toml")], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "x.toml: job file not found" in out.stderr
