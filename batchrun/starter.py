"""`batchrun init`: a commented job file written from an input file, that `batchrun plan` accepts as is.

Table inputs get a template over their text columns, an example JSON schema (each property becomes
a typed output column), the limits, a budget; a document (txt, Markdown, EPUB) gets a translation job.
The id column is guessed only when a column is named like one and its values are unique in the file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import polars as pl

from .errors import UserError
from .jobs import DOCUMENT_FORMATS, InputSpec
from .sources import open_source

TEMPLATE_COLUMNS = 6
"""Text columns the starter template names (the rest are listed in a comment)."""


def _toml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _ref(column: str) -> str:
    """A column in a Jinja2 template: `{{ name }}`, or `{{ row["a b"] }}` for a name that is not an identifier."""
    return f"{{{{ {column} }}}}" if re.fullmatch(r"[A-Za-z_]\w*", column) else f"{{{{ row[{_toml_str(column)}] }}}}"


def _guess_id(source_columns: tuple[str, ...], frame: pl.DataFrame) -> str | None:
    """A column named like an id whose values (in the first 100,000 rows) are present and unique."""
    for col in source_columns:
        named = re.fullmatch(r"(?i)(id|.*[_ ]id|.*Id|key|uuid)", col)
        if named and frame[col].null_count() == 0 and frame[col].n_unique() == frame.height:
            return col
    return None


def starter_job(input_path: Path, job_path: Path) -> str:
    """The text of a job file for `input_path`, to be written at `job_path` (paths made relative to it)."""
    input_path = input_path.resolve()
    job_dir = job_path.resolve().parent
    rel = Path(os.path.relpath(input_path, job_dir)).as_posix()
    name = re.sub(r"\W+", "_", input_path.stem).strip("_").lower() or "job"
    out = Path(os.path.relpath(job_dir.parent / "out" / f"{name}.parquet", job_dir)).as_posix()
    suffix = input_path.suffix.lower().lstrip(".")
    if suffix in DOCUMENT_FORMATS:
        return _document_job(name, rel, out, input_path.name)
    source = open_source(InputSpec(path=input_path))
    sample = next(iter(source.batches(100_000)), None)
    if sample is None:
        raise UserError(f"{input_path}: no rows to make a job of")
    id_col = _guess_id(source.columns, sample)
    named = [c for c in source.columns if c != id_col][:TEMPLATE_COLUMNS]
    template = "\n".join(f"{c}: {_ref(c)}" for c in named)
    rest = [c for c in source.columns if c not in named and c != id_col]
    lines = [
        f"# A batchrun job for {input_path.name} ({source.rows:,} rows; columns: {', '.join(source.columns)}).",
        "# Written by `batchrun init`; edit the prompt and the schema, then:",
        f"#   batchrun plan {job_path.as_posix()}    # tokens, cost and time — nothing is sent",
        f"#   batchrun run  {job_path.as_posix()}    # no OPENAI_API_KEY set: runs against the simulator",
        f"name = {_toml_str(name)}",
        'mode = "online"              # "batch": the Batch API, half price, results within 24 h; "auto": the plan picks',
        "",
        "[input]",
        f"path = {_toml_str(rel)}     # relative to this file",
        (f"id_column = {_toml_str(id_col)}     # names each row in the output and the ledger (unique)"
         if id_col else "# id_column = \"...\"          # a column naming each row (unique); default: the row number"),
        "# columns = [...]              # input columns kept in the output (default: all)",
        "",
        "[prompt]",
        'system = """You label each row for an analytics team. Say what to return and how to decide it."""',
        f'template = """{template}"""' + (f"\n# other columns: {', '.join(rest)}" if rest else ""),
        "",
        "[request]",
        'model = "gpt-4o-mini"',
        "temperature = 0",
        "max_tokens = 200              # the most a reply may use (reserved against TPM and the budget)",
        "expected_output_tokens = 60   # what a typical reply uses, for the plan's expected cost",
        '# service_tier = "flex"        # batch prices on the synchronous API, where the model offers it',
        "",
        "# Structured output: each property becomes a typed column of the output. Remove the section for",
        "# free-text replies (an `output` column).",
        "[output_schema]",
        'name = "labels"',
        "",
        "[output_schema.schema]",
        'type = "object"',
        'required = ["label", "confidence", "summary"]',
        "additionalProperties = false",
        "",
        "[output_schema.schema.properties.label]",
        'type = "string"',
        'enum = ["positive", "negative", "neutral"]',
        "",
        "[output_schema.schema.properties.confidence]",
        'type = "number"',
        "",
        "[output_schema.schema.properties.summary]",
        'type = "string"',
        "",
        "[limits]                       # your account's limits for the model (the server's headers win when lower)",
        "rpm = 500",
        "tpm = 200000",
        "# max_in_flight = 256",
        "",
        "[budget]",
        "max_usd = 1.00                 # the run stops before spending more; raise it to finish",
        "",
        "[output]",
        f"path = {_toml_str(out)}     # .parquet, .csv, .jsonl or .xlsx; a run report is written beside it",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def _document_job(name: str, rel: str, out: str, shown: str) -> str:
    return "\n".join([
        f"# A batchrun job translating {shown}, chapter by chapter, in ordered chunks. Written by `batchrun init`.",
        "name = " + _toml_str(name),
        "",
        "[input]",
        f"path = {_toml_str(rel)}",
        "",
        "[prompt]",
        'system = """You are a literary translator. Translate the paragraphs into French, keeping tone and formatting."""',
        "",
        "[request]",
        'model = "gpt-4o-mini"',
        "temperature = 0",
        "max_tokens = 4000             # a chunk's whole reply",
        "",
        "[document]",
        "chunk_tokens = 800            # source tokens per request",
        "context_paragraphs = 3        # each chapter a chain carrying its last translated paragraphs",
        'outputs = ["txt", "md"]',
        'language = "fr"',
        "",
        "[limits]",
        "rpm = 500",
        "tpm = 200000",
        "",
        "[budget]",
        "max_usd = 5.00",
        "",
        "[output]",
        f"path = {_toml_str(out)}",
        "",
    ])  # fmt: skip


def write_starter(input_path: Path, job_path: Path, *, force: bool = False) -> Path:
    """Write the starter job file; an existing file is kept unless `force`."""
    if job_path.exists() and not force:
        raise UserError(f"{job_path} exists; choose another path with -o, or pass --force to replace it")
    text = starter_job(input_path, job_path)
    job_path.parent.mkdir(parents=True, exist_ok=True)
    job_path.write_text(text, encoding="utf-8")
    return job_path


__all__ = ["starter_job", "write_starter"]
