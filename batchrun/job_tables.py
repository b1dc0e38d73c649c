"""The job file's tables for one kind of run: [batch] (the Batch API), [document] (whole documents),
[pricing] — and the frozen, strict base every table of a job file is parsed into."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Spec(BaseModel):
    """A job-file table: frozen once parsed, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class BatchSpec(Spec):
    """[batch]: how the Batch API is used when mode is "batch" (or "auto" picks it)."""

    tier: int = Field(default=1, ge=1, le=5)
    """The account's usage tier: sets the default enqueued-token limit (data/batch_limits.toml)."""
    enqueued_token_limit: int | None = Field(default=None, gt=0)
    """Input tokens this model may have queued in pending batches; overrides the tier's default."""
    max_lines: int = Field(default=50_000, gt=0, le=100_000)
    """Requests per shard file (OpenAI 50,000; Azure 100,000)."""
    max_bytes: int = Field(default=200 * 1000 * 1000, gt=0, le=200 * 1024 * 1024)
    """Bytes per shard file as written (the API's limit is 200 MB)."""
    poll_seconds: float = Field(default=30.0, gt=0)
    """Least time between two polls of the same batch; polling backs off from here to poll_max_seconds."""
    poll_max_seconds: float = Field(default=300.0, gt=0)
    online_fallback: bool = False
    """When the deadline is near, cancel what is still queued and send the rest online (full price)."""
    delete_files: bool = True
    """Delete uploaded shards and downloaded result files from the server once collected."""
    typical_hours: float = Field(default=6.0, gt=0, le=24)
    """What a plan assumes one wave of batches takes (the API promises 24 h at most; most finish sooner):
    used to compare the Batch API with online when the enqueued-token limit needs several waves."""
    keep_shards: bool = False
    """Keep the shard JSONL files on disk (beside the output, in <output>.shards/) for inspection."""


class DocumentSpec(Spec):
    """[document]: how a whole document (txt, md, epub input) is chunked, translated and written back."""

    chunk_tokens: int = Field(default=1000, ge=16, le=100_000)
    """Most source tokens in one request; paragraphs are never split unless one alone is longer
    (then on sentence boundaries), and a chunk never crosses a chapter."""
    context_paragraphs: int = Field(default=0, ge=0, le=200)
    """Send the previous K source/translation pairs of the same chapter as context. Each chapter
    then runs as a chain, chunk after chunk; chapters run in parallel. 0: every chunk independent."""
    glossary: Path | None = None
    """Term → translation (CSV/TSV with columns term,translation; or TOML/JSON table). Each request
    gets the entries whose term occurs in its paragraphs, so an edited entry re-translates only those."""
    outputs: tuple[Literal["txt", "md", "epub"], ...] = ()
    """Translated documents to write (default: the input's own format)."""
    output_stem: Path | None = None
    """Where translated documents go, without suffix (default: the Parquet output's path without suffix, plus
    `.<language>`, or `.translated` without one: never the input's own name)."""
    bilingual: bool = False
    """Write the original and the translation of each paragraph one after the other."""
    language: str | None = None
    """The translation's language code (e.g. "fr"), written into EPUB metadata and html lang."""
    chapter_pattern: str = r"(?i)^\s*(chapter|book|part|canto)\s+([0-9]+|[ivxlcdm]+)\b"
    """Text files: a block whose first line matches this starts a new chapter."""
    chapter_heading_level: int | None = Field(default=None, ge=1, le=6)
    """Markdown: headings of this level or above start chapters (default: the highest level used twice)."""

    @field_validator("chapter_pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        import re

        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return v


class PricingSpec(Spec):
    table: Path | None = None
    models: dict[str, dict[str, float]] = Field(default_factory=dict)
    local: bool | None = None
    """true: the endpoint is your own hardware and every model costs $0; false: never. Default: a model
    the price table does not know, on a loopback or private-network base_url, costs $0."""
