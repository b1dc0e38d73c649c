"""A reply becomes a row status: ok, refused, truncated, schema_invalid, filtered or failed — never a silent default."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import fastjson


@dataclass(frozen=True, slots=True)
class Parsed:
    status: str
    output: Any = None
    raw_text: str | None = None
    error: str | None = None
    finish_reason: str | None = None


def usage_tokens(reply: dict[str, Any]) -> tuple[int | None, int | None, int]:
    """(prompt, completion, cached prompt) tokens a reply reports; None where it reports nothing."""
    usage = reply.get("usage") or None
    if not usage:
        return None, None, 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return usage.get("prompt_tokens"), usage.get("completion_tokens"), cached


class ReplyParser:
    """Turns chat completions into statuses and outputs, validating structured replies."""

    def __init__(self, schema: dict[str, Any] | None, max_tokens: int | None) -> None:
        self.schema = schema
        self.max_tokens = max_tokens
        self.validator: Any = None
        self.fast: Any = None
        if schema is None:
            return  # a text job: no validator loaded (jsonschema's import is ~30 ms)
        import fastjsonschema
        import jsonschema

        self.validator = jsonschema.Draft202012Validator(schema)
        # fastjsonschema compiles the schema to Python: ~15× faster on the (common) valid reply;
        # jsonschema still explains an invalid one. Strict-mode schemas use only keywords both read alike.
        self._fast_error: type[Exception] = fastjsonschema.JsonSchemaException
        try:
            self.fast = fastjsonschema.compile(schema)
        except Exception:  # a schema it cannot compile: jsonschema alone
            self.fast = None

    def chat(self, completion: dict[str, Any]) -> Parsed:
        """Status and output of a chat completion (the reply's JSON as a dict)."""
        choices = completion.get("choices") or []
        if not choices:
            return Parsed("failed", error="reply had no choices")
        choice = choices[0]
        finish = choice.get("finish_reason")
        msg = choice.get("message") or {}
        text = msg.get("content")
        refusal = msg.get("refusal")
        # every reply that carries text keeps it (raw_text → the raw_response column), and a plain-text
        # job's output is that text whatever the status says of it: a truncated answer was paid for
        plain = self.validator is None
        if refusal:
            return Parsed(
                "refused",
                output=refusal if plain else None,
                raw_text=refusal,
                error=f"model refused: {refusal}",
                finish_reason=finish,
            )
        if finish == "content_filter":
            return Parsed(
                "filtered",
                output=text if plain and text else None,
                raw_text=text,
                error="reply stopped by the content filter",
                finish_reason=finish,
            )
        if finish == "length":
            return Parsed(
                "truncated",
                output=text if plain else None,
                raw_text=text,
                error=f"reply cut off at max_tokens ({self.max_tokens}); raise request.max_tokens",
                finish_reason=finish,
            )
        if text is None or (self.validator is None and text == ""):
            return Parsed("failed", raw_text=text, error="empty reply", finish_reason=finish)
        if self.validator is None:
            return Parsed("ok", output=text, raw_text=text, finish_reason=finish)
        try:
            data = fastjson.loads(text)
        except json.JSONDecodeError as exc:
            return Parsed(
                "schema_invalid", raw_text=text, error=f"reply is not valid JSON: {exc}", finish_reason=finish
            )
        if self.fast is not None:
            try:
                self.fast(data)
                return Parsed("ok", output=data, raw_text=text, finish_reason=finish)
            except self._fast_error:
                pass  # jsonschema says where and why, below
        import jsonschema

        error = jsonschema.exceptions.best_match(self.validator.iter_errors(data))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            return Parsed(
                "schema_invalid",
                raw_text=text,
                error=f"reply breaks the schema at {where}: {error.message}",
                finish_reason=finish,
            )
        return Parsed("ok", output=data, raw_text=text, finish_reason=finish)
