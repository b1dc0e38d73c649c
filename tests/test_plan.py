from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from batchrun.jobs import load_job
from batchrun.plan import make_plan
from batchrun.plan_format import format_plan
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


def test_plan_of_a_half_answered_job_shows_what_is_left_to_pay(sim: SimServer, tmp_path: Path) -> None:
    import batchrun

    rows = [f"review number {i} says it works" for i in range(40)]
    (tmp_path / "input.csv").write_text("id,text\n" + "\n".join(f"r{i},{t}" for i, t in enumerate(rows)) + "\n")
    job_text = (
        BASIC_JOB.replace("max_tokens = 50", "max_tokens = 100")
        + f'\n[endpoint]\nbase_url = "{sim.base_url}"\napi_key_env = "BATCHRUN_TEST_KEY"\n'
    )
    (tmp_path / "job.toml").write_text(job_text)
    half = tmp_path / "half.csv"
    half.write_text("id,text\n" + "\n".join(f"r{i},{t}" for i, t in enumerate(rows[:20])) + "\n")
    # the first 20 rows answered by a run (same job name, so same ledger) over a file holding only them
    (tmp_path / "first.toml").write_text('name = "job"\n' + job_text.replace('path = "input.csv"', 'path = "half.csv"'))
    first = load_job(tmp_path / "first.toml")
    done = batchrun.run(first)
    assert done.by_status == {"ok": 20}
    job = load_job(tmp_path / "job.toml")
    full = make_plan(job)
    assert full.answered_rows == 20 and full.finish_rows == 20
    assert full.finish_cost_expected is not None and full.cost_online_expected is not None
    assert full.finish_cost_expected == pytest.approx(full.cost_online_expected / 2, rel=0.05)
    assert full.spent_usd == pytest.approx(done.cost_usd)  # what the first run paid, from its spend record
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "plan", str(tmp_path / "job.toml"), "--json"],
        capture_output=True, text=True, env={"BATCHRUN_TEST_KEY": "sk-test", "PATH": ""},
    )  # fmt: skip
    data = json.loads(proc.stdout)
    assert data["answered_rows"] == 20 and data["finish_rows"] == 20 and "finish_cost_expected" in data
    assert "to finish            20 row(s)" in format_plan(full)


def test_plan_checks_the_budget_and_run_refuses_without_over_budget(sim: SimServer, tmp_path: Path) -> None:
    import batchrun
    from batchrun.errors import BudgetExceeded

    (tmp_path / "input.csv").write_text("id,text\n" + "\n".join(f"r{i},text {i}" for i in range(50)) + "\n")
    base = BASIC_JOB + f'\n[endpoint]\nbase_url = "{sim.base_url}"\napi_key_env = "BATCHRUN_TEST_KEY"\n'
    (tmp_path / "job.toml").write_text(base + "\n[budget]\nmax_usd = 0.0000001\n")
    plan = make_plan(load_job(tmp_path / "job.toml"))
    assert plan.over_budget and plan.budget_left == pytest.approx(0.0000001)
    assert "`batchrun run` refuses to start" in format_plan(plan)
    with pytest.raises(BudgetExceeded, match="Nothing was sent"):
        batchrun.run(tmp_path / "job.toml")
    assert sim.stats()["requests"] == 0
    (tmp_path / "job.toml").write_text(base + "\n[budget]\nmax_usd = 100\n")
    assert "enough even for the worst case" in format_plan(make_plan(load_job(tmp_path / "job.toml")))


def test_a_plan_that_needs_many_queue_waves_says_so(write_job: Callable[..., Path]) -> None:
    csv = "id,text\n" + "\n".join(f"r{i},{'long text ' * 40}{i}" for i in range(400)) + "\n"
    job = load_job(
        write_job(
            BASIC_JOB.replace("max_tokens = 50", "max_tokens = 2000")
            + "\n[limits]\nrpm = 5000\ntpm = 4000000\n[batch]\nenqueued_token_limit = 2000\n",
            csv=csv,
        )
    )
    plan = make_plan(job)
    assert plan.batch_waves >= 20 and plan.batch_hours_typical == plan.batch_waves * 6
    assert plan.recommended_mode == "online"
    assert f"{plan.batch_waves} waves" in plan.recommendation and "online takes" in plan.recommendation
    slow_online = load_job(
        write_job(
            BASIC_JOB.replace("max_tokens = 50", "max_tokens = 2000")
            + "\n[limits]\nrpm = 1\n[batch]\nenqueued_token_limit = 2000\n",
            csv=csv,
            name="slow.toml",
        )
    )
    p2 = make_plan(slow_online)
    if p2.recommended_mode == "batch":  # if batch is chosen, the plan still says how many waves it takes
        assert "waves" in format_plan(p2)
