"""Input rows, read in bounded batches, each with a stable id.

CSV/TSV and JSONL are read in blocks of whole records (`blocks.BlockFile`), so memory stays flat
whatever the row count; Parquet is scanned by polars (row groups); Excel is read whole (fastexcel has
no scan; a sheet is at most ~1M rows). Every row keeps its position in the file (`ROW_COLUMN`) even
after a filter, and its id is the job's id column or that position.

Opening a source checks it in one pass — it parses throughout, has rows, ids are present and unique,
no control characters — so a bad row is refused before anything is sent.
"""

from __future__ import annotations

import codecs
import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .blocks import BlockFile
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
    blocks: BlockFile | None = None
    """CSV/TSV/JSONL: the file read in blocks (None: polars reads it)."""

    @property
    def path(self) -> Path:
        return self.spec.path

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema(dict(zip(self.columns, self.dtypes, strict=True)))

    def batches(self, size: int = 10_000) -> Iterator[pl.DataFrame]:
        """The rows in file order with ROW_COLUMN and ID_COLUMN, filter and limit applied, at most
        `size` at a time, without loading the whole file."""
        if self.blocks is None:
            yield from _frame(self.spec).collect_batches(chunk_size=size, maintain_order=True)
            return
        for frame in _rows(self.spec, self.blocks.frames(self.schema)):
            for start in range(0, frame.height, size):
                yield frame.slice(start, size)

    def first_where(self, condition: pl.Expr, columns: list[str]) -> dict[str, object] | None:
        """The first row (its `columns`) where `condition` holds, or None: one streaming pass."""
        for batch in self.batches(50_000):
            hit = batch.filter(condition)
            if hit.height:
                return hit.select(columns).row(0, named=True)
        return None

    def output_columns(self) -> tuple[str, ...]:
        return self.spec.columns if self.spec.columns is not None else self.columns


def _block_file(spec: InputSpec) -> BlockFile | None:
    fmt = spec.resolved_format
    if fmt in ("csv", "tsv"):
        return BlockFile(spec.path, "csv", spec.separator or ("\t" if fmt == "tsv" else ","))
    if fmt == "jsonl":
        return BlockFile(spec.path, "jsonl")
    return None


def _scan(spec: InputSpec) -> pl.LazyFrame:
    fmt = spec.resolved_format
    path = spec.path
    if fmt == "parquet":
        return pl.scan_parquet(path)
    if fmt == "xlsx":
        kwargs = {"sheet_name": spec.sheet} if spec.sheet else {}
        return pl.read_excel(path, **kwargs).lazy()
    raise InputError(f"{path}: unsupported format {fmt!r}")


def _with_ids(spec: InputSpec, frame: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame | pl.DataFrame:
    ident = pl.col(spec.id_column) if spec.id_column else pl.col(ROW_COLUMN)
    return frame.with_columns(ident.cast(pl.String).alias(ID_COLUMN))


def _frame(spec: InputSpec) -> pl.LazyFrame:
    lf = _scan(spec).with_row_index(ROW_COLUMN)
    if spec.filter:
        lf = lf.filter(pl.sql_expr(spec.filter))
    if spec.limit is not None:
        lf = lf.head(spec.limit)
    out = _with_ids(spec, lf)
    assert isinstance(out, pl.LazyFrame)
    return out


def _rows(spec: InputSpec, frames: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """Blocks of a file as rows: position, filter, limit and id, as `_frame` does for a scan."""
    offset = 0
    left = spec.limit
    condition = pl.sql_expr(spec.filter) if spec.filter else None
    for frame in frames:
        n = frame.height
        frame = frame.with_row_index(ROW_COLUMN, offset=offset)
        offset += n
        if condition is not None:
            frame = frame.filter(condition)
        if left is not None:
            frame = frame.head(left)
            left -= frame.height
        out = _with_ids(spec, frame)
        assert isinstance(out, pl.DataFrame)
        if out.height:
            yield out
        if left == 0:
            return


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
        # the bytes first, so a bad one is named by line and byte, not by a parser's message
        check_utf8(path)
    check_format(spec)
    blocks = _block_file(spec)
    try:
        # a block file is parsed whole here: a ragged line or a bad value fails now, not mid-run
        schema = blocks.infer() if blocks is not None else _scan(spec).collect_schema()
        check_filter(spec, schema)
        _check_columns(spec, schema)
        source = Source(
            spec=spec, columns=tuple(schema.names()), dtypes=tuple(schema.dtypes()), rows=0, blocks=blocks
        )  # fmt: skip  (rows: counted by the check pass below)
        rows = _check_rows(source)
    except InputError:
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise _explain(spec, exc) from exc
    except Exception as exc:  # the Excel reader's own errors (fastexcel) are not polars errors
        if spec.resolved_format != "xlsx":
            raise
        raise _explain(spec, exc) from exc
    if rows == 0:
        what = "after input.filter/limit" if spec.filter or spec.limit else "below its header"
        raise InputError(f"{path}: no rows {what}; nothing to do")
    return dataclasses.replace(source, rows=rows)


def _check_columns(spec: InputSpec, schema: pl.Schema) -> None:
    path = spec.path
    if spec.columns:
        missing = [c for c in spec.columns if c not in schema]
        if missing:
            raise InputError(f"{path}: input.columns names {missing}, which the file lacks; it has {schema.names()}")
    if spec.id_column is not None and spec.id_column not in schema:
        raise InputError(f"{path}: id column {spec.id_column!r} not found; the columns are {schema.names()}")


CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"


def _check_rows(source: Source) -> int:
    """One streaming pass over the rows: count them, and refuse missing or duplicate ids and control
    characters. Memory: 8 bytes per row for the id hashes, nothing else that grows."""
    spec = source.spec
    texts = [c for c, t in source.schema.items() if t == pl.String] if spec.control_chars == "reject" else []
    control = pl.any_horizontal(pl.col(c).str.contains(CONTROL) for c in texts) if texts else None
    no_id = pl.col(ID_COLUMN).is_null() | (pl.col(ID_COLUMN).str.strip_chars() == "")
    ids = spec.id_column is not None
    parts: list[pl.Series] = []  # 8 bytes a row: the one thing here that grows with the input
    rows = 0
    missing: list[int] = []
    missing_n = 0
    for batch in source.batches(50_000):
        if control is not None:
            bad = batch.filter(control)
            if bad.height:
                _control_error(spec, bad.row(0, named=True), texts)
        if ids:
            blank = batch.filter(no_id)
            missing_n += blank.height
            missing += blank[ROW_COLUMN].head(5 - len(missing)).to_list() if len(missing) < 5 else []
            parts.append(batch[ID_COLUMN].hash(seed=0))
        rows += batch.height
    if missing:
        shown = ", ".join(str(r + 1) for r in missing)
        raise InputError(
            f"{spec.path}: {missing_n} row(s) have no value in id column {spec.id_column!r} "
            f"(data rows {shown}{', ...' if missing_n > len(missing) else ''}); fill them in or drop "
            "input.id_column to use row numbers"
        )
    if ids and parts:
        found = pl.concat(parts, rechunk=False).sort()
        parts.clear()
        # neighbours compared through two zero-copy slices: no third copy of the hashes
        later, earlier = found.slice(1), found.slice(0, found.len() - 1)
        twice = later.filter(later == earlier).unique()
        del found, later, earlier
        if twice.len():
            _duplicate_error(source, twice)
    return rows


def _control_error(spec: InputSpec, row: dict[str, object], texts: list[str]) -> None:
    col = next(c for c in texts if isinstance(row[c], str) and re.search(CONTROL, row[c]))  # type: ignore[arg-type]
    char = re.search(CONTROL, str(row[col]))
    code = f"U+{ord(char.group(0)):04X}" if char else "a control character"
    raise InputError(
        f"{spec.path}: data row {int(row[ROW_COLUMN]) + 1} (id {row[ID_COLUMN]!r}), column {col!r} holds {code} "  # type: ignore[call-overload]
        "(a control character, e.g. NUL); "
        'remove it from the file, or set [input] control_chars = "strip" to drop such characters from prompts'
    )


def _duplicate_error(source: Source, twice: pl.Series) -> None:
    """A second pass for the few ids whose hashes repeat: name the real duplicates (a hash collision
    between two different ids is not one)."""
    seen = [
        batch.filter(pl.col(ID_COLUMN).hash(seed=0).is_in(twice.implode())).select(ID_COLUMN, ROW_COLUMN)
        for batch in source.batches(50_000)
    ]
    dup = (
        pl.concat(seen)
        .group_by(ID_COLUMN)
        .agg(pl.col(ROW_COLUMN).sort().head(3), pl.len().alias("n"))
        .filter(pl.col("n") > 1)
        .sort(pl.col(ROW_COLUMN).list.first())
        .head(3)
    )
    if not dup.height:
        return
    examples = "; ".join(
        f"{r[ID_COLUMN]!r} on data rows {', '.join(str(x + 1) for x in r[ROW_COLUMN])}"
        for r in dup.iter_rows(named=True)
    )
    raise InputError(
        f"{source.path}: id column {source.spec.id_column!r} has duplicate ids ({examples}); "
        "ids must be unique because results and resume are keyed by them"
    )
