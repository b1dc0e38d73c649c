"""Rows become requests: a Jinja2 template over the columns, counted exactly.

A `Request` is what is sent for one row: the JSON body (chat) or the text to
embed, its prompt tokens counted the way the server counts them, and the
tokens the server will charge against TPM (prompt + max output).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.meta
import polars as pl

from . import fastjson
from .errors import InputError, TemplateError
from .fingerprints import Fingerprinter
from .jobs import Job
from .sources import ID_COLUMN, ROW_COLUMN, Source
from .tokens import REPLY_PRIMING, TOKENS_PER_MESSAGE, TokenCounter, release_encodings

MAX_ROW_MODELS = 20
"""Most distinct models one job's rows may name ([request] params_from model)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One row's request, ready to send."""

    row: int
    """Position of the row in the input file (from 0)."""
    row_id: str
    body: dict[str, Any]
    """Chat: the full request body. Embeddings: {"input": text}; the engine groups rows."""
    prompt_tokens: int
    max_output_tokens: int
    model: str | None = None
    """The row's own model ([request] params_from model); None: the job's."""

    @property
    def charged_tokens(self) -> int:
        """What the server reserves against TPM when it accepts this request."""
        return self.prompt_tokens + self.max_output_tokens


def simple_parts(env: jinja2.Environment, template: str) -> list[tuple[bool, str]] | None:
    """A template made only of text and bare `{{ name }}` substitutions, as (is_name, text) parts;
    None for anything else (filters, tags, attributes), which Jinja2 itself renders.

    Rendering such a template is plain string joining, ~15× faster than Jinja2's per-row
    context set-up, and gives the same text (values through str(), no escaping).
    """
    from jinja2 import nodes

    body = env.parse(template).body
    parts: list[tuple[bool, str]] = []
    for node in body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append((False, child.data))
            elif isinstance(child, nodes.Name) and child.ctx == "load" and child.name not in ("row", "row_id"):
                parts.append((True, child.name))
            else:
                return None
    return parts


ROW_KEY = "\x00batchrun-row\x00"
"""Prefix of a row's text when its system prompt, parameters or few-shot examples are its own: ROW_KEY +
JSON [system, user, params] (+ [examples] when they name columns), so the fingerprint, the token count
and the request all carry the row's own values."""
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
"""C0 control characters but tab, newline and carriage return: never meant for a prompt."""


def _text(value: Any) -> Any:
    """Jinja2's finalize: a null cell renders as "", never as the word None."""
    return "" if value is None else value


def template_variables(template: str) -> set[str]:
    env = jinja2.Environment()
    return jinja2.meta.find_undeclared_variables(env.parse(template))


class Renderer:
    """Renders rows of one job into Requests."""

    def __init__(self, job: Job, columns: Sequence[str], *, warn_unknown_model: bool = True) -> None:
        self.job = job
        env = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False, finalize=_text
        )
        try:
            self.template = env.from_string(job.template_text)
            self.parts = simple_parts(env, job.template_text)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{job.source_path}: prompt template, line {exc.lineno}: {exc.message}") from exc
        used = template_variables(job.template_text) - {"row", "row_id"}
        missing = sorted(used - set(columns))
        if missing:
            raise TemplateError(
                f"{job.source_path}: [prompt.template] uses {missing}, which the input "
                f"{job.input.path.name} lacks; its columns are {list(columns)}"
            )
        self.columns = list(columns)
        # [prompt] system is a template too: per row when it names columns (or row / row_id)
        self.system_template: jinja2.Template | None = None
        system = job.prompt.system
        if system and ("{{" in system or "{%" in system):
            try:
                tmpl = env.from_string(system)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"{job.source_path}: [prompt.system], line {exc.lineno}: {exc.message}") from exc
            names = template_variables(system)
            unknown = sorted(names - set(columns) - {"row", "row_id"})
            if unknown:
                raise TemplateError(
                    f"{job.source_path}: [prompt.system] uses {unknown}, which the input {job.input.path.name} "
                    f"lacks (it would be sent literally); its columns are {list(columns)}"
                )
            if names:
                self.system_template = tmpl
                used |= names - {"row", "row_id"}
            else:
                system = tmpl.render()
        # [prompt.examples] are templates too: when any names a column, all are rendered per row
        self.example_templates: list[tuple[dict[str, Any], jinja2.Template]] = []
        if any("{{" in m.content or "{%" in m.content for m in job.prompt.examples):
            for i, m in enumerate(job.prompt.examples):
                key = f"prompt.examples] #{i + 1}"
                try:
                    tmpl = env.from_string(m.content)
                except jinja2.TemplateSyntaxError as exc:
                    raise TemplateError(f"{job.source_path}: [{key}, line {exc.lineno}: {exc.message}") from exc
                names = template_variables(m.content)
                unknown = sorted(names - set(columns) - {"row", "row_id"})
                if unknown:
                    raise TemplateError(
                        f"{job.source_path}: [{key} uses {unknown}, which the input {job.input.path.name} lacks "
                        f"(it would be sent literally); its columns are {list(columns)}"
                    )
                used |= names - {"row", "row_id"}
                self.example_templates.append((m.model_dump(exclude_none=True), tmpl))
            if not any(template_variables(m.content) for m in job.prompt.examples):
                self.example_templates = []  # only Jinja2 syntax, no columns: rendered once below
        self.row_params = dict(job.request.params_from)
        missing_params = sorted({c for c in self.row_params.values()} - set(columns))
        if missing_params:
            raise TemplateError(
                f"{job.source_path}: [request.params_from] names {missing_params}, which the input "
                f"{job.input.path.name} lacks; its columns are {list(columns)}"
            )
        self.used_columns = sorted(used & set(columns))
        """The input columns the template names: a row with any of them null is empty (empty_input)."""
        self.strip_controls = job.input.control_chars == "strip"
        self.skip_empty = job.input.empty == "skip"
        req = job.request
        self.counter = TokenCounter(req.model, warn_unknown=warn_unknown_model)
        self.warn_unknown = warn_unknown_model
        self._counters: dict[str, tuple[TokenCounter, int]] = {}
        self.row_models: frozenset[str] = frozenset()
        """The models rows name in their own column ([request] params_from model), found by check_row_params."""
        self.kind = req.kind
        self.fixed_messages: list[dict[str, Any]] = []
        if system and self.system_template is None:
            self.fixed_messages.append({"role": "system", "content": system})
        if not self.example_templates:
            for m in job.prompt.examples:
                msg = m.model_dump(exclude_none=True)
                if "{{" in m.content or "{%" in m.content:
                    msg["content"] = env.from_string(m.content).render()
                self.fixed_messages.append(msg)
        # constant messages are counted once; only the rendered user message varies per row
        self.fixed_tokens = sum(self.counter.count_message(m) for m in self.fixed_messages)
        self.schema = job.schema_strict
        self.schema_tokens = self.counter.schema_overhead(self.schema)
        self.params: dict[str, Any] = {"model": req.model}
        for key in ("temperature", "max_tokens", "max_completion_tokens", "seed", "service_tier"):
            value = getattr(req, key)
            if value is not None:
                self.params[key] = value
        self.params.update(req.params)
        if self.schema is not None:
            assert job.output_schema is not None
            self.params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": job.output_schema.name, "schema": self.schema, "strict": True},
            }
        self.max_output = req.max_output_tokens or 0
        self.role_tokens = self.counter.count_text("user")

    def render_text(self, row: dict[str, Any], row_id: str) -> str:
        try:
            return self.template.render(**row, row=row, row_id=row_id)
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"{self.job.source_path}: [prompt.template] row id {row_id!r}: {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{self.job.source_path}: [prompt.template] row id {row_id!r}: {exc}") from exc

    def texts(self, batch: pl.DataFrame) -> tuple[list[int], list[str], list[str]]:
        """(file positions, row ids, rendered user texts) of a batch of rows (from Source.batches)."""
        ids = batch[ID_COLUMN].to_list()
        positions = batch[ROW_COLUMN].to_list()
        texts: list[str] | None = None
        if self.parts is not None:
            names = [name for is_name, name in self.parts if is_name]
            if all(c in batch.columns for c in names):
                texts = self._join(batch, names)
        if texts is None:
            rows = batch.select(self.columns).to_dicts()
            texts = [self.render_text(r, i) for r, i in zip(rows, ids, strict=True)]
        if self.per_row:
            rows = batch.select(self.columns).to_dicts()
            systems: list[str | None] = [None] * len(texts)
            if self.system_template is not None:
                systems = [self._render(self.system_template, "system", r, i) for r, i in zip(rows, ids, strict=True)]
            params = [
                {k: r[c] for k, c in self.row_params.items() if r[c] is not None} for r in rows
            ]  # a null cell: the job's own value
            parts: list[list[Any]] = [[sy, t, pr] for sy, t, pr in zip(systems, texts, params, strict=True)]
            if self.example_templates:
                for part, r, i in zip(parts, rows, ids, strict=True):
                    part.append(
                        [{**m, "content": self._render(t, "examples", r, i)} for m, t in self.example_templates]
                    )
            texts = [ROW_KEY + json.dumps(part, ensure_ascii=False, sort_keys=True) for part in parts]
        if self.strip_controls:
            texts = [CONTROL_CHARS.sub("", t) for t in texts]
        return positions, ids, texts

    def _render(self, tmpl: jinja2.Template, key: str, row: dict[str, Any], row_id: str) -> str:
        try:
            return tmpl.render(**row, row=row, row_id=row_id)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{self.job.source_path}: [prompt.{key}] row id {row_id!r}: {exc}") from exc

    @property
    def per_row(self) -> bool:
        """Whether a row's request carries more of its own than the user text (see ROW_KEY)."""
        return self.system_template is not None or bool(self.row_params) or bool(self.example_templates)

    @staticmethod
    def row_parts(text: str) -> tuple[str | None, str, dict[str, Any], list[dict[str, Any]]]:
        """(per-row system prompt or None, user text, own parameters, own few-shot messages) of what
        `texts` returned for a row: its ROW_KEY JSON decoded once."""
        if not text.startswith(ROW_KEY):
            return None, text, {}, []
        decoded = json.loads(text[len(ROW_KEY) :])
        return decoded[0], decoded[1], decoded[2], decoded[3] if len(decoded) > 3 else []

    @classmethod
    def split(cls, text: str) -> tuple[str | None, str]:
        """(per-row system prompt or None, user text) of what `texts` returned for a row."""
        system, user, _, _ = cls.row_parts(text)
        return system, user

    @classmethod
    def params_of(cls, text: str) -> dict[str, Any]:
        """The row's own request parameters ([request] params_from) in what `texts` returned."""
        return cls.row_parts(text)[2]

    def body(self, text: str, model: str | None = None) -> dict[str, Any]:
        """A chat row's whole request body."""
        system, user, own, examples = self.row_parts(text)
        body = {**self.params, **own}
        if model is not None and "model" not in own:  # a row's own model wins over the job's
            body["model"] = model
        head = [{"role": "system", "content": system}] if system is not None else []
        body["messages"] = [*head, *self.fixed_messages, *examples, {"role": "user", "content": user}]
        return body

    def max_output_of(self, body: dict[str, Any]) -> int:
        value = body.get("max_completion_tokens", body.get("max_tokens"))
        return int(value) if value is not None else self.max_output

    def messages(self, text: str) -> list[dict[str, Any]]:
        return self.body(text)["messages"]

    def check_no_empty(self, source: Source) -> None:
        """[input] empty = "fail": refuse the input, naming the first row, if a template column is null."""
        if self.job.input.empty != "fail" or not self.used_columns:
            return
        nulls = pl.any_horizontal(pl.col(c).is_null() for c in self.used_columns)
        first = source.first_where(nulls, [ROW_COLUMN, ID_COLUMN])
        if first is not None:
            row, rid = first[ROW_COLUMN], first[ID_COLUMN]
            cols = ", ".join(self.used_columns)
            raise InputError(
                f"{source.path}: data row {row + 1} (id {rid!r}) has an empty value in a template column ({cols}), "
                'and [input] empty = "fail"; fill it in, or use empty = "skip" (status empty_input) or "send"'
            )

    def empty(self, batch: pl.DataFrame, texts: Sequence[str]) -> list[bool]:
        """Which rows are empty — a template column null, or a blank prompt — and are not to be sent
        ([input] empty = "skip", the default); all False when the job says to send them."""
        if not self.skip_empty:
            return [False] * len(texts)
        if self.used_columns:
            nulls = batch.select(pl.any_horizontal(pl.col(c).is_null() for c in self.used_columns)).to_series()
            flags = nulls.to_list()
        else:
            flags = [False] * len(texts)
        return [bool(f) or not self.split(t)[1].strip() for f, t in zip(flags, texts, strict=True)]

    def _join(self, batch: pl.DataFrame, names: list[str]) -> list[str]:
        """Render a simple template by joining its text with each row's values (as Jinja2 would)."""
        assert self.parts is not None
        if not names:
            return ["".join(text for _, text in self.parts)] * batch.height
        columns = {n: batch[n].to_list() for n in names}
        pieces = [(is_name, columns[text] if is_name else text) for is_name, text in self.parts]
        out = []
        for i in range(batch.height):
            out.append(
                "".join(
                    ("" if part[i] is None else str(part[i])) if is_name else part  # type: ignore[index]
                    for is_name, part in pieces
                )
            )
        return out

    def fingerprinter(self, endpoint: str, model: str) -> Fingerprinter:
        """Fingerprints of this job's requests as sent to `endpoint` with `model` (see ledger)."""
        if self.kind == "embeddings":
            constant: dict[str, Any] = {"model": model}
            if self.job.request.dimensions:
                constant["dimensions"] = self.job.request.dimensions
        else:
            constant = {**self.params, "model": model, "messages": self.fixed_messages}
        return Fingerprinter(endpoint, self.kind, constant)

    def prompt_tokens(self, texts: Sequence[str]) -> list[int]:
        """Prompt tokens of each rendered row's request, as the server counts them (with the encoding of
        the row's own model, when [request] params_from sets one)."""
        if self.kind == "embeddings":
            return self.counter.count_texts(texts)
        if "model" not in self.row_params:
            return self._prompt_tokens(texts, self.counter, self.base_tokens)
        by_encoding: dict[str, tuple[TokenCounter, int, list[int]]] = {}
        for i, text in enumerate(texts):
            counter, base = self._counting(self.params_of(text).get("model") or self.job.request.model)
            by_encoding.setdefault(counter.encoding_name, (counter, base, []))[2].append(i)
        out = [0] * len(texts)
        for counter, base, indices in by_encoding.values():
            for i, n in zip(indices, self._prompt_tokens([texts[i] for i in indices], counter, base), strict=True):
                out[i] = n
        return out

    @property
    def base_tokens(self) -> int:
        """What every request of the job's model counts besides its user text (and per-row system prompt)."""
        # "user" is one token in every encoding; counted like any other string field
        return self.fixed_tokens + TOKENS_PER_MESSAGE + REPLY_PRIMING + self.schema_tokens + self.role_tokens

    def release_tokenizers(self) -> None:
        """Let go of the tokenizers once every row is counted (online.py); a later count builds them again."""
        self.counter.release()
        for counter, _ in self._counters.values():
            counter.release()
        release_encodings()

    def _counting(self, model: str) -> tuple[TokenCounter, int]:
        """A row model's counter and fixed part, one per encoding (most models share o200k_base)."""
        found = self._counters.get(model)
        if found is None:
            counter = TokenCounter(model, warn_unknown=self.warn_unknown)
            if counter.encoding_name == self.counter.encoding_name:
                found = (self.counter, self.base_tokens)
            else:
                fixed = sum(counter.count_message(m) for m in self.fixed_messages)
                base = fixed + TOKENS_PER_MESSAGE + REPLY_PRIMING + counter.schema_overhead(self.schema)
                found = (counter, base + counter.count_text("user"))
            self._counters[model] = found
        return found

    def _prompt_tokens(self, texts: Sequence[str], counter: TokenCounter, base: int) -> list[int]:
        if not self.per_row:
            return [base + n for n in counter.count_texts(texts)]
        rows = [self.row_parts(t) for t in texts]
        counts = [base + n for n in counter.count_texts([user for _, user, _, _ in rows])]
        if self.system_template is not None:
            systems = [counter.count_message({"role": "system", "content": sy or ""}) for sy, _, _, _ in rows]
            counts = [n + m for n, m in zip(counts, systems, strict=True)]
        if self.example_templates:
            extra = [sum(counter.count_message(m) for m in examples) for _, _, _, examples in rows]
            counts = [n + m for n, m in zip(counts, extra, strict=True)]
        return counts

    def check_row_params(self, source: Source) -> None:
        """Every per-row parameter value is one the API takes, checked over the whole input before anything
        is sent (a bad cell found mid-run would come after money was spent): names the row and column."""
        rules: dict[str, tuple[Callable[[pl.Expr], pl.Expr], str]] = {
            "max_tokens": (lambda v: v > 0, "a whole number above 0"),
            "max_completion_tokens": (lambda v: v > 0, "a whole number above 0"),
            "temperature": (lambda v: v.is_between(0, 2), "a number from 0 to 2"),
            "top_p": (lambda v: v.is_between(0, 1), "a number from 0 to 1"),
            "seed": (lambda v: pl.lit(True), "a whole number"),
        }
        ints = ("max_tokens", "max_completion_tokens", "seed")
        schema = dict(zip(source.columns, source.dtypes, strict=True))
        if "model" in self.row_params:
            self.row_models = self._row_models(source, self.row_params["model"], schema)
        for param, col in self.row_params.items():
            if param not in rules:
                continue  # passed through as is, like [request] params
            ok, want = rules[param]
            dtype = schema[col]
            numeric = dtype.is_integer() if param in ints else dtype.is_numeric()
            if not numeric or dtype == pl.Boolean:
                raise InputError(
                    f"{source.path}: column {col!r} ([request.params_from] {param}) holds {dtype}; "
                    f"each value must be {want}"
                )
            v = pl.col(col)
            bad = source.first_where(v.is_not_null() & ~ok(v), [ROW_COLUMN, ID_COLUMN, col])
            if bad is not None:
                row, rid, value = bad[ROW_COLUMN], bad[ID_COLUMN], bad[col]
                raise InputError(
                    f"{source.path}: data row {row + 1} (id {rid!r}), column {col!r} ([request.params_from] "
                    f"{param}) is {value!r}; it must be {want}"
                )

    def _row_models(self, source: Source, col: str, schema: dict[str, pl.DataType]) -> frozenset[str]:
        """The distinct models of a params_from model column: text, not blank, and few (each model has its
        own price, limits and Batch API files; hundreds would be a column mistaken for another)."""
        if schema[col] != pl.String:
            raise InputError(
                f"{source.path}: column {col!r} ([request.params_from] model) holds {schema[col]}; "
                "each value must be a model name"
            )
        v = pl.col(col)
        blank = source.first_where(v.is_not_null() & (v.str.strip_chars() == ""), [ROW_COLUMN, ID_COLUMN])
        if blank is not None:
            raise InputError(
                f"{source.path}: data row {blank[ROW_COLUMN] + 1} (id {blank[ID_COLUMN]!r}), column {col!r} "
                "([request.params_from] model) is blank; give a model name, or leave the cell empty for the "
                f"job's own model ({self.job.request.model})"
            )
        models: set[str] = set()
        for batch in source.batches(50_000):
            models.update(m for m in batch[col].unique().to_list() if m is not None)
            if len(models) > MAX_ROW_MODELS:
                raise InputError(
                    f"{source.path}: column {col!r} ([request.params_from] model) names more than "
                    f"{MAX_ROW_MODELS} different models; is it the right column?"
                )
        return frozenset(models)

    def requests(self, positions: Sequence[int], ids: Sequence[str], texts: Sequence[str]) -> list[Request]:
        """Requests for rendered rows, their prompt tokens counted in one batch."""
        counts = self.prompt_tokens(texts)
        if self.kind == "embeddings":
            return [
                Request(row=pos, row_id=rid, body={"input": text}, prompt_tokens=n, max_output_tokens=0)
                for pos, rid, text, n in zip(positions, ids, texts, counts, strict=True)
            ]
        out: list[Request] = []
        for pos, rid, text, n in zip(positions, ids, texts, counts, strict=True):
            body = self.body(text)
            model = body["model"] if "model" in self.row_params else None
            limit = self.max_output_of(body)
            out.append(Request(row=pos, row_id=rid, body=body, prompt_tokens=n, max_output_tokens=limit, model=model))
        return out

    def json_body(self, model: str) -> Callable[[str], bytes]:
        """For Batch API shards: a row's text → its request body as JSON bytes. The constant part
        (model, parameters, schema, system and few-shot messages) is serialised once."""
        sentinel = "\x00batchrun-row-text\x00"
        if self.kind == "embeddings":
            head: dict[str, Any] = {"model": model, "encoding_format": "float"}
            if self.job.request.dimensions:
                head["dimensions"] = self.job.request.dimensions
            head["input"] = sentinel
        else:
            head = {
                # the Batch API is a tier of its own (batch prices): a service_tier is not sent there
                **{k: v for k, v in self.params.items() if k != "service_tier"},
                "model": model,
                "messages": [*self.fixed_messages, {"role": "user", "content": sentinel}],
            }
        if self.per_row and self.kind != "embeddings":
            # the system prompt or the parameters differ per row: no constant part to serialise once
            def per_row(text: str) -> bytes:
                body = self.body(text, model)
                body.pop("service_tier", None)
                return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

            return per_row
        whole = json.dumps(head, ensure_ascii=False, separators=(",", ":"))
        prefix, suffix = whole.split(json.dumps(sentinel, ensure_ascii=False))
        pre, post = prefix.encode("utf-8"), suffix.encode("utf-8")
        string_bytes = fastjson.string_bytes

        def body(text: str) -> bytes:
            return pre + string_bytes(text) + post

        return body

    def render(self, batch: pl.DataFrame) -> list[Request]:
        """Requests for a batch of rows (as produced by Source.batches)."""
        return self.requests(*self.texts(batch))
