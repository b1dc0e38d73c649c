"""Deterministic synthetic replies: text, JSON that fits a schema, embedding vectors.

Everything is derived from a hash of the request, so the same request always
gets the same answer (which is what makes the duplicate statistics and the
resume tests meaningful).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import struct
from typing import Any

WORDS = [
    "the",
    "product",
    "works",
    "well",
    "and",
    "arrived",
    "on",
    "time",
    "quality",
    "price",
    "delivery",
    "battery",
    "sturdy",
    "light",
    "comfortable",
    "loud",
    "quiet",
    "cheap",
    "solid",
    "broken",
    "returned",
    "recommend",
    "again",
    "small",
    "large",
    "colour",
    "fits",
    "perfectly",
    "easy",
    "setup",
    "manual",
    "support",
    "replaced",
    "warranty",
    "value",
    "daily",
    "weeks",
    "months",
    "useful",
    "simple",
    "design",
    "material",
    "smell",
    "clean",
    "fast",
    "slow",
    "charger",
    "cable",
    "box",
    "packaging",
]


def body_digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=16).digest()


def rng_for(digest: bytes, salt: int = 0) -> random.Random:
    return random.Random(int.from_bytes(digest[:8], "big") ^ salt)


def text_reply(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(max(n_words, 1))]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not ref:
        return schema
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def value_for(schema: dict[str, Any], rng: random.Random, root: dict[str, Any], depth: int = 0) -> Any:
    """A value valid against a strict-mode schema."""
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "anyOf" in schema:
        variants = schema["anyOf"]
        non_null = [v for v in variants if _resolve(v, root).get("type") != "null"]
        # recursive schemas must bottom out: prefer null once deep
        pick = variants[0] if not non_null else rng.choice(non_null)
        if depth > 4 and len(non_null) < len(variants):
            return None
        return value_for(pick, rng, root, depth + 1)
    typ = schema.get("type")
    if isinstance(typ, list):
        choices = [t for t in typ if t != "null"] or ["null"]
        typ = rng.choice(choices)
    if typ == "object":
        props = schema.get("properties", {})
        return {k: value_for(v, rng, root, depth + 1) for k, v in props.items()}
    if typ == "array":
        lo = schema.get("minItems", 1)
        hi = max(lo, min(schema.get("maxItems", 3), 3))
        n = 0 if depth > 5 else rng.randint(lo, hi)
        return [value_for(schema.get("items", {"type": "string"}), rng, root, depth + 1) for _ in range(n)]
    if typ == "string":
        fmt = schema.get("format")
        if fmt == "date":
            return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        if fmt == "date-time":
            return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z"
        if fmt == "email":
            return f"{rng.choice(WORDS)}@example.com"
        if fmt == "uuid":
            return f"{rng.getrandbits(32):08x}-0000-4000-8000-{rng.getrandbits(48):012x}"
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
    if typ == "integer":
        lo = int(schema.get("minimum", 0))
        hi = int(schema.get("maximum", lo + 100))
        return rng.randint(lo, hi)
    if typ == "number":
        lo = float(schema.get("minimum", 0.0))
        hi = float(schema.get("maximum", 1.0 if lo <= 0 else lo + 1.0))
        return round(rng.uniform(lo, hi), 3)
    if typ == "boolean":
        return rng.random() < 0.5
    if typ == "null":
        return None
    return " ".join(rng.choice(WORDS) for _ in range(3))


_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_VOWELS = set("aeiouAEIOU")


def _pig(word: str) -> str:
    if word[0] in _VOWELS:
        out = word + "way"
    else:
        lead = 0
        while lead < len(word) and word[lead] not in _VOWELS:
            lead += 1
        out = word[lead:] + word[:lead] + "ay"
    if word[0].isupper():
        out = out[0].upper() + out[1:].lower() if not word.isupper() else out.upper()
    return out


def sim_translate(text: str) -> str:
    """The simulator's "translation": Pig Latin, word by word. Deterministic, so tests can check that
    every translation sits on its own paragraph; obviously synthetic, so nobody mistakes it for a real one."""
    return _WORD.sub(lambda m: _pig(m.group(0)), text)


def translation_reply(user_text: str, forced: set[str]) -> dict[str, Any]:
    """A reply to a batchrun document request ({"items": [{"id", "text"}]}), misbehaving on request:
    an item whose text holds [[sim:drop]] is left out, [[sim:dup]] answered twice, [[sim:merge]] merged
    with the next item (which is then missing: a shifted answer), [[sim:empty]] answered with "";
    [[sim:swap]] reverses the reply's order. drop, dup and merge need more than one item in the request,
    as a model that loses its place in a long list."""
    try:
        items = json.loads(user_text).get("items") or []
    except (ValueError, AttributeError):
        items = []
    out: list[dict[str, str]] = []
    skip = False
    many = len(items) > 1
    for n, item in enumerate(items):
        if skip:
            skip = False
            continue
        text = str(item.get("text", ""))
        entry = {"id": str(item.get("id")), "translation": sim_translate(text)}

        def has(kind: str, text: str = text) -> bool:
            return kind in forced and f"[[sim:{kind}" in text

        if has("empty"):
            entry["translation"] = ""
        if many and has("drop"):
            continue
        if many and has("merge") and n + 1 < len(items):
            entry["translation"] += " " + sim_translate(str(items[n + 1].get("text", "")))
            skip = True
        out.append(entry)
        if many and has("dup"):
            out.append(dict(entry))
    if any("[[sim:swap" in str(i.get("text", "")) for i in items) and "swap" in forced:
        out.reverse()
    return {"items": out}


def embedding(text: str, dims: int) -> list[float]:
    """A unit vector that depends only on the text."""
    seed = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    rng = random.Random(int.from_bytes(seed, "big"))
    vec = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def embedding_base64(vec: list[float]) -> str:
    import base64

    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
