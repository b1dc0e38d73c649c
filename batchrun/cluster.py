"""The engine on a Ray cluster: the same Engine in every actor, one limiter actor for them all.

    driver (ledger, order, output)                         cluster
    ┌─────────────────────────────┐   chunks of work   ┌──────────────────────────┐
    │ OnlineRun: read, render,    │ ─────────────────▶ │ RowWorker × [ray] actors │──▶ endpoint
    │ ledger lookup ─▶ RayEngine  │ ◀───────────────── │  Engine (retries, parse) │
    │ ─▶ writer (input order)     │   results + stats  │  LeasedLimiter / Budget  │
    └─────────────────────────────┘                    └────────────┬─────────────┘
                                                                    │ leases (~1/s per worker)
                                                       ┌────────────▼─────────────┐
                                                       │ LimiterActor: LeaseBook  │
                                                       └──────────────────────────┘

Why the driver keeps the ledger and the output: it must see every row anyway (a row's fingerprint is
looked up before anything is sent, and the output is in input order), and the API, not the driver,
is the bottleneck — a driver records and writes ~10⁴ rows/s, more than any account's limit allows.
So `run --ray` keeps every guarantee of a local run unchanged (cache, resume, no row paid twice,
audit, order, exit codes), and only the sending moves out. A worker that dies takes with it at most
the chunks it had in flight; the driver sends exactly those again on a fresh actor.

Ray is an optional extra (`pip install "batchrun[ray]"`): it is imported only when a run asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
import types
import uuid
from dataclasses import dataclass, field
from typing import Any

from .endpoints import make_client
from .engine import Engine, EngineOptions, WorkItem
from .errors import BatchrunError, BudgetExceeded, EndpointError, Interrupted, QuotaExhausted, UserError
from .events import RequestSink
from .jobs import Job
from .leases import LeaseBook, LeasedBudget, LeasedLimiter
from .limits import Bucket, RateLimiter
from .pricing import ModelPrice
from .replies import ReplyParser
from .rows import RowResult
from .transport import for_client

NAMESPACE = "batchrun"
CHUNK = 16
"""Most requests per call to a worker. A call costs ~1 ms of CPU (Ray's task path, pickling) on each
side, so requests go in chunks; a chunk's results come back together, so one slow reply holds back
the rest of its chunk — LANES chunks per actor keep the others flowing meanwhile."""
LANES = 4
_ERRORS: dict[str, type[BatchrunError]] = {
    c.__name__: c for c in (BudgetExceeded, EndpointError, QuotaExhausted, Interrupted)
}


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise UserError(
            'running on Ray needs the ray extra: pip install "batchrun[ray]" (ray with its data component)'
        ) from exc
    return ray


def connect(address: str | None) -> Any:
    """Ray, connected: to `address` (`auto`, `ray://…`), or a local instance when None; a connection
    the caller already made (a notebook, a Ray job) is used as it is."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    return ray


class ActorLessor:
    """leases.Lessor over a Ray actor handle: each call is the method's `.remote(...)` (awaitable)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.handle, method).remote(*args)


class LimiterActor:
    """The cluster-wide LeaseBook, as a Ray actor (async: a lease waits without blocking the others)."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.book = LeaseBook(rpm, tpm)

    async def lease(self, *args: Any) -> Any:
        return await self.book.lease(*args)

    async def wait_pause(self, epoch: int, timeout: float = 30.0) -> tuple[int, float]:
        return await self.book.wait_pause(epoch, timeout)

    def release(self, *args: Any) -> None:
        self.book.release(*args)

    def pause(self, seconds: float, kind: str | None = None) -> None:
        self.book.pause(seconds, kind)

    def slow_down(self) -> None:
        self.book.slow_down()

    def join(self, job: str, max_usd: float | None, spent_before: float) -> None:
        self.book.join(job, max_usd, spent_before)

    def budget_lease(self, *args: Any) -> Any:
        return self.book.budget_lease(*args)

    def budget_release(self, worker: str, spent: float) -> None:
        self.book.budget_release(worker, spent)

    def forfeit(self, worker: str) -> None:
        self.book.forfeit(worker)

    def snapshot(self) -> dict[str, Any]:
        return self.book.snapshot()


def limiter_actor(ray: Any, job: Job, name: str | None) -> Any:
    """The run's limiter: its own (gone with the driver), or the named one jobs share (detached)."""
    remote = ray.remote(num_cpus=0, max_concurrency=10_000)(LimiterActor)
    if name is None:
        return remote.remote(job.limits.rpm, job.limits.tpm)
    return remote.options(
        name=f"batchrun-limiter-{name}", namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(job.limits.rpm, job.limits.tpm)


@dataclass(frozen=True, kw_only=True)
class WorkerSetup:
    """What a worker needs to build its engine: the job and what the driver resolved from it."""

    job: Job
    base_url: str
    model: str
    key: str | None
    price: ModelPrice | None
    price_for: Any
    options: EngineOptions
    embedding_dims: int | None
    embedding_extra: dict[str, Any] = field(default_factory=dict)
    budget: bool = False

    @classmethod
    def of(
        cls,
        job: Job,
        *,
        base_url: str,
        model: str,
        price: ModelPrice | None,
        price_for: Any,
        embedding_dims: int | None,
        embedding_extra: dict[str, Any],
        max_in_flight: int | None = None,
    ) -> WorkerSetup:
        """A worker's setup from the job: its engine options are the job's, in flight per actor."""
        return cls(
            job=job,
            base_url=base_url,
            model=model,
            key=os.environ.get(job.endpoint.api_key_env),
            price=price,
            price_for=price_for,
            options=EngineOptions(
                max_in_flight=max_in_flight or job.ray.max_in_flight_per_actor,
                max_attempts=job.limits.max_attempts,
                retry_bad_replies=job.request.retry_bad_replies,
                fail_fast_rows=job.limits.fail_fast_rows,
            ),
            embedding_dims=embedding_dims,
            embedding_extra=embedding_extra,
            budget=job.budget.max_usd is not None,
        )


@dataclass
class Reply:
    """A worker's answer to one chunk: the rows' results and its engine's counters so far."""

    results: list[tuple[int, RowResult]]
    counters: dict[str, Any]
    spent: float
    stop: tuple[str, str] | None
    last_failure: tuple[int | None, str] | None
    events: list[tuple[Any, ...]] = field(default_factory=list)
    """The chunk's request events (events.REQUEST_COLUMNS rows), for the driver's ledger and the report."""


class EventTape:
    """A worker's request events, kept until its next reply carries them to the driver."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def request(self, *values: Any) -> None:
        self.rows.append(values)

    def take(self) -> list[tuple[Any, ...]]:
        rows, self.rows = self.rows, []
        return rows


class RowWorker:
    """One actor's engine: sends what the driver gives it, under the cluster's leases."""

    def __init__(self, setup: WorkerSetup, limiter: Any, worker: str) -> None:
        self.id = worker
        self.setup = setup
        lessor = ActorLessor(limiter)
        self.limiter = LeasedLimiter(lessor, worker)
        self.budget = LeasedBudget(lessor, worker) if setup.budget else None
        job = setup.job
        self.done: dict[int, RowResult] = {}
        self.spent = 0.0
        self.latencies_sent = 0
        self.tape = EventTape()
        client = make_client(job, setup.base_url, setup.key)
        self.http = for_client(client)
        self.engine = Engine(
            client=client,
            http=self.http,
            model=setup.model,
            kind=job.request.kind,
            limiter=self.limiter,
            parser=ReplyParser(job.schema_strict, job.request.max_output_tokens),
            price=setup.price,
            options=setup.options,
            on_result=self._on_result,
            embedding_dims=setup.embedding_dims,
            budget=self.budget,
            on_spend=self._on_spend,
            price_for=setup.price_for,
            tiers=job.request.flex_policy,
            events=self.tape if job.output.report else None,
        )
        self.engine.embedding_extra.update(setup.embedding_extra)

    def _on_result(self, seq: int, result: RowResult) -> None:
        self.done[seq] = result

    def _on_spend(self, usd: float) -> None:
        self.spent += usd

    async def watch(self) -> None:
        """Runs for the worker's life: hears of the pauses other workers started."""
        await self.limiter.watch()

    async def run(self, items: list[WorkItem]) -> Reply:
        async with asyncio.TaskGroup() as tg:
            for item in items:
                tg.create_task(self.engine.dispatch(item))
        results = [(seq, self.done.pop(seq)) for item in items for seq in item.seqs]
        return self._reply(results)

    def _reply(self, results: list[tuple[int, RowResult]]) -> Reply:
        s = self.engine.stats
        lat = s.latencies_ms[self.latencies_sent :].tolist()
        self.latencies_sent = len(s.latencies_ms)
        counters = {
            "requests_sent": s.requests_sent,
            "requests_ok": s.requests_ok,
            "rate_limited": s.rate_limited,
            "retries": s.retries,
            "charged_tokens": s.charged_tokens,
            "refused_tokens": s.refused_tokens,
            "latencies": lat,
            "lease_calls": self.limiter.calls,
            "slowdowns": self.limiter.slowdowns,
            "limits": self.limiter.limits,
        }
        spent, self.spent = self.spent, 0.0
        err = self.engine.stop_error
        stop = None if err is None else (type(err).__name__, str(err))
        last = self.engine._last_failure
        failure = None if last is None else (last.status, last.message)
        return Reply(results, counters, spent, stop, failure, self.tape.take())

    def stop(self, name: str, message: str) -> None:
        self.engine.stop(_ERRORS.get(name, EndpointError)(message))

    def abort(self, name: str, message: str) -> None:
        self.engine.abort(_ERRORS.get(name, EndpointError)(message))

    async def close(self) -> None:
        await self.limiter.close()
        if self.budget is not None:
            await self.budget.close()
        await self.http.aclose()

    def ping(self) -> str:
        return self.id


class RayEngine(Engine):
    """The driver's engine for `run --ray`: the Engine's interface (stats, stop, abort, on_result),
    its requests sent by RowWorker actors instead of from this process."""

    def __init__(
        self,
        *,
        job: Job,
        base_url: str,
        model: str,
        price: ModelPrice | None,
        price_for: Any,
        options: EngineOptions,
        on_result: Any,
        embedding_dims: int | None,
        on_spend: Any,
        address: str | None,
        spent_before: float,
        job_key: str,
        events: RequestSink | None = None,
    ) -> None:
        super().__init__(
            client=None,  # type: ignore[arg-type]  # nothing is sent from the driver
            model=model,
            kind=job.request.kind,
            limiter=RateLimiter(job.limits.rpm, job.limits.tpm),
            parser=ReplyParser(job.schema_strict, job.request.max_output_tokens),
            price=price,
            options=options,
            on_result=on_result,
            embedding_dims=embedding_dims,
            on_spend=on_spend,
            price_for=price_for,
            events=events,
        )
        self.job = job
        self.base_url = base_url
        self.address = address if address is not None else job.ray.address
        self.spent_before = spent_before
        self.job_key = job_key
        self.actors: list[Any] = []
        self.ids: dict[int, str] = {}
        """slot → the worker id of its current actor (the limiter knows workers by it)."""
        self.counters: dict[str, dict[str, Any]] = {}
        self.replaced = 0
        self.resent_items = 0
        self.book: dict[str, Any] = {}
        self._ids = itertools.count()

    def _setup(self) -> WorkerSetup:
        return WorkerSetup.of(
            self.job,
            base_url=self.base_url,
            model=self.model,
            price=self.price,
            # the context's lru_cache over the price table: its table's own lookup travels (pickles)
            price_for=getattr(self.price_for, "__wrapped__", self.price_for),
            embedding_dims=self.embedding_dims,
            embedding_extra=dict(self.embedding_extra),
        )

    def _spawn(self, remote: Any, setup: WorkerSetup, limiter: Any, slot: int) -> Any:
        worker = f"{uuid.uuid4().hex[:8]}-{slot}-{next(self._ids)}"
        # named, so an operator (or a test) can find a run's workers: `ray list actors`
        handle = remote.options(name=f"batchrun-worker-{worker}", namespace=NAMESPACE).remote(setup, limiter, worker)
        self.ids[slot] = worker
        return handle

    async def run(self, items: Any) -> None:
        ray = connect(self.address)
        job = self.job
        limiter = limiter_actor(ray, job, job.ray.limiter)
        await limiter.join.remote(self.job_key, job.budget.max_usd, self.spent_before)
        setup = self._setup()
        remote = ray.remote(num_cpus=0, max_concurrency=10_000)(RowWorker)
        n = job.ray.actors
        handles = [self._spawn(remote, setup, limiter, i) for i in range(n)]
        watches: list[Any] = []
        queue: asyncio.Queue[WorkItem | None] = asyncio.Queue(maxsize=4 * n * job.ray.max_in_flight_per_actor)
        # lanes × chunk ≤ max_in_flight_per_actor: what an actor holds is what it may have in flight, so
        # a dead actor's chunks, sent again, are never more than its in-flight count
        per_actor = job.ray.max_in_flight_per_actor
        chunk_size = min(CHUNK, max(1, per_actor // LANES))
        lanes = max(1, per_actor // chunk_size)
        self.actors = handles

        async def feed() -> None:
            async for item in items:
                await queue.put(item)
            for _ in range(n * lanes):
                await queue.put(None)

        async def lane(slot: int) -> None:
            while True:
                first = await queue.get()
                if first is None:
                    return
                chunk = [first]
                while len(chunk) < chunk_size and not queue.empty():
                    nxt = queue.get_nowait()
                    if nxt is None:
                        queue.put_nowait(None)  # another lane's end; this chunk is sent first
                        break
                    chunk.append(nxt)
                if self.stopped.is_set():
                    for item in chunk:
                        self._emit_all(item, "not_sent", self.stopped_reason(), 0)
                    continue
                await self._send_chunk(ray, remote, setup, limiter, slot, chunk)

        try:
            for h in handles:
                watches.append(h.watch.remote())
            async with asyncio.TaskGroup() as tg:
                tg.create_task(feed())
                for slot in range(n):
                    for _ in range(lanes):
                        tg.create_task(lane(slot))
        finally:
            for h in self.actors:
                with contextlib.suppress(ray.exceptions.RayError):  # a worker already gone: not the run's error
                    await h.close.remote()
            for w in watches:
                ray.cancel(w, force=False)
            for h in self.actors:
                ray.kill(h)
            with contextlib.suppress(ray.exceptions.RayError):  # a worker already gone: not the run's error
                self.book = await limiter.snapshot.remote()
            if job.ray.limiter is None:
                ray.kill(limiter)
        self._sync_limits()
        leases = sum(w["lease_calls"] for w in self.counters.values())
        sent = max(self.stats.requests_sent, 1)
        self.notes.append(
            f"Ray: {n} actors × {per_actor} in flight under one cluster-wide limiter ({leases:,} leases, "
            f"{leases / sent:.2f} per request)"
            + (
                f"; {self.replaced} actor(s) lost and replaced, {self.resent_items} row(s) sent again"
                if self.replaced
                else ""
            )
        )
        self.finish()

    async def _send_chunk(
        self, ray: Any, remote: Any, setup: WorkerSetup, limiter: Any, slot: int, chunk: list[WorkItem]
    ) -> None:
        while True:
            handle, worker = self.actors[slot], self.ids[slot]
            try:
                reply: Reply = await handle.run.remote(chunk)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                # the actor died with this chunk in flight: its rows go again, on a fresh actor
                # (what it had sent may have been answered and billed: at most its in-flight count)
                if self.actors[slot] is handle:
                    self.replaced += 1
                    with contextlib.suppress(ray.exceptions.RayError):  # a worker already gone: not the run's error
                        await limiter.forfeit.remote(worker)
                    fresh = self._spawn(remote, setup, limiter, slot)
                    self.actors[slot] = fresh
                    if self.stop_error is not None:
                        fresh.stop.remote(type(self.stop_error).__name__, str(self.stop_error))
                self.resent_items += len(chunk)
                if self.stopped.is_set():
                    for item in chunk:
                        self._emit_all(item, "not_sent", self.stopped_reason(), 0)
                    return
                continue
            self._take(worker, reply)
            return

    def _take(self, worker: str, reply: Reply) -> None:
        self.counters[worker] = reply.counters
        if self.events is not None:  # the workers' request events go in the driver's ledger
            for event in reply.events:
                self.events.request(*event)
        self.stats.latencies_ms.extend(reply.counters["latencies"])
        if reply.spent and self.on_spend is not None:
            self.on_spend(reply.spent)
        if reply.last_failure is not None:
            self._last_failure = types.SimpleNamespace(status=reply.last_failure[0], message=reply.last_failure[1])
        c = self.stats
        for key in ("requests_sent", "requests_ok", "rate_limited", "retries", "charged_tokens", "refused_tokens"):
            setattr(c, key, sum(w[key] for w in self.counters.values()))
        if c.first_send is None and c.requests_sent:
            c.first_send = time.monotonic()
        for seq, result in reply.results:
            self._emit(seq, result)
        if reply.stop is not None and self.stop_error is None:
            self.stop(_ERRORS.get(reply.stop[0], EndpointError)(reply.stop[1]))

    def stop(self, error: BatchrunError) -> None:
        first = not self.stopped.is_set()
        super().stop(error)
        if first:
            for h in self.actors:
                h.stop.remote(type(error).__name__, str(error))

    def abort(self, error: BatchrunError) -> None:
        self.stop(error)
        self.aborted = True
        for h in self.actors:
            h.abort.remote(type(error).__name__, str(error))

    def _sync_limits(self) -> None:
        """The summary's limits and slow-downs: what the cluster's limiter ended with."""
        lim = self.limiter
        learned = [w["limits"] for w in self.counters.values() if any(w["limits"])]
        limits = self.book.get("limits") or (learned[-1] if learned else lim.limits)
        now = lim._clock()
        lim.requests = Bucket(limits[0], now) if limits[0] else None
        lim.tokens = Bucket(limits[1], now) if limits[1] else None
        lim.slowdowns = max(self.book.get("slowdowns", 0), sum(w["slowdowns"] for w in self.counters.values()))
        lim.pauses = self.book.get("pauses", 0)
