"""Input rows, read lazily through polars, each with a stable id.

CSV/TSV, Parquet and JSONL are scanned (polars LazyFrame), so a file larger
than memory streams through in batches. Excel is read whole (fastexcel has no
scan; a sheet is at most ~1M rows). Every row keeps its position in the file
(`ROW_COLUMN`) even after a filter, and its id is the job's id column or that
position.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .errors import InputError
from .jobs import InputSpec

ROW_COLUMN = "__batchrun_row"
ID_COLUMN = "__batchrun_id"


def find_bad_utf8(path: Path, chunk_size: int = 1 << 20) -> tuple[int, int] | None:
    """(line, byte column) of the first invalid UTF-8 sequence in a file, or None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    line_start = 0  # absolute offset of the current line's first byte
    offset = 0
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                # the decoder may hold back up to 3 bytes of a split sequence from earlier chunks
                bad = max(offset + exc.start - len(decoder.getstate()[0]), offset - 3)
                head = chunk[: max(bad - offset, 0)]
                line += head.count(b"\n")
                nl = head.rfind(b"\n")
                if nl >= 0:
                    line_start = offset + nl + 1
                return line, bad - line_start + 1
            line += chunk.count(b"\n")
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                line_start = offset + nl + 1
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return line, offset - line_start + 1
    return None


@dataclass(frozen=True)
class Source:
    """An input file, checked, ready to stream rows with ids."""

    spec: InputSpec
    columns: tuple[str, ...]
    dtypes: tuple[pl.DataType, ...]
    rows: int
    """Rows after filter and limit, counted once when the source was opened and checked."""

    @property
    def path(self) -> Path:
        return self.spec.path

    def lazy(self) -> pl.LazyFrame:
        """All rows with ROW_COLUMN and ID_COLUMN, filter and limit applied."""
        return _frame(self.spec)

    def batches(self, size: int = 10_000) -> Iterator[pl.DataFrame]:
        """The rows in file order, `size` at a time, without loading the whole file."""
        yield from self.lazy().collect_batches(chunk_size=size, maintain_order=True)

    def output_columns(self) -> tuple[str, ...]:
        return self.spec.columns if self.spec.columns is not None else self.columns


def _scan(spec: InputSpec) -> pl.LazyFrame:
    fmt = spec.resolved_format
    path = spec.path
    if fmt in ("csv", "tsv"):
        sep = spec.separator or ("\t" if fmt == "tsv" else ",")
        # infer over the whole file: a type guessed from the first rows that breaks
        # on row 90,000 would fail mid-run, after money was spent
        return pl.scan_csv(path, separator=sep, infer_schema_length=None, raise_if_empty=True)
    if fmt == "parquet":
        return pl.scan_parquet(path)
    if fmt == "jsonl":
        return pl.scan_ndjson(path, infer_schema_length=None)
    if fmt == "xlsx":
        kwargs = {"sheet_name": spec.sheet} if spec.sheet else {}
        return pl.read_excel(path, **kwargs).lazy()
    raise InputError(f"{path}: unsupported format {fmt!r}")


def _frame(spec: InputSpec) -> pl.LazyFrame:
    lf = _scan(spec).with_row_index(ROW_COLUMN)
    if spec.filter:
        lf = lf.filter(pl.sql_expr(spec.filter))
    if spec.limit is not None:
        lf = lf.head(spec.limit)
    ident = pl.col(spec.id_column) if spec.id_column else pl.col(ROW_COLUMN)
    return lf.with_columns(ident.cast(pl.String).alias(ID_COLUMN))


def _explain(spec: InputSpec, exc: Exception) -> InputError:
    path = spec.path
    text = str(exc).split("\n", 1)[0]
    if "empty" in text.lower():
        return InputError(f"{path}: the file is empty; it needs a header row and at least one data row")
    if "more fields than defined" in text or "ragged" in text.lower():
        where = _ragged_line(spec)
        if where is not None:
            line, got, want = where
            return InputError(
                f"{path}: line {line} has {got} fields where the header has {want}; fix that line (a stray "
                f"separator, or a value with the separator that needs quotes)"
            )
    return InputError(f"{path}: cannot read as {spec.resolved_format}: {text}")


def _ragged_line(spec: InputSpec) -> tuple[int, int, int] | None:
    """(line, fields, header fields) of the first CSV line whose field count differs from the header's
    (polars does not say which line): read once more with the csv module, only when it failed."""
    import csv

    sep = spec.separator or ("\t" if spec.resolved_format == "tsv" else ",")
    with spec.path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=sep)
        header = next(reader, None)
        if header is None:
            return None
        for fields in reader:
            if fields and len(fields) != len(header):
                return reader.line_num, len(fields), len(header)
    return None


MAGIC = {"xlsx": (b"PK\x03\x04", "an Excel workbook (.xlsx is a zip file)"), "parquet": (b"PAR1", "a Parquet file")}


def check_format(spec: InputSpec) -> None:
    """The file is the format its suffix (or [input] format) says, by its first bytes, before a parser
    gives a message only its authors understand."""
    fmt = spec.resolved_format
    if fmt not in MAGIC:
        return
    magic, what = MAGIC[fmt]
    with spec.path.open("rb") as f:
        head = f.read(512)
    if head.startswith(magic):
        return
    guess = ""
    try:
        sample = head.decode("utf-8")
        first = sample.splitlines()[0] if sample else ""
        if first.lstrip().startswith("{"):
            guess = ' It looks like JSON lines: set [input] format = "jsonl".'
        elif "\t" in first:
            guess = ' It looks like tab-separated text: set [input] format = "tsv".'
        elif first:
            guess = ' It looks like CSV text: set [input] format = "csv" (or rename the file).'
    except UnicodeDecodeError:
        pass
    raise InputError(f"{spec.path}: is not {what}.{guess}")


def check_filter(spec: InputSpec, schema: pl.Schema) -> None:
    """input.filter parses as SQL and names real columns; the error names the key, not the file."""
    if not spec.filter:
        return
    try:
        expr = pl.sql_expr(spec.filter)
        pl.LazyFrame(schema=schema).filter(expr).collect_schema()
    except (pl.exceptions.PolarsError, ValueError) as exc:
        detail = str(exc).split("\n", 1)[0]
        raise InputError(
            f"the job's [input] filter = {spec.filter!r} is not a valid SQL condition over the columns "
            f"{schema.names()}: {detail}"
        ) from None


def check_control_chars(spec: InputSpec, lf: pl.LazyFrame, schema: pl.Schema) -> None:
    """No NUL or other C0 control character in a text cell (unless the job strips them): such bytes are
    nearly always a broken export, and a model is paid to read them."""
    if spec.control_chars == "strip":
        return
    texts = [c for c, t in schema.items() if t == pl.String]
    if not texts:
        return
    pattern = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"
    bad = (
        lf.filter(pl.any_horizontal(pl.col(c).str.contains(pattern) for c in texts))
        .select([ROW_COLUMN, ID_COLUMN, *texts])
        .head(1)
        .collect(engine="streaming")
    )
    if bad.height:
        row = bad.row(0, named=True)
        col = next(c for c in texts if row[c] is not None and re.search(pattern, row[c]))
        char = re.search(pattern, row[col])
        code = f"U+{ord(char.group(0)):04X}" if char else "a control character"
        raise InputError(
            f"{spec.path}: data row {row[ROW_COLUMN] + 1} (id {row[ID_COLUMN]!r}), column {col!r} holds {code} "
            "(a control character, e.g. NUL); "
            'remove it from the file, or set [input] control_chars = "strip" to drop such characters from prompts'
        )


def check_input_file(path: Path) -> None:
    """The input exists and is a file (tables and documents alike)."""
    if not path.exists():
        raise InputError(f"{path}: input file not found (paths in a job file are relative to the job file)")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; point input.path at a file")


def check_utf8(path: Path) -> None:
    """Fail, naming line and byte, if a text input is not valid UTF-8."""
    where = find_bad_utf8(path)
    if where:
        line, col = where
        raise InputError(
            f"{path}: line {line}, byte {col}: not valid UTF-8. "
            "Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        )


def open_source(spec: InputSpec) -> Source:
    """Open and check an input: it exists, parses, has rows, and its ids are present and unique."""
    path = spec.path
    check_input_file(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty; it needs a header row and at least one data row")
    if spec.resolved_format in ("csv", "tsv", "jsonl"):
        # polars reads only the columns a query needs, so a bad byte in an unused column would
        # surface mid-run; checking the bytes up front costs one fast pass
        check_utf8(path)
    check_format(spec)
    try:
        schema = _scan(spec).collect_schema()
        check_filter(spec, schema)
        lf = _frame(spec)
        stats = _id_stats(spec, lf, schema)
        if spec.resolved_format in ("csv", "tsv", "jsonl"):
            # polars parses only the columns a query touches; parse them all once now, so a ragged
            # line or a bad value fails here and not halfway through a paid run
            _scan(spec).select(pl.all().null_count()).collect(engine="streaming")
        check_control_chars(spec, lf, schema)
    except InputError:
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise _explain(spec, exc) from exc
    except Exception as exc:  # the Excel reader's own errors (fastexcel) are not polars errors
        if spec.resolved_format != "xlsx":
            raise
        raise _explain(spec, exc) from exc
    if stats["rows"] == 0:
        what = "after input.filter/limit" if spec.filter or spec.limit else "below its header"
        raise InputError(f"{path}: no rows {what}; nothing to do")
    return Source(spec=spec, columns=tuple(schema.names()), dtypes=tuple(schema.dtypes()), rows=stats["rows"])


def _id_stats(spec: InputSpec, lf: pl.LazyFrame, schema: pl.Schema) -> dict[str, int]:
    path = spec.path
    if spec.columns:
        missing = [c for c in spec.columns if c not in schema]
        if missing:
            raise InputError(f"{path}: input.columns names {missing}, which the file lacks; it has {schema.names()}")
    if spec.id_column is None:
        rows = lf.select(pl.len()).collect(engine="streaming").item()
        return {"rows": int(rows)}
    if spec.id_column not in schema:
        raise InputError(f"{path}: id column {spec.id_column!r} not found; the columns are {schema.names()}")
    ids = lf.select(ROW_COLUMN, ID_COLUMN)
    rows = ids.select(pl.len()).collect(engine="streaming").item()
    nulls = ids.filter(pl.col(ID_COLUMN).is_null() | (pl.col(ID_COLUMN).str.strip_chars() == ""))
    bad = nulls.head(5).collect(engine="streaming")[ROW_COLUMN].to_list()
    if bad:
        n = nulls.select(pl.len()).collect(engine="streaming").item()
        shown = ", ".join(str(r + 1) for r in bad)
        raise InputError(
            f"{path}: {n} row(s) have no value in id column {spec.id_column!r} "
            f"(data rows {shown}{', ...' if n > len(bad) else ''}); fill them in or drop "
            "input.id_column to use row numbers"
        )
    dup = (
        ids.group_by(ID_COLUMN)
        .agg(pl.col(ROW_COLUMN).sort().head(3), pl.len().alias("n"))
        .filter(pl.col("n") > 1)
        .sort(pl.col(ROW_COLUMN).list.first())
        .head(3)
        .collect(engine="streaming")
    )
    if dup.height:
        examples = "; ".join(
            f"{r[ID_COLUMN]!r} on data rows {', '.join(str(x + 1) for x in r[ROW_COLUMN])}"
            for r in dup.iter_rows(named=True)
        )
        raise InputError(
            f"{path}: id column {spec.id_column!r} has duplicate ids ({examples}); "
            "ids must be unique because results and resume are keyed by them"
        )
    return {"rows": int(rows)}
