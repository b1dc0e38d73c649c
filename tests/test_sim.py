"""The simulator, driven by the real openai SDK over loopback HTTP."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import openai
import pytest

from batchrun.headers import parse_duration, try_again_in
from batchrun.sim import SimServer

SimFactory = Callable[..., SimServer]


def client(sim: SimServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)


def chat(c: openai.OpenAI, text: str = "hello", max_tokens: int = 50, **kw: Any) -> Any:
    return c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], max_tokens=max_tokens, **kw
    )


def test_rate_limit_headers_on_success(make_sim: SimFactory) -> None:
    sim = make_sim(rpm=100, tpm=10_000)
    raw = chat(client(sim), max_tokens=100)
    reply = raw.parse()
    charged = reply.usage.prompt_tokens + 100
    h = raw.headers
    assert h["x-ratelimit-limit-requests"] == "100" and h["x-ratelimit-limit-tokens"] == "10000"
    assert h["x-ratelimit-remaining-requests"] == "99"
    assert int(h["x-ratelimit-remaining-tokens"]) == 10_000 - charged
    # reset = time until full: charged tokens at 10,000/60 per second
    assert parse_duration(h["x-ratelimit-reset-tokens"]) == pytest.approx(charged * 60 / 10_000, abs=0.05)


def test_tpm_429_has_openai_body_and_wait(make_sim: SimFactory) -> None:
    sim = make_sim(tpm=1000, retry_after_header=True)
    c = client(sim)
    chat(c, max_tokens=900)
    with pytest.raises(openai.RateLimitError) as info:
        chat(c, max_tokens=900)
    err = info.value
    assert err.status_code == 429
    body = err.body
    assert isinstance(body, dict)
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "tokens"
    assert "on tokens per min (TPM): Limit 1000" in body["message"]
    wait = try_again_in(body["message"])
    assert wait is not None and 40 < wait < 60
    assert int(err.response.headers["retry-after"]) >= wait
    assert "x-ratelimit-remaining-tokens" in err.response.headers
    assert sim.stats()["rate_limited_by_type"] == {"tokens": 1}


def test_rpm_429_and_refill(make_sim: SimFactory) -> None:
    sim = make_sim(rpm=120)  # 2 per second
    c = client(sim)
    statuses = []
    t0 = time.monotonic()
    for _ in range(125):
        try:
            chat(c, max_tokens=5)
            statuses.append(200)
        except openai.RateLimitError as e:
            statuses.append(429)
            assert e.body["type"] == "requests"  # type: ignore[index]
    refilled = 2 * (time.monotonic() - t0)  # the bucket refills 2 a second while the loop runs (>1 s when slow)
    assert statuses[:120] == [200] * 120  # the bucket starts full
    assert statuses.count(429) >= 1 and statuses.count(200) <= 121 + refilled
    time.sleep(0.6)
    chat(c, max_tokens=5)


def test_request_larger_than_tpm(make_sim: SimFactory) -> None:
    sim = make_sim(tpm=100)
    with pytest.raises(openai.RateLimitError, match="Request too large"):
        chat(client(sim), max_tokens=200)
    assert sim.stats()["too_large"] == 1


def test_insufficient_quota_and_live_reconfigure(make_sim: SimFactory) -> None:
    sim = make_sim(insufficient_quota=True)
    c = client(sim)
    with pytest.raises(openai.RateLimitError) as info:
        chat(c)
    assert info.value.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert info.value.body["code"] == "insufficient_quota"  # type: ignore[index]
    httpx.post(sim.url + "/sim/config", json={"insufficient_quota": False})
    assert chat(c).parse().choices[0].finish_reason == "stop"


def test_structured_output_is_valid_json_for_the_schema(sim: SimServer) -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["label", "score", "tags", "when"],
        "properties": {
            "label": {"type": "string", "enum": ["a", "b"]},
            "score": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "when": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
        },
    }
    rf = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": schema}}
    import jsonschema

    for i in range(20):
        reply = chat(client(sim), f"row {i}", max_tokens=200, response_format=rf).parse()
        data = json.loads(reply.choices[0].message.content)
        jsonschema.validate(data, schema)


def test_replies_are_deterministic_and_truncate_at_max_tokens(sim: SimServer) -> None:
    c = client(sim)
    a = chat(c, "same", max_tokens=500).parse().choices[0].message.content
    b = chat(c, "same", max_tokens=500).parse().choices[0].message.content
    assert a == b
    short = chat(c, "same", max_tokens=3).parse()
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    stats = sim.stats()
    assert stats["duplicate_bodies"] == 1 and stats["duplicate_sends"] == 1


@pytest.mark.parametrize(
    ("marker", "check"),
    [
        ("refuse", lambda r: r.choices[0].message.refusal and r.choices[0].message.content is None),
        ("filter", lambda r: r.choices[0].finish_reason == "content_filter"),
        ("long", lambda r: r.choices[0].finish_reason == "length"),
    ],
)
def test_forced_outcomes(sim: SimServer, marker: str, check: Callable[[Any], bool]) -> None:
    reply = chat(client(sim), f"x [[sim:{marker}]]", max_tokens=20).parse()
    assert check(reply)


def test_badjson_is_not_parseable(sim: SimServer) -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["a"],
        "properties": {"a": {"type": "string"}},
    }
    rf = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": schema}}
    reply = chat(client(sim), "x [[sim:badjson]]", max_tokens=200, response_format=rf).parse()
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.choices[0].message.content)


@pytest.mark.parametrize(
    ("marker", "error"),
    [
        ("500", openai.InternalServerError),
        ("503", openai.InternalServerError),
        ("reset", openai.APIConnectionError),
        ("truncate", openai.APIConnectionError),
        ("400", openai.BadRequestError),
    ],
)
def test_faults_reach_the_sdk_then_clear(sim: SimServer, marker: str, error: type[Exception]) -> None:
    c = client(sim)
    with pytest.raises(error):
        chat(c, f"x [[sim:{marker}*1]]", max_tokens=500)
    if marker != "400":
        assert chat(c, f"x [[sim:{marker}*1]]", max_tokens=500).parse().choices[0].finish_reason == "stop"


def test_random_fault_rates(make_sim: SimFactory) -> None:
    sim = make_sim(error_500_rate=0.3, seed=5)
    c = client(sim)
    fails = 0
    for i in range(100):
        try:
            chat(c, f"r{i}", max_tokens=5)
        except openai.InternalServerError:
            fails += 1
    assert 15 <= fails <= 45
    assert sim.stats()["faults"]["500"] == fails


def test_slow_responses_and_latency(make_sim: SimFactory) -> None:
    sim = make_sim(latency_ms=100, slow_seconds=0.5)
    c = client(sim)
    t = time.perf_counter()
    chat(c, max_tokens=5)
    assert 0.09 < time.perf_counter() - t < 0.5
    t = time.perf_counter()
    chat(c, "x [[sim:slow]]", max_tokens=5)
    assert time.perf_counter() - t >= 0.55


def test_unknown_model_is_404(sim: SimServer) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(sim).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}], max_tokens=5)


def test_embeddings_float_and_base64(sim: SimServer) -> None:
    c = client(sim)
    r = c.embeddings.create(model="text-embedding-3-small", input=["a", "bb"], dimensions=8, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 8
    raw = httpx.post(
        sim.base_url + "/embeddings",
        json={"model": "text-embedding-3-small", "input": ["a"], "dimensions": 8, "encoding_format": "base64"},
    ).json()
    vec = struct.unpack("<8f", base64.b64decode(raw["data"][0]["embedding"]))
    assert vec == pytest.approx(r.data[0].embedding, rel=1e-6)
    with pytest.raises(openai.BadRequestError):
        c.embeddings.create(model="text-embedding-3-small", input=["ok", ""])
    with pytest.raises(openai.BadRequestError, match="at most 2048"):
        c.embeddings.create(model="text-embedding-3-small", input=["x"] * 2049)


def test_models_and_stats_peak_window(make_sim: SimFactory) -> None:
    sim = make_sim(rpm=1000, tpm=100_000)
    c = client(sim)
    assert "gpt-4o-mini" in [m.id for m in c.models.list()]
    for i in range(5):
        chat(c, f"{i}", max_tokens=10)
    stats = sim.stats()
    assert stats["peak_rpm_60s"] == 5 and stats["peak_tpm_60s"] == stats["charged_tokens"]


# -- Batch API ---------------------------------------------------------------------------------

FAST = {"batch_validate_seconds": 0.05, "batch_run_seconds": 0.2, "batch_finalize_seconds": 0.05}


def batch_lines(n: int, model: str = "gpt-4o-mini", text: str = "hello {i}") -> bytes:
    return "\n".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": text.format(i=i)}]},
            }
        )
        for i in range(n)
    ).encode()


def submit(c: openai.OpenAI, data: bytes, **kw: Any) -> Any:
    f = c.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", **kw)


def wait(c: openai.OpenAI, batch_id: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        b = c.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled") or time.monotonic() > deadline:
            return b
        time.sleep(0.05)


def read_lines(c: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in c.files.content(file_id).text.splitlines() if x]


def test_batch_lifecycle_completed_shuffled(make_sim: SimFactory) -> None:
    sim = make_sim(**FAST)
    c = client(sim)
    b = submit(c, batch_lines(50), metadata={"job": "demo", "shard": "0"})
    assert b.status == "validating"
    seen = {b.status}
    while b.status not in ("completed", "failed"):
        time.sleep(0.02)
        b = c.batches.retrieve(b.id)
        seen.add(b.status)
    assert "in_progress" in seen and b.status == "completed"
    assert b.request_counts.total == 50 and b.request_counts.completed == 50
    assert b.usage.input_tokens > 0 and b.metadata == {"job": "demo", "shard": "0"}
    out = read_lines(c, b.output_file_id)
    ids = [x["custom_id"] for x in out]
    assert sorted(ids) == sorted(f"r{i}" for i in range(50)) and ids != [f"r{i}" for i in range(50)]
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in out)
    assert [x.id for x in c.batches.list(limit=10)] == [b.id]


def test_batch_per_line_errors_go_to_error_file(make_sim: SimFactory) -> None:
    sim = make_sim(**FAST)
    c = client(sim)
    b = wait(
        c, submit(c, batch_lines(10, text="row {i} [[sim:400]]") + b"\n" + batch_lines(1).replace(b"r0", b"ok")).id
    )
    assert b.status == "completed" and b.request_counts.failed == 10 and b.request_counts.completed == 1
    errors = read_lines(c, b.error_file_id)
    assert len(errors) == 10 and all(e["response"]["status_code"] == 400 and e["error"] is None for e in errors)


def test_batch_completed_with_no_output_file(make_sim: SimFactory) -> None:
    sim = make_sim(**FAST)
    c = client(sim)
    b = wait(c, submit(c, batch_lines(5, text="{i} [[sim:500]]")).id)
    assert b.status == "completed" and b.output_file_id is None and b.error_file_id is not None
    assert b.request_counts.failed == 5


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (batch_lines(3) + b"\n" + batch_lines(1), "duplicate_custom_id"),
        (batch_lines(2) + b"\n" + batch_lines(1, model="gpt-4o").replace(b'"r0"', b'"x"'), "mismatched_model"),
        (b"{not json}\n", "invalid_json_line"),
        (batch_lines(2).replace(b"/v1/chat/completions", b"/v1/embeddings"), "invalid_url"),
    ],
)
def test_batch_validation_failures(make_sim: SimFactory, data: bytes, code: str) -> None:
    sim = make_sim(**FAST)
    c = client(sim)
    b = wait(c, submit(c, data).id)
    assert b.status == "failed"
    assert b.errors is not None and b.errors.data is not None
    assert code in [e.code for e in b.errors.data]
    assert all(e.line is not None for e in b.errors.data if e.code == code)


def test_batch_too_many_lines_and_too_large_file(make_sim: SimFactory) -> None:
    sim = make_sim(max_batch_lines=10, max_file_bytes=20_000, **FAST)
    c = client(sim)
    b = wait(c, submit(c, batch_lines(11)).id)
    assert b.status == "failed" and b.errors.data[0].code == "too_many_requests"
    with pytest.raises(openai.BadRequestError, match="File is too large"):
        c.files.create(file=("big.jsonl", io.BytesIO(b"x" * 30_000)), purpose="batch")


def test_batch_expired_with_partial_output(make_sim: SimFactory) -> None:
    sim = make_sim(batch_expire=True, batch_expire_done_fraction=0.4, **FAST)
    c = client(sim)
    b = wait(c, submit(c, batch_lines(20)).id)
    assert b.status == "expired" and b.expired_at is not None
    done = read_lines(c, b.output_file_id)
    expired = read_lines(c, b.error_file_id)
    assert len(done) == 8 and len(expired) == 12
    assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in expired)
    assert {x["custom_id"] for x in done}.isdisjoint({x["custom_id"] for x in expired})


def test_batch_cancel_gives_partial_results(make_sim: SimFactory) -> None:
    sim = make_sim(batch_validate_seconds=0.05, batch_run_seconds=1.0, batch_finalize_seconds=0.05)
    c = client(sim)
    b = submit(c, batch_lines(40))
    while c.batches.retrieve(b.id).status != "in_progress":
        time.sleep(0.02)
    time.sleep(0.4)
    assert c.batches.cancel(b.id).status == "cancelling"
    b = wait(c, b.id)
    assert b.status == "cancelled"
    done, rest = read_lines(c, b.output_file_id), read_lines(c, b.error_file_id)
    assert 0 < len(done) < 40 and len(done) + len(rest) == 40
    assert all(x["error"]["code"] == "batch_cancelled" for x in rest)


def test_batch_enqueued_token_limit(make_sim: SimFactory) -> None:
    sim = make_sim(batch_queue_limit_tokens=1500, batch_validate_seconds=0.05, batch_run_seconds=2.0)
    c = client(sim)
    first = submit(c, batch_lines(100))  # ~1,000 input tokens
    while c.batches.retrieve(first.id).status == "validating":
        time.sleep(0.02)
    second = wait(c, submit(c, batch_lines(100)).id, timeout=1)
    assert second.status == "failed" and second.errors.data[0].code == "token_limit_exceeded"
    assert c.batches.retrieve(first.id).status == "in_progress"


def test_files_list_and_delete(sim: SimServer) -> None:
    c = client(sim)
    f = c.files.create(file=("a.jsonl", io.BytesIO(batch_lines(1))), purpose="batch")
    assert f.id in [x.id for x in c.files.list(purpose="batch")]
    assert c.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)
