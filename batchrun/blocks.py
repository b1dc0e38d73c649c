"""CSV, TSV and JSON-lines files read in bounded blocks, so memory does not grow with the file.

polars' own scanners memory-map the file and its allocator keeps what a pass touched: `plan` on a
3M-row CSV peaked at 804 MB, growing ~190 MB per million rows. Here the file is read with plain
`read()` calls in blocks of about `BLOCK_BYTES`, each cut at a record boundary (for CSV: a newline
outside quotes), and each block is parsed by polars on its own with the header in front. Peak memory
is then a few blocks, whatever the row count (benchmarks/bench_plan_memory.py).

Types are inferred over the whole file, as `infer_schema_length=None` did: one pass parses every
block with inference and merges the blocks' types into their common supertype (a column that is all
empty in a block says nothing about its type there); later passes parse each block with that schema,
so a value that would only fit another type fails up front, never halfway through a paid run.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

BLOCK_BYTES = 2 << 20


@dataclass(frozen=True)
class BlockFile:
    """One CSV/TSV/JSONL file, cut into blocks of whole records."""

    path: Path
    fmt: str
    """ "csv" (any separator) or "jsonl"."""
    separator: str = ","
    block_bytes: int = BLOCK_BYTES

    def _records(self) -> Iterator[tuple[bytes, bytes]]:
        """(header, block of whole records) pairs; the header is b"" for JSON lines."""
        quote = self.fmt == "csv"
        with self.path.open("rb") as f:
            header = b""
            rest = b""
            if quote:
                header, rest = _first_record(f, self.block_bytes)
            while True:
                more = f.read(self.block_bytes)
                data = rest + more
                if not more:
                    if data.strip():
                        yield header, data
                    return
                cut = _last_boundary(data, quote)
                if cut <= 0:
                    rest = data  # one record longer than a block: read on until it ends
                    continue
                rest = data[cut:]
                yield header, data[:cut]

    def _parse(self, header: bytes, data: bytes, schema: pl.Schema | None) -> pl.DataFrame:
        buf = io.BytesIO(header + data)
        if self.fmt == "jsonl":
            return pl.read_ndjson(buf, schema=schema, infer_schema_length=None)
        if schema is None:
            return pl.read_csv(buf, separator=self.separator, infer_schema_length=None, raise_if_empty=True)
        return pl.read_csv(buf, separator=self.separator, schema=schema, raise_if_empty=True)

    def infer(self) -> pl.Schema:
        """The whole file's schema: each column's supertype over all blocks."""
        merged: pl.Schema | None = None
        for header, data in self._records():
            frame = self._parse(header, data, None)
            # a column empty throughout a block is typed String by the parser: it says nothing here
            seen = pl.Schema(
                {
                    c: (pl.Null() if frame.height and frame[c].null_count() == frame.height else t)
                    for c, t in frame.schema.items()
                }
            )
            merged = seen if merged is None else _supertypes(merged, seen)
        if merged is None:
            if self.fmt == "csv":  # a header and no rows: the header's columns, as polars reads them
                return pl.read_csv(self.path, separator=self.separator, n_rows=0).schema
            return pl.Schema()
        return pl.Schema({c: (pl.String() if t == pl.Null else t) for c, t in merged.items()})

    def frames(self, schema: pl.Schema) -> Iterator[pl.DataFrame]:
        """Every record in file order, a block at a time, parsed with `schema`."""
        for header, data in self._records():
            yield self._parse(header, data, schema)


def _supertypes(a: pl.Schema, b: pl.Schema) -> pl.Schema:
    """Per column, the type that holds both (Int64 + Float64 → Float64, Null + X → X, else String);
    columns only one side has are kept (JSON lines need not all carry every key)."""
    relaxed = pl.concat([pl.DataFrame(schema=a), pl.DataFrame(schema=b)], how="diagonal_relaxed")
    return relaxed.schema


def _first_record(f: io.BufferedReader, block_bytes: int) -> tuple[bytes, bytes]:
    """(the CSV header record with its newline, what was read past it)."""
    data = b""
    while True:
        more = f.read(block_bytes)
        data += more
        cut = _first_boundary(data)
        if cut > 0:
            return data[:cut], data[cut:]
        if not more:
            return data if data.endswith(b"\n") else data + b"\n", b""


def _first_boundary(data: bytes) -> int:
    """Offset just past the first newline outside quotes, or 0."""
    pos = data.find(b"\n")
    while pos >= 0:
        if data.count(b'"', 0, pos) % 2 == 0:
            return pos + 1
        pos = data.find(b"\n", pos + 1)
    return 0


def _last_boundary(data: bytes, quote: bool) -> int:
    """Offset just past the last newline that ends a record (outside quotes, for CSV), or 0.

    `data` starts at a record boundary, so a newline ends a record when an even number of quote
    characters precede it (a doubled "" inside a quoted field counts twice and keeps the parity).
    """
    pos = data.rfind(b"\n")
    if not quote:
        return pos + 1
    if pos < 0:
        return 0
    quotes = data.count(b'"', 0, pos)
    while pos >= 0:
        if quotes % 2 == 0:
            return pos + 1
        prev = data.rfind(b"\n", 0, pos)
        quotes -= data.count(b'"', prev + 1, pos)
        pos = prev
    return 0
