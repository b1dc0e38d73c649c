"""JSON parsing on the hot paths (every reply, every Batch API result line), through orjson.

orjson parses a Batch API result line in ~1.1 µs against the standard library's ~4.3 µs (benchmarks/
RESULTS.md), and that parse was the largest share of collecting results. It is stricter than `json`
(no NaN/Infinity, no lone surrogates, no number past a double's range): whatever it refuses goes to
`json`, as does a text with an integer too long for orjson to keep exact, so what parses, and what it
parses to, is exactly what `json.loads` gives (tests/test_fastjson.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_DIGITS = re.compile(r"\d{19}")
_LONG_DIGITS_B = re.compile(rb"\d{19}")
"""An integer orjson may not keep exact: past 64 bits it gives a float where `json` gives the int (a run of
19 digits inside a string sends that text to `json` too, which is only slower)."""


def loads(data: bytes | bytearray | str) -> Any:
    """`json.loads(data)`, faster; raises json.JSONDecodeError (a ValueError) as it does. For a model's own
    JSON (structured output), whose integers may be anything."""
    if (_LONG_DIGITS if isinstance(data, str) else _LONG_DIGITS_B).search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def loads_api(data: bytes | bytearray | str) -> Any:
    """`loads` for an API's own envelope (a reply body, a Batch API result line), whose numbers are status
    codes, token counts and timestamps: no scan for long integers (the scan costs as much as the parse,
    ~4.5 µs a 440-byte line); one past 64 bits there would be read as a float. A model's answer inside it
    is a JSON string, read exactly by `loads` when it is parsed."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def string_bytes(text: str) -> bytes:
    """`json.dumps(text, ensure_ascii=False).encode("utf-8")` — the same bytes (tests/test_fastjson.py),
    ~10× faster: a Batch API shard line is a request body with each row's text spliced in."""
    try:
        return orjson.dumps(text)
    except orjson.JSONEncodeError:  # a lone surrogate: as before, the standard library says what is wrong
        return json.dumps(text, ensure_ascii=False).encode("utf-8")


def dumps_text(obj: Any) -> str:
    """`json.dumps(obj, ensure_ascii=False)` for batchrun's own records (run events), ~5× faster: the
    text differs (no spaces, 4.5e-05 written 0.000045) but reads back to the same strings, ints and
    floats, bit for bit (tests/test_fastjson.py). Where orjson refuses (a lone surrogate, an int past
    64 bits) the standard library writes it; a NaN or an infinity, which are not JSON, is written as null."""
    try:
        return orjson.dumps(obj).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(obj, ensure_ascii=False)
