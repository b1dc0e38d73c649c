"""The installed batchrun's version, for `--version` and the User-Agent of batchrun's own requests."""

from __future__ import annotations


def installed() -> str | None:
    """The version pip installed; None for a source tree on PYTHONPATH (importlib.metadata, already
    loaded by a run's imports: no cost of its own)."""
    from importlib import metadata

    try:
        return metadata.version("batchrun")
    except metadata.PackageNotFoundError:
        return None
