"""What the simulated model answers, as plain data (no HTTP): used online and by batches.

Prompt tokens are counted with batchrun's own counter, so `batchrun plan` and
the simulator's `usage.prompt_tokens` agree exactly. A request can force an
outcome with a marker in its text, `[[sim:KIND]]` or `[[sim:KIND*N]]` (the
first N times that exact request is seen): refuse, filter, badjson, long,
400, 500, 503, reset, truncate, slow.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ..sinks import EMBED_DEFAULT_DIMS as DEFAULT_DIMS
from ..tokens import EMBED_MAX_INPUTS, EMBED_MAX_TOKENS_PER_INPUT, EMBED_MAX_TOKENS_PER_REQUEST, TokenCounter
from . import content
from .config import SimConfig

TRANSLATION_SCHEMA = "batchrun_translation"  # chunks.SCHEMA_NAME: answered with a (Pig Latin) translation
MARKER = re.compile(r"\[\[sim:([a-z0-9]+)(?:\*(\d+))?\]\]")
REFUSAL_TEXT = "I'm sorry, but I can't help with that request."


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


FLEX_UNAVAILABLE = Reply(
    429,
    error_body(
        "Resource Unavailable: flex processing does not have capacity for this request right now. "
        "Retry later, or send it on the default tier.",
        "server_error",
        "resource_unavailable",
    ),
)
"""Flex processing's refusal when it has no capacity (unbilled; OpenAI's flex processing guide)."""


def markers(body: dict[str, Any]) -> list[tuple[str, int | None]]:
    """Forced outcomes written into the request's text."""
    found: list[tuple[str, int | None]] = []
    texts: list[str] = []
    for m in body.get("messages") or []:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            texts.append(c)
        elif isinstance(c, list):
            texts += [p.get("text", "") for p in c if isinstance(p, dict)]
    inp = body.get("input")
    if isinstance(inp, str):
        texts.append(inp)
    elif isinstance(inp, list):
        texts += [x for x in inp if isinstance(x, str)]
    for text in texts:
        if "[[sim:" in text:
            found += [(k, int(n) if n else None) for k, n in MARKER.findall(text)]
    return found


class Responder:
    """Builds chat and embeddings replies for one simulator."""

    def __init__(self) -> None:
        self._counters: dict[str, TokenCounter] = {}

    def counter(self, model: str) -> TokenCounter:
        c = self._counters.get(model)
        if c is None:
            c = self._counters[model] = TokenCounter(model, warn_unknown=False)
        return c

    def check_model(self, cfg: SimConfig, model: Any) -> Reply | None:
        if not isinstance(model, str) or not model:
            return Reply(400, error_body("you must provide a model parameter", "invalid_request_error", None, "model"))
        if model not in cfg.models:
            return Reply(
                404,
                error_body(
                    f"The model `{model}` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    "model_not_found",
                ),
            )
        return None

    def chat_prompt_tokens(self, body: dict[str, Any]) -> int:
        return self.counter(body["model"]).count_chat_request(body)

    def validate_chat(self, cfg: SimConfig, body: dict[str, Any]) -> Reply | None:
        bad = self.check_model(cfg, body.get("model"))
        if bad:
            return bad
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return Reply(
                400, error_body("'messages' must be a non-empty array", "invalid_request_error", None, "messages")
            )
        if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
            return Reply(
                400,
                error_body(
                    "max_tokens and max_completion_tokens cannot both be set",
                    "invalid_request_error",
                    None,
                    "max_tokens",
                ),
            )
        rf = body.get("response_format")
        if rf is not None and not (isinstance(rf, dict) and rf.get("type") in ("text", "json_object", "json_schema")):
            return Reply(400, error_body("Invalid response_format", "invalid_request_error", None, "response_format"))
        return None

    def chat(self, cfg: SimConfig, body: dict[str, Any], digest: bytes, forced: set[str], rng_roll: float) -> Reply:
        """A chat completion for a valid body; `forced` are markers in effect, `rng_roll` in [0,1)."""
        model = body["model"]
        counter = self.counter(model)
        prompt_tokens = counter.count_chat_request(body)
        max_out = body.get("max_completion_tokens") or body.get("max_tokens")
        rng = content.rng_for(digest, cfg.seed)
        rf = {} if cfg.ignore_response_format else (body.get("response_format") or {})
        schema = (rf.get("json_schema") or {}).get("schema") if rf.get("type") == "json_schema" else None

        # one roll decides at most one random outcome, so rates add up as configured
        roll = rng_roll
        outcome = None
        for kind, rate in (
            ("refuse", cfg.refusal_rate),
            ("filter", cfg.content_filter_rate),
            ("badjson", cfg.invalid_json_rate),
        ):
            if roll < rate:
                outcome = kind
                break
            roll -= rate
        for kind in ("refuse", "filter", "badjson", "long"):
            if kind in forced:
                outcome = kind

        finish = "stop"
        refusal = None
        text: str | None
        if outcome == "refuse":
            text, refusal = None, REFUSAL_TEXT
        elif outcome == "filter":
            text, finish = "", "content_filter"
        elif schema is not None and (rf.get("json_schema") or {}).get("name") == TRANSLATION_SCHEMA:
            users = [m.get("content") for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
            reply_items = content.translation_reply(users[-1] if users and isinstance(users[-1], str) else "", forced)
            text = json.dumps(reply_items, ensure_ascii=False)
        elif schema is not None:
            text = json.dumps(content.value_for(schema, rng, schema), ensure_ascii=False)
        elif rf.get("type") == "json_object":
            text = json.dumps({"answer": content.text_reply(rng, 5)})
        else:
            lo, hi = cfg.text_tokens
            text = content.text_reply(rng, rng.randint(lo, hi))
        if outcome == "badjson" and schema is not None and text is not None:
            text = text[: max(len(text) // 2, 1)]
        if outcome == "long" and max_out:
            filler = content.text_reply(rng, max_out + 10)
            text = (text or "") + " " + filler
        completion_tokens = 0
        if text is not None:
            tokens = counter.encoding.encode_ordinary(text)
            if max_out and len(tokens) > max_out:
                tokens = tokens[:max_out]
                text = counter.encoding.decode(tokens)
                finish = "length"
            completion_tokens = len(tokens)
        elif refusal is not None:
            completion_tokens = counter.count_text(refusal)
        reply = {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_batchrun_sim",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": refusal},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }
        return Reply(200, reply, prompt_tokens, completion_tokens)

    def embeddings_tokens(self, cfg: SimConfig, body: dict[str, Any]) -> tuple[Reply | None, list[int]]:
        """Validate an embeddings body; returns (error or None, tokens per input)."""
        bad = self.check_model(cfg, body.get("model"))
        if bad:
            return bad, []
        inp = body.get("input")
        inputs = [inp] if isinstance(inp, str) else inp
        if not isinstance(inputs, list) or not inputs:
            return Reply(
                400, error_body("'input' must be a non-empty string or array", "invalid_request_error", None, "input")
            ), []
        if len(inputs) > EMBED_MAX_INPUTS:
            return Reply(
                400,
                error_body(
                    f"'input' has {len(inputs)} items; at most {EMBED_MAX_INPUTS} allowed",
                    "invalid_request_error",
                    None,
                    "input",
                ),
            ), []
        if any(not isinstance(x, str) or x == "" for x in inputs):
            return Reply(
                400, error_body("'input' items must be non-empty strings", "invalid_request_error", None, "input")
            ), []
        counts = self.counter(body["model"]).count_texts(inputs)
        for i, n in enumerate(counts):
            if n > EMBED_MAX_TOKENS_PER_INPUT:
                return Reply(
                    400,
                    error_body(
                        f"This model's maximum context length is {EMBED_MAX_TOKENS_PER_INPUT} tokens, however you "
                        f"requested {n} tokens in input[{i}]. Please reduce your prompt.",
                        "invalid_request_error",
                        None,
                        "input",
                    ),
                ), []
        if sum(counts) > EMBED_MAX_TOKENS_PER_REQUEST:
            return Reply(
                400,
                error_body(
                    f"Requested {sum(counts)} tokens, max {EMBED_MAX_TOKENS_PER_REQUEST} tokens per request",
                    "max_tokens_per_request",
                    "max_tokens_per_request",
                    "input",
                ),
            ), []
        return None, counts

    def embeddings(self, cfg: SimConfig, body: dict[str, Any], counts: list[int]) -> Reply:
        inp = body["input"]
        inputs = [inp] if isinstance(inp, str) else inp
        dims = body.get("dimensions") or DEFAULT_DIMS.get(body["model"], cfg.embedding_dimensions)
        as_b64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            vec = content.embedding(text, dims)
            data.append(
                {"object": "embedding", "index": i, "embedding": content.embedding_base64(vec) if as_b64 else vec}
            )
        total = sum(counts)
        reply = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }
        return Reply(200, reply, total, 0)
