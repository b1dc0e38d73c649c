"""Structured-output schemas: made strict the way openai-python does it, then checked.

OpenAI's strict mode accepts a subset of JSON Schema (see shared reference
openai-api.md): root object, every property required, `additionalProperties:
false` everywhere, a limited keyword set, and size limits. A schema that breaks
a rule is rejected here, naming the JSON path, before any request is sent.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from . import caches
from .errors import SchemaError

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TYPES = {"string", "number", "boolean", "integer", "object", "array", "null"}
FORMATS = {"date-time", "date", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
FORBIDDEN = {
    "allOf",
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "patternProperties",
    "unevaluatedProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
}
MAX_PROPERTIES = 5000
MAX_DEPTH = 10
MAX_ENUM_VALUES = 1000
MAX_STRING_BUDGET = 120_000


def resolve_ref(root: dict[str, Any], ref: str) -> Any:
    """The node a local `$ref` ("#/$defs/Name", "#") points at, or None when it points at nothing."""
    if not ref.startswith("#"):
        return None  # remote references are not allowed in strict mode
    node: Any = root
    for part in ref.removeprefix("#").removeprefix("/").split("/") if ref not in ("#", "#/") else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def make_strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A strict copy of an inline JSON schema (openai-python's own transformation).

    The SDK's import is ~0.35 s of a run's start (its only use in a run on a server named by its URL),
    so its answer is kept in the user's cache (caches.py), named by a hash of the schema as written
    (property order included: it is the output's column order) and of the SDK's version."""
    name = _cache_name(schema)
    if name is not None:
        cached = caches.read(name)
        if cached is not None:
            try:
                strict = json.loads(cached)
                if isinstance(strict, dict):
                    return strict
            except ValueError:
                pass
    from openai.lib._pydantic import _ensure_strict_json_schema  # the SDK loads in ~0.35 s: only when needed

    strict = _ensure_strict_json_schema(copy.deepcopy(schema), path=(), root=copy.deepcopy(schema))
    if name is not None:
        with contextlib.suppress(TypeError, ValueError):
            caches.write(name, json.dumps(strict, ensure_ascii=False).encode())
    return strict


def _cache_name(schema: dict[str, Any]) -> str | None:
    """The cache file of `schema`'s strict copy; None where there is none (no SDK metadata, or a value
    JSON cannot hold, such as a TOML date)."""
    from importlib import metadata

    try:
        text = f"{metadata.version('openai')}\0{json.dumps(schema, ensure_ascii=False)}"
    except (metadata.PackageNotFoundError, TypeError, ValueError):
        return None
    return f"strict-schema-{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"


def load_model_schema(ref: str, base_dir: Path) -> dict[str, Any]:
    """Strict schema of a pydantic model named `module:Class` (module importable or beside the job)."""
    if ":" not in ref:
        raise SchemaError(f"output model {ref!r} must be written module:Class, e.g. schemas:Review")
    module_name, _, attr = ref.partition(":")
    added = str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SchemaError(f"cannot import module {module_name!r} for output model {ref!r}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(str(base_dir))
    model = getattr(module, attr, None)
    if model is None:
        raise SchemaError(f"module {module_name!r} has no attribute {attr!r} (output model {ref!r})")
    try:
        from openai.lib._pydantic import to_strict_json_schema

        return to_strict_json_schema(model)
    except TypeError as exc:
        raise SchemaError(f"{ref!r} is not a pydantic model: {exc}") from exc


class _Checker:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.problems: list[str] = []
        self.properties = 0
        self.enum_values = 0
        self.string_budget = 0

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path or '(root)'}: {message}")

    def check(self, node: Any, path: str, depth: int) -> None:
        if not isinstance(node, dict):
            self.fail(path, "a schema must be an object")
            return
        if depth > MAX_DEPTH:
            self.fail(path, f"nesting deeper than {MAX_DEPTH} levels")
            return
        for key in sorted(FORBIDDEN & node.keys()):
            self.fail(path, f"keyword {key!r} is not supported in strict mode")
        for name, sub in (node.get("$defs") or {}).items():
            self.check(sub, f"{path}.$defs.{name}", depth)
        if "$ref" in node:
            ref = node["$ref"]
            if not isinstance(ref, str) or resolve_ref(self.root, ref) is None:
                self.fail(path, f"$ref {ref!r} points at nothing in this schema (define it under $defs)")
            return
        types = node.get("type")
        type_list = types if isinstance(types, list) else [types] if types else []
        for t in type_list:
            if t not in TYPES:
                self.fail(path, f"type {t!r} is not one of {sorted(TYPES)}")
        fmt = node.get("format")
        if fmt is not None and fmt not in FORMATS:
            self.fail(path, f"format {fmt!r} is not supported; use one of {sorted(FORMATS)}")
        if "enum" in node:
            values = node["enum"]
            self.enum_values += len(values)
            self.string_budget += sum(len(v) for v in values if isinstance(v, str))
        if "anyOf" in node:
            for i, variant in enumerate(node["anyOf"]):
                self.check(variant, f"{path}.anyOf[{i}]", depth)
        if "object" in type_list or "properties" in node:
            props = node.get("properties") or {}
            if node.get("additionalProperties", False) is not False:
                self.fail(path, "additionalProperties must be false")
            missing = [p for p in props if p not in (node.get("required") or [])]
            if missing:
                self.fail(path, f"every property must be required (make it nullable instead): {missing}")
            self.properties += len(props)
            for name, sub in props.items():
                self.string_budget += len(name)
                self.check(sub, f"{path}.properties.{name}" if path else f"properties.{name}", depth + 1)
        if "array" in type_list and isinstance(node.get("items"), dict):
            self.check(node["items"], f"{path}.items", depth + 1)
        if not type_list and not any(k in node for k in ("anyOf", "enum", "const", "$ref")):
            self.fail(path, "needs a `type` (or anyOf / enum / const / $ref)")


def check_strict(schema: dict[str, Any], name: str) -> None:
    """Raise SchemaError listing every strict-mode rule the schema breaks."""
    problems: list[str] = []
    if not NAME_RE.match(name):
        problems.append(f"name {name!r} must be 1-64 characters of a-z A-Z 0-9 _ -")
    if schema.get("type") != "object":
        problems.append("(root): the root schema must have type 'object' (not anyOf or an array)")
    checker = _Checker(schema)
    checker.check(schema, "", 1)
    problems += checker.problems
    if checker.properties > MAX_PROPERTIES:
        problems.append(f"{checker.properties} properties in all; strict mode allows {MAX_PROPERTIES}")
    if checker.enum_values > MAX_ENUM_VALUES:
        problems.append(f"{checker.enum_values} enum values in all; strict mode allows {MAX_ENUM_VALUES}")
    if checker.string_budget > MAX_STRING_BUDGET:
        problems.append(
            f"{checker.string_budget} characters of property names and enum values; "
            f"strict mode allows {MAX_STRING_BUDGET}"
        )
    if problems:
        raise SchemaError("output schema breaks OpenAI strict-mode rules:\n  " + "\n  ".join(problems))
