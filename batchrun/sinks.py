"""Results to Parquet: a schema fixed before the first row, rows in input order, written incrementally.

The Arrow schema comes from the input's columns, the job's JSON schema and the
fixed metadata columns, so it never depends on which rows came back first (a
first row group of failures has the same schema as one of successes). Results
arrive out of order; a reorder buffer holds only those that arrived ahead of
the oldest unfinished row, so memory is bounded by disorder, not job size.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .rows import EMPTY_ERROR as EMPTY_ERROR  # re-exported: the row record lives in rows.py
from .rows import RowResult as RowResult
from .rows import empty_result as empty_result

if TYPE_CHECKING:
    from .jobs import Job
    from .sources import Source

Converter = Callable[[Any], Any]

META_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("status", pa.string()),
    ("error", pa.string()),
    ("attempts", pa.int32()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("cost_usd", pa.float64()),
    ("latency_ms", pa.float64()),
    ("finish_reason", pa.string()),
    ("model", pa.string()),
    ("service_tier", pa.string()),
    ("cached_tokens", pa.int64()),
    ("request_id", pa.string()),
    ("from_cache", pa.bool_()),
)
EMBED_DEFAULT_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


def _as_json(value: Any) -> Any:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _identity(value: Any) -> Any:
    return value


def arrow_field_type(
    schema: dict[str, Any], root: dict[str, Any], seen: frozenset[str] = frozenset()
) -> tuple[pa.DataType, Converter]:
    """Arrow type for a strict JSON schema node, and how to shape a value to fit it.

    Objects become structs, arrays lists, enums strings; unions of several
    non-null types and recursive references are kept as JSON text.
    """
    ref = schema.get("$ref")
    if ref:
        if ref in seen:
            return pa.string(), _as_json
        node: Any = root
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return arrow_field_type(node, root, seen | {ref})
    variants = schema.get("anyOf")
    if variants:
        real = [v for v in variants if v.get("type") != "null"]
        if len(real) == 1:
            return arrow_field_type(real[0], root, seen)
        return pa.string(), _as_json
    if "enum" in schema:
        values = schema["enum"]
        if all(isinstance(v, str) or v is None for v in values):
            return pa.string(), _identity
        return pa.string(), _as_json
    typ = schema.get("type")
    if isinstance(typ, list):
        real_types = [t for t in typ if t != "null"]
        if len(real_types) != 1:
            return pa.string(), _as_json
        typ = real_types[0]
    if typ == "object":
        props = schema.get("properties") or {}
        if not props:
            return pa.string(), _as_json
        fields, convs = [], {}
        for name, sub in props.items():
            t, conv = arrow_field_type(sub, root, seen)
            fields.append(pa.field(name, t))
            convs[name] = conv

        def obj(value: Any) -> Any:
            if not isinstance(value, dict):
                return None
            return {k: convs[k](value.get(k)) for k in convs}

        return pa.struct(fields), obj
    if typ == "array":
        item_t, item_conv = arrow_field_type(schema.get("items") or {}, root, seen)

        def arr(value: Any) -> Any:
            return None if value is None else [item_conv(v) for v in value]

        return pa.list_(item_t), arr
    if typ == "string":
        return pa.string(), _identity
    if typ == "integer":
        return pa.int64(), _identity
    if typ == "number":
        return pa.float64(), lambda v: None if v is None else float(v)
    if typ == "boolean":
        return pa.bool_(), _identity
    return pa.string(), _as_json


@dataclass
class OutputLayout:
    """The columns of the output file and how a row fills them."""

    schema: pa.Schema
    input_columns: list[tuple[str, str]]  # (source column, output name)
    output_kind: str  # "struct" | "text" | "embedding"
    output_fields: dict[str, Converter] = field(default_factory=dict)

    def record(self, inputs: dict[str, Any], result: RowResult) -> dict[str, Any]:
        rec: dict[str, Any] = {out: inputs.get(src) for src, out in self.input_columns}
        if self.output_kind == "struct":
            out = result.output if isinstance(result.output, dict) else {}
            for name, conv in self.output_fields.items():
                rec[name] = conv(out.get(name)) if out else None
            rec["raw_response"] = result.raw_text
        elif self.output_kind == "text":
            rec["output"] = result.output if isinstance(result.output, str) else None
            rec["raw_response"] = result.raw_text
        else:
            rec["embedding"] = result.output
        for name, _ in META_FIELDS:
            rec[name] = getattr(result, name)
        return rec


def embedding_dims(model: str, dimensions: int | None) -> int | None:
    """The vector size a model returns: the job's `dimensions`, else the model's known default."""
    return dimensions or EMBED_DEFAULT_DIMS.get(model)


def job_layout(job: Job, source: Source) -> tuple[list[str], OutputLayout]:
    """The input columns a job's output keeps, and its output layout (online and batch alike)."""
    cols = list(source.output_columns())
    dtypes = [source.dtypes[source.columns.index(c)] for c in cols]
    layout = make_layout(
        cols,
        dtypes,
        kind=job.request.kind,
        schema=job.schema_strict,
        model=job.request.model,
        dimensions=job.request.dimensions,
    )
    return cols, layout


def make_layout(
    input_columns: Sequence[str],
    input_dtypes: Sequence[pl.DataType],
    *,
    kind: str,
    schema: dict[str, Any] | None,
    model: str,
    dimensions: int | None = None,
) -> OutputLayout:
    """Fix the output schema before any row is written."""
    reserved = {name for name, _ in META_FIELDS}
    out_fields: list[pa.Field] = []
    converters: dict[str, Converter] = {}
    if kind == "embeddings":
        dims = embedding_dims(model, dimensions)
        vec_t = pa.list_(pa.float32(), dims) if dims else pa.list_(pa.float32())
        out_fields.append(pa.field("embedding", vec_t))
        output_kind = "embedding"
    elif schema is not None:
        for name, sub in (schema.get("properties") or {}).items():
            t, conv = arrow_field_type(sub, schema)
            out_fields.append(pa.field(name, t))
            converters[name] = conv
        out_fields.append(pa.field("raw_response", pa.string()))
        output_kind = "struct"
    else:
        out_fields.append(pa.field("output", pa.string()))
        out_fields.append(pa.field("raw_response", pa.string()))
        output_kind = "text"
    reserved |= {f.name for f in out_fields}
    bad_meta = reserved & set(converters) - {f.name for f in out_fields}
    assert not bad_meta
    clash = sorted(set(converters) & {name for name, _ in META_FIELDS})
    if clash:
        from .errors import SchemaError

        raise SchemaError(f"output schema properties {clash} clash with batchrun's metadata columns; rename them")
    in_schema = pl.DataFrame(schema=dict(zip(input_columns, input_dtypes, strict=True))).to_arrow().schema
    mapping: list[tuple[str, str]] = []
    in_fields: list[pa.Field] = []
    for f in in_schema:
        out = f.name if f.name not in reserved else f"input_{f.name}"
        mapping.append((f.name, out))
        in_fields.append(pa.field(out, f.type))
    meta = [pa.field(n, t) for n, t in META_FIELDS]
    return OutputLayout(pa.schema(in_fields + out_fields + meta), mapping, output_kind, converters)


class _NoPandas:
    """An import finder under which `import pandas` fails (skip_pandas_probe)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ModuleNotFoundError("pandas is not for this process's Arrow conversions", name="pandas")


def skip_pandas_probe() -> None:
    """For a process that never hands pyarrow a pandas object (the CLI's run, not --ray): make pyarrow's
    value checks skip pandas, so it is not imported at all.

    pyarrow's first conversion of Python values (the sink's rows) imports pandas, when it is installed,
    only to ask whether the values are pandas objects: +50 MB of the run's peak RSS and ~0.3 s of its
    CPU (a 5,000-request run: 237 MB with pandas installed, 188 MB without). pyarrow asks once and keeps
    the answer; converting an empty list while `import pandas` fails makes that answer "no pandas". What
    really needs pandas (Table.to_pandas, from_pandas) still imports it; only its checks of values, such
    as whether a value is a pandas Series, answer no, so a library caller's process is left alone."""
    if "pandas" in sys.modules or importlib.util.find_spec("pandas") is None:
        return
    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([], pa.string())
    finally:
        sys.meta_path.remove(finder)


class ParquetSink:
    """Writes row groups to `<path>.partial`, renamed to `path` when closed cleanly."""

    def __init__(self, path: Path, layout: OutputLayout, row_group_size: int = 5000) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.layout = layout
        self.row_group_size = row_group_size
        self.writer: pq.ParquetWriter | None = None  # opened with the first rows (see _open)
        self.rows_written = 0
        self._held: list[pa.Table] = []
        self._held_rows = 0

    def _open(self, records: list[dict[str, Any]]) -> pq.ParquetWriter:
        """The writer, its schema fixed now: an embedding column of unknown size takes the size of the first
        vector written (the engine refuses any other), so it is a fixed-size list like a known model's."""
        schema = self.layout.schema
        if self.layout.output_kind == "embedding":
            index = schema.get_field_index("embedding")
            kind = schema.field(index).type
            if pa.types.is_list(kind) and not pa.types.is_fixed_size_list(kind):
                size = next((len(r["embedding"]) for r in records if r.get("embedding") is not None), None)
                if size:
                    schema = schema.set(index, pa.field("embedding", pa.list_(pa.float32(), size)))
                    self.layout = dataclasses.replace(self.layout, schema=schema)
        self.writer = pq.ParquetWriter(self.partial, schema, compression="zstd")
        return self.writer

    def write(self, records: list[dict[str, Any]]) -> None:
        """Write these rows now (with any held by `hold`), in row groups of at most row_group_size."""
        self.hold(records)
        self.flush()

    def hold(self, records: list[dict[str, Any]]) -> None:
        """Convert these rows to Arrow now and write them with the next full row group. An online run
        hands its rows over a few hundred at a time, so the conversion is done while the run waits on
        its limits, not all at the end (~0.1 s for a 3,000-row group), and the rows are kept as Arrow
        columns, not Python dicts, until their group is written."""
        if records:
            if self.writer is None:
                self._open(records)
            self._held.append(pa.Table.from_pylist(records, schema=self.layout.schema))
            self._held_rows += len(records)
            if self._held_rows >= self.row_group_size:  # whole row groups now, the rest stays held
                table = pa.concat_tables(self._held)
                rest = table.num_rows % self.row_group_size
                self._write(table.slice(0, table.num_rows - rest))
                self._held = [table.slice(table.num_rows - rest)] if rest else []
                self._held_rows = rest

    def flush(self) -> None:
        """Write the held rows."""
        if self._held:
            table = pa.concat_tables(self._held)
            self._held, self._held_rows = [], 0
            self._write(table)

    def _write(self, table: pa.Table) -> None:
        assert self.writer is not None
        self.writer.write_table(table, row_group_size=self.row_group_size)
        self.rows_written += table.num_rows

    def close(self) -> None:
        self.flush()
        (self.writer or self._open([])).close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ReorderBuffer:
    """Releases results in input order (by sequence number), holding only the early arrivals."""

    def __init__(self) -> None:
        self.next_seq = 0
        self.held: dict[int, Any] = {}
        self.peak = 0

    def add(self, seq: int, item: Any) -> list[tuple[int, Any]]:
        self.held[seq] = item
        self.peak = max(self.peak, len(self.held))
        ready = []
        while self.next_seq in self.held:
            ready.append((self.next_seq, self.held.pop(self.next_seq)))
            self.next_seq += 1
        return ready


def export_table(table: Path, out: Path, fmt: str) -> None:
    """Write the typed Parquet `table` as `out` in `fmt` ("csv", "jsonl" or "xlsx"), through `<out>.partial`
    and a rename. Row group by row group (Excel, which cannot be streamed, is limited to a sheet anyway).
    CSV and Excel cells are flat: structs, lists and vectors become JSON text; JSONL keeps them nested."""
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    pf = pq.ParquetFile(table)
    if fmt == "xlsx":
        _flat(pl.read_parquet(table)).write_excel(partial, worksheet="output")
    else:
        with partial.open("wb") as f:
            for i in range(pf.num_row_groups):
                frame = pl.from_arrow(pf.read_row_group(i))
                assert isinstance(frame, pl.DataFrame)
                if fmt == "csv":
                    _flat(frame).write_csv(f, include_header=i == 0)
                else:
                    frame.write_ndjson(f)
            if pf.num_row_groups == 0 and fmt == "csv":
                _flat(pl.read_parquet(table)).write_csv(f)
    os.replace(partial, out)


def _flat(frame: pl.DataFrame) -> pl.DataFrame:
    nested = [c for c, t in frame.schema.items() if isinstance(t, pl.Struct | pl.List | pl.Array)]
    if not nested:
        return frame
    return frame.with_columns(
        pl.col(c).map_elements(lambda v: json.dumps(_plain(v), ensure_ascii=False), return_dtype=pl.String)
        for c in nested
    )


def _plain(value: Any) -> Any:
    if isinstance(value, pl.Series):
        return value.to_list()
    return value
