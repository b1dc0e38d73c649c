"""The per-run objects, built once from the `Job` by the lifecycle and handed to the executors.

An executor (online table, Batch API, document) never re-derives these from the job:
it receives one frozen `RunContext` with the renderer-independent parts of a run —
endpoint, price, limiter, ledger and cache policy, budget, audit log, the committer
that makes answers durable, and the stopper that carries signals to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from .budget import Budget
from .endpoints import Endpoint
from .errors import BatchrunError, Interrupted, JobFileError
from .events import EventLog
from .fingerprints import CachePolicy, Fingerprinter
from .jobs import Job
from .ledger import COMMIT_SECONDS, Ledger
from .limits import RateLimiter
from .pricing import ModelPrice
from .prompts import Renderer
from .redact import scrub_obj
from .replies import ReplyParser
from .results import ACCEPTED_STATUSES, RunResult, percentile
from .sinks import OutputLayout, RowResult, job_layout
from .sources import Source
from .workload import EngineOptions

if TYPE_CHECKING:  # the engine (and the SDK under it) is loaded when a run builds one
    from .engine import Engine

PROGRESS_SECONDS = 0.25
"""Least time between two redraws of the progress bar's figures."""


class AuditLog:
    """Every request and response of a run, appended as JSONL by the committer (never on the event loop)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lines: list[dict[str, Any]] = []

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def add(self, record: dict[str, Any]) -> None:
        self.lines.append(record)

    def request(
        self, kind: str, item: Any, max_tokens: int | None, response: Any, reply: dict[str, Any] | None,
        error: str | None,
    ) -> None:  # fmt: skip
        """An engine's request and its answer (or failure), as one audit record."""
        headers = {}
        if response is not None:
            headers = {
                k: v
                for k, v in response.headers.items()
                if k.lower().startswith(("x-ratelimit-", "x-request-id", "retry-after", "openai-"))
            }
        body = item.requests[0].body if kind == "chat" else {"input": [r.body["input"] for r in item.requests]}
        self.add({
            "time": time.time(), "row_ids": [r.row_id for r in item.requests], "request": body,
            "max_tokens_override": max_tokens, "status_code": getattr(response, "status_code", None),
            "response_headers": headers, "response": reply, "error": error,
        })  # fmt: skip

    def take(self) -> list[dict[str, Any]]:
        lines, self.lines = self.lines, []
        return lines

    def write(self, lines: list[dict[str, Any]]) -> None:
        if not lines or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for rec in lines:
                f.write(json.dumps(scrub_obj(rec), ensure_ascii=False) + "\n")


class Committer:
    """Makes received answers durable: the ledger's queued results and spend, and the audit records.

    `timer()` commits at least every COMMIT_SECONDS whether or not results keep arriving, so a lull
    of slow replies cannot hold answers in memory (a kill -9 then costs only the last window).
    """

    def __init__(self, ledger: Ledger, audit: AuditLog) -> None:
        self.ledger = ledger
        self.audit = audit
        self.committed: list[str] = []
        """Fingerprints committed since the online producer last looked (see online.OnlineRun)."""
        self._lock = asyncio.Lock()

    async def commit(self) -> None:
        async with self._lock:  # one commit at a time, in order
            taken = self.ledger.take()
            lines = self.audit.take()
            results, spend, events = taken
            if results or spend or any(events) or lines:
                write = asyncio.ensure_future(asyncio.to_thread(self._write, taken, lines))
                try:
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    # a cancelled task does not stop its thread: the write finishes before the run goes on
                    # to close the ledger (closing it under a write crashed the process), and is kept
                    await write
                    raise
                self.committed.extend(row[0] for row in taken[0])

    def _write(self, taken: Any, lines: list[dict[str, Any]]) -> None:
        self.ledger.write(taken)
        self.audit.write(lines)

    async def timer(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_SECONDS)
            await self.commit()


class Stopper:
    """Carries a stop to whatever is running: the first signal stops dispatching (what is in flight
    finishes), the second aborts in-flight requests. Engines and batch drivers attach to it."""

    def __init__(self, say: Callable[[str], Any] | None = None) -> None:
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.engines: list[Engine] = []
        self.error: BatchrunError | None = None
        self.signals = 0
        self.requested = asyncio.Event()

    def attach(self, engine: Engine) -> Engine:
        self.engines.append(engine)
        if self.error is not None:
            engine.stop(self.error)
        return engine

    def signal(self, signum: int, name: str) -> None:
        self.signals += 1
        if self.signals == 1:
            self.say(f"batchrun: {name}: stopping — finishing requests in flight ({name} again to stop at once)")
            self.error = Interrupted(f"stopped by {name}; every answer received is committed and written", signum)
            for e in self.engines:
                e.stop(self.error)
            self.requested.set()
        elif self.signals == 2:
            self.say(f"batchrun: {name} again: abandoning requests in flight; writing what was answered")
            assert self.error is not None
            for e in self.engines:
                e.abort(self.error)
        else:
            self.say("batchrun: already stopping; writing what was answered")


@dataclass(frozen=True)
class RayTarget:
    """Where `run --ray` sends from: a cluster address, or None for a local Ray instance."""

    address: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """One run's objects, built once (lifecycle.build_context)."""

    job: Job
    endpoint: Endpoint
    price: ModelPrice | None
    """The model's price, or None when no price is known (costs are then unknown)."""
    price_for: Callable[[str], ModelPrice | None]
    """Any model's price (rows naming their own model, [request] params_from)."""
    batch_discount: float
    limiter: RateLimiter
    ledger: Ledger
    cache: CachePolicy
    budget: Budget | None
    audit: AuditLog
    committer: Committer
    stopper: Stopper
    progress: bool
    accepted: tuple[str, ...]
    """Statuses that count as answered for the exit code."""
    started: float
    """time.monotonic() at the start of the run."""
    ray: RayTarget | None = None
    one_run: bool = False
    """The process exits after this run (RunOptions.one_run)."""

    @property
    def context_window(self) -> int | None:
        return self.price.context_window if self.price else None

    @property
    def events(self) -> EventLog | None:
        """Where engines put each request's event: the ledger's, when the report or `run -v` wants them."""
        events = self.ledger.events
        return events if self.job.output.report or events.listener is not None else None

    @property
    def endpoint_key(self) -> str:
        return self.endpoint.cache_key

    def engine(
        self,
        *,
        kind: str,
        parser: ReplyParser,
        on_result: Callable[[int, RowResult], Any],
        options: EngineOptions | None = None,
        embedding_dims: int | None = None,
    ) -> Engine:
        """The online engine for this run, attached to the stopper and the spend record."""
        limits = self.job.limits
        key = self.endpoint_key
        ledger = self.ledger
        options = options or EngineOptions(
            max_in_flight=limits.max_in_flight, max_attempts=limits.max_attempts, fail_fast_rows=limits.fail_fast_rows
        )
        if self.endpoint.max_in_flight is not None and options.max_in_flight > self.endpoint.max_in_flight:
            # the embedded server queues past its slots: more in flight only grows the latency
            options = dataclasses.replace(options, max_in_flight=self.endpoint.max_in_flight)
        if self.ray is not None:
            from .cluster import RayEngine

            return self.stopper.attach(
                RayEngine(
                    job=self.job,
                    base_url=self.endpoint.base_url,
                    model=self.endpoint.model,
                    price=self.price,
                    price_for=self.price_for,
                    options=options,
                    on_result=on_result,
                    embedding_dims=embedding_dims,
                    on_spend=lambda usd: ledger.record_spend(usd, key),
                    address=self.ray.address,
                    spent_before=ledger.spent(),
                    job_key=f"{self.job.name}:{ledger.path}",
                    events=self.events,
                )
            )
        from .engine import Engine

        engine = Engine(
            http=self.endpoint.http,
            model=self.endpoint.model,
            kind=kind,
            limiter=self.limiter,
            parser=parser,
            price=self.price,
            options=options,
            on_result=on_result,
            embedding_dims=embedding_dims,
            budget=self.budget,
            audit=self.audit.request if self.audit.enabled else None,
            events=self.events,
            on_spend=lambda usd: ledger.record_spend(usd, key),
            price_for=self.price_for,
            tiers=self.job.request.flex_policy,
        )
        return self.stopper.attach(engine)

    async def marks(self) -> None:
        """Every second, the limits in force (configured or learned from headers), the requests in
        flight and whether sending is paused — the run report's limit lines and pause bands."""
        if not self.job.output.report:
            return
        events, limiter = self.ledger.events, self.limiter
        pauses = limiter.pauses
        while True:
            rpm, tpm = limiter.limits
            paused = limiter.pauses != pauses or limiter.paused_until > time.monotonic()
            pauses = limiter.pauses
            flight = sum(e.gate.active for e in self.stopper.engines)
            events.mark(time.time(), "limits", rpm=rpm, tpm=tpm, in_flight=flight, note="paused" if paused else None)
            await asyncio.sleep(1.0)

    def bar(self, total: int | None, unit: str) -> tqdm:
        return tqdm(
            total=total,
            unit=unit,
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=PROGRESS_SECONDS,
            desc="simulated" if self.endpoint.simulated else self.job.name,
            file=sys.stderr,
        )

    def engine_result(
        self,
        engine: Engine,
        *,
        by_status: dict[str, int],
        cached_rows: int,
        cached_usd: float,
        notes: list[str],
        **extra: Any,
    ) -> RunResult:
        """What an online run did, from its engine's statistics (table and document runs alike)."""
        job = self.job
        stats = engine.stats
        limiter = engine.limiter
        lat = sorted(stats.latencies_ms)
        if limiter.slowdowns:
            notes.append(f"the server asked to slow down {limiter.slowdowns} time(s); rates were lowered")
        if stats.tiers and (len(stats.tiers) > 1 or job.request.service_tier not in (None, *stats.tiers)):
            by_tier = ", ".join(f"{t} {n:,} rows ${usd:,.4f}" for t, (n, usd) in sorted(stats.tiers.items()))
            notes.append(f"service tiers (as the server said, billed by them): {by_tier}")
        elif stats.tiers and job.request.service_tier is not None:
            ((t, (n, usd)),) = stats.tiers.items()
            notes.append(f"service tier: {t} for all {n:,} rows answered, ${usd:,.4f}")
        if stats.cached_prompt_tokens:
            price = engine.price
            saved = (
                stats.cached_prompt_tokens * (price.input - (price.cached_input or price.input)) / 1e6 if price else 0.0
            )
            notes.append(
                f"prompt cache: {stats.cached_prompt_tokens:,} of {stats.prompt_tokens:,} prompt tokens "
                f"({stats.cached_prompt_tokens / max(stats.prompt_tokens, 1):.0%}) served from the provider's cache, "
                f"${saved:,.4f} less than uncached"
            )
        if stats.unavailable:
            notes.append(
                f"flex had no capacity {stats.unavailable:,} time(s) (429 resource unavailable, not billed); "
                + (
                    f"a row refused {job.request.flex_fallback_after} times went on the default tier"
                    if job.request.flex_fallback == "default"
                    else "rows waited for flex (flex_fallback = never)"
                )
            )
        if limiter.limits != (job.limits.rpm, job.limits.tpm):
            learned = ", ".join(f"{k} {v:,}" for k, v in zip(("rpm", "tpm"), limiter.limits, strict=True) if v)
            said = ", ".join(f"{k} {v:,}" for k, v in (("rpm", job.limits.rpm), ("tpm", job.limits.tpm)) if v)
            notes.append(
                f"limits learned from the server: {learned or 'none'}"
                + (f" (the job said {said})" if said else " (the job gave no limits)")
            )
        return RunResult(
            job=job.name,
            output_path=job.output_path,
            rows=sum(by_status.values()),
            by_status=by_status,
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            cost_usd=stats.cost_usd,
            price_known=engine.price is not None,
            latency_p50_ms=percentile(lat, 50),
            latency_p95_ms=percentile(lat, 95),
            latency_max_ms=lat[-1] if lat else None,
            requests_sent=stats.requests_sent,
            rate_limited=stats.rate_limited,
            retries=stats.retries,
            wall_seconds=time.monotonic() - self.started,
            startup_seconds=(stats.first_send - self.started) if stats.first_send is not None else None,
            minimum_seconds=limiter.minimum_seconds(*stats.admitted),
            limits=limiter.limits,
            simulated=self.endpoint.simulated,
            cached_rows=cached_rows,
            cached_usd=cached_usd,
            ledger_path=self.ledger.path,
            stopped=str(engine.stop_error) if engine.stop_error else None,
            notes=notes,
            accepted=self.accepted,
            **extra,
        )


@dataclass(frozen=True, kw_only=True)
class TableParts:
    """What a table job's executors (online and Batch API) share, built once from the job and its input."""

    source: Source
    renderer: Renderer
    input_columns: list[str]
    """Input columns copied to the output."""
    layout: OutputLayout
    fingerprinter: Fingerprinter

    @classmethod
    def build(cls, ctx: RunContext, source: Source) -> TableParts:
        renderer = Renderer(ctx.job, source.columns)
        renderer.check_no_empty(source)
        renderer.check_row_params(source)
        for model in sorted(renderer.row_models):
            require_price(ctx.job, ctx.price_for(model), model)
        input_columns, layout = job_layout(ctx.job, source)
        return cls(
            source=source,
            renderer=renderer,
            input_columns=input_columns,
            layout=layout,
            fingerprinter=renderer.fingerprinter(ctx.endpoint_key, ctx.endpoint.model),
        )


def job_budget(job: Job, price: ModelPrice | None, ledger: Ledger) -> Budget | None:
    """The job's spend cap, counting what this job paid in earlier runs (its spend record); None without one."""
    if job.budget.max_usd is None:
        return None
    require_price(job, price)
    return Budget(job.budget.max_usd, ledger.spent())


def require_price(job: Job, price: ModelPrice | None, model: str | None = None) -> None:
    """A budget needs a price: refuse the job (before anything is read or sent) when none is known."""
    if price is None and job.budget.max_usd is not None:
        whose = "" if model is None else " (named by rows in [request] params_from model)"
        raise JobFileError(
            job.source_path,
            "budget.max_usd",
            f"no price is known for {model or job.request.model!r}{whose}, so a budget cannot be enforced; "
            "add its price under [pricing.models] or remove the budget",
        )


def accepted_statuses(job: Job, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*ACCEPTED_STATUSES, *job.output.accept, *extra)))
