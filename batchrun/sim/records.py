"""What the simulator's Files and Batch API keep of each file and batch."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FileRec:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": self.created_at + 30 * 86400,
            "status_details": None,
        }


@dataclass
class BatchRec:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    t0: float
    status: str = "validating"
    model: str | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    stamps: dict[str, int] = field(default_factory=dict)
    t_in_progress: float | None = None
    t_cancel: float | None = None
    done_fraction: float = 1.0
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
