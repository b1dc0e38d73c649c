"""The embedded local model (`[endpoint] local`, the local extra): llama.cpp's server started in-process,
a structured job answered on it at $0, and the server stopped at the end. Skipped where the extra and
SmolLM2's wheel are not installed (.ci/run installs both and runs this file)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import polars as pl
import pytest

from batchrun import arun, local_model
from batchrun.endpoints import open_endpoint
from batchrun.jobs import load_job
from batchrun.plan import make_plan

pytestmark = [
    pytest.mark.local,
    pytest.mark.skipif(
        not local_model.available(),
        reason=f"the embedded model is not installed ({local_model.INSTALL})",
    ),
]

JOB = """
name = "local"
[input]
path = "input.csv"
id_column = "id"
[prompt]
system = "Say whether the review is positive or negative."
template = "Review: {{ text }}"
[request]
model = "gpt-4o-mini"
temperature = 0
max_tokens = 40
[output_schema]
name = "s"
schema = { type = "object", properties = { sentiment = { type = "string", enum = ["positive", "negative"] } }, required = ["sentiment"] }
[endpoint]
local = "smollm2"
[budget]
max_usd = 0.01
"""


def test_a_structured_job_runs_on_the_embedded_model_at_no_cost_and_the_server_stops(
    write_job: Callable[..., Path],
) -> None:
    reviews = ["Great product; works well.", "Broke after a day. Awful.", "I love it.", "Terrible support."]
    csv = "id,text\n" + "".join(f"r{i},{t}\n" for i, t in enumerate(reviews))
    job = load_job(write_job(JOB, csv=csv))
    endpoint = open_endpoint(job)
    port = urlsplit(endpoint.base_url).port
    assert endpoint.local is not None and "LOCAL model" in endpoint.banner and endpoint.context_window == 4096
    asyncio.run(endpoint.close())
    with pytest.raises(OSError):  # stopped: nothing listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

    result = asyncio.run(arun(job))
    assert result.by_status == {"ok": 4}  # llama.cpp's JSON-schema grammar: every reply fits the schema
    assert result.cost_usd == 0.0 and result.prompt_tokens > 0
    frame = pl.read_parquet(job.output_path)
    assert set(frame["sentiment"]) <= {"positive", "negative"} and (frame["cost_usd"] == 0).all()
    assert any("embedded local model" in n for n in result.notes)
    # the plan finds those answers under the embedded model's key (before, it looked under the simulator's)
    plan = make_plan(load_job(job.source_path))
    assert plan.answered_rows == 4 and plan.finish_rows == 0 and plan.cost_online_expected == 0
    assert "the embedded model SmolLM2-135M-Instruct" in (plan.own_server or "")
