"""The job file: TOML parsed once into frozen, typed objects.

Everything past `load_job` receives these objects, never a dict of settings.
Errors name the file, the key and what is allowed. Relative paths in a job file
are relative to the job file's own folder, so `batchrun run jobs/x.toml` works
from any working directory (cron).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from . import schemas
from .errors import JobFileError, SchemaError
from .job_tables import BatchSpec, DocumentSpec, PricingSpec, Spec

FORMATS = ("csv", "tsv", "parquet", "jsonl", "xlsx", "txt", "md", "epub")
DOCUMENT_FORMATS = ("txt", "md", "epub")
SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".xlsx": "xlsx",
    ".txt": "txt",
    ".text": "txt",
    ".md": "md",
    ".markdown": "md",
    ".epub": "epub",
}


OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".xlsx": "xlsx"}  # fmt: skip
"""Output suffixes: typed Parquet is always written; the others are exported from it at the end of a run."""


class InputSpec(Spec):
    """[input]: where rows come from."""

    path: Path
    format: Literal["csv", "tsv", "parquet", "jsonl", "xlsx", "txt", "md", "epub"] | None = None
    id_column: str | None = None
    """Column holding a unique id per row; without it the row number (from 0) is the id."""
    limit: int | None = Field(default=None, gt=0)
    filter: str | None = None
    """A SQL boolean expression over the columns, e.g. "rating <= 2 AND lang = 'en'"."""
    columns: tuple[str, ...] | None = None
    """Input columns copied to the output (default: all)."""
    sheet: str | None = None
    separator: str | None = Field(default=None, min_length=1, max_length=1)
    empty: Literal["skip", "send", "fail"] = "skip"
    """A row whose template columns are empty (null) or whose prompt renders blank: "skip" writes it with
    status empty_input and sends nothing; "send" sends it (null renders as ""); "fail" refuses the input."""
    control_chars: Literal["reject", "strip"] = "reject"
    """NUL and other C0 control characters in a text cell (tab, newline and CR aside): refuse the input,
    naming the row, or strip them from the prompt."""

    @model_validator(mode="after")
    def _format_keys(self) -> InputSpec:
        fmt = self.resolved_format
        if self.sheet is not None and fmt and fmt != "xlsx":
            raise ValueError(f"`sheet` picks a worksheet of an Excel file; {self.path.name} is {fmt}: remove it")
        if self.separator is not None and fmt and fmt not in ("csv", "tsv"):
            raise ValueError(f"`separator` applies to CSV files; {self.path.name} is {fmt}: remove it")
        return self

    @property
    def resolved_format(self) -> str:
        if self.format:
            return self.format
        return SUFFIX_FORMATS.get(self.path.suffix.lower(), "")

    @property
    def is_document(self) -> bool:
        """A whole document (txt, Markdown, EPUB) split into chapters and paragraphs, not a table of rows."""
        return self.resolved_format in DOCUMENT_FORMATS


class Message(Spec):
    role: Literal["system", "developer", "user", "assistant"]
    content: str
    name: str | None = None


class PromptSpec(Spec):
    """[prompt]: how a row becomes messages."""

    system: str | None = None
    template: str | None = None
    """Jinja2 over the row's columns (also available as `row["col name"]`); undefined names fail."""
    template_file: Path | None = None
    examples: tuple[Message, ...] = ()

    @model_validator(mode="after")
    def _one_template(self) -> PromptSpec:
        if self.template is not None and self.template_file is not None:
            raise ValueError("give `template` or `template_file`, not both")
        return self


class RequestSpec(Spec):
    """[request]: the request each row becomes."""

    kind: Literal["chat", "embeddings"] = "chat"
    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    seed: int | None = None
    service_tier: Literal["default", "flex", "priority", "auto"] | None = None
    """The processing tier asked for (OpenAI, Azure): flex = Batch API prices on the synchronous API,
    slower, sometimes "resource unavailable"; priority = faster at a premium. Billed by the tier the
    response says served the row. None: not sent (the project's own default)."""
    flex_fallback: Literal["default", "never"] = "default"
    """A flex row refused `flex_fallback_after` times as resource unavailable is sent on the default tier
    ("default"), or kept on flex until max_attempts ("never")."""
    flex_fallback_after: int = Field(default=3, ge=1, le=50)
    prompt_cache_key: str | None = Field(default=None, min_length=1, max_length=64)
    """"auto": a key per shared prompt prefix, spread over more keys when one would pass ~15 requests a
    minute (docs/service-tiers.md); "off": none; else a template of `{group}`, `{index}`, `{job}`.
    None: "auto" on OpenAI and Azure, "off" on other servers. Never part of a row's fingerprint."""
    cache_order: bool = True
    """Send requests that share a prompt prefix together (within the reorder window; output order
    unchanged), so the provider's prompt cache serves them."""
    dimensions: int | None = Field(default=None, gt=0)
    expected_output_tokens: int | None = Field(default=None, ge=0)
    """What a typical reply uses, for the plan's expected cost (worst case uses max_tokens)."""
    inputs_per_request: int | None = Field(default=None, ge=1, le=2048)
    """Embeddings: inputs sent in one request (default 2,048, OpenAI's most; 32 for your own server)."""
    retry_bad_replies: int = Field(default=0, ge=0, le=5)
    """Re-send a row whose reply was schema_invalid or truncated up to this many times
    (a truncated reply is retried with max tokens doubled). Each retry is paid for."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Passed through to the request body as is (top_p, stop, reasoning_effort, ...)."""
    params_from: dict[str, str] = Field(default_factory=dict)
    """Per-row parameters: request parameter → the input column holding each row's value, e.g.
    { max_tokens = "max_tok", temperature = "t" }. A null cell falls back to the job's own value."""

    @property
    def flex_policy(self) -> tuple[str, int] | None:
        """(flex_fallback, flex_fallback_after) for the engine's flex refusals; None when not flex."""
        return (self.flex_fallback, self.flex_fallback_after) if self.service_tier == "flex" else None

    @model_validator(mode="after")
    def _check(self) -> RequestSpec:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give `max_tokens` or `max_completion_tokens`, not both")
        reserved = {"model", "messages", "input", "response_format", "stream", "n"}
        clash = sorted(reserved & self.params.keys())
        if clash:
            raise ValueError(f"params may not set {clash}: batchrun sets those itself (stream and n unsupported)")
        clash = sorted((reserved - {"model"}) & self.params_from.keys())
        if clash:
            raise ValueError(f"params_from may not set {clash}: batchrun sets those itself")
        if self.kind == "embeddings" and self.params_from:
            raise ValueError("params_from is for chat jobs (embeddings requests take no per-row parameters)")
        if self.kind == "embeddings":
            chat_only = [k for k in ("temperature", "seed", "max_tokens", "max_completion_tokens") if getattr(self, k)]
            chat_only += ["retry_bad_replies"] if self.retry_bad_replies else []
            if chat_only:
                raise ValueError(f"{', '.join(chat_only)} apply to chat requests; an embeddings request has none")
        key = self.prompt_cache_key
        if key not in (None, "auto", "off") and (bad := set(re.findall(r"{(\w*)}", key)) - {"group", "index", "job"}):
            raise ValueError(
                f"prompt_cache_key names {sorted(bad)}: a key template may use {{group}}, {{index}}, {{job}}"
            )
        if self.kind == "chat" and self.inputs_per_request is not None:
            raise ValueError("`inputs_per_request` is for embeddings jobs (a chat request has one prompt)")
        if self.kind == "chat" and self.dimensions is not None:
            raise ValueError("`dimensions` is for embeddings jobs only")
        if self.kind == "chat" and self.max_output_tokens is None:
            raise ValueError(
                "chat jobs need `max_tokens` (or `max_completion_tokens`): batchrun reserves "
                "it against the TPM limit and the budget, as the server does"
            )
        return self

    @property
    def max_output_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class OutputSchemaSpec(Spec):
    """[output_schema]: structured output, one of `schema`, `schema_file`, `model`."""

    name: str = "output"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    schema_file: Path | None = None
    model: str | None = None
    """A pydantic model as module:Class, importable or in a .py beside the job file."""


class EndpointSpec(Spec):
    """[endpoint]: where requests go."""

    base_url: str | None = None
    """Any OpenAI-compatible URL ending in /v1; default: OpenAI (or the simulator when no key is set)."""
    api_key_env: str = "OPENAI_API_KEY"
    azure_endpoint: str | None = None
    azure_api_version: str | None = None
    azure_deployment: str | None = None
    timeout_s: float = Field(default=120.0, gt=0)
    local: str | None = Field(default=None, min_length=1)
    """An embedded llama.cpp model (the local extra): "smollm2", or a .gguf path relative to the job."""

    @field_validator("base_url", "azure_endpoint")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            example = f"http://{v}" if "://" not in v else "https://api.example.com/v1"
            raise ValueError(f"{v!r} is not an absolute http(s) URL; write it in full, e.g. {example!r}")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"{v!r}: {exc}") from None
        return v

    @field_validator("base_url")
    @classmethod
    def _as_the_sdk_writes_it(cls, v: str | None) -> str | None:
        """The base URL as the SDK's client keeps it (httpx's normal form: scheme and host in lower case,
        no default port, the path percent-encoded), without its trailing slash added. Runs before this
        one sent through the SDK and kept their answers under that form: so does every run now, and
        `plan` looks them up under it too."""
        if v is None:
            return v
        from urllib.parse import quote, urlsplit, urlunsplit

        parts = urlsplit(v)
        scheme, host, port = parts.scheme.lower(), parts.hostname or "", parts.port
        netloc = f"[{host}]" if ":" in host else host
        if "@" in parts.netloc:
            netloc = parts.netloc.rpartition("@")[0] + "@" + netloc
        if port is not None and port != {"http": 80, "https": 443}[scheme]:
            netloc += f":{port}"
        path = quote(parts.path, safe="/%!$&'()*+,;=:@-._~")
        return urlunsplit((scheme, netloc, path, parts.query, parts.fragment))

    @property
    def openai_like(self) -> bool:
        """OpenAI or Azure (not a server of your own, nor the embedded model): prompt_cache_key "auto"."""
        return self.base_url is None and self.local is None

    @model_validator(mode="after")
    def _azure(self) -> EndpointSpec:
        if self.azure_endpoint and not self.azure_api_version:
            raise ValueError('azure_endpoint needs azure_api_version (e.g. "2024-10-21")')
        if sum(x is not None for x in (self.azure_endpoint, self.base_url, self.local)) > 1:
            raise ValueError("give one of `base_url`, `azure_endpoint` and `local`")
        return self


class LimitsSpec(Spec):
    """[limits]: the account's limits for this model; learned from headers when absent or wrong."""

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    max_in_flight: int = Field(default=256, gt=0, le=10_000)
    max_attempts: int = Field(default=6, gt=0, le=50)
    fail_fast_rows: int = Field(default=10, ge=0)
    """Stop the run (exit 5, finished rows kept) when this many different rows in a row fail the same way
    with no success between — a dead endpoint or a server-side bug — instead of retrying every row
    max_attempts times. 0 turns it off."""


class RaySpec(Spec):
    """[ray]: how `batchrun run --ray` (and `batchrun.ray.process`) spreads the requests over a cluster."""

    actors: int = Field(default=2, ge=1, le=1024)
    max_in_flight_per_actor: int = Field(default=64, ge=1, le=10_000)
    limiter: str | None = Field(default=None, min_length=1, max_length=100)
    """Name of the cluster-wide limiter (a detached actor): jobs naming the same one share its
    RPM/TPM and budget. Default: one limiter for this run only, gone with it."""
    address: str | None = None
    """The cluster (`auto`, `ray://host:10001`); `--ray ADDRESS` overrides; none: a local Ray instance."""


class BudgetSpec(Spec):
    max_usd: float | None = Field(default=None, gt=0)


class OutputSpec(Spec):
    path: Path | None = None
    row_group_size: int = Field(default=5000, gt=0)
    ledger: Path | None = None
    """The run ledger (answers, spend, batch state); default `.batchrun/<job name>.sqlite` beside the job
    file, so moving the output (`-o`) reuses it. Jobs may share one (budgets stay per job)."""
    accept: tuple[Literal["truncated", "schema_invalid", "too_long", "empty_input"], ...] = ()
    """Statuses that count as answered for the exit code, besides ok / refused / filtered."""
    audit: Path | None = None
    """Append every request and response to this JSONL file (headers redacted; never the key)."""
    report: bool = True
    """Keep each request's event in the ledger and write the HTML run report beside the output
    (`<output>.report.html`) at the end of every run."""


class Job(Spec):
    """A whole job file, paths resolved and schema made strict."""

    name: str = ""
    mode: Literal["online", "batch", "auto"] = "online"
    deadline_hours: float | None = Field(default=None, gt=0)
    input: InputSpec
    prompt: PromptSpec
    request: RequestSpec
    output_schema: OutputSchemaSpec | None = None
    endpoint: EndpointSpec = EndpointSpec()
    limits: LimitsSpec = LimitsSpec()
    budget: BudgetSpec = BudgetSpec()
    ray: RaySpec = RaySpec()
    output: OutputSpec = OutputSpec()
    batch: BatchSpec = BatchSpec()
    document: DocumentSpec = DocumentSpec()
    pricing: PricingSpec = PricingSpec()
    # filled in by load_job, not written in TOML
    source_path: Path | None = Field(default=None, exclude=True)
    schema_strict: dict[str, Any] | None = Field(default=None, exclude=True)
    template_text: str = Field(default="", exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v and not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError("use letters, digits, - _ . only")
        return v

    @model_validator(mode="after")
    def _cross(self) -> Job:
        if "model" in self.request.params_from and self.endpoint.azure_deployment:
            raise ValueError(
                "[request] params_from model needs a server that takes the model per request; an Azure "
                "deployment is one model: split the job by model (e.g. with [input] filter), one deployment each"
            )
        if self.request.kind == "embeddings" and self.output_schema is not None:
            raise ValueError("embeddings jobs cannot have [output_schema]")
        if self.request.kind == "embeddings" and (self.prompt.system or self.prompt.examples):
            raise ValueError("embeddings jobs embed the rendered template only: remove prompt.system/examples")
        if self.input.is_document:
            self._check_document()
        elif self.prompt.template is None and self.prompt.template_file is None:
            raise ValueError("[prompt] needs `template` (Jinja2 over the input columns) or `template_file`")
        return self

    def _check_document(self) -> None:
        fmt = self.input.resolved_format
        if self.request.kind != "chat":
            raise ValueError(f'a {fmt} document is translated with chat requests: set request.kind = "chat"')
        if self.prompt.template is not None or self.prompt.template_file is not None:
            raise ValueError(
                f"a {fmt} document job builds each request itself (its paragraphs as JSON items): remove "
                'prompt.template and say what to do in prompt.system (e.g. "Translate into French.")'
            )
        if not self.prompt.system:
            raise ValueError(f'a {fmt} document job needs prompt.system, e.g. "Translate into French."')
        if "{{" in self.prompt.system or "{%" in self.prompt.system:
            raise ValueError(
                f"prompt.system of a {fmt} document job is sent as written (a document has no columns to fill "
                "it from): remove the {{ }} / {% %}"
            )
        if self.output_schema is not None:
            raise ValueError(
                "a document job's replies have a fixed schema ({id, translation} items, checked against "
                "the request): remove [output_schema]"
            )
        table_keys = [k for k in ("id_column", "filter", "columns", "sheet", "separator") if getattr(self.input, k)]
        if table_keys:
            raise ValueError(f"[input] {', '.join(table_keys)} apply to tables, not to a {fmt} document: remove them")
        if self.input.limit is not None:
            raise ValueError(f"[input] limit applies to tables; a {fmt} document is translated whole")
        if self.mode != "online" and self.document.context_paragraphs:
            raise ValueError(
                "document.context_paragraphs makes each chapter a chain (every chunk waits for the one before), "
                'which the Batch API cannot do: use mode = "online", or context_paragraphs = 0 for batch'
            )
        if self.mode != "online":
            raise ValueError(
                f'document jobs run online for now: set mode = "online" (the Batch API path for {fmt} '
                "documents is not built yet)"
            )

    def ignored_keys(self, mode: str) -> list[str]:
        """What the job file sets that a run in `mode` cannot use (said as a warning, never silently)."""
        out: list[str] = []
        if mode == "batch" and self.mode == "batch" and not self.batch.online_fallback:
            keys = sorted(self.limits.model_fields_set & {"rpm", "tpm", "max_in_flight", "fail_fast_rows"})
            if keys:
                out.append(
                    f"[limits] {', '.join(keys)} do not apply to the Batch API (it has no per-minute limits; its "
                    "queue is [batch] enqueued_token_limit): ignored in batch mode"
                )
        if mode == "batch" and self.request.service_tier is not None:
            out.append(
                "[request] service_tier does not apply to the Batch API (a tier of its own, at batch prices): "
                "not sent in batch mode"
            )
        # a [batch] table in an online job is not warned about: it is kept to switch `mode` back and forth
        if mode == "online" and self.mode == "online" and self.deadline_hours is not None:
            out.append('deadline_hours applies to mode = "batch" or "auto"; this job runs online')
        return out

    @property
    def output_path(self) -> Path:
        assert self.output.path is not None
        return self.output.path

    @property
    def output_format(self) -> str | None:
        """ "parquet", "csv", "jsonl" or "xlsx" by the output's suffix; None for an unknown suffix."""
        return OUTPUT_FORMATS.get(self.output_path.suffix.lower())

    @property
    def document_outputs(self) -> list[tuple[str, Path]]:
        """A document job's translated documents, (format, path) each."""
        spec = self.document
        stem = spec.output_stem
        if stem is None:
            base = self.output_path.with_suffix("")
            tag = spec.language or "translated"
            stem = base if base.name.endswith(f".{tag}") else base.with_name(f"{base.name}.{tag}")
        return [(fmt, stem.with_name(f"{stem.name}.{fmt}")) for fmt in (spec.outputs or (self.input.resolved_format,))]

    @property
    def report_path(self) -> Path:
        """The run report beside the output: out/x.parquet → out/x.report.html."""
        return self.output_path.with_name(f"{self.output_path.stem}.report.html")

    @property
    def table_path(self) -> Path:
        """Where the typed Parquet output is written: the output itself, or for CSV / JSONL / Excel
        outputs a Parquet beside the ledger that the other format is exported from (and `frame()` reads)."""
        if self.output_format == "parquet":
            return self.output_path
        return self.ledger_file.with_name(f"{self.name or 'job'}.output.parquet")

    @property
    def ledger_file(self) -> Path:
        """The job's ledger: `[output] ledger`, else `.batchrun/<name>.sqlite` beside the job file."""
        if self.output.ledger is not None:
            return self.output.ledger
        base = self.source_path.parent if self.source_path is not None else self.output_path.parent
        return base / ".batchrun" / f"{self.name or 'job'}.sqlite"


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    cls: Any = model
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            break
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        cls = args[0] if args else ann
    fields = getattr(cls, "model_fields", {})
    return sorted(f.alias or name for name, f in fields.items() if not f.exclude)


def _describe(exc: ValidationError) -> tuple[str, str]:
    lines = []
    first_key = ""
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        first_key = first_key or key
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(Job, loc))
            lines.append(f"[{key}]: unknown key; allowed here: {allowed}")
        elif err["type"] == "missing":
            lines.append(f"[{key}]: required key is missing")
        elif err["type"] in ("int_type", "float_type", "int_from_float", "bool_type", "string_type"):
            want = {"int_type": "a whole number", "int_from_float": "a whole number", "float_type": "a number",
                    "bool_type": "true or false", "string_type": "a string"}[err["type"]]  # fmt: skip
            given = err["input"]
            shown = json.dumps(given) if isinstance(given, bool | str) else repr(given)
            lines.append(f"[{key}]: must be {want}, not {shown}")
        elif err["type"] == "literal_error":
            lines.append(f"[{key}]: {err['msg'].replace('Input should be', 'must be')}, not {err['input']!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            where = f"[{key}]: " if key else ""
            lines.append(f"{where}{msg}")
    return first_key, "\n  ".join(lines)


def _resolve(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
    p = p.expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def parse_job(data: Mapping[str, Any], source: Path) -> Job:
    """Turn a parsed TOML mapping into a Job; raises JobFileError naming the key."""
    try:
        # strict, as JSON: a number must be a number (`max_tokens = true` or "5" is an error, not 1 or 5),
        # while strings still become paths and arrays tuples, as a TOML file writes them
        job = Job.model_validate_json(json.dumps(dict(data), default=str), strict=True)
    except ValidationError as exc:
        _key, problems = _describe(exc)
        raise JobFileError(source, "", problems if "\n" not in problems else "\n  " + problems) from exc
    base = source.parent
    name = job.name or source.stem
    inp = job.input.model_copy(update={"path": _resolve(base, job.input.path)})
    if not inp.resolved_format:
        raise JobFileError(
            source,
            "input.format",
            f"cannot tell the format of {inp.path.name!r} from its suffix; set format to one of {', '.join(FORMATS)}",
        )
    prompt = job.prompt
    template = prompt.template or ""
    if prompt.template_file is not None:
        tpath = _resolve(base, prompt.template_file)
        assert tpath is not None
        try:
            template = tpath.read_text(encoding="utf-8")
        except OSError as exc:
            raise JobFileError(source, "prompt.template_file", f"cannot read {tpath}: {exc.strerror}") from exc
        prompt = prompt.model_copy(update={"template_file": tpath})
    strict = _resolve_schema(job.output_schema, base, source)
    out_path = _resolve(base, job.output.path) or (base / f"{name}.parquet").resolve()
    table = _resolve(base, job.pricing.table)
    doc = job.document.model_copy(
        update={
            "glossary": _resolve(base, job.document.glossary),
            "output_stem": _resolve(base, job.document.output_stem),
        }
    )
    if inp.is_document and doc.glossary is not None and not doc.glossary.is_file():
        raise JobFileError(source, "document.glossary", f"glossary file not found: {doc.glossary}")
    return job.model_copy(
        update={
            "name": name,
            "input": inp,
            "prompt": prompt,
            "output": job.output.model_copy(
                update={
                    "path": out_path,
                    "ledger": _resolve(base, job.output.ledger),
                    "audit": _resolve(base, job.output.audit),
                }
            ),
            "pricing": job.pricing.model_copy(update={"table": table}),
            "document": doc,
            "source_path": source.resolve(),
            "schema_strict": strict,
            "template_text": template,
        }
    )


def _resolve_schema(spec: OutputSchemaSpec | None, base: Path, source: Path) -> dict[str, Any] | None:
    if spec is None:
        return None
    given = [
        k for k in ("schema", "schema_file", "model") if getattr(spec, "schema_" if k == "schema" else k) is not None
    ]
    if len(given) != 1:
        raise JobFileError(
            source,
            "output_schema",
            "give exactly one of `schema` (inline table), `schema_file` (JSON file) "
            f"or `model` (module:Class); found {given or 'none'}",
        )
    try:
        if spec.model is not None:
            strict = schemas.load_model_schema(spec.model, base)
        else:
            raw = spec.schema_
            if spec.schema_file is not None:
                path = _resolve(base, spec.schema_file)
                assert path is not None
                try:
                    raw = json.loads(path.read_text(encoding="utf-8"))
                except OSError as exc:
                    raise JobFileError(
                        source, "output_schema.schema_file", f"cannot read {path}: {exc.strerror}"
                    ) from exc
                except json.JSONDecodeError as exc:
                    raise JobFileError(source, "output_schema.schema_file", f"{path} is not valid JSON: {exc}") from exc
            assert raw is not None
            strict = schemas.make_strict(raw)
        schemas.check_strict(strict, spec.name)
    except SchemaError as exc:
        raise JobFileError(source, "output_schema", str(exc)) from exc
    return strict


def load_job(path: str | Path) -> Job:
    """Read and check a job file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise JobFileError(path, "", "job file not found") from exc
    except IsADirectoryError as exc:
        raise JobFileError(path, "", "is a folder; give the job file itself (e.g. jobs/x.toml)") from exc
    except PermissionError as exc:
        raise JobFileError(path, "", "cannot read the job file (permission denied)") from exc
    except UnicodeDecodeError as exc:
        raise JobFileError(path, "", f"job file is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError(path, "", f"not valid TOML: {exc}") from exc
    return parse_job(data, path)
