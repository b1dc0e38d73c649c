"""An OpenAI-compatible server for rehearsals and tests (aiohttp).

It keeps the account's RPM and TPM buckets the way OpenAI does (full at start,
continuous refill, a request charged prompt + max_tokens when accepted), sends
`x-ratelimit-*` headers on every response and OpenAI's 429 bodies, injects
faults at configured rates, and runs the Files + Batch API (see batches.py).
`/sim/stats` reports what it saw, `/sim/config` changes its behaviour live.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import secrets
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import asdict
from typing import Any

from aiohttp import web

from ..headers import format_duration
from . import content
from .batches import BatchStore
from .cache import PromptCache
from .config import SimConfig
from .meters import Bucket, Window
from .responder import FLEX_UNAVAILABLE, Reply, Responder, error_body, markers

QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. "
    "For more information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)


class Stats:
    def __init__(self) -> None:
        self.started = time.time()
        self.by_status: Counter[str] = Counter()
        self.by_endpoint: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.rate_limited = 0
        self.queued = 0
        self.queue_peak = 0
        self.warmed = 0
        """Answers given with the warm-up's extra time (SimConfig.warmup_ms)."""
        self.queue_depths: list[int] = []  # with slots: how many wait as each request arrives
        self.rate_limited_by_type: Counter[str] = Counter()
        self.flex_unavailable = 0
        self.cached_tokens = 0  # prompt tokens the prompt cache served (usage.prompt_tokens_details)
        self.cache_overflowed = 0  # requests routed away from their prefix's machine (over cache_route_rpm)
        self.cache_keys: set[str] = set()
        self.by_tier: Counter[str] = Counter()  # replies by the tier that served them (their service_tier)
        self.tier_tokens: dict[str, list[int]] = {}
        """tier → [prompt, completion] tokens billed: what the provider would charge, tier by tier."""
        self.quota_rejected = 0
        self.too_large = 0
        self.charged_tokens = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.requests_window = Window()
        self.tokens_window = Window()
        self.ok_bodies: Counter[bytes] = Counter()

    def to_dict(self) -> dict[str, Any]:
        dup = {k: n for k, n in self.ok_bodies.items() if n > 1}
        return {
            "uptime_s": time.time() - self.started,
            "requests": sum(self.by_endpoint.values()),
            "by_endpoint": dict(self.by_endpoint),
            "by_status": dict(self.by_status),
            "ok": self.by_status.get("200", 0),
            "rate_limited": self.rate_limited,
            "queued": self.queued,
            "queue_peak": self.queue_peak,
            "queue_late_peak": max(self.queue_depths[len(self.queue_depths) // 2 :], default=0),
            "rate_limited_by_type": dict(self.rate_limited_by_type),
            "flex_unavailable": self.flex_unavailable,
            "cached_tokens": self.cached_tokens,
            "cache_overflowed": self.cache_overflowed,
            "cache_keys": len(self.cache_keys),
            "by_tier": dict(self.by_tier),
            "tier_tokens": {k: list(v) for k, v in self.tier_tokens.items()},
            "quota_rejected": self.quota_rejected,
            "too_large": self.too_large,
            "faults": dict(self.faults),
            "charged_tokens": self.charged_tokens,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "peak_rpm_60s": self.requests_window.peak,
            "peak_tpm_60s": self.tokens_window.peak,
            "distinct_ok_bodies": len(self.ok_bodies),
            "duplicate_bodies": len(dup),
            "duplicate_sends": sum(n - 1 for n in dup.values()),
        }


@web.middleware
async def _report_bugs(request: web.Request, handler: Any) -> web.StreamResponse:
    """A simulator bug answers 500 with its traceback in the error message, so a failing test
    shows the cause instead of a bare "Error code: 500"."""
    try:
        return await handler(request)
    except (web.HTTPException, asyncio.CancelledError):
        raise
    except Exception as exc:
        trace = traceback.format_exc(limit=8)
        body = error_body(f"simulator bug: {type(exc).__name__}: {exc}\n{trace}", "server_error", None, None)
        return web.json_response(body, status=500)


class Simulator:
    """The server's state and handlers; `app()` builds the aiohttp application."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.responder = Responder()
        # load every model's vocabulary now: loading it on the first request would stall the server
        # for ~1 s while its buckets sit full, a delay the real API does not have
        for model in self.config.models:
            self.responder.counter(model)
        self.batches = BatchStore(self)
        self.reset()

    def reset(self) -> None:
        now = time.monotonic()
        cfg = self.config
        self.stats = Stats()
        self.requests_bucket = Bucket(cfg.rpm, now) if cfg.rpm else None
        self.tokens_bucket = Bucket(cfg.tpm, now) if cfg.tpm else None
        self.fault_rng = random.Random(cfg.seed)
        self.tier_rng = random.Random(cfg.seed + 7)
        self.cache = (
            PromptCache(
                ttl_s=cfg.cache_ttl_s, route_rpm=cfg.cache_route_rpm, machines=cfg.cache_machines, seed=cfg.seed
            )
            if cfg.prompt_cache
            else None
        )
        self.latency_rng = random.Random(cfg.seed + 1)
        self.marker_seen: Counter[tuple[bytes, str]] = Counter()
        self.last_wait = 0.0
        self.slots = asyncio.Semaphore(cfg.slots) if cfg.slots else None
        # the system prompts of recent chat requests, for tests of what reached the model (glossaries)
        self.system_prompts: deque[str] = deque(maxlen=10_000)
        self.user_prompts: deque[str] = deque(maxlen=10_000)  # the last user message of each chat request

    def configure(self, changes: dict[str, Any]) -> None:
        old = self.config
        self.config = old.updated(changes)
        if "slots" in changes:
            self.slots = asyncio.Semaphore(self.config.slots) if self.config.slots else None
        if {"rpm", "tpm"} & changes.keys():
            now = time.monotonic()
            self.requests_bucket = Bucket(self.config.rpm, now) if self.config.rpm else None
            self.tokens_bucket = Bucket(self.config.tpm, now) if self.config.tpm else None

    # -- HTTP plumbing -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_file_bytes + 1024 * 1024, middlewares=[_report_bugs])
        app.add_routes(
            [
                web.post("/v1/chat/completions", self.handle_chat),
                web.post("/v1/embeddings", self.handle_embeddings),
                # Azure OpenAI's routes: deployment in the path, api-version in the query
                web.post("/openai/deployments/{deployment}/chat/completions", self.handle_azure),
                web.post("/openai/deployments/{deployment}/embeddings", self.handle_azure),
                web.get("/v1/models", self.handle_models),
                web.get("/props", self.handle_props),
                web.get("/sim/stats", self.handle_stats),
                web.post("/sim/config", self.handle_config),
                web.post("/sim/reset", self.handle_reset),
            ]
        )
        self.batches.add_routes(app)
        return app

    def rate_headers(self) -> dict[str, str]:
        h: dict[str, str] = {"x-request-id": "req_" + secrets.token_hex(12)}
        if not self.config.rate_headers:
            return h
        now = time.monotonic()
        for name, bucket in (("requests", self.requests_bucket), ("tokens", self.tokens_bucket)):
            if bucket is None:
                continue
            bucket.refill(now)
            h[f"x-ratelimit-limit-{name}"] = str(int(bucket.capacity))
            h[f"x-ratelimit-remaining-{name}"] = str(max(int(bucket.level), 0))
            reset = bucket.reset_seconds()
            h[f"x-ratelimit-reset-{name}"] = (
                str(math.ceil(time.time() + reset)) if self.config.reset_headers_epoch else format_duration(reset)
            )
        return h

    def respond(self, reply: Reply, extra: dict[str, str] | None = None) -> web.Response:
        self.stats.by_status[str(reply.status)] += 1
        headers = self.rate_headers()
        if extra:
            headers.update(extra)
        return web.Response(
            status=reply.status, body=json.dumps(reply.body).encode(), content_type="application/json", headers=headers
        )

    async def read_json(self, request: web.Request) -> tuple[dict[str, Any] | None, bytes]:
        try:
            raw = await request.read()
        except ConnectionResetError:
            raise asyncio.CancelledError from None  # the client went away mid-request: nothing to answer
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, raw
        return (body if isinstance(body, dict) else None), raw

    # -- limits --------------------------------------------------------------------------------

    def admit(self, model: str, charge: int) -> Reply | None:
        """Charge the buckets, or the 429 OpenAI would send."""
        cfg = self.config
        if cfg.quota_after_requests is not None and self.stats.requests_window.accepted >= cfg.quota_after_requests:
            self.config = cfg = cfg.updated({"insufficient_quota": True, "quota_after_requests": None})
        if cfg.insufficient_quota:
            self.stats.quota_rejected += 1
            return Reply(429, error_body(QUOTA_MESSAGE, "insufficient_quota", cfg.quota_code))
        now = time.monotonic()
        rb, tb = self.requests_bucket, self.tokens_bucket
        if tb is not None and charge > tb.capacity:
            self.stats.too_large += 1
            return Reply(
                429,
                error_body(
                    f"Request too large for {model} in organization org-sim on tokens per min (TPM): "
                    f"Limit {int(tb.capacity)}, Requested {charge}. The input or output tokens must be reduced "
                    "in order to run successfully. Visit https://platform.openai.com/account/rate-limits to learn more.",
                    "tokens",
                    "rate_limit_exceeded",
                ),
            )
        for b in (rb, tb):
            if b is not None:
                b.refill(now)
        if rb is not None and rb.level < 1:
            return self._limited(model, "requests", rb, 1)
        if tb is not None and tb.level < charge:
            return self._limited(model, "tokens", tb, charge)
        if rb is not None:
            rb.level -= 1
        if tb is not None:
            tb.level -= charge
        self.stats.requests_window.add(now, 1)
        self.stats.tokens_window.add(now, charge)
        self.stats.charged_tokens += charge
        return None

    def _limited(self, model: str, kind: str, bucket: Bucket, amount: int) -> Reply:
        self.stats.rate_limited += 1
        self.stats.rate_limited_by_type[kind] += 1
        wait = bucket.wait_for(amount)
        self.last_wait = wait
        label = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        used = int(bucket.capacity - bucket.level)
        hint = "" if self.config.reset_headers_epoch else f" Please try again in {format_duration(wait)}."
        return Reply(
            429,
            error_body(
                f"Rate limit reached for {model} in organization org-sim on {label}: Limit {int(bucket.capacity)}, "
                f"Used {used}, Requested {amount}.{hint} Visit "
                "https://platform.openai.com/account/rate-limits to learn more.",
                kind,
                "rate_limit_exceeded",
            ),
        )

    async def admit_or_queue(self, model: str, charge: int) -> Reply | None:
        """`admit`, or with `queue_when_limited` hold the request until the limits take it (no 429)."""
        limited = self.admit(model, charge)
        while (
            limited is not None
            and self.config.queue_when_limited
            and limited.body["error"]["code"] == "rate_limit_exceeded"
            and not limited.body["error"]["message"].startswith("Request too large")
        ):
            self.stats.rate_limited -= 1  # held, not refused
            self.stats.rate_limited_by_type[limited.body["error"]["type"]] -= 1
            self.stats.queued += 1
            await asyncio.sleep(max(self.last_wait, 0.005))
            limited = self.admit(model, charge)
        return limited

    def _retry_after(self, reply: Reply) -> dict[str, str]:
        if not self.config.retry_after_header or reply.body["error"]["code"] != "rate_limit_exceeded":
            return {}
        from ..headers import try_again_in

        wait = try_again_in(reply.body["error"]["message"]) or 1.0
        return {"retry-after": str(max(1, math.ceil(wait)))}

    # -- faults and latency --------------------------------------------------------------------

    def forced(self, body: dict[str, Any], digest: bytes) -> set[str]:
        active: set[str] = set()
        for kind, times in markers(body):
            key = (digest, kind)
            self.marker_seen[key] += 1
            if times is None or self.marker_seen[key] <= times:
                active.add(kind)
        return active

    def pick_fault(self, forced: set[str]) -> str | None:
        for kind in ("reset", "truncate", "500", "503", "slow"):
            if kind in forced:
                return kind
        cfg = self.config
        roll = self.fault_rng.random()
        for kind, rate in (
            ("500", cfg.error_500_rate),
            ("503", cfg.error_503_rate),
            ("reset", cfg.reset_rate),
            ("truncate", cfg.truncated_rate),
            ("slow", cfg.slow_rate),
        ):
            if roll < rate:
                return kind
            roll -= rate
        return None

    def latency(self, completion_tokens: int) -> float:
        cfg = self.config
        base = (cfg.latency_ms + cfg.latency_per_token_ms * completion_tokens) / 1000
        if cfg.jitter:
            base *= 1 + self.latency_rng.uniform(-cfg.jitter, cfg.jitter)
        return max(base, 0.0)

    async def deliver(
        self, request: web.Request, reply: Reply, fault: str | None, digest: bytes, extra_s: float = 0.0
    ) -> web.StreamResponse:
        if fault == "slow":
            self.stats.faults["slow"] += 1
            await asyncio.sleep(self.config.slow_seconds)
        if self.stats.warmed < self.config.warmup_requests:
            self.stats.warmed += 1
            extra_s += self.config.warmup_ms / 1000
        if self.slots is None:
            await asyncio.sleep(self.latency(reply.completion_tokens) + extra_s)
        else:  # a k-slot server (llama.cpp, one GPU): the rest wait their turn, unseen by any header
            self.stats.queue_depths.append(len(self.slots._waiters or ()) + self.slots.locked())
            self.stats.queue_peak = max(self.stats.queue_peak, self.stats.queue_depths[-1])
            async with self.slots:
                await asyncio.sleep(self.latency(reply.completion_tokens) + extra_s)
        if fault == "reset":
            self.stats.faults["reset"] += 1
            self.stats.by_status["reset"] += 1
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # nothing more to send on a dead connection
        if fault in ("500", "503"):
            self.stats.faults[fault] += 1
            msg = (
                "The server had an error while processing your request. Sorry about that!"
                if fault == "500"
                else "The engine is currently overloaded, please try again later."
            )
            return self.respond(Reply(int(fault), error_body(msg, "server_error")))
        if fault == "truncate":
            self.stats.faults["truncate"] += 1
            self.stats.by_status["truncated"] += 1
            payload = json.dumps(reply.body).encode()
            resp = web.StreamResponse(status=200, headers=self.rate_headers())
            resp.content_type = "application/json"
            resp.content_length = len(payload)
            await resp.prepare(request)
            await resp.write(payload[: len(payload) // 2])
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if reply.status == 200:
            self.stats.ok_bodies[digest] += 1
            self.stats.prompt_tokens += reply.prompt_tokens
            self.stats.completion_tokens += reply.completion_tokens
        return self.respond(reply)

    # -- endpoints -----------------------------------------------------------------------------

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        self.stats.by_endpoint["chat"] += 1
        body, _raw = await self.read_json(request)
        if body is None:
            return self.respond(
                Reply(400, error_body("We could not parse the JSON body of your request.", "invalid_request_error"))
            )
        bad = self.responder.validate_chat(self.config, body)
        if bad:
            return self.respond(bad)
        digest = content.body_digest(json.dumps(body, sort_keys=True).encode())
        self.system_prompts.extend(
            m["content"] for m in body["messages"] if isinstance(m, dict) and m.get("role") == "system"
            and isinstance(m.get("content"), str)
        )  # fmt: skip
        users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1].get("content"), str):
            self.user_prompts.append(users[-1]["content"])
        asked = body.get("service_tier")
        if (
            asked == "flex"
            and self.config.flex_unavailable_rate
            and self.tier_rng.random() < self.config.flex_unavailable_rate
        ):
            # flex processing without capacity: refused before admission, so neither limited nor billed
            self.stats.flex_unavailable += 1
            return self.respond(FLEX_UNAVAILABLE)
        prompt_tokens = self.responder.chat_prompt_tokens(body)
        max_out = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        limited = await self.admit_or_queue(body["model"], prompt_tokens + max_out)
        if limited:
            return self.respond(limited, self._retry_after(limited))
        forced = self.forced(body, digest)
        if "400" in forced:
            return self.respond(
                Reply(400, error_body("Invalid request: forced by [[sim:400]]", "invalid_request_error"))
            )
        fault = self.pick_fault(forced)
        reply = self.responder.chat(self.config, body, digest, forced, self.fault_rng.random())
        served = {"flex": "flex", "priority": self.config.priority_served_as or "priority"}.get(asked, "default")
        extra_s = 0.0
        if reply.status == 200:
            reply.body["service_tier"] = served  # as OpenAI: the tier that served it, billed by it
            self.stats.by_tier[served] += 1
            tokens = self.stats.tier_tokens.setdefault(served, [0, 0])
            tokens[0] += reply.prompt_tokens
            tokens[1] += reply.completion_tokens
            if self.cache is not None:  # the prefix the provider has seen recently is billed as cached
                encode = self.responder.counter(body["model"]).encoding.encode_ordinary
                tokens = PromptCache.prompt_tokens(encode, body)
                hit = self.cache.use(tokens, body.get("prompt_cache_key"), self.latency(reply.completion_tokens))
                reply.body["usage"]["prompt_tokens_details"]["cached_tokens"] = min(hit, reply.prompt_tokens)
                self.stats.cached_tokens += min(hit, reply.prompt_tokens)
                self.stats.cache_overflowed = self.cache.overflowed
                if body.get("prompt_cache_key"):
                    self.stats.cache_keys.add(str(body["prompt_cache_key"]))
            if served == "flex":
                extra_s = self.latency(reply.completion_tokens) * max(self.config.flex_latency_factor - 1, 0.0)
        return await self.deliver(request, reply, fault, digest, extra_s)

    async def handle_embeddings(self, request: web.Request) -> web.StreamResponse:
        self.stats.by_endpoint["embeddings"] += 1
        body, _raw = await self.read_json(request)
        if body is None:
            return self.respond(
                Reply(400, error_body("We could not parse the JSON body of your request.", "invalid_request_error"))
            )
        bad, counts = self.responder.embeddings_tokens(self.config, body)
        if bad:
            return self.respond(bad)
        digest = content.body_digest(json.dumps(body, sort_keys=True).encode())
        limited = await self.admit_or_queue(body["model"], sum(counts))
        if limited:
            return self.respond(limited, self._retry_after(limited))
        forced = self.forced(body, digest)
        fault = self.pick_fault(forced)
        reply = self.responder.embeddings(self.config, body, counts)
        per_input = self.config.latency_per_input_ms * len(counts) / 1000
        return await self.deliver(request, reply, fault, digest, per_input)

    async def handle_azure(self, request: web.Request) -> web.StreamResponse:
        if "api-version" not in request.query:
            return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
        self.stats.by_endpoint["azure"] += 1
        if request.path.endswith("/embeddings"):
            return await self.handle_embeddings(request)
        return await self.handle_chat(request)

    async def handle_models(self, request: web.Request) -> web.Response:
        extra = {"max_model_len": self.config.server_context} if self.config.server_context else {}
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "batchrun-sim", **extra}
            for m in self.config.models
        ]
        return web.json_response({"object": "list", "data": data}, headers=self.rate_headers())

    async def handle_props(self, request: web.Request) -> web.Response:
        """llama.cpp's self-description (a k-slot server with server_context): slots, the context each has.
        Without slots the simulator is vLLM-like: max_model_len in /v1/models only."""
        cfg = self.config
        if not cfg.server_context or not cfg.slots:
            raise web.HTTPNotFound()
        settings = {"n_ctx": cfg.server_context}
        return web.json_response({"total_slots": cfg.slots, "default_generation_settings": settings})

    async def handle_stats(self, request: web.Request) -> web.Response:
        out = self.stats.to_dict()
        out["batches"] = self.batches.stats()
        out["config"] = {k: v for k, v in asdict(self.config).items() if k != "extra"}
        return web.json_response(out)

    async def handle_config(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            self.configure(changes)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({k: v for k, v in asdict(self.config).items() if k != "extra"})

    async def handle_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


class SimServer:
    """The simulator on 127.0.0.1 in a background thread: for tests, the CLI and benchmarks."""

    def __init__(self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim = Simulator(config)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SimServer:
        self._thread = threading.Thread(target=self._serve, name="batchrun-sim", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise self._error
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # surfaced to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._cleanup())
        if left := asyncio.all_tasks(loop):  # replies past the grace: cancelled, not destroyed pending
            for task in left:
                task.cancel()
            loop.run_until_complete(asyncio.wait(left))
        loop.close()

    async def _startup(self) -> None:
        # replies held open on purpose ([[sim:slow]]) get 0.5 s at stop: aiohttp's 60 s outlasted the join
        self._runner = web.AppRunner(self.sim.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self.sim.batches.close()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the server's loop thread and return its result (thread-safe state access)."""
        assert self._loop is not None

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def stats(self) -> dict[str, Any]:
        return self.call(lambda: {**self.sim.stats.to_dict(), "batches": self.sim.batches.stats()})

    def configure(self, **changes: Any) -> None:
        self.call(self.sim.configure, changes)

    def seen_system_prompts(self) -> list[str]:
        """System prompts of the chat requests answered or refused since start (the last 10,000)."""
        return self.call(lambda: list(self.sim.system_prompts))

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
