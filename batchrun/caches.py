"""Files batchrun keeps in the user's cache to save work at a run's start.

Each is named by a hash of everything its content is made from, so it can only ever stand for that;
one that cannot be read is made again, and nothing breaks when the cache cannot be written (a
read-only home, a full disk): the work is then done every run, as without a cache.

- the tokenizer's vocabulary as a marshal dict (tokens.py): ~0.3 s of base64 decoding a run;
- a structured-output schema made strict by the openai SDK (schemas.py): the SDK's import, ~0.35 s.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def user_cache_dir() -> Path:
    """BATCHRUN_CACHE_DIR, else $XDG_CACHE_HOME/batchrun, else ~/.cache/batchrun."""
    if os.environ.get("BATCHRUN_CACHE_DIR"):
        return Path(os.environ["BATCHRUN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "batchrun"


def read(name: str) -> bytes | None:
    try:
        return (user_cache_dir() / name).read_bytes()
    except OSError:
        return None


def write(name: str, data: bytes) -> None:
    """Whole or not at all (a temporary file renamed), for a run starting meanwhile; errors ignored."""
    path = user_cache_dir() / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}-", delete=False) as f:
            f.write(data)
        os.replace(f.name, path)
    except OSError:
        pass
