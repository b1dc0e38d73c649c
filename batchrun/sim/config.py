"""The simulator's settings: limits, latency, faults, Batch API timing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """How the simulated OpenAI account behaves. Replace at run time via POST /sim/config."""

    rpm: int | None = None
    """Requests per minute; None = unlimited."""
    tpm: int | None = None
    """Tokens per minute, charged at prompt + max_tokens when a request is accepted."""
    retry_after_header: bool = False
    """Send Retry-After on rate-limit 429s (OpenAI usually does not; the message has the wait)."""
    insufficient_quota: bool = False
    """Answer every request with 429 insufficient_quota, as an account with no credit does."""
    quota_code: str = "insufficient_quota"
    quota_after_requests: int | None = None
    """Run out of quota after this many accepted requests (for mid-run quota tests)."""

    latency_ms: float = 0.0
    """Base latency of a chat or embeddings response."""
    latency_per_token_ms: float = 0.0
    """Added per completion token."""
    latency_per_input_ms: float = 0.0
    """Embeddings: added per input of the request (a self-hosted model's time grows with the batch)."""
    jitter: float = 0.0
    """Relative jitter, e.g. 0.3 for ±30 %."""
    seed: int = 0

    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    reset_rate: float = 0.0
    """Close the connection without answering."""
    truncated_rate: float = 0.0
    """Send half of a 200 body, then close."""
    slow_rate: float = 0.0
    slow_seconds: float = 5.0
    refusal_rate: float = 0.0
    content_filter_rate: float = 0.0
    invalid_json_rate: float = 0.0

    text_tokens: tuple[int, int] = (12, 60)
    """Range of completion lengths for plain-text replies."""
    embedding_dimensions: int = 256
    """Default vector size (real models: 1536 / 3072); `dimensions` in a request overrides it."""

    batch_validate_seconds: float = 0.2
    batch_run_seconds: float = 1.0
    batch_finalize_seconds: float = 0.2
    batch_line_error_rate: float = 0.0
    batch_expire: bool = False
    """Batches expire instead of completing, with `batch_expire_done_fraction` of lines done."""
    batch_expire_done_fraction: float = 0.5
    batch_queue_limit_tokens: int | None = None
    """Enqueued-token limit per model over pending batches; None = unlimited."""
    batch_api: bool = True
    """False: the Files and Batch routes answer 404, as vLLM, Ollama and llama.cpp do."""
    azure_batch_style: bool = False
    """Report batches as Azure OpenAI does: capitalised statuses, ISO-8601 times, null request_counts while validating."""
    list_files: bool = True
    """False: GET /files answers 405, as several compatible servers' Batch APIs do."""
    list_batches: bool = True
    """False: GET /batches answers 405 (batches can still be created, read and cancelled by id)."""
    upload_500s: int = 0
    """The next N uploads are stored and then answered 500: the answer is lost, the file stays."""
    create_500s: int = 0
    """The next N batch creates answer 500 without creating anything (a transient server fault)."""

    reset_headers_epoch: bool = False
    """Send x-ratelimit-reset-* as absolute Unix times (seconds), and 429 messages without "try again in",
    as some gateways and mocks do."""
    ignore_response_format: bool = False
    """Answer in plain text whatever `response_format` asks, as servers without structured output do."""
    slots: int | None = None
    """Answer at most this many requests at once, the rest waiting their turn (a llama.cpp server with k
    slots, a GPU): latency grows with the queue, and no header says so."""
    warmup_ms: float = 0.0
    """Added to each of the first `warmup_requests` answers (a server compiling its kernels, filling a cache
    or paging a model in before it runs at full speed)."""
    warmup_requests: int = 0
    rate_headers: bool = True
    """False: send no x-ratelimit-* headers, as self-hosted servers do not."""
    queue_when_limited: bool = False
    """Hold a request until the limits admit it instead of answering 429, as a proxy with a queue does."""
    flex_unavailable_rate: float = 0.0
    """Of requests asking `service_tier = "flex"`, the fraction answered 429 "Resource Unavailable"
    (code resource_unavailable): not admitted to the limits, not billed."""
    flex_latency_factor: float = 3.0
    """Flex replies take this many times the usual latency."""
    prompt_cache: bool = False
    """Model OpenAI's prompt cache (sim/cache.py): prompts of ≥ 1,024 tokens, exact prefix in 128-token
    steps, routed by their first 256 tokens and prompt_cache_key; hits reported as cached_tokens."""
    cache_ttl_s: float = 300.0
    cache_route_rpm: int = 0
    """A machine serves this many requests a minute for one prefix and key (OpenAI: about 15); the rest
    overflow to a random one of `cache_machines`, whose cache has its own entries. 0: no overflow."""
    cache_machines: int = 512
    server_context: int | None = None
    """Report a context size as the servers people run do: with `slots`, llama.cpp's GET /props (n_ctx a
    slot, total_slots); always vLLM's max_model_len in GET /v1/models. None: neither is served."""
    priority_served_as: str | None = None
    """A request asking for priority is served (and its reply says) this tier instead, e.g. "default"."""
    max_batch_lines: int = 50_000
    max_file_bytes: int = 200 * 1024 * 1024
    models: tuple[str, ...] = (
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-4.1-mini",
        "gpt-5-mini",
        "text-embedding-3-small",
        "text-embedding-3-large",
    )
    extra: dict[str, Any] = field(default_factory=dict)

    def updated(self, changes: dict[str, Any]) -> SimConfig:
        """A copy with fields changed; unknown fields are an error."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown simulator settings {unknown}; known: {sorted(names)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        return dataclasses.replace(self, **fixed)
