"""Looking at a job's results without writing polars: `batchrun show` (a table in the terminal) and
`batchrun export` (the output in another format). Both read the job's typed Parquet, lazily."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from .errors import UserError
from .jobs import Job
from .sinks import export_table

EXPORT_FORMATS = ("csv", "jsonl", "xlsx", "parquet")
LONG_TEXT = 60
"""Characters of a text cell `show` prints (the rest is cut with an ellipsis)."""


def _check_output(job: Job) -> None:
    if not job.table_path.exists():
        raise UserError(f"{job.name}: no output yet at {job.table_path}; run the job first (batchrun run JOB)")


def _table(job: Job) -> pl.LazyFrame:
    _check_output(job)
    return pl.scan_parquet(job.table_path)


def select_rows(
    job: Job, *, status: Sequence[str] = (), n: int | None = 20, columns: Sequence[str] = ()
) -> pl.DataFrame:
    """The output's rows with these statuses (all if none), the first `n` (all if None), these columns
    (default: the id, the output columns and status, error, cost)."""
    frame = _table(job)
    names = frame.collect_schema().names()
    unknown = sorted(set(columns) - set(names))
    if unknown:
        raise UserError(f"--columns: {', '.join(unknown)} not in the output; it has {', '.join(names)}")
    if status:
        frame = frame.filter(pl.col("status").is_in(list(status)))
    if not columns:
        meta = {"attempts", "prompt_tokens", "completion_tokens", "latency_ms", "finish_reason", "model",
                "service_tier", "cached_tokens", "request_id", "from_cache", "raw_response", "embedding"}  # fmt: skip
        keep = [c for c in names if c not in meta]
        columns = keep[:12]
    frame = frame.select(list(columns))
    return (frame.head(n) if n is not None else frame).collect()


def show(job: Job, *, status: Sequence[str] = (), n: int | None = 20, columns: Sequence[str] = ()) -> str:
    """The rows as a terminal table (long text cut), with a line saying how many matched."""
    rows = select_rows(job, status=status, n=n, columns=columns)
    frame = _table(job)
    total = (frame.filter(pl.col("status").is_in(list(status))) if status else frame).select(pl.len()).collect().item()
    shown = rows.with_columns(
        pl.col(c).cast(pl.String).str.slice(0, LONG_TEXT) + pl.when(pl.col(c).cast(pl.String).str.len_chars() > LONG_TEXT)
        .then(pl.lit("…")).otherwise(pl.lit(""))
        for c, t in rows.schema.items() if t == pl.String
    )  # fmt: skip
    width = shutil.get_terminal_size((160, 40)).columns
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=width, fmt_str_lengths=LONG_TEXT + 1,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):  # fmt: skip
        table = str(shown)
    which = f" with status {', '.join(status)}" if status else ""
    return f"{table}\n{len(rows):,} of {total:,} row(s){which} from {job.table_path}"


def export(job: Job, out: Path) -> Path:
    """The job's output written as `out` (.csv, .jsonl, .xlsx or .parquet, by its suffix)."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"{out}: export writes {', '.join('.' + f for f in EXPORT_FORMATS)} (by the file's suffix)")
    _check_output(job)
    if fmt == "parquet":
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        shutil.copyfile(job.table_path, partial)
        os.replace(partial, out)
    else:
        export_table(job.table_path, out, fmt)
    return out


__all__ = ["export", "select_rows", "show"]
