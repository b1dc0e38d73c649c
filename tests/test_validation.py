"""Bad input is refused before a cent is spent, with a message naming the file, key or row; nothing
paid for is lost; the key reaches no file and no stream. Each case: the message, exit 2, and a
simulator that saw no request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchrun
from batchrun.errors import ExitCode
from batchrun.jobs import load_job
from batchrun.sim import SimServer

SimFactory = Callable[..., SimServer]
ENV = {**os.environ, "BATCHRUN_TEST_KEY": "sk-test"}

JOB = """
[input]
path = "{input}"
{input_extra}

[prompt]
template = "{template}"

[request]
model = "gpt-4o-mini"
max_tokens = {max_tokens}

[endpoint]
base_url = "{base_url}"
api_key_env = "BATCHRUN_TEST_KEY"
{extra}
"""


def job_file(
    tmp: Path,
    base_url: str,
    *,
    input: str = "input.csv",
    input_extra: str = "",
    template: str = "{{ text }}",
    max_tokens: str = "150",
    extra: str = "",
    name: str = "job.toml",
) -> Path:
    path = tmp / name
    path.write_text(
        JOB.format(
            input=input,
            input_extra=input_extra,
            template=template,
            max_tokens=max_tokens,
            base_url=base_url,
            extra=extra,
        ),
        encoding="utf-8",
    )
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args], capture_output=True, text=True, env=env or ENV, timeout=120
    )


def refused(sim: SimServer, proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == ExitCode.USER, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert sim.stats()["requests"] == 0


# -- money spent on nonsense -----------------------------------------------------------------------


def test_an_empty_cell_is_empty_input_never_the_word_none(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    (tmp_path / "input.csv").write_text("id,text\na,hello\nb,\nc,world\n")
    path = job_file(tmp_path, sim.base_url, input_extra='id_column = "id"')
    plan = cli("plan", str(path))
    assert "empty rows           1" in plan.stdout and "'b'" in plan.stdout
    done = cli("run", str(path), "-q")
    assert done.returncode == ExitCode.ROWS_FAILED  # an unanswered row: cron hears of it
    df = pl.read_parquet(load_job(path).output_path)
    assert df["status"].to_list() == ["ok", "empty_input", "ok"]
    assert sim.stats()["ok"] == 2
    sent = list(sim.sim.user_prompts)
    assert "None" not in sent


def test_empty_send_renders_null_as_nothing_and_fail_refuses(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    (tmp_path / "input.csv").write_text("id,text\na,hello\nb,\n")
    send = job_file(tmp_path, sim.base_url, input_extra='id_column = "id"\nempty = "send"', template="Say: {{ text }}")
    assert cli("run", str(send), "-q").returncode == 0
    sent = sorted(sim.sim.user_prompts)
    assert sent == ["Say: ", "Say: hello"]
    fail = job_file(tmp_path, sim.base_url, input_extra='id_column = "id"\nempty = "fail"', name="fail.toml")
    proc = cli("run", str(fail), "-q")
    assert proc.returncode == ExitCode.USER and "data row 2 (id 'b')" in proc.stderr
    assert sim.stats()["requests"] == 2  # only the first job's


def test_nul_bytes_are_refused_with_the_row_or_stripped(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    (tmp_path / "input.csv").write_bytes(b'id,text\na,fine\nb,"bro\x00ken"\n')
    path = job_file(tmp_path, sim.base_url, input_extra='id_column = "id"')
    refused(sim, cli("run", str(path), "-q"), "data row 2 (id 'b')", "column 'text'", "U+0000", "control_chars")
    strip = job_file(tmp_path, sim.base_url, input_extra='id_column = "id"\ncontrol_chars = "strip"', name="s.toml")
    assert cli("run", str(strip), "-q").returncode == 0
    sent = sorted(sim.sim.user_prompts)
    assert sent == ["broken", "fine"]


@pytest.mark.parametrize(
    ("max_tokens", "message"),
    [("true", "[request.max_tokens]: must be a whole number, not true"), ('"50"', 'not "50"'), ("0", "greater than 0")],
)
def test_numbers_must_be_numbers(make_sim: SimFactory, tmp_path: Path, max_tokens: str, message: str) -> None:
    sim = make_sim()
    (tmp_path / "input.csv").write_text("text\nhello\n")
    refused(sim, cli("run", str(job_file(tmp_path, sim.base_url, max_tokens=max_tokens)), "-q"), message)


@pytest.mark.parametrize("url", ["localhost:1/v1", "ftp://example.com/v1", "http://", "http://h:port/v1"])
def test_a_malformed_base_url_is_refused(make_sim: SimFactory, tmp_path: Path, url: str) -> None:
    sim = make_sim()
    (tmp_path / "input.csv").write_text("text\nhello\n")
    refused(sim, cli("run", str(job_file(tmp_path, url)), "-q"), "[endpoint.base_url]")


# -- data destroyed --------------------------------------------------------------------------------


def test_the_output_may_not_replace_the_input(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    (tmp_path / "input.csv").write_text("text\nhello\n")
    path = job_file(tmp_path, sim.base_url, extra='[output]\npath = "input.csv"')
    refused(sim, cli("run", str(path), "-q"), "[output.path]", "would destroy it")
    assert (tmp_path / "input.csv").read_text() == "text\nhello\n"
    (tmp_path / "link.csv").symlink_to(tmp_path / "input.csv")
    via_link = job_file(tmp_path, sim.base_url, extra='[output]\npath = "link.csv"', name="l.toml")
    refused(sim, cli("plan", str(via_link)), "would destroy it")


def test_an_output_that_is_a_folder_or_under_a_file_is_refused_first(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    (tmp_path / "input.csv").write_text("text\nhello\n")
    (tmp_path / "out").mkdir()
    folder = job_file(tmp_path, sim.base_url, extra='[output]\npath = "out"')
    refused(sim, cli("run", str(folder), "-q"), "is a folder")
    (tmp_path / "afile").write_text("x")
    under = job_file(tmp_path, sim.base_url, extra='[output]\npath = "afile/x.parquet"', name="u.toml")
    refused(sim, cli("run", str(under), "-q"), "is a file, not a folder")
    unknown = job_file(tmp_path, sim.base_url, extra='[output]\npath = "x.txt"', name="t.toml")
    refused(sim, cli("run", str(unknown), "-q"), "unknown output format '.txt'")


# -- tracebacks instead of messages ----------------------------------------------------------------


def test_user_mistakes_are_messages_not_tracebacks(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    (tmp_path / "input.csv").write_text("text\nhello\n")
    ref = job_file(
        tmp_path, sim.base_url, extra='[output_schema]\nschema = {type="object", properties={a={"$ref"="#/$defs/X"}}}'
    )
    refused(sim, cli("run", str(ref), "-q"), "$ref '#/$defs/X' points at nothing")
    (tmp_path / "fake.xlsx").write_text("text\nhello\n")
    xlsx = job_file(tmp_path, sim.base_url, input="fake.xlsx", name="x.toml")
    refused(sim, cli("run", str(xlsx), "-q"), "is not an Excel workbook", 'format = "csv"')
    refused(sim, cli("run", str(tmp_path), "-q"), "is a folder; give the job file itself")
    (tmp_path / "rag.csv").write_text("id,text\n1,a\n2,b,c\n3,d\n")
    rag = job_file(tmp_path, sim.base_url, input="rag.csv", name="r.toml")
    refused(sim, cli("run", str(rag), "-q"), "line 3 has 3 fields where the header has 2")
    bad_filter = job_file(tmp_path, sim.base_url, input_extra='filter = "text >>> 2"', name="f.toml")
    refused(sim, cli("run", str(bad_filter), "-q"), "[input] filter = 'text >>> 2'")


def test_a_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    (tmp_path / "input.csv").write_text("text\n" + "\n".join(f"row {i}" for i in range(50)) + "\n")
    path = job_file(tmp_path, "http://127.0.0.1:9/v1")
    proc = subprocess.run(
        f"{sys.executable} -m batchrun plan {path} | head -1", shell=True, capture_output=True, text=True, env=ENV
    )
    assert proc.stdout.startswith("Plan for job") and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


# -- the key ---------------------------------------------------------------------------------------


class _EchoHandler(BaseHTTPRequestHandler):
    """A gateway that echoes the caller's credentials in its errors (some do, in 401 bodies)."""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        auth = self.headers.get("authorization", "")
        text = json.dumps(body.get("messages", [{}])[-1].get("content", ""))
        status = 401 if "auth" in text else 500 if "boom" in text else 400
        message = f"upstream rejected {auth!s} (key {auth.removeprefix('Bearer ')}; api-key: {auth[7:]})"
        payload = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_key_echoed_by_the_server_reaches_no_file_and_no_stream(echo_server: str, tmp_path: Path) -> None:
    key = "gw_live_" + "Q7f3k9ZpX2m4V8bN1cR6"  # not key-shaped: only the exact-key net can catch it
    (tmp_path / "input.csv").write_text("id,text\na,boom one\nb,bad two\nc,boom three\n")
    path = job_file(
        tmp_path,
        echo_server,
        input_extra='id_column = "id"',
        extra='[limits]\nmax_attempts = 2\n[output]\naudit = "audit.jsonl"',
    )
    env = {**os.environ, "BATCHRUN_TEST_KEY": key}
    rows = cli("run", str(path), env=env)
    (tmp_path / "input.csv").write_text("id,text\nz,auth please\n")
    stop = cli("run", str(path), env=env)
    assert stop.returncode == ExitCode.ENDPOINT and "[redacted]" in stop.stderr
    for proc in (rows, stop):
        assert key not in proc.stdout + proc.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files) and (tmp_path / "audit.jsonl").exists()
    for f in files:
        assert key.encode() not in f.read_bytes(), f
    errors = pl.read_parquet(load_job(path).output_path)["error"].to_list()
    assert any("[redacted]" in (e or "") for e in errors)


# -- output formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".xlsx"])
def test_outputs_by_suffix_are_exported_from_the_typed_parquet(
    make_sim: SimFactory, tmp_path: Path, suffix: str
) -> None:
    sim = make_sim()
    (tmp_path / "input.csv").write_text("id,text\na,hello\nb,world\n")
    schema = '[output_schema]\nschema = {type="object", properties={tags={type="array", items={type="string"}}}}'
    path = job_file(
        tmp_path, sim.base_url, input_extra='id_column = "id"', extra=f'{schema}\n[output]\npath = "out{suffix}"'
    )
    result = batchrun.run(path)
    out = tmp_path / f"out{suffix}"
    assert out.exists() and result.output_path == out
    typed = result.frame()  # the Parquet it was exported from
    assert typed.schema["tags"] == pl.List(pl.String) and typed.height == 2
    if suffix == ".csv":
        back = pl.read_csv(out)
        assert json.loads(back["tags"][0]) == typed["tags"][0].to_list()
    elif suffix == ".jsonl":
        back = pl.read_ndjson(out)
        assert back["tags"].to_list() == typed["tags"].to_list()
    else:
        back = pl.read_excel(out)
        assert back["id"].to_list() == ["a", "b"]
    assert back["status"].to_list() == ["ok", "ok"]


# -- corrupted inputs ------------------------------------------------------------------------------

VALID_CSV = b'id,text\nr1,the battery died\nr2,"works, mostly"\nr3,great value\nr4,arrived broken\n'
VALID_JSONL = b'{"id": "r1", "text": "the battery died"}\n{"id": "r2", "text": "works"}\n{"id": "r3", "text": "ok"}\n'


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.sampled_from(["csv", "jsonl"]),
    edits=st.lists(st.tuples(st.integers(0, 200), st.binary(min_size=0, max_size=3)), min_size=1, max_size=4),
)
def test_corrupted_inputs_never_traceback_and_never_send_what_was_not_written(
    make_sim: SimFactory, tmp_path_factory: pytest.TempPathFactory, which: str, edits: list[tuple[int, bytes]]
) -> None:
    tmp = tmp_path_factory.mktemp("corrupt")
    data = bytearray(VALID_CSV if which == "csv" else VALID_JSONL)
    for pos, new in edits:
        pos = min(pos, len(data))
        data[pos : pos + 1] = new
    (tmp / f"input.{which}").write_bytes(bytes(data))
    sim = make_sim()
    path = job_file(tmp, sim.base_url, input=f"input.{which}", input_extra='id_column = "id"')
    try:
        result = batchrun.run(path)
    except batchrun.UserError:
        assert sim.stats()["requests"] == 0  # refused before anything was sent
        return
    assert result.rows >= 1
    text = bytes(data).decode("utf-8")
    for prompt in sim.sim.user_prompts:
        assert prompt.replace('"', "") in text.replace('"', "").replace('""', "")  # every prompt was in the file


# -- templated system prompts ----------------------------------------------------------------------


def test_a_templated_system_prompt_is_rendered_per_row_and_counted_exactly(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    sim = make_sim()
    (tmp_path / "input.csv").write_text("id,text,lang\na,hello,French\nb,hello,German\nc,bye,French\n")
    path = job_file(tmp_path, sim.base_url, input_extra='id_column = "id"')
    text = path.read_text().replace("[prompt]", '[prompt]\nsystem = "Answer in {{ lang }}."')
    path.write_text(text)
    plan = batchrun.make_plan(load_job(path))
    result = batchrun.run(path)
    assert result.by_status == {"ok": 3} and result.requests_sent == 3  # "hello" twice, but two languages
    assert sorted(sim.sim.system_prompts) == ["Answer in French.", "Answer in French.", "Answer in German."]
    assert result.prompt_tokens == plan.prompt_tokens_total == sim.stats()["prompt_tokens"]
    again = batchrun.run(path)
    assert again.cached_rows == 3 and sim.stats()["ok"] == 3


EXAMPLES = """
[[prompt.examples]]
role = "user"
content = "Say hi in {{ lang }}."
[[prompt.examples]]
role = "assistant"
content = "{{ greeting }}"
"""


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_few_shot_examples_naming_columns_are_rendered_per_row(make_sim: SimFactory, tmp_path: Path, mode: str) -> None:
    sim = make_sim(batch_validate_seconds=0.05, batch_run_seconds=0.2, batch_finalize_seconds=0.05)
    (tmp_path / "input.csv").write_text("id,text,lang,greeting\na,hello,French,Bonjour\nb,hello,German,Hallo\n")
    extra = "[batch]\npoll_seconds = 0.05" if mode == "batch" else ""
    path = job_file(tmp_path, sim.base_url, input_extra='id_column = "id"', extra=extra)
    text = path.read_text().replace("[request]", EXAMPLES.strip() + "\n\n[request]")
    path.write_text(('mode = "batch"\n' if mode == "batch" else "") + text)
    plan = batchrun.make_plan(load_job(path))
    result = batchrun.run(path, wait=True) if mode == "batch" else batchrun.run(path)
    assert result.by_status == {"ok": 2}  # "hello" twice, but each row's own examples
    assert result.prompt_tokens == plan.prompt_tokens_total  # the server's own counts, in both modes
    if mode == "online":
        assert plan.prompt_tokens_total == sim.stats()["prompt_tokens"]
        assert sorted(p for p in sim.sim.user_prompts) == ["hello", "hello"]
        assert batchrun.run(path).cached_rows == 2


def test_an_example_naming_a_missing_column_is_refused(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    (tmp_path / "input.csv").write_text("text\nhello\n")
    path = job_file(tmp_path, sim.base_url)
    path.write_text(path.read_text().replace("[request]", EXAMPLES.strip() + "\n\n[request]"))
    refused(sim, cli("run", str(path), "-q"), "[prompt.examples] #1 uses ['lang']", "sent literally")


def test_a_system_prompt_naming_no_column_is_refused_not_sent_literally(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    (tmp_path / "input.csv").write_text("text\nhello\n")
    path = job_file(tmp_path, sim.base_url)
    path.write_text(path.read_text().replace("[prompt]", '[prompt]\nsystem = "Answer in {{ lang }}."'))
    refused(sim, cli("run", str(path), "-q"), "[prompt.system] uses ['lang']", "sent literally")


def test_a_templated_system_prompt_goes_through_the_batch_api(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(batch_validate_seconds=0.05, batch_run_seconds=0.2, batch_finalize_seconds=0.05)
    (tmp_path / "input.csv").write_text("id,text,lang\na,hello,French\nb,hello,German\n")
    path = job_file(tmp_path, sim.base_url, input_extra='id_column = "id"', extra="[batch]\npoll_seconds = 0.05")
    text = path.read_text().replace("[prompt]", '[prompt]\nsystem = "Answer in {{ lang }}."')
    path.write_text('mode = "batch"\n' + text)
    result = batchrun.run(path, wait=True)
    assert result.by_status == {"ok": 2} and result.mode == "batch"


# -- per-row parameters ----------------------------------------------------------------------------


def test_per_row_parameters_reach_the_requests_counts_and_costs(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(text_tokens=(40, 60))
    (tmp_path / "input.csv").write_text("id,text,mt,t\na,one,5,0.1\nb,two,,\nc,three,500,1.5\n")
    path = job_file(
        tmp_path, sim.base_url, input_extra='id_column = "id"',
        extra="",
    )  # fmt: skip
    text = path.read_text().replace(
        "max_tokens = 150", 'max_tokens = 150\nparams_from = { max_tokens = "mt", temperature = "t" }'
    )
    path.write_text(text)
    plan = batchrun.make_plan(load_job(path))
    assert plan.output_tokens_worst == 5 + 150 + 500  # each row's own limit; a null cell takes the job's
    result = batchrun.run(path)
    df = result.frame()
    assert df["status"].to_list() == ["truncated", "ok", "ok"]  # row a was cut at its own 5 tokens
    assert df["completion_tokens"][0] == 5
    assert result.prompt_tokens == plan.prompt_tokens_total == sim.stats()["prompt_tokens"]
    cost = (sim.stats()["prompt_tokens"] * 0.15 + sim.stats()["completion_tokens"] * 0.60) / 1e6
    assert result.cost_usd == pytest.approx(cost)
    assert batchrun.run(path).cached_rows == 3  # the per-row values are part of each row's fingerprint


def test_bad_per_row_parameter_values_are_refused_before_sending(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    (tmp_path / "input.csv").write_text("id,text,mt\na,one,5\nb,two,-3\n")
    path = job_file(tmp_path, sim.base_url, input_extra='id_column = "id"')
    path.write_text(
        path.read_text().replace("max_tokens = 150", 'max_tokens = 150\nparams_from = { max_tokens = "mt" }')
    )
    refused(sim, cli("run", str(path), "-q"), "data row 2 (id 'b')", "column 'mt'", "is -3")
    path.write_text(path.read_text().replace('params_from = { max_tokens = "mt" }', 'params_from = { model = "mt" }'))
    refused(sim, cli("run", str(path), "-q"), "column 'mt' ([request.params_from] model) holds Int64")


PRICES = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00), "gpt-4-turbo": (10.00, 30.00)}
MODELS_CSV = "id,text,m\na,one,gpt-4o\nb,two,\nc,three,gpt-4-turbo\nd,four,gpt-4o\ne,five,\n"


def _usage_cost(df: pl.DataFrame, discount: float = 1.0) -> float:
    by_row = zip(df["m"].to_list(), df["prompt_tokens"].to_list(), df["completion_tokens"].to_list(), strict=True)
    total = 0.0
    for m, p, c in by_row:
        inp, out = PRICES[m or "gpt-4o-mini"]
        total += (p * inp + c * out) / 1e6 * discount
    return total


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_per_row_models_are_sent_counted_and_priced_each_at_its_own(
    make_sim: SimFactory, tmp_path: Path, mode: str
) -> None:
    sim = make_sim(models=("gpt-4o-mini", "gpt-4o", "gpt-4-turbo"), text_tokens=(5, 20), batch_validate_seconds=0.05,
                   batch_run_seconds=0.2, batch_finalize_seconds=0.05)  # fmt: skip
    (tmp_path / "input.csv").write_text(MODELS_CSV)
    path = job_file(tmp_path, sim.base_url, input_extra='id_column = "id"', max_tokens="40")
    text = path.read_text().replace("max_tokens = 40", 'max_tokens = 40\nparams_from = { model = "m" }')
    if mode == "batch":
        text = 'mode = "batch"\n' + text + "\n[batch]\npoll_seconds = 0.05\npoll_max_seconds = 0.2\n"
    path.write_text(text)
    plan = batchrun.make_plan(load_job(path))
    assert any("rows use gpt-4-turbo (1), gpt-4o (2), gpt-4o-mini (2)" in n for n in plan.notes), plan.notes
    result = batchrun.run(path, wait=True) if mode == "batch" else batchrun.run(path)
    df = result.frame()
    assert df["status"].to_list() == ["ok"] * 5
    # each row was answered by its own model (the simulator names the model it was asked for)
    assert df["model"].to_list() == ["gpt-4o", "gpt-4o-mini", "gpt-4-turbo", "gpt-4o", "gpt-4o-mini"]
    # counted with each model's encoding (gpt-4-turbo is cl100k_base): the plan's tokens are the server's
    assert plan.prompt_tokens_total == sim.stats()["prompt_tokens"] if mode == "online" else True
    assert result.prompt_tokens == plan.prompt_tokens_total
    discount = 0.5 if mode == "batch" else 1.0
    assert result.cost_usd == pytest.approx(_usage_cost(df, discount))
    expected_worst = sum(
        (n * PRICES[m or "gpt-4o-mini"][0] + 40 * PRICES[m or "gpt-4o-mini"][1]) / 1e6
        for m, n in zip(df["m"].to_list(), df["prompt_tokens"].to_list(), strict=True)
    )
    assert plan.cost_online_worst == pytest.approx(expected_worst)
    if mode == "batch":  # one model per batch file, as the API requires
        models = sim.call(lambda: sorted(b.model for b in sim.sim.batches.batches.values()))
        assert models == ["gpt-4-turbo", "gpt-4o", "gpt-4o-mini"]


def test_per_row_models_need_prices_for_a_budget(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(models=("gpt-4o-mini", "acme-7b"))
    (tmp_path / "input.csv").write_text("id,text,m\na,one,acme-7b\nb,two,\n")
    extra = "[budget]\nmax_usd = 5\n[pricing]\nlocal = false"  # the simulator is on loopback: not one's own
    path = job_file(tmp_path, sim.base_url, input_extra='id_column = "id"', extra=extra)
    path.write_text(path.read_text().replace("max_tokens = 150", 'max_tokens = 150\nparams_from = { model = "m" }'))
    refused(sim, cli("run", str(path), "-q", "--over-budget"), "no price is known for 'acme-7b'", "params_from model")


def test_the_command_exits_with_mains_code_and_skips_only_the_teardown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """cli.console: main's exit code through os._exit after the exit handlers ran and output was
    flushed; sys.exit's rules for None and text; the ordinary exit while a thread of its own runs."""
    import atexit
    import threading

    from batchrun import cli

    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        raise Exited(code)

    ran: list[str] = []
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: ran.append("atexit"))
    for raised, code in ((SystemExit(6), 6), (SystemExit(None), 0), (SystemExit("no such job"), 1)):

        def main(raised: SystemExit = raised) -> None:
            print("summary")
            raise raised

        monkeypatch.setattr(cli, "main", main)
        with pytest.raises(Exited) as info:
            cli.console()
        assert info.value.args == (code,) and ran[-1] == "atexit"
    out = capsys.readouterr()
    assert out.out.count("summary") == 3 and "no such job" in out.err
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait)  # not a daemon: the interpreter would wait for it
    busy.start()
    try:
        with pytest.raises(SystemExit) as ordinary:
            cli.console()
        assert ordinary.value.code == "no such job" and len(ran) == 3
    finally:
        stop.set()
        busy.join()


def test_plan_and_status_load_only_what_they_need(tmp_path: Path) -> None:
    """`plan` and `status` read the input and the ledger: not the SDK, aiohttp, the simulator, jsonschema
    or ebooklib; `status` not even polars or pyarrow (issue 12, part 5)."""
    (tmp_path / "input.csv").write_text("text\nhello\nworld\n")
    path = job_file(tmp_path, "http://127.0.0.1:9/v1")
    heavy = ("openai", "aiohttp", "batchrun.sim", "jsonschema", "ebooklib", "polars", "pyarrow")
    for command, allowed in (("plan", {"polars"}), ("status", set())):
        script = (
            "import sys, io, contextlib\nfrom batchrun import cli\n"
            f"sys.argv = ['batchrun', {command!r}, {str(path)!r}]\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        cli.main()\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, check=True)
        loaded = set(json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"')))
        assert loaded <= allowed, (command, loaded)
