"""Small pieces: error classification, Arrow types from JSON schemas, the reorder buffer, the gate."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path

import openai
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

from batchrun.gate import Gate
from batchrun.replies import ReplyParser
from batchrun.retries import Action, Backoff, FailureRate, classify
from batchrun.sinks import ReorderBuffer, arrow_field_type

REQ = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")


def status_error(status: int, body: dict, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    response = httpx.Response(status, request=REQ, headers=headers or {}, content=json.dumps(body).encode())
    client = openai.OpenAI(api_key="x", base_url="http://127.0.0.1/v1")
    return client._make_status_error_from_response(response)


def err(message: str, type_: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@pytest.mark.parametrize("code", ["insufficient_quota", "credit_balance_exhausted", "project_spend_limit_exceeded"])
def test_quota_codes_stop_the_run(code: str) -> None:
    f = classify(status_error(429, err("You exceeded your current quota", "insufficient_quota", code)))
    assert f.action is Action.STOP_QUOTA


def test_flex_without_capacity_is_unavailable_not_a_rate_limit() -> None:
    openai_flex = status_error(
        429, err("Resource Unavailable: no flex capacity", "server_error", "resource_unavailable")
    )
    groq_flex = status_error(498, err("flex tier capacity exceeded", "capacity_exceeded", "capacity_exceeded"))
    for exc in (openai_flex, groq_flex):
        assert classify(exc).action is Action.UNAVAILABLE


def test_rate_limit_wait_from_message_header_or_reset() -> None:
    msg = "Rate limit reached ... on tokens per min (TPM): Limit 100, Used 90, Requested 20. Please try again in 1.5s."
    f = classify(status_error(429, err(msg, "tokens", "rate_limit_exceeded")))
    assert f.action is Action.RATE_LIMITED and f.wait == pytest.approx(1.5) and f.limit_kind == "tokens"
    f = classify(status_error(429, err(msg, "tokens", "rate_limit_exceeded"), {"retry-after": "4"}))
    assert f.wait == 4
    f = classify(
        status_error(429, err("slow", "requests", "rate_limit_exceeded"), {"x-ratelimit-reset-requests": "250ms"})
    )
    assert f.wait == pytest.approx(0.25) and f.limit_kind == "requests"


def test_request_too_large_is_never_retried() -> None:
    msg = "Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested 31538."
    assert classify(status_error(429, err(msg, "tokens", "rate_limit_exceeded"))).action is Action.TOO_LONG


@pytest.mark.parametrize(
    ("status", "body", "action"),
    [
        (500, err("boom", "server_error", None), Action.RETRY),
        (503, err("The engine is currently overloaded", "server_error", None), Action.RETRY),
        (408, err("timeout", "server_error", None), Action.RETRY),
        (409, err("conflict", "server_error", None), Action.RETRY),
        (401, err("Incorrect API key provided", "invalid_request_error", "invalid_api_key"), Action.STOP_ENDPOINT),
        (403, err("no access", "invalid_request_error", None), Action.STOP_ENDPOINT),
        (404, err("The model `x` does not exist", "invalid_request_error", "model_not_found"), Action.STOP_ENDPOINT),
        (400, err("bad param", "invalid_request_error", None), Action.ROW_FAILED),
        (422, err("unprocessable", "invalid_request_error", None), Action.ROW_FAILED),
    ],
)
def test_status_classification(status: int, body: dict, action: Action) -> None:
    assert classify(status_error(status, body)).action is action


def test_slow_down_and_connection_errors() -> None:
    f = classify(status_error(503, err("Slow Down", "server_error", None)))
    assert f.action is Action.RETRY and f.slow_down
    assert classify(openai.APIConnectionError(request=REQ)).action is Action.RETRY
    assert classify(openai.APITimeoutError(request=REQ)).action is Action.RETRY


@given(st.integers(1, 30), st.integers(0, 2**32))
def test_backoff_is_bounded_full_jitter(attempt: int, seed: int) -> None:
    b = Backoff(base=0.5, cap=8.0)
    d = b.delay(attempt, random.Random(seed))
    assert 0 <= d <= min(8.0, 0.5 * 2 ** (attempt - 1))
    assert b.delay(attempt, random.Random(seed), server_wait=20) == 20


def test_arrow_types_from_strict_schema() -> None:
    schema = {
        "type": "object",
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
            }
        },
        "properties": {
            "label": {"type": "string", "enum": ["a", "b"]},
            "n": {"type": "integer"},
            "x": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            "mixed": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "tree": {"$ref": "#/$defs/Node"},
            "flag": {"type": ["boolean", "null"]},
        },
    }
    types = {k: arrow_field_type(v, schema) for k, v in schema["properties"].items()}
    assert types["label"][0] == pa.string() and types["n"][0] == pa.int64()
    assert types["x"][0] == pa.float64() and types["x"][1](3) == 3.0
    assert types["mixed"][0] == pa.string() and types["mixed"][1](5) == "5"
    assert types["tags"][0] == pa.list_(pa.string()) and types["flag"][0] == pa.bool_()
    tree_t, conv = types["tree"]
    assert tree_t == pa.struct([pa.field("name", pa.string()), pa.field("children", pa.list_(pa.string()))])
    value = conv({"name": "root", "children": [{"name": "leaf", "children": []}]})
    assert value == {"name": "root", "children": ['{"name": "leaf", "children": []}']}


@given(st.permutations(list(range(50))))
def test_reorder_buffer_releases_in_order(order: list[int]) -> None:
    buf = ReorderBuffer()
    out: list[int] = []
    for seq in order:
        out += [s for s, _ in buf.add(seq, seq)]
    assert out == list(range(50)) and not buf.held


def test_gate_caps_concurrency_and_can_be_raised() -> None:
    async def run() -> int:
        gate = Gate(2)
        active = peak = 0

        async def job() -> None:
            nonlocal active, peak
            async with gate:
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.01)
                active -= 1

        async with asyncio.TaskGroup() as tg:
            for _ in range(10):
                tg.create_task(job())
            await asyncio.sleep(0.015)
            gate.set_limit(5)
        return peak

    assert asyncio.run(run()) == 5


def test_gate_hands_a_freed_slot_to_the_longest_waiter() -> None:
    """A task that frees its slot and asks again at once goes behind the tasks already waiting."""

    async def run() -> list[str]:
        gate = Gate(1)
        order: list[str] = []

        async def looper() -> None:
            for i in range(3):
                async with gate:
                    order.append(f"loop{i}")
                    await asyncio.sleep(0)

        async def waiter(name: str) -> None:
            async with gate:
                order.append(name)

        async with asyncio.TaskGroup() as tg:
            await gate.__aenter__()  # hold the one slot so everyone queues
            tg.create_task(looper())
            await asyncio.sleep(0)
            tg.create_task(waiter("a"))
            tg.create_task(waiter("b"))
            await asyncio.sleep(0)
            await gate.__aexit__()
        return order

    assert asyncio.run(run()) == ["loop0", "a", "b", "loop1", "loop2"]


def test_gate_gives_back_a_slot_handed_to_a_cancelled_waiter() -> None:
    async def run() -> tuple[int, bool]:
        gate = Gate(1)
        await gate.__aenter__()
        entered = asyncio.Event()

        async def waiter() -> None:
            async with gate:
                entered.set()

        first = asyncio.create_task(waiter())
        second = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        await gate.__aexit__()  # the slot is handed to `first` ...
        first.cancel()  # ... which is cancelled before it runs: the slot must pass on to `second`
        await asyncio.gather(first, return_exceptions=True)
        await asyncio.wait_for(second, 1)
        return gate.active, entered.is_set()

    assert asyncio.run(run()) == (0, True)


@pytest.mark.parametrize(
    ("choice", "status"),
    [
        ({"finish_reason": "stop", "message": {"content": '{"a": "x"}'}}, "ok"),
        ({"finish_reason": "stop", "message": {"content": '{"a": 1}'}}, "schema_invalid"),
        ({"finish_reason": "stop", "message": {"content": "{"}}, "schema_invalid"),
        ({"finish_reason": "stop", "message": {"content": None, "refusal": "no"}}, "refused"),
        ({"finish_reason": "length", "message": {"content": '{"a": "x'}}, "truncated"),
        ({"finish_reason": "content_filter", "message": {"content": ""}}, "filtered"),
        ({"finish_reason": "stop", "message": {"content": None}}, "failed"),
    ],
)
def test_reply_statuses(choice: dict, status: str) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    parsed = ReplyParser(schema, 10).chat({"choices": [choice]})
    assert parsed.status == status
    if status != "ok":
        assert parsed.error


def test_simple_templates_render_exactly_as_jinja2(tmp_path: Path) -> None:
    """The fast path for `{{ name }}` templates gives Jinja2's own text for every kind of value."""
    import polars as pl

    from batchrun.jobs import parse_job
    from batchrun.prompts import Renderer
    from batchrun.sources import open_source

    df = pl.DataFrame(
        {
            "s": ["héllo", None, "", "a\nb"],
            "n": [1, None, -3, 0],
            "f": [1.0, 2.5, None, 1e20],
            "b": [True, False, None, True],
        }
    )
    df.write_parquet(tmp_path / "in.parquet")
    data = {
        "input": {"path": "in.parquet"},
        "prompt": {"template": "S={{ s }} N={{ n }} F={{ f }} B={{ b }} S again {{ s }}\n"},
        "request": {"model": "gpt-4o-mini", "max_tokens": 5},
    }
    job = parse_job(data, tmp_path / "j.toml")
    source = open_source(job.input)
    renderer = Renderer(job, source.columns)
    assert renderer.parts is not None
    batch = next(iter(source.batches(10)))
    fast = renderer.texts(batch)[2]
    renderer.parts = None  # the Jinja2 path
    assert renderer.texts(batch)[2] == fast
    assert fast[1] == "S= N= F=2.5 B=False S again "  # null renders as "", never as the word None


def test_the_tokenizers_can_be_released_and_counts_stay_the_same(tmp_path: Path) -> None:
    # a run lets go of the tokenizer once its last row is counted (issue 12: peak RSS); a later count
    # (a notebook's next run on the same Renderer would not, but nothing may break if one does) rebuilds it
    import polars as pl

    from batchrun import tokens
    from batchrun.jobs import parse_job
    from batchrun.prompts import Renderer
    from batchrun.sources import open_source

    pl.DataFrame({"s": ["héllo wörld", "a b c"]}).write_parquet(tmp_path / "in.parquet")
    data = {
        "input": {"path": "in.parquet"},
        "prompt": {"template": "say {{ s }}"},
        "request": {"model": "gpt-4o-mini", "max_tokens": 5},
    }
    job = parse_job(data, tmp_path / "j.toml")
    source = open_source(job.input)
    renderer = Renderer(job, source.columns)
    texts = renderer.texts(next(iter(source.batches(10))))[2]
    before = renderer.prompt_tokens(texts)
    renderer.release_tokenizers()
    assert renderer.counter._encoding is None and tokens.get_encoding.cache_info().currsize == 0
    assert renderer.prompt_tokens(texts) == before


def test_a_cli_run_never_imports_pandas_for_pyarrow() -> None:
    # pyarrow imports pandas (when installed) on its first conversion of Python values, only to check for
    # pandas objects: +50 MB and ~0.3 s of a CLI run (issue 12). Needs numpy and pandas (the ray extra
    # has them; CI runs this test in that step too). A control shows the check would import it.
    pytest.importorskip("pandas")
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import pyarrow as pa\n"
        "from batchrun.sinks import skip_pandas_probe\n"
        "if sys.argv[1] == 'probe': skip_pandas_probe()\n"
        "schema = pa.schema([('s', pa.string()), ('n', pa.int64()), ('l', pa.list_(pa.float32(), 2))])\n"
        "pa.Table.from_pylist([{'s': 'x', 'n': 1, 'l': [1.0, 2.0]}], schema=schema)\n"
        "print('pandas' in sys.modules)\n"
        "print(type(pa.table({'a': [1]}).to_pandas()).__name__)\n"  # what needs pandas still gets it
    )
    runs = {
        how: subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=60)
        for how in ("probe", "control")
    }
    assert all(r.returncode == 0 for r in runs.values()), {k: r.stderr for k, r in runs.items()}
    assert runs["probe"].stdout.split() == ["False", "DataFrame"]
    assert runs["control"].stdout.split() == ["True", "DataFrame"]


def test_the_cli_and_the_package_import_without_the_heavy_libraries() -> None:
    # `batchrun --help` (and `import batchrun`) must not pay for polars, the SDK or the engine: they load
    # on first use of the library's entry points (issue 12: --help took 1.7 s)
    import subprocess
    import sys

    code = (
        "import sys, batchrun.cli, batchrun\n"
        "heavy = sorted(m for m in ('polars', 'openai', 'pyarrow', 'tiktoken', 'aiohttp', 'jinja2') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert callable(batchrun.run) and batchrun.Job.__name__ == 'Job' and 'polars' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    helped = subprocess.run([sys.executable, "-m", "batchrun", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "plan" in helped.stdout


def test_stray_failures_retry_soon_common_ones_back_off() -> None:
    rate = FailureRate(window=200, rare_below=0.1)
    for i in range(1000):  # a healthy server: one answer in 20 fails
        rate.record(i % 20 == 0)
    assert rate.rare
    b = Backoff(base=0.5, rare_base=0.1)
    assert all(b.delay(1, random.Random(s), rare=True) <= 0.1 for s in range(50))
    # a server answering in 20 ms: a stray failure waits no longer than it takes to answer (then doubles)
    assert all(b.delay(1, random.Random(s), rare=True, typical=0.02) <= 0.02 for s in range(50))
    assert max(b.delay(3, random.Random(s), rare=True, typical=0.02) for s in range(50)) > 0.02
    assert all(b.delay(1, random.Random(s), rare=True, typical=0.5) <= 0.1 for s in range(50))  # never above
    assert max(b.delay(1, random.Random(s), rare=False, typical=0.02) for s in range(50)) > 0.1  # common: base
    for _ in range(30):  # an outage: every answer fails
        rate.record(True)
    assert not rate.rare
    assert max(b.delay(1, random.Random(s), rare=rate.rare) for s in range(50)) > 0.1


def test_rows_held_by_the_sink_are_written_in_full_row_groups_and_at_close(tmp_path: Path) -> None:
    """`hold` converts rows as they come and writes a row group once row_group_size are held; `close`
    writes the rest: the same rows, in order, as one `write` of them all."""
    import polars as pl
    import pyarrow.parquet as pq

    from batchrun.sinks import ParquetSink, RowResult, make_layout

    layout = make_layout(["text"], [pl.String], kind="chat", schema=None, model="gpt-4o-mini")
    records = [
        layout.record({"text": f"t{i}"}, RowResult(row=i, row_id=str(i), status="ok", output=f"o{i}"))
        for i in range(230)
    ]
    held = ParquetSink(tmp_path / "held.parquet", layout, row_group_size=100)
    for start in range(0, 230, 40):
        held.hold(records[start : start + 40])
    held.close()
    whole = ParquetSink(tmp_path / "whole.parquet", layout, row_group_size=100)
    whole.write(records)
    whole.close()
    ours = pq.ParquetFile(tmp_path / "held.parquet")
    assert [ours.metadata.row_group(i).num_rows for i in range(ours.num_row_groups)] == [100, 100, 30]
    assert ours.read().equals(pq.read_table(tmp_path / "whole.parquet"))
    assert ours.schema_arrow == layout.schema


def test_the_first_rows_of_a_run_are_a_batch_of_their_own() -> None:
    import polars as pl

    from batchrun.online import _first_rows_apart

    batches = [pl.DataFrame({"x": range(0, 250)}), pl.DataFrame({"x": range(250, 300)})]
    out = list(_first_rows_apart(iter(batches), 100))
    assert [(b.height, last) for b, last in out] == [(100, False), (150, False), (50, True)]
    assert pl.concat(b for b, _ in out)["x"].to_list() == list(range(300))
    assert [(b.height, last) for b, last in _first_rows_apart(iter([pl.DataFrame({"x": [1, 2]})]), 100)] == [(2, True)]
    assert list(_first_rows_apart(iter([]), 100)) == []

    def reads() -> Iterator[pl.DataFrame]:
        for i in range(3):
            read.append(i)
            yield pl.DataFrame({"x": range(i * 200, i * 200 + 200)})

    read: list[int] = []  # the first rows go before the next batch is read; every later one after
    seen = []
    for b, last in _first_rows_apart(reads(), 100):
        seen.append((b.height, last, list(read)))
    assert seen == [(100, False, [0]), (100, False, [0, 1]), (200, False, [0, 1, 2]), (200, True, [0, 1, 2])]
