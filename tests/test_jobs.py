from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from batchrun.errors import JobFileError, TemplateError
from batchrun.jobs import load_job
from batchrun.prompts import Renderer
from batchrun.sources import open_source

from .conftest import BASIC_CSV, BASIC_JOB, REPO

WriteJob = Callable[..., Path]


def test_demo_job_loads_with_strict_schema() -> None:
    job = load_job(REPO / "jobs" / "classify_reviews.toml")
    assert job.name == "classify_reviews"
    assert job.input.path == (REPO / "data" / "reviews.csv").resolve()
    schema = job.schema_strict
    assert schema is not None
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"sentiment", "topics", "language", "summary", "confidence"}
    with pytest.raises(ValidationError, match="frozen"):
        job.name = "other"  # type: ignore[misc]


def test_paths_resolve_against_the_job_folder(write_job: WriteJob, tmp_path: Path) -> None:
    job = load_job(write_job(BASIC_JOB, csv=BASIC_CSV))
    assert job.input.path == tmp_path / "input.csv"
    assert job.output_path == tmp_path / "job.parquet"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[input\npath=1", "not valid TOML"),
        (
            BASIC_JOB + "\n[limits]\nrpn = 5\n",
            r"\[limits.rpn\]: unknown key; allowed here: fail_fast_rows, max_attempts, max_in_flight, rpm, tpm",
        ),
        (BASIC_JOB.replace('model = "gpt-4o-mini"', ""), r"\[request.model\]: required key is missing"),
        ('mode = "fast"\n' + BASIC_JOB, r"\[mode\]: must be 'online', 'batch' or 'auto', not 'fast'"),
        (BASIC_JOB.replace("max_tokens = 50", "max_tokens = 50\nmax_completion_tokens = 60"), "not both"),
        (BASIC_JOB.replace("max_tokens = 50", ""), "chat jobs need `max_tokens`"),
        (
            BASIC_JOB.replace("max_tokens = 50", "max_tokens = -1"),
            r"\[request.max_tokens\]: Input should be greater than 0",
        ),
        (BASIC_JOB.replace('template = "Text: {{ text }}"', 'template = "x"\ntemplate_file = "t.j2"'), "not both"),
        (BASIC_JOB.replace('template = "Text: {{ text }}"', ""), "needs `template`"),
        (BASIC_JOB + "\n[request.params]\nstream = true\n", "params may not set \\['stream'\\]"),
        (BASIC_JOB + "\n[limits]\nrpm = 0\n", r"\[limits.rpm\]: Input should be greater than 0"),
        (BASIC_JOB + '\n[endpoint]\nazure_endpoint = "https://x.openai.azure.com"\n', "needs azure_api_version"),
        (BASIC_JOB.replace('path = "input.csv"', 'path = "input.dat"'), r"\[input.format\]: cannot tell the format"),
        (BASIC_JOB + '\n[output_schema]\nname = "x"\n', "give exactly one of `schema`"),
        (
            BASIC_JOB
            + '\n[output_schema]\nname = "bad name!"\nschema = {type="object", properties={a={type="string"}}}\n',
            "name 'bad name!' must be",
        ),
        (
            BASIC_JOB + '\n[output_schema]\nschema = {type="array", items={type="string"}}\n',
            "root schema must have type 'object'",
        ),
        (
            BASIC_JOB
            + '\n[output_schema]\nschema = {type="object", properties={a={type="string"}}, additionalProperties=true}\n',
            "additionalProperties must be false",
        ),
        (
            BASIC_JOB + '\n[output_schema]\nschema = {type="object", properties={a={not={type="string"}}}}\n',
            r"properties.a: keyword 'not' is not supported",
        ),
        (
            BASIC_JOB + '\n[output_schema]\nschema = {type="object", properties={a={type="string", format="phone"}}}\n',
            "format 'phone' is not supported",
        ),
        (
            BASIC_JOB + '\n[output_schema]\nschema_file = "missing.json"\n',
            r"\[output_schema.schema_file\]: cannot read",
        ),
        (BASIC_JOB + '\n[output_schema]\nmodel = "no_such_module:Thing"\n', "cannot import module 'no_such_module'"),
        (
            BASIC_JOB.replace('model = "gpt-4o-mini"', 'model = "text-embedding-3-small"\nkind = "embeddings"').replace(
                "max_tokens = 50", ""
            )
            + '\n[output_schema]\nschema = {type="object", properties={a={type="string"}}}\n',
            "embeddings jobs cannot have",
        ),
    ],
)
def test_job_file_errors_name_file_key_and_fix(write_job: WriteJob, toml: str, expected: str) -> None:
    path = write_job(toml, csv=BASIC_CSV)
    with pytest.raises(JobFileError, match=expected) as info:
        load_job(path)
    assert str(path) in str(info.value)


def test_missing_job_file() -> None:
    with pytest.raises(JobFileError, match="job file not found"):
        load_job("does/not/exist.toml")


def test_deep_schema_is_rejected(write_job: WriteJob) -> None:
    inner = '{type="string"}'
    for _ in range(11):
        inner = '{type="object", properties={x=' + inner + "}}"
    with pytest.raises(JobFileError, match="nesting deeper than 10"):
        load_job(write_job(BASIC_JOB + f"\n[output_schema]\nschema = {inner}\n", csv=BASIC_CSV))


def test_pydantic_model_schema_is_made_strict(write_job: WriteJob, tmp_path: Path) -> None:
    (tmp_path / "labels.py").write_text(
        "from typing import Literal\nfrom pydantic import BaseModel\n"
        "class Tag(BaseModel):\n    name: str\n    weight: float | None = None\n"
        "class Labels(BaseModel):\n    sentiment: Literal['pos', 'neg']\n    tags: list[Tag]\n"
    )
    job = load_job(
        write_job(BASIC_JOB + '\n[output_schema]\nname = "labels"\nmodel = "labels:Labels"\n', csv=BASIC_CSV)
    )
    schema = job.schema_strict
    assert schema is not None and schema["additionalProperties"] is False
    assert schema["required"] == ["sentiment", "tags"]
    tag = schema["$defs"]["Tag"]
    assert tag["additionalProperties"] is False and tag["required"] == ["name", "weight"]


def test_inline_schema_is_made_strict(write_job: WriteJob) -> None:
    job = load_job(
        write_job(
            BASIC_JOB
            + '\n[output_schema]\nschema = {type="object", properties={a={type="string"}, b={type="object", properties={c={type="integer"}}}}}\n',
            csv=BASIC_CSV,
        )
    )
    s = job.schema_strict
    assert s is not None
    assert s["required"] == ["a", "b"] and s["additionalProperties"] is False
    assert s["properties"]["b"]["required"] == ["c"] and s["properties"]["b"]["additionalProperties"] is False


def test_template_using_a_missing_column_fails_before_sending(write_job: WriteJob) -> None:
    job = load_job(write_job(BASIC_JOB.replace("{{ text }}", "{{ text }} {{ rating }}"), csv=BASIC_CSV))
    source = open_source(job.input)
    with pytest.raises(TemplateError, match=r"uses \['rating'\], which the input input.csv lacks; its columns are"):
        Renderer(job, source.columns)


def test_template_syntax_error_names_the_line(write_job: WriteJob) -> None:
    job = load_job(write_job(BASIC_JOB.replace("{{ text }}", "{{ text }"), csv=BASIC_CSV))
    with pytest.raises(TemplateError, match="prompt template, line 1"):
        Renderer(job, open_source(job.input).columns)


def test_template_file_and_examples(write_job: WriteJob, tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("Row {{ row_id }}: {{ row['text'] | upper }}")
    job = load_job(
        write_job(
            BASIC_JOB.replace('template = "Text: {{ text }}"', 'template_file = "t.j2"')
            + '\n[[prompt.examples]]\nrole = "user"\ncontent = "ex"\n[[prompt.examples]]\nrole = "assistant"\ncontent = "ok"\n',
            csv=BASIC_CSV,
        )
    )
    source = open_source(job.input)
    renderer = Renderer(job, source.columns)
    reqs = renderer.render(next(source.batches()))
    msgs = reqs[0].body["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[-1]["content"] == "Row a1: HELLO WORLD"
    assert reqs[0].body["max_tokens"] == 50 and reqs[0].max_output_tokens == 50
    for r in reqs:
        assert r.prompt_tokens == renderer.counter.count_chat_request(r.body)


def test_a_strict_schema_is_the_sdks_and_a_second_job_load_needs_no_sdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make_strict keeps the SDK's answer in the user's cache, named by the schema as written and the SDK's
    version: the same strict schema (property order included) again, without importing the SDK."""
    import json
    import subprocess
    import sys

    from openai.lib._pydantic import _ensure_strict_json_schema

    from batchrun import schemas

    monkeypatch.setenv("BATCHRUN_CACHE_DIR", str(tmp_path / "cache"))
    schema = {
        "type": "object",
        "properties": {
            "zeta": {"type": "string"},
            "alpha": {"type": "object", "properties": {"n": {"type": "integer"}}},
        },
    }
    sdk = _ensure_strict_json_schema(json.loads(json.dumps(schema)), path=(), root=json.loads(json.dumps(schema)))
    first = schemas.make_strict(schema)
    assert first == sdk and list(first["properties"]) == ["zeta", "alpha"]
    assert len(list((tmp_path / "cache").glob("strict-schema-*.json"))) == 1
    script = (
        "import sys, json\nfrom batchrun import schemas\n"
        f"out = schemas.make_strict(json.loads({json.dumps(json.dumps(schema))}))\n"
        "print(json.dumps(out), 'openai' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    text, loaded = out.stdout.strip().rsplit(" ", 1)
    assert json.loads(text) == sdk and list(json.loads(text)["properties"]) == ["zeta", "alpha"] and loaded == "False"
    reordered = {"type": "object", "properties": {"alpha": schema["properties"]["alpha"], "zeta": {"type": "string"}}}
    assert list(schemas.make_strict(reordered)["properties"]) == ["alpha", "zeta"]  # its own entry, not the other's
    monkeypatch.setenv("BATCHRUN_CACHE_DIR", "/proc/no-such-dir")  # unwritable: the SDK's answer, every time
    assert schemas.make_strict(schema) == sdk
