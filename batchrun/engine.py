"""The online engine: every row sent as fast as the account's limits allow, and never faster.

Three stages joined by bounded queues, all in one task group:

    producer ──work──▶ workers (≤ max_in_flight) ──results──▶ writer
    (read + render                (limiter, send,               (reorder, Parquet
     in a thread)                  retries, parse)               row groups in a thread)

A window semaphore caps how far the producer may run ahead of the oldest row
not yet written, so memory is bounded by disorder, not by the input's size.
A quota stop or an endpoint refusal stops dispatching; rows in flight finish,
rows not sent are written with status `not_sent`, and the run reports why.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from .budget import Budget
from .errors import BatchrunError, BudgetExceeded, EndpointError, QuotaExhausted
from .events import RequestSink
from .gate import InFlight
from .headers import read_headers
from .limits import RateLimiter, RequestTooLarge
from .pricing import ModelPrice
from .replies import ReplyParser, usage_tokens
from .retries import Action, Failure, FailureRate, classify
from .rows import RowResult
from .transport import SdkTransport, Transport, is_api_error, is_timeout
from .workload import EngineOptions, RunStats, WorkItem

if TYPE_CHECKING:  # loaded where a request is sent through it or an error is mapped: see transport
    import openai

__all__ = ["Engine"]  # and HTTP_RESPONSE, made on first use (below)


def __getattr__(name: str) -> Any:
    if name == "HTTP_RESPONSE":  # the SDK's HTTP response class (tests, bench_ceiling), loaded when asked for
        from . import transport

        return transport.HTTP_RESPONSE
    raise AttributeError(name)


MAX_RATE_LIMIT_WAITS = 50


_OUTCOMES = {Action.RATE_LIMITED: "rate_limited", Action.UNAVAILABLE: "unavailable", Action.RETRY: "retried"}
"""A failed request's outcome in its run event; any other action ends the row: "failed"."""


class Engine:
    """Runs one job's requests against one endpoint."""

    def __init__(
        self,
        *,
        client: openai.AsyncOpenAI | None = None,
        model: str,
        kind: str,
        limiter: RateLimiter,
        parser: ReplyParser,
        price: ModelPrice | None,
        options: EngineOptions,
        on_result: Callable[[int, RowResult], Any],
        embedding_dims: int | None = None,
        budget: Budget | None = None,
        audit: Callable[..., None] | None = None,
        on_spend: Callable[[float], None] | None = None,
        price_for: Callable[[str], ModelPrice | None] | None = None,
        tiers: tuple[str, int] | None = None,
        events: RequestSink | None = None,
        http: Transport | None = None,
    ) -> None:
        self.http = http if http is not None else SdkTransport(client)  # type: ignore[arg-type]
        """How requests are sent: the endpoint's transport (transport.for_client), else the SDK's post."""
        self.events = events
        """Where each request's event goes (the ledger's, for the run report); None: not kept."""
        self.tiers = tiers
        """(flex_fallback, flex_fallback_after) of the job: what a flex row refused as unavailable does."""
        self.model = model
        self.kind = kind
        self.limiter = limiter
        """The job's model's limits; rows naming their own model ([request] params_from) get one each."""
        self.limiters: dict[str, RateLimiter] = {}
        self.parser = parser
        self.price = price
        self.price_for = price_for
        self.options = options
        self.on_result = on_result
        self.embedding_dims = embedding_dims
        self.budget = budget
        self.audit = audit
        self.on_spend = on_spend
        """Called with the cost of every reply received (bad-reply retries included): the spend record."""
        self.embedding_extra: dict[str, Any] = {}
        self.notes: list[str] = []
        """What the summary should say about how this engine ran (a cluster run's actors and leases)."""
        self.stats = RunStats()
        self.stop_error: BatchrunError | None = None
        self.stopped = asyncio.Event()
        self.rng = random.Random(options.seed)
        # slow start: a fast server needs few requests in flight, a slow one is found within a
        # few round trips as the limit doubles towards the Little's-law target
        self.flow = InFlight(options.max_in_flight)
        self.gate = self.flow.gate
        self.failures = FailureRate()  # stray failures are retried soon, common ones back off longer
        self.aborted = False
        self._active: set[asyncio.Task[Any]] = set()
        # the circuit breaker: the same failure, row after row, with no success between
        self._streak_key: tuple[Any, ...] | None = None
        self._streak_rows: set[int] = set()
        self._last_failure: Failure | None = None

    # -- public --------------------------------------------------------------------------------

    def stop(self, error: BatchrunError) -> None:
        """Stop dispatching: what is in flight finishes, the rest is written as not_sent."""
        if self.stop_error is None:
            self.stop_error = error
        self.stopped.set()

    def abort(self, error: BatchrunError) -> None:
        """Stop at once (a second Ctrl+C / SIGTERM): requests in flight are abandoned and their rows
        written as not_sent; every answer already received stays (the caller commits it)."""
        self.stop(error)
        self.aborted = True
        for task in list(self._active):
            task.cancel()

    async def run(self, items: AsyncIterator[WorkItem]) -> None:
        queue: asyncio.Queue[WorkItem | None] = asyncio.Queue(maxsize=2 * self.options.max_in_flight)
        workers = self.options.max_in_flight

        async def feed() -> None:
            async for item in items:
                await queue.put(item)
            for _ in range(workers):
                await queue.put(None)

        async def work() -> None:
            while (item := await queue.get()) is not None:
                await self.dispatch(item)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(feed())
            for _ in range(workers):
                tg.create_task(work())
        self.finish()

    async def dispatch(self, item: WorkItem) -> None:
        """One item through the in-flight gate, or written as not_sent once the run has stopped."""
        if self.stopped.is_set():
            self._emit_all(item, "not_sent", self.stopped_reason(), 0)
            return
        async with self.gate:
            await self.process(item)

    def finish(self) -> None:
        """After the last request: a run in which nothing got a reply says the endpoint is at fault."""
        last = self._last_failure
        down = last is not None and (last.status is None or last.status >= 500)
        judge = self.options.fail_fast_rows > 0  # 0: the breaker off, and this verdict with it
        if judge and self.stop_error is None and self.stats.requests_ok == 0 and last is not None and down:
            # too few requests for the breaker (one embeddings group, a short job), and not one reply:
            # the endpoint is down or broken, which is the endpoint's exit code, not the rows'
            what = "could not be reached" if last.status is None else "answered every request with an error"
            self.stop_error = EndpointError(
                f"the endpoint {what} ({last.message}); no request of this run got a reply. Check "
                "[endpoint] base_url and the server, then run the job again"
            )

    # -- one request ---------------------------------------------------------------------------

    def stopped_reason(self) -> str:
        return f"not sent: the run stopped ({type(self.stop_error).__name__}); run the job again to finish"

    def _emit_all(
        self, item: WorkItem, status: str, error: str | None, attempts: int, *, retryable: bool = False
    ) -> None:
        for seq, req in zip(item.seqs, item.requests, strict=True):
            self._emit(
                seq,
                RowResult(
                    row=req.row,
                    row_id=req.row_id,
                    status=status,
                    error=error,
                    attempts=attempts,
                    prompt_tokens=req.prompt_tokens if status == "too_long" else None,
                    retryable=retryable,
                ),
            )

    def _emit(self, seq: int, result: RowResult) -> None:
        self.stats.add(result)
        self.on_result(seq, result)

    async def _send(
        self, item: WorkItem, max_tokens: int | None, tier: str | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """POST one request through the transport (transport.py: the SDK's URL, headers and errors,
        aiohttp's connection) and take the reply's headers for the limiter and its JSON as plain dicts.
        The typed `create()` costs ~1 ms of CPU per request in parameter transforms and model
        construction (benchmarks/bench_ceiling.py), which capped a run near 450 req/s."""
        if self.kind == "embeddings":
            body: dict[str, Any] = {
                "model": self.model,
                "input": [r.body["input"] for r in item.requests],
                "encoding_format": "float",
                **self.embedding_extra,
            }
            path = "/embeddings"
        else:
            body = dict(item.requests[0].body)
            body["model"] = item.requests[0].model or self.model  # the row's own, else the endpoint's
            if max_tokens is not None:
                key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
                body[key] = max_tokens
            if tier is not None:
                body["service_tier"] = tier
            path = "/chat/completions"
        return await self.http.post(path, body)

    async def process(self, item: WorkItem) -> None:
        """Send one item until it succeeds, fails for good, or the run stops (or is aborted)."""
        task = asyncio.current_task()
        assert task is not None
        self._active.add(task)
        try:
            await self._process(item)
        except asyncio.CancelledError:
            if not self.aborted:
                raise
            # only an abort cancels a task while it is in here: the run goes on to write its rows
            task.uncancel()
            self._emit_all(item, "not_sent", "not sent: the run was stopped at once; run the job again", 0)
        finally:
            self._active.discard(task)

    async def _process(self, item: WorkItem) -> None:
        attempts = 0  # every send
        budget_used = 0  # sends that count against max_attempts (not rate-limit 429s)
        rate_waits = 0
        unavailable = 0  # flex "resource unavailable" answers to this row
        tier_override: str | None = None  # "default" once a flex row falls back
        bad_replies = 0
        max_tokens: int | None = None
        last_error = ""
        opts = self.options
        while True:
            if self.stopped.is_set():
                self._emit_all(item, "not_sent", self.stopped_reason(), attempts)
                return
            extra_tokens = 0 if max_tokens is None else max_tokens - item.requests[0].max_output_tokens
            waited = time.monotonic()
            try:
                await self._limiter(item).acquire(item.charged + extra_tokens)
            except RequestTooLarge as exc:
                self._emit_all(item, "too_long", str(exc), attempts)
                return
            if self.stopped.is_set():
                self._emit_all(item, "not_sent", self.stopped_reason(), attempts)
                return
            worst = self._worst_cost(item, extra_tokens)
            if self.budget is not None and not await self.budget.acquire(worst):
                self.stop(BudgetExceeded(self.budget.message()))
                self._emit_all(item, "not_sent", self.stopped_reason(), attempts)
                return
            attempts += 1
            budget_used += 1
            self.stats.requests_sent += 1
            if self.stats.first_send is None:
                self.stats.first_send = time.monotonic()
            self.stats.charged_tokens += item.charged + extra_tokens
            t0 = time.monotonic()
            waited = (t0 - waited) * 1000
            token = self.flow.sending()
            try:
                raw, reply = await self._send(item, max_tokens, tier_override)
            except Exception as exc:
                if not is_api_error(exc):  # a failed request (a plain server's, or the SDK's: see is_api_error)
                    raise
                self.flow.answered(token)
                if self.budget is not None:
                    self.budget.settle(worst, 0.0)  # a request that got no reply is not billed
                if is_timeout(exc) and len(item.requests) > 1:
                    # an embeddings request too big for the server's time: the halves, each on its own
                    # (a chunk of a book is split the same way), never the whole again
                    self.stats.retries += 1
                    half = len(item.requests) // 2
                    for part in ((0, half), (half, len(item.requests))):
                        await self._process(WorkItem(item.seqs[part[0] : part[1]], item.requests[part[0] : part[1]]))
                    return
                failure = classify(exc)
                outcome = _OUTCOMES.get(failure.action, "failed")
                outcome = "failed" if outcome == "retried" and budget_used >= opts.max_attempts else outcome
                self._record(item, t0, max_tokens, getattr(exc, "response", None), None, failure.message, outcome,
                             item.charged + extra_tokens, attempts, waited, 0.0)  # fmt: skip
                if failure.action in (Action.RETRY, Action.ROW_FAILED) and self._tripped(item, failure):
                    self._emit_all(item, "failed", failure.message, attempts, retryable=True)
                    return
                if failure.headers is not None:
                    self._limiter(item).observe(failure.headers)
                last_error = failure.message
                if failure.action is Action.RATE_LIMITED:
                    self.stats.rate_limited += 1
                    self.stats.refused_tokens += item.charged + extra_tokens
                    self._limiter(item).pause(
                        failure.wait if failure.wait is not None else 1.0, kind=failure.limit_kind
                    )
                    budget_used -= 1
                    rate_waits += 1
                    if rate_waits <= MAX_RATE_LIMIT_WAITS:
                        continue
                    self._emit_all(
                        item,
                        "failed",
                        f"still rate limited after {rate_waits} waits: {last_error}",
                        attempts,
                        retryable=True,
                    )
                    return
                if failure.action is Action.UNAVAILABLE:
                    # flex had no capacity: nothing billed, nobody else paused; after flex_fallback_after
                    # refusals (or never) the row goes on the default tier, at the default price
                    unavailable += 1
                    self.stats.unavailable += 1
                    self.stats.refused_tokens += item.charged + extra_tokens
                    budget_used -= 1
                    req_spec = self.tiers
                    if req_spec is not None and req_spec[0] == "default" and unavailable >= req_spec[1]:
                        tier_override = "default"
                        continue
                    if unavailable < opts.max_attempts * 4:
                        async with self.flow.backing_off():
                            await asyncio.sleep(opts.backoff.delay(min(unavailable, 6), self.rng, failure.wait))
                        continue
                    self._emit_all(
                        item, "failed", f"flex unavailable {unavailable} times: {last_error}", attempts, retryable=True
                    )
                    return
                if failure.action is Action.RETRY:
                    self.failures.record(True)
                    if failure.status is not None:  # an answer, if not the one asked for: a round trip served
                        self.flow.failed()
                if failure.action is Action.RETRY and budget_used < opts.max_attempts:
                    self.stats.retries += 1
                    if failure.slow_down:
                        self._limiter(item).slow_down()
                    async with self.flow.backing_off():  # it holds its slot: counted on top of the target
                        delay = opts.backoff.delay(
                            budget_used, self.rng, failure.wait, rare=self.failures.rare, typical=self.flow.typical()
                        )
                        await asyncio.sleep(delay)
                    continue
                if failure.action is Action.STOP_QUOTA:
                    self.stop(
                        QuotaExhausted(
                            f"the account is out of quota ({failure.message}). Finished rows are kept; add credit or "
                            "raise the spend limit, then run the job again to finish the rest."
                        )
                    )
                    self._emit_all(item, "not_sent", self.stopped_reason(), attempts)
                    return
                if failure.action is Action.STOP_ENDPOINT:
                    self.stop(
                        EndpointError(
                            f"the endpoint refused the request: {failure.message}. Every row would fail the same way; "
                            "check the API key, the model name and your access to it."
                        )
                    )
                    self._emit_all(item, "failed", failure.message, attempts)
                    return
                status = "too_long" if failure.action is Action.TOO_LONG else "failed"
                self._emit_all(item, status, last_error, attempts, retryable=failure.action is Action.RETRY)
                return
            self.flow.answered(token)
            self.failures.record(False)
            latency = (time.monotonic() - t0) * 1000
            self._streak_key, self._streak_rows = None, set()  # a reply: the endpoint works
            cost = self._reply_cost(reply, item)
            self._record(
                item, t0, max_tokens, raw, reply, None, "ok", item.charged + extra_tokens, attempts, waited, cost
            )
            if self.budget is not None:
                self.budget.settle(worst, cost)
            if self.on_spend is not None:
                self.on_spend(cost)
            headers = read_headers(raw.headers)
            if headers.limit_requests or headers.limit_tokens:
                self.flow.server_limits = True
            self._limiter(item).observe(headers)
            self._observe_latency(latency)
            self.stats.requests_ok += 1
            request_id = raw.headers.get("x-request-id")
            if self.kind == "embeddings":
                self._emit_embeddings(item, reply, attempts, latency, request_id)
                return
            result = self._chat_result(item, reply, attempts, latency, request_id)
            if result.status in ("schema_invalid", "truncated") and bad_replies < opts.retry_bad_replies:
                bad_replies += 1
                self.stats.retries += 1
                self.stats.spend(result.prompt_tokens, result.completion_tokens, result.cost_usd)
                if result.status == "truncated":
                    max_tokens = 2 * (max_tokens or item.requests[0].max_output_tokens)
                continue
            self._emit(item.seqs[0], result)
            return

    def _tripped(self, item: WorkItem, failure: Any) -> bool:
        """Count a failure towards the breaker; True (and the run stopped) when it trips."""
        self._last_failure = failure
        limit = self.options.fail_fast_rows
        if not limit:
            return False
        key = (failure.status, failure.message[:120])
        if key != self._streak_key:
            self._streak_key, self._streak_rows = key, set()
        self._streak_rows.add(item.seqs[0])
        if len(self._streak_rows) < limit:
            return False
        if self.stop_error is None:
            what = "could not be reached" if failure.status is None else "failed"
            self.stop(
                EndpointError(
                    f"the endpoint {what} the same way for {len(self._streak_rows)} different rows in a row, with no "
                    f"success between ({failure.message}); stopped instead of retrying every row. Finished rows "
                    "are kept; check [endpoint] base_url and the server, then run the job again "
                    "([limits] fail_fast_rows = 0 turns this off)"
                )
            )
        return True

    def _model_of(self, item: WorkItem) -> str | None:
        """The row's own model (params_from), or None for the job's."""
        model = item.requests[0].model
        return None if model is None or model == self.model else model

    def _limiter(self, item: WorkItem) -> RateLimiter:
        model = self._model_of(item)
        if model is None:
            return self.limiter
        found = self.limiters.get(model)
        if found is None:  # limits are per model: this one's are learnt from its replies' headers
            found = self.limiters[model] = RateLimiter(None, None)
        return found

    def _price(self, item: WorkItem) -> ModelPrice | None:
        model = self._model_of(item)
        if model is None or self.price_for is None:
            return self.price
        return self.price_for(model)

    def _worst_cost(self, item: WorkItem, extra_tokens: int) -> float:
        price = self._price(item)
        if price is None:
            return 0.0
        asked = item.requests[0].body.get("service_tier") if self.kind == "chat" else None
        if asked in ("priority", "auto") and price.priority is not None:
            # it may be served (and billed) at priority; flex may fall back to default: never less
            price = max(price, price.priority, key=lambda p: p.input + p.output)
        prompt = sum(r.prompt_tokens for r in item.requests)
        out = sum(r.max_output_tokens for r in item.requests) + extra_tokens
        return price.cost(prompt, out)

    def _reply_cost(self, reply: dict[str, Any], item: WorkItem) -> float:
        usage = reply.get("usage") or {}
        price = self._price(item)
        if price is None:
            return 0.0
        price = price.tier(reply.get("service_tier"))  # billed by the tier that served it
        if not usage:
            return self._worst_cost(item, 0)  # no usage reported: assume the worst, never less
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return price.cost(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, cached_tokens=cached)

    def _record(
        self, item: WorkItem, t0: float, max_tokens: int | None, response: Any, reply: dict[str, Any] | None,
        error: str | None, outcome: str, reserved: int, attempt: int, waited_ms: float, cost: float,
    ) -> None:  # fmt: skip
        """One request into the audit log (when kept) and the run's events (when kept)."""
        if self.audit is not None:
            self.audit(self.kind, item, max_tokens, response, reply, error)
        if self.events is not None:
            prompt, completion, cached = usage_tokens(reply) if reply is not None else (None, None, None)
            latency = time.monotonic() - t0
            self.events.request(
                time.time() - latency, latency * 1000, getattr(response, "status_code", None), outcome,
                len(item.requests), item.requests[0].row_id, reserved, prompt, completion, cached, attempt,
                waited_ms, cost, (reply or {}).get("service_tier"), error,
            )  # fmt: skip

    def _cost(
        self, item: WorkItem, prompt: int, completion: int, cached: int = 0, tier: str | None = None
    ) -> float | None:
        price = self._price(item)
        return None if price is None else price.tier(tier).cost(prompt, completion, cached_tokens=cached)

    def _chat_result(
        self, item: WorkItem, reply: dict[str, Any], attempts: int, latency: float, request_id: str | None
    ) -> RowResult:
        req = item.requests[0]
        usage = reply.get("usage") or None
        prompt, completion, cached = usage_tokens(reply)
        if usage is not None:
            self.stats.recent.append((time.monotonic(), usage.get("total_tokens") or 0))
        parsed = self.parser.chat(reply)
        return RowResult(
            row=req.row,
            row_id=req.row_id,
            status=parsed.status,
            error=parsed.error,
            attempts=attempts,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=self._cost(item, prompt or 0, completion or 0, cached, reply.get("service_tier"))
            if usage
            else None,
            latency_ms=round(latency, 2),
            finish_reason=parsed.finish_reason,
            model=reply.get("model"),
            request_id=request_id,
            output=parsed.output,
            raw_text=parsed.raw_text,
            service_tier=reply.get("service_tier"),
            cached_tokens=cached if usage else None,
        )

    def _emit_embeddings(
        self, item: WorkItem, reply: dict[str, Any], attempts: int, latency: float, request_id: str | None
    ) -> None:
        vectors = {d.get("index"): d.get("embedding") for d in reply.get("data") or []}
        total = sum(r.prompt_tokens for r in item.requests) or 1
        usage = reply.get("usage") or {}
        self.stats.recent.append((time.monotonic(), usage.get("total_tokens") or 0))
        for i, (seq, req) in enumerate(zip(item.seqs, item.requests, strict=True)):
            # the API reports usage per request; each row gets its share by its own token count
            share = (usage.get("prompt_tokens") or 0) * req.prompt_tokens / total
            vec = vectors.get(i)
            error = None if vec is not None else f"no embedding at index {i} in the reply"
            if vec is not None and self.embedding_dims is None:
                self.embedding_dims = len(vec)  # a model of unknown size: its first reply says, and binds
            if vec is not None and self.embedding_dims and len(vec) != self.embedding_dims:
                error, vec = f"the reply's vector has {len(vec)} values; expected {self.embedding_dims}", None
            self._emit(
                seq,
                RowResult(
                    row=req.row,
                    row_id=req.row_id,
                    status="ok" if vec is not None else "failed",
                    error=error,
                    attempts=attempts,
                    prompt_tokens=req.prompt_tokens,
                    completion_tokens=0,
                    cost_usd=self._cost(item, round(share), 0),
                    latency_ms=round(latency, 2),
                    model=reply.get("model"),
                    request_id=request_id,
                    output=vec,
                ),
            )

    # -- concurrency ---------------------------------------------------------------------------

    def _observe_latency(self, latency_ms: float) -> None:
        self.stats.latencies_ms.append(latency_ms)
        if self.flow.observe(latency_ms / 1000):
            limiter = self.limiter
            charged = max(self.stats.charged_tokens / max(self.stats.requests_sent, 1), 1.0)
            levels = [limiter.requests.level] if limiter.requests else []
            levels += [limiter.tokens.level / charged] if limiter.tokens else []
            # a server that states no limits (vLLM, llama.cpp) queues instead: the job's own limits still
            # cap the rate (the limiter), but how many to keep in flight is found from its replies
            limits = limiter.limits if self.flow.server_limits else (None, None)
            self.flow.retarget(limits, int(min(levels, default=0)), charged)
