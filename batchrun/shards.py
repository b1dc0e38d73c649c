"""Batch API input files: requests streamed into JSONL shards that each fit every limit at once.

A shard is closed before the next line would pass any of: the line limit, the
byte limit (counted on the bytes as written), or the enqueued-token limit (a
shard larger than the model's whole queue could never be accepted). Lines are
written as they come, so a job of any size holds one line in memory at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .jobs import Job

_REPO_LIMITS = Path(__file__).resolve().parents[1] / "data" / "batch_limits.toml"

CHAT_URL = "/v1/chat/completions"
EMBEDDINGS_URL = "/v1/embeddings"


def _limits_table() -> dict[str, Any]:
    packaged = resources.files("batchrun").joinpath("_data/batch_limits.toml")
    text = packaged.read_text(encoding="utf-8") if packaged.is_file() else _REPO_LIMITS.read_text(encoding="utf-8")
    return tomllib.loads(text)


def queue_limit(job: Job) -> tuple[int | None, str]:
    """The model's enqueued-token limit and where it came from (the job, the tier table, or unknown)."""
    if job.batch.enqueued_token_limit is not None:
        return job.batch.enqueued_token_limit, "[batch] enqueued_token_limit"
    tier = _limits_table().get(f"tier{job.batch.tier}", {})
    model = job.request.model
    best = max((name for name in tier if model.startswith(name)), key=len, default=None)
    if best is None:
        return None, f"unknown: no tier-{job.batch.tier} default for {model!r}; set [batch] enqueued_token_limit"
    return int(tier[best]), f"tier {job.batch.tier} default for {best} (data/batch_limits.toml)"


@dataclass(frozen=True, slots=True)
class ShardLimits:
    max_lines: int
    max_bytes: int
    max_tokens: int | None

    @classmethod
    def for_job(cls, job: Job) -> ShardLimits:
        return cls(job.batch.max_lines, job.batch.max_bytes, queue_limit(job)[0])

    def too_large(self, line_bytes: int, tokens: int) -> bool:
        """A line no shard can hold."""
        return line_bytes > self.max_bytes or (self.max_tokens is not None and tokens > self.max_tokens)

    def full(self, lines: int, size: int, tokens: int, line_bytes: int, line_tokens: int) -> bool:
        """Whether a shard holding (lines, size, tokens) must be closed before this line."""
        return (
            lines >= self.max_lines
            or size + line_bytes > self.max_bytes
            or (self.max_tokens is not None and tokens + line_tokens > self.max_tokens)
        )


class ShardCounter:
    """How requests would split into shards, without writing them (for `batchrun plan`)."""

    def __init__(self, limits: ShardLimits) -> None:
        self.limits = limits
        self.shards = 0
        self.lines = self.size = self.tokens = 0
        self.max_tokens_seen = 0
        self.too_large = 0

    def add(self, line_bytes: int, tokens: int) -> None:
        if self.limits.too_large(line_bytes, tokens):
            self.too_large += 1
            return
        if self.lines == 0 or self.limits.full(self.lines, self.size, self.tokens, line_bytes, tokens):
            self.shards += 1
            self.lines = self.size = self.tokens = 0
        self.lines += 1
        self.size += line_bytes
        self.tokens += tokens
        self.max_tokens_seen = max(self.max_tokens_seen, self.tokens)


def line_frame(url: str) -> tuple[bytes, bytes, bytes]:
    """A shard line is head + json(custom_id) + mid + body + tail."""
    return b'{"custom_id":', (',"method":"POST","url":' + json.dumps(url) + ',"body":').encode(), b"}\n"


def line_overhead(url: str, custom_id_chars: int = 32) -> int:
    """Bytes a shard line adds around its JSON body (custom_id, method, url, braces, newline)."""
    head, mid, tail = line_frame(url)
    return len(head) + custom_id_chars + 2 + len(mid) + len(tail)


@dataclass(frozen=True, slots=True)
class Shard:
    """One written JSONL file, ready to upload."""

    number: int
    path: Path
    lines: int
    bytes: int
    tokens: int
    sha256: str

    @property
    def filename(self) -> str:
        return self.path.name


@dataclass(frozen=True, slots=True)
class ShardLine:
    """What a shard needs to remember about one of its lines."""

    custom_id: str
    row_id: str
    tokens: int


class LineTooLarge(ValueError):
    """A single request that no shard can hold."""


class ShardWriter:
    """Writes request lines into numbered shard files, starting a new one before a limit would be passed.

    `on_shard(shard, lines)` is called once per finished file, after it is flushed to disk,
    so the caller can record it (and its lines) in one transaction.
    """

    def __init__(
        self,
        directory: Path,
        prefix: str,
        url: str,
        limits: ShardLimits,
        on_shard: Callable[[Shard, list[ShardLine]], None],
        *,
        first_number: int = 0,
    ) -> None:
        self.directory = directory
        self.prefix = prefix
        self.url = url
        self.limits = limits
        self.on_shard = on_shard
        self.number = first_number
        self.count = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._file: Any = None
        self._lines: list[ShardLine] = []
        self._bytes = 0
        self._tokens = 0
        self._hash = hashlib.sha256()
        self._head, self._mid, self._tail = line_frame(url)

    def path_for(self, number: int) -> Path:
        return self.directory / f"{self.prefix}-{number:05d}.jsonl"

    def add(self, custom_id: str, row_id: str, body: bytes, tokens: int) -> None:
        """Append one request (`body` is its JSON); `tokens` is what it adds to the enqueued-token
        count (its prompt)."""
        line = b"".join((self._head, json.dumps(custom_id).encode(), self._mid, body, self._tail))
        lim = self.limits
        if lim.too_large(len(line), tokens):
            raise LineTooLarge(
                f"{len(line):,} bytes / {tokens:,} tokens: larger than a whole shard "
                f"({lim.max_bytes:,} bytes / {lim.max_tokens or 0:,} enqueued tokens)"
            )
        if self._file is not None and lim.full(len(self._lines), self._bytes, self._tokens, len(line), tokens):
            self._finish()
        if self._file is None:
            self._file = self.path_for(self.number).open("wb", buffering=1 << 20)
        self._file.write(line)
        self._hash.update(line)
        self._bytes += len(line)
        self._tokens += tokens
        self._lines.append(ShardLine(custom_id, row_id, tokens))

    def close(self) -> None:
        """Finish the last shard (if it has any line)."""
        if self._file is not None:
            self._finish()

    def _finish(self) -> None:
        f, self._file = self._file, None
        f.flush()
        os.fsync(f.fileno())  # recorded as written only once it is really on disk
        f.close()
        shard = Shard(
            self.number, self.path_for(self.number), len(self._lines), self._bytes, self._tokens, self._hash.hexdigest()
        )
        lines, self._lines = self._lines, []
        self._bytes = self._tokens = 0
        self._hash = hashlib.sha256()
        self.number += 1
        self.count += 1
        self.on_shard(shard, lines)
