"""What fits in one request: embedding inputs grouped into requests, and rows too long to send at all.

Shared by the plan and every executor (online, batch, documents, Ray), so a run groups and refuses
requests exactly as its plan counted them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from .jobs import Job
from .pricing import is_local_url
from .prompts import Request
from .tokens import EMBED_MAX_INPUTS, EMBED_MAX_TOKENS_PER_INPUT, EMBED_MAX_TOKENS_PER_REQUEST

T = TypeVar("T")


def embedding_groups(
    items: Sequence[T], tokens: Callable[[T], int], max_inputs: int = EMBED_MAX_INPUTS
) -> list[list[T]]:
    """Greedy, order-keeping grouping of embedding inputs into API requests (≤ `max_inputs` inputs —
    `[request] inputs_per_request`, 2,048 at most — and ≤ 300,000 tokens each). Used by both the plan
    and the engine."""
    groups: list[list[T]] = []
    current: list[T] = []
    total = 0
    for item in items:
        n = tokens(item)
        if current and (len(current) >= max_inputs or total + n > EMBED_MAX_TOKENS_PER_REQUEST):
            groups.append(current)
            current, total = [], 0
        current.append(item)
        total += n
    if current:
        groups.append(current)
    return groups


LOCAL_INPUTS_PER_REQUEST = 32
"""Embedding inputs per request on one's own server, unless the job says: a GPU box takes seconds for a
big request, and one that times out is split in half and sent again."""


def inputs_per_request(job: Job) -> int:
    """How many embedding inputs go in one request: the job's `inputs_per_request`, else OpenAI's 2,048,
    or LOCAL_INPUTS_PER_REQUEST for a loopback or private-network base_url."""
    if job.request.inputs_per_request is not None:
        return job.request.inputs_per_request
    return LOCAL_INPUTS_PER_REQUEST if is_local_url(job.endpoint.base_url) else EMBED_MAX_INPUTS


def too_long_reason(job: Job, r: Request, context: int | None, tpm: int | None) -> str | None:
    if job.request.kind == "embeddings" and r.prompt_tokens > EMBED_MAX_TOKENS_PER_INPUT:
        return f"input has {r.prompt_tokens} tokens; embedding models take at most {EMBED_MAX_TOKENS_PER_INPUT}"
    if context is not None and r.charged_tokens > context:
        return (
            f"prompt {r.prompt_tokens} + max output {r.max_output_tokens} tokens exceeds the "
            f"{context}-token context window"
        )
    if tpm is not None and r.charged_tokens > tpm:
        return f"needs {r.charged_tokens} tokens at once, more than the whole TPM limit ({tpm}); it can never be sent"
    return None
