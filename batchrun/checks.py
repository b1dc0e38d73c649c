"""Checks on where a job writes, made before anything is read or sent (by `plan` and by every run).

A run that finds at its very end that its output cannot be written has already paid for every
row; so everything about the output — format, folder, permissions, not the input itself — and the
ledger's place is checked first, each failure naming the key and what to do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import JobFileError
from .jobs import OUTPUT_FORMATS, Job

EXCEL_MAX_ROWS = 1_048_575  # a sheet's 1,048,576 rows, less the header


def check_job_paths(job: Job) -> None:
    """Refuse outputs that would destroy an input or could not be written, and an unusable ledger place."""
    src = job.source_path
    out = job.output_path
    if out.is_dir():
        raise JobFileError(
            src, "output.path", f"{out} is a folder; give a file path inside it (e.g. {out / 'out.parquet'})"
        )
    if job.output_format is None:
        raise JobFileError(
            src,
            "output.path",
            f"{out.name!r}: unknown output format {out.suffix or '(no suffix)'!r}; use one of "
            f"{', '.join(sorted(OUTPUT_FORMATS))} (typed Parquet is the default)",
        )
    if job.input.is_document and job.output_format != "parquet":
        raise JobFileError(
            src,
            "output.path",
            "a document job writes its paragraphs as Parquet and the translation as documents "
            "([document] outputs); give a .parquet path",
        )
    inputs = [job.input.path]
    if job.document.glossary is not None:
        inputs.append(job.document.glossary)
    written = {out: "output.path", job.table_path: "output.path", job.ledger_file: "output.ledger"}
    if job.output.audit is not None:
        written[job.output.audit] = "output.audit"
    if job.input.is_document:
        written.update({path: "document.output_stem" for _, path in job.document_outputs})
    for path, key in written.items():
        for inp in inputs:
            if _same(path, inp):
                raise JobFileError(
                    src,
                    key,
                    f"{path} is the job's input {inp.name!r}: writing there would destroy it; choose another path",
                )
        if path.is_dir():
            raise JobFileError(
                src, key, f"{path} is a folder; give a file path inside it (e.g. {path / 'out.parquet'})"
            )
        _writable_place(src, key, path)


def _same(a: Path, b: Path) -> bool:
    """Whether two paths are one file (after symlinks; by inode when both exist)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _writable_place(src: Path | None, key: str, path: Path) -> None:
    """`path` can be created (or replaced): its nearest existing folder is a folder we may write in."""
    if path.exists() and not os.access(path, os.W_OK):
        raise JobFileError(src, key, f"{path} exists and is read-only; make it writable or choose another path")
    folder = path.parent
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise JobFileError(src, key, f"cannot create {path.parent}: {folder} is a file, not a folder")
    try:  # a real write, not os.access: ACLs, read-only mounts and root all answer truthfully
        fd, probe = tempfile.mkstemp(prefix=".batchrun-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise JobFileError(
            src, key, f"cannot write in {folder} ({exc.strerror or exc}); choose a folder you can write to"
        ) from None


def check_excel_rows(job: Job, rows: int) -> None:
    if job.output_format == "xlsx" and rows > EXCEL_MAX_ROWS:
        raise JobFileError(
            job.source_path,
            "output.path",
            f"{rows:,} rows do not fit in an Excel sheet ({EXCEL_MAX_ROWS:,} at most); write .parquet or .csv",
        )
