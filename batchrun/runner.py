"""A whole online run: source → renderer → engine → Parquet, with progress and a summary.

`run(job)` is what both `batchrun run` and the Python API call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

from .endpoints import Endpoint, open_endpoint
from .engine import Budget, Engine, EngineOptions, RunStats, WorkItem
from .errors import BatchrunError, EndpointError, Interrupted, JobFileError
from .jobs import Job, load_job
from .ledger import FINAL_STATUSES, Ledger, ledger_path
from .limits import RateLimiter
from .plan import embedding_groups, price_table_for, too_long_reason
from .pricing import ModelPrice
from .prompts import Renderer, Request
from .replies import ReplyParser
from .sinks import ParquetSink, ReorderBuffer, RowResult, embedding_dims, job_layout
from .sources import ROW_COLUMN, Source, open_source


@dataclass
class RunResult:
    """What a run did; `frame()` reads the output as a polars DataFrame."""

    job: str
    output_path: Path
    rows: int
    by_status: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    price_known: bool
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_max_ms: float | None
    requests_sent: int
    rate_limited: int
    retries: int
    wall_seconds: float
    minimum_seconds: float
    limits: tuple[int | None, int | None]
    simulated: bool
    cached_rows: int = 0
    cached_usd: float = 0.0
    ledger_path: Path | None = None
    stopped: str | None = None
    notes: list[str] = field(default_factory=list)
    mode: str = "online"
    waiting: str | None = None
    """Batch mode: why the output is not written yet (batches still running)."""
    batch_ids: list[str] = field(default_factory=list)
    documents: list[Path] = field(default_factory=list)
    """Document jobs: the translated documents written (the Parquet holds one row per paragraph)."""

    def frame(self) -> pl.DataFrame:
        return pl.read_parquet(self.output_path)

    def statuses(self) -> str:
        """Row counts by status, in the order of STATUS_ORDER."""
        return "   ".join(f"{k} {self.by_status[k]:,}" for k in STATUS_ORDER if self.by_status.get(k))

    def summary(self) -> dict[str, Any]:
        """What the ledger keeps of a finished run (JSON-ready: paths left out)."""
        return {
            k: v for k, v in dataclasses.asdict(self).items() if k not in ("output_path", "ledger_path", "documents")
        }

    @classmethod
    def empty(cls, job: Job, *, waiting: str, simulated: bool, notes: list[str], **kw: Any) -> RunResult:
        """A batch invocation that wrote no output yet."""
        return cls(
            job=job.name, output_path=job.output_path, rows=0, by_status={}, prompt_tokens=0, completion_tokens=0,
            cost_usd=0.0, price_known=True, latency_p50_ms=None, latency_p95_ms=None, latency_max_ms=None,
            requests_sent=0, rate_limited=0, retries=0, wall_seconds=0.0, minimum_seconds=0.0, limits=(None, None),
            simulated=simulated, notes=notes, mode="batch", waiting=waiting, **kw,
        )  # fmt: skip


STATUS_ORDER = ("ok", "refused", "truncated", "schema_invalid", "filtered", "too_long", "failed", "not_sent")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def format_summary(r: RunResult) -> str:
    """The end-of-run table `batchrun run` prints."""
    if r.waiting is not None:
        head = f"{'SIMULATED batch' if r.simulated else 'Batch'} job {r.job!r}: output not written yet"
        return "\n".join([head, f"  batches      {r.waiting}", *(f"  note         {n}" for n in r.notes)])
    if r.mode != "online":
        return _format_batch(r)
    statuses = r.statuses()
    cost = f"${r.cost_usd:,.4f}" if r.price_known else "unknown (no price for this model)"
    rpm, tpm = r.limits
    lat = (
        "n/a"
        if r.latency_p50_ms is None
        else (f"p50 {r.latency_p50_ms:,.0f} ms   p95 {r.latency_p95_ms:,.0f} ms   max {r.latency_max_ms:,.0f} ms")
    )
    lines = [
        f"{'SIMULATED run' if r.simulated else 'Run'} of {r.job!r} → {r.output_path}",
        f"  rows         {r.rows:,}   {statuses}",
        f"  tokens       prompt {r.prompt_tokens:,}   completion {r.completion_tokens:,}",
        f"  cost         {cost}" + ("   (simulated: nothing billed)" if r.simulated else ""),
        f"  latency      {lat}",
        f"  requests     {r.requests_sent:,} sent   {r.rate_limited:,} rate-limited (429)   {r.retries:,} retries",
        f"  cache        {r.cached_rows:,} rows answered without a request (ledger, or an identical row) — "
        f"${r.cached_usd:,.4f} not spent again",
        f"  wall time    {r.wall_seconds:,.1f} s   (the limits allow {r.minimum_seconds:,.1f} s at best; "
        f"rpm {rpm or 'unlimited'}, tpm {tpm or 'unlimited'})",
    ]
    if r.documents:
        lines[0] += " (one row per paragraph)"
        lines += [f"  document     {p}" for p in r.documents]
    if r.stopped:
        lines.append(f"  STOPPED      {r.stopped}")
    lines += [f"  note         {n}" for n in r.notes]
    return "\n".join(lines)


def _format_batch(r: RunResult) -> str:
    statuses = r.statuses()
    cost = f"${r.cost_usd:,.4f} at the Batch API price" if r.price_known else "unknown (no price for this model)"
    lines = [
        f"{'SIMULATED batch run' if r.simulated else 'Batch run'} of {r.job!r} → {r.output_path}",
        f"  rows         {r.rows:,}   {statuses}",
        f"  tokens       prompt {r.prompt_tokens:,}   completion {r.completion_tokens:,}",
        f"  cost         {cost}" + ("   (simulated: nothing billed)" if r.simulated else ""),
        f"  requests     {r.requests_sent:,} in {len(r.batch_ids)} batch(es)   {r.retries:,} sent again",
        f"  cache        {r.cached_rows:,} rows answered from the ledger — ${r.cached_usd:,.4f} not spent again",
        f"  wall time    {r.wall_seconds:,.1f} s (this invocation)",
    ]
    lines += [f"  note         {n}" for n in r.notes]
    return "\n".join(lines)


def append_jsonl(path: Path | None, records: list[dict[str, Any]]) -> None:
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _work_item(group: list[tuple[int, Request]]) -> WorkItem:
    return WorkItem(tuple(seq for seq, _ in group), tuple(req for _, req in group))


class _Run:
    """The state of one run, shared by its producer, engine and writer."""

    def __init__(self, job: Job, source: Source, endpoint: Endpoint, *, progress: bool, cache: str = "use") -> None:
        self.job = job
        self.source = source
        self.endpoint = endpoint
        self.renderer = Renderer(job, source.columns)
        table = price_table_for(job)
        self.price = table.lookup(job.request.model)
        self.context = self.price.context_window if self.price else None
        self.input_columns, self.layout = job_layout(job, source)
        self.limiter = RateLimiter(job.limits.rpm, job.limits.tpm)
        self.cache_read = cache == "use"
        self.ledger = Ledger(job.output.ledger or ledger_path(job.output_path)) if cache != "off" else None
        budget = job_budget(job, self.price, self.ledger)
        self.audit_lines: list[dict[str, Any]] = []
        self.audit_path = job.output.audit
        per_item = 2048 if job.request.kind == "embeddings" else 1
        self.options = EngineOptions(
            max_in_flight=job.limits.max_in_flight,
            max_attempts=job.limits.max_attempts,
            retry_bad_replies=job.request.retry_bad_replies,
            window=max(20_000, 4 * job.limits.max_in_flight * per_item),
        )
        self.results: asyncio.Queue[tuple[int, RowResult] | None] = asyncio.Queue()
        self.engine = Engine(
            client=endpoint.client,
            model=endpoint.model,
            kind=job.request.kind,
            limiter=self.limiter,
            parser=ReplyParser(job.schema_strict, job.request.max_output_tokens),
            price=self.price,
            options=self.options,
            on_result=self._on_result,
            embedding_dims=embedding_dims(job.request.model, job.request.dimensions)
            if job.request.kind == "embeddings"
            else None,
            budget=budget,
            audit=self.audit_lines.append if self.audit_path else None,
        )
        # the simulator's port changes every run; its answers are keyed as one endpoint
        self.endpoint_key = endpoint.cache_key
        self.fingerprinter = self.renderer.fingerprinter(self.endpoint_key, endpoint.model)
        self.fps: dict[int, str] = {}  # seq → fingerprint, for requests sent in this run
        self.in_flight: set[str] = set()
        self.followers: dict[str, list[tuple[int, Request]]] = {}
        # results recorded in this run and not yet seen by a ledger lookup: committed ones are dropped
        # only when the producer looks the next input batch up in the ledger, so an identical row
        # whose lookup came before the commit still finds its answer here (and is not sent twice)
        self.recent: dict[str, RowResult] = {}
        self.committed: list[str] = []
        if job.request.dimensions:
            self.engine.embedding_extra["dimensions"] = job.request.dimensions
        self.window = asyncio.Semaphore(self.options.window)
        self.inputs: dict[int, dict[str, Any]] = {}
        self.total = source.rows  # counted when the input was checked: no second scan
        self.bar = tqdm(
            total=self.total,
            unit="row",
            disable=not progress,
            dynamic_ncols=True,
            desc="simulated" if endpoint.simulated else job.name,
            file=sys.stderr,
        )

    def _on_result(self, seq: int, result: RowResult) -> None:
        """A sent request's result: into the ledger, then out to this row and any identical rows."""
        self.results.put_nowait((seq, result))
        fp = self.fps.pop(seq, None)
        if fp is None:
            return
        self.in_flight.discard(fp)
        if self.ledger is not None and result.status in FINAL_STATUSES and not result.retryable:
            self.ledger.record(fp, result, self.endpoint_key)
            self.recent[fp] = result
        for f_seq, f_req in self.followers.pop(fp, []):
            self._emit_direct(
                f_seq,
                dataclasses.replace(
                    result, row=f_req.row, row_id=f_req.row_id, from_cache=result.status in FINAL_STATUSES
                ),
            )

    def _emit_direct(self, seq: int, result: RowResult) -> None:
        self.engine.stats.add(result)
        self.results.put_nowait((seq, result))

    async def items(self) -> AsyncIterator[WorkItem]:
        """Rows rendered and counted in a worker thread, in input order, as work items."""
        it = iter(self.source.batches(5000))
        seq = 0
        cols = self.input_columns
        # embedding rows wait here until they fill a request; the last, partial group is carried
        # into the next batch so requests are grouped exactly as `plan` counted them
        todo: list[tuple[int, Request]] = []
        while (batch := await asyncio.to_thread(next, it, None)) is not None:
            positions, ids, texts = await asyncio.to_thread(self.renderer.texts, batch)
            inputs = await asyncio.to_thread(lambda b=batch: b.select(cols).to_dicts())
            fps = await asyncio.to_thread(lambda t=texts: [self.fingerprinter.of(x) for x in t])
            cached: dict[str, RowResult] = {}
            done, self.committed = self.committed, []
            if self.ledger is not None and self.cache_read:
                cached = await asyncio.to_thread(self.ledger.lookup, fps)
            for fp in done:  # committed before this lookup: the ledger answers for them now
                self.recent.pop(fp, None)
            # tokens are counted only for rows that may be sent: a resumed run skips the rest
            misses = [i for i, fp in enumerate(fps) if fp not in cached]
            fresh = await asyncio.to_thread(
                self.renderer.requests,
                [positions[i] for i in misses],
                [ids[i] for i in misses],
                [texts[i] for i in misses],
            )
            by_index = dict(zip(misses, fresh, strict=True))
            for i, (row_inputs, fp) in enumerate(zip(inputs, fps, strict=True)):
                await self.window.acquire()
                self.inputs[seq] = row_inputs
                hit = cached.get(fp)
                if hit is None and self.cache_read and fp in self.recent:
                    hit = dataclasses.replace(self.recent[fp], from_cache=True)
                if hit is not None:  # answered before: the row's own columns come from its input
                    self._emit_direct(seq, hit)
                    seq += 1
                    continue
                req = by_index[i]
                if fp in self.in_flight:  # an identical request is already on its way: share its answer
                    self.followers.setdefault(fp, []).append((seq, req))
                    seq += 1
                    continue
                tpm = self.limiter.limits[1]
                reason = too_long_reason(self.job, req, self.context, tpm)
                if self.engine.stopped.is_set():
                    self._emit_direct(
                        seq,
                        RowResult(
                            row=req.row, row_id=req.row_id, status="not_sent", error=self.engine.stopped_reason()
                        ),
                    )
                elif reason:
                    self._emit_direct(
                        seq,
                        RowResult(
                            row=req.row,
                            row_id=req.row_id,
                            status="too_long",
                            error=reason,
                            prompt_tokens=req.prompt_tokens,
                        ),
                    )
                elif self.job.request.kind == "chat":
                    self.fps[seq] = fp
                    self.in_flight.add(fp)
                    yield WorkItem((seq,), (req,))
                else:
                    self.fps[seq] = fp
                    self.in_flight.add(fp)
                    todo.append((seq, req))
                seq += 1
            groups = embedding_groups(todo, lambda pair: pair[1].prompt_tokens)
            todo = groups.pop() if groups else []
            for group in groups:
                yield _work_item(group)
        if todo:
            yield _work_item(todo)

    async def writer(self, sink: ParquetSink) -> None:
        reorder = ReorderBuffer()
        pending: list[dict[str, Any]] = []
        last_postfix = 0.0
        stats = self.engine.stats
        while (got := await self.results.get()) is not None:
            seq, result = got
            for res_seq, res in reorder.add(seq, result):
                pending.append(self.layout.record(self.inputs.pop(res_seq), res))
                self.window.release()
            await self._commit(force=False)
            if len(pending) >= sink.row_group_size:
                await asyncio.to_thread(sink.write, pending)
                self.bar.update(len(pending))
                pending = []
            now = time.monotonic()
            if now - last_postfix > 0.5:
                last_postfix = now
                self._postfix(stats, now, len(pending))
        await self._commit(force=True)
        await asyncio.to_thread(sink.write, pending)
        self.bar.update(len(pending))
        stats.reorder_peak = reorder.peak
        self._postfix(stats, time.monotonic(), 0)

    async def _commit(self, *, force: bool) -> None:
        """Commit recorded results to the ledger (batched: see ledger.COMMIT_ROWS / COMMIT_SECONDS)
        and append audit records; both in a thread, off the event loop."""
        if self.ledger is not None and (force or self.ledger.due()):
            batch = self.ledger.take()
            await asyncio.to_thread(self.ledger.write, batch)
            for row in batch:
                self.committed.append(row[0])
        if self.audit_lines and (force or len(self.audit_lines) >= 200):
            lines, self.audit_lines[:] = list(self.audit_lines), []
            await asyncio.to_thread(append_jsonl, self.audit_path, lines)

    def _postfix(self, stats: RunStats, now: float, _pending: int) -> None:
        failed = sum(n for k, n in stats.by_status.items() if k != "ok")
        tpm_limit = self.limiter.limits[1]
        tpm_now = stats.tokens_last_minute(now)
        self.bar.set_postfix_str(
            f"ok {stats.by_status.get('ok', 0):,} not-ok {failed:,} | "
            f"{tpm_now:,} tok/min" + (f" of {tpm_limit:,}" if tpm_limit else "") + f" | ${stats.cost_usd:,.4f}",
            refresh=False,
        )

    async def run(self) -> RunResult:
        sink = await asyncio.to_thread(ParquetSink, self.job.output_path, self.layout, self.job.output.row_group_size)
        started = time.monotonic()
        self.started = started
        if self.ledger is not None:
            await asyncio.to_thread(self.ledger.start_run)
        ok = False
        try:
            with interruptible(self.engine, self.bar.write):
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.writer(sink))

                    async def drive() -> None:
                        try:
                            await self.engine.run(self.items())
                        finally:
                            self.results.put_nowait(None)

                    tg.create_task(drive())
            ok = True
        finally:
            self.bar.close()
            if self.ledger is not None:
                # whatever happened, what was paid for is committed before we leave
                await asyncio.to_thread(self.ledger.flush)
            if ok:
                await asyncio.to_thread(sink.close)
            else:
                await asyncio.to_thread(sink.abort)
        result = self._result(time.monotonic() - started)
        if self.ledger is not None:
            await asyncio.to_thread(self.ledger.finish_run, result.rows, result.summary())
            await asyncio.to_thread(self.ledger.close)
        return result

    def _result(self, wall: float) -> RunResult:
        stats = self.engine.stats
        notes = []
        if self.endpoint.simulated:
            notes.append(
                "simulated endpoint: replies are synthetic, nothing was billed; set the API key to run for real"
            )
        return engine_result(
            self.job,
            self.engine,
            self.endpoint,
            wall=wall,
            by_status=dict(stats.by_status),
            cached_rows=stats.cached_rows,
            cached_usd=stats.cached_usd,
            ledger=self.ledger,
            notes=notes,
        )


def engine_result(
    job: Job,
    engine: Engine,
    endpoint: Endpoint,
    *,
    wall: float,
    by_status: dict[str, int],
    cached_rows: int,
    cached_usd: float,
    ledger: Ledger | None,
    notes: list[str],
    **extra: Any,
) -> RunResult:
    """What an online run did, from its engine's statistics (table and document runs alike)."""
    stats = engine.stats
    limiter = engine.limiter
    lat = sorted(stats.latencies_ms)
    if limiter.slowdowns:
        notes.append(f"the server asked to slow down {limiter.slowdowns} time(s); rates were lowered")
    if limiter.limits != (job.limits.rpm, job.limits.tpm):
        notes.append(
            f"limits learned from the server: rpm {limiter.limits[0]}, tpm {limiter.limits[1]} "
            f"(the job said rpm {job.limits.rpm}, tpm {job.limits.tpm})"
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
        latency_p50_ms=_percentile(lat, 50),
        latency_p95_ms=_percentile(lat, 95),
        latency_max_ms=lat[-1] if lat else None,
        requests_sent=stats.requests_sent,
        rate_limited=stats.rate_limited,
        retries=stats.retries,
        wall_seconds=wall,
        minimum_seconds=limiter.minimum_seconds(stats.requests_sent, stats.charged_tokens),
        limits=limiter.limits,
        simulated=endpoint.simulated,
        cached_rows=cached_rows,
        cached_usd=cached_usd,
        ledger_path=ledger.path if ledger else None,
        stopped=str(engine.stop_error) if engine.stop_error else None,
        notes=notes,
        **extra,
    )


def job_budget(job: Job, price: ModelPrice | None, ledger: Ledger | None) -> Budget | None:
    """The job's spend cap, counting what earlier runs recorded in the ledger; None without one."""
    if job.budget.max_usd is None:
        return None
    if price is None:
        raise JobFileError(
            job.source_path,
            "budget.max_usd",
            f"no price is known for {job.request.model!r}, so a budget cannot be enforced; "
            "add its price under [pricing.models] or remove the budget",
        )
    return Budget(job.budget.max_usd, ledger.spent() if ledger else 0.0)


@contextlib.contextmanager
def interruptible(engine: Engine, say: Callable[[str], Any]) -> Iterator[None]:
    """Ctrl+C stops dispatching (what is in flight finishes, finished rows are written); a second
    Ctrl+C cancels the run at once."""
    interrupts = 0
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            say("batchrun: stopping — finishing requests in flight (Ctrl+C again to abort now)")
            engine.stop(Interrupted("interrupted by Ctrl+C; finished rows are written"))
        elif main is not None:
            main.cancel()

    installed = False
    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):
        pass  # not the main thread (e.g. run from a notebook worker): Ctrl+C raises as usual
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)


def choose_mode(job: Job) -> tuple[str, str]:
    """The mode a job runs in, and why: its own, or for "auto" the plan's recommendation
    (a batch run already under way is always continued)."""
    if job.mode != "auto":
        return job.mode, f'mode = "{job.mode}"'
    path = job.output.ledger or ledger_path(job.output_path)
    if path.exists():
        from .batch_run import BatchJob

        if BatchJob.has_active_run(path):
            return "batch", "a batch run of this job is under way"
    from .plan import make_plan

    plan = make_plan(job)
    return plan.recommended_mode, plan.recommendation


async def run_async(
    job: Job,
    *,
    progress: bool = False,
    endpoint: Endpoint | None = None,
    cache: str = "use",
    wait: bool = False,
) -> RunResult:
    """Run a job (online, or through the Batch API for mode "batch" / a chosen "auto");
    raises the stop error (with `.result`) if the run had to stop."""
    if job.mode != "online":
        from .batch_run import run_batch_async

        mode, why = await asyncio.to_thread(choose_mode, job)
        auto_note = f'mode "auto" chose online: {why}'
        if mode == "batch":
            try:
                result = await run_batch_async(job, progress=progress, endpoint=endpoint, cache=cache, wait=wait)
            except EndpointError as exc:
                if job.mode != "auto" or "no Batch API" not in str(exc):
                    raise
                auto_note = f'mode "auto" ran online: {exc}'
            else:
                if job.mode == "auto":
                    result.notes.insert(0, f'mode "auto" chose the Batch API: {why}')
                return result
        job = job.model_copy(update={"mode": "online"})
    else:
        auto_note = None
    source = None if job.input.is_document else await asyncio.to_thread(open_source, job.input)
    own_endpoint = endpoint is None
    endpoint = endpoint or await asyncio.to_thread(open_endpoint, job)
    try:
        if endpoint.banner:
            print(endpoint.banner, file=sys.stderr)
        if source is None:
            from .book import run_document_async

            result, stop_error = await run_document_async(job, progress=progress, endpoint=endpoint, cache=cache)
        else:
            state = _Run(job, source, endpoint, progress=progress, cache=cache)
            result = await state.run()
            stop_error = state.engine.stop_error
        if auto_note:
            result.notes.insert(0, auto_note)
    finally:
        if own_endpoint:
            await endpoint.close()
    if stop_error is not None:
        error: BatchrunError = stop_error
        error.result = result  # type: ignore[attr-defined]
        raise error
    return result


def run(job: Job | str | Path, *, progress: bool = False, cache: str = "use", wait: bool = False) -> RunResult:
    """Run a job (a Job or a job-file path) and return what it did; output is in result.output_path.

    Batch mode: one step (submit what is ready, collect what finished) unless `wait`, which
    polls until the output is written; `result.waiting` says what is still running.

    cache: "use" (resume: rows with a final answer in the ledger are not sent again), "refresh"
    (send every row again and replace the ledger's answers) or "off" (no ledger at all).
    """
    if cache not in ("use", "refresh", "off"):
        raise ValueError(f"cache must be 'use', 'refresh' or 'off', not {cache!r}")
    if not isinstance(job, Job):
        job = load_job(job)
    return asyncio.run(run_async(job, progress=progress, cache=cache, wait=wait))


__all__ = ["ROW_COLUMN", "RunResult", "format_summary", "run", "run_async"]


def map(
    df: pl.DataFrame,
    *,
    prompt: str,
    model: str,
    schema: dict[str, Any] | type | None = None,
    system: str | None = None,
    max_tokens: int | None = None,
    kind: str = "chat",
    temperature: float | None = None,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    rpm: int | None = None,
    tpm: int | None = None,
    max_in_flight: int = 64,
    progress: bool = False,
) -> pl.DataFrame:
    """Run `prompt` (Jinja2 over df's columns) for every row of df; returns df with output and status columns.

    Same engine as `batchrun run`; `schema` is a JSON schema or a pydantic model class.
    """
    import tempfile

    from .jobs import parse_job

    if isinstance(schema, type):
        from openai.lib._pydantic import to_strict_json_schema

        schema = to_strict_json_schema(schema)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="batchrun-map-") as tmp:
        tmpdir = Path(tmp)
        df.write_parquet(tmpdir / "input.parquet")
        request: dict[str, Any] = {"model": model, "kind": kind}
        if kind == "chat":
            request["max_tokens"] = max_tokens or 1024
        if temperature is not None:
            request["temperature"] = temperature
        data: dict[str, Any] = {
            "name": "map",
            "input": {"path": "input.parquet"},
            "prompt": {"template": prompt, **({"system": system} if system else {})},
            "request": request,
            "endpoint": {"api_key_env": api_key_env, **({"base_url": base_url} if base_url else {})},
            "limits": {
                "max_in_flight": max_in_flight,
                **({"rpm": rpm} if rpm else {}),
                **({"tpm": tpm} if tpm else {}),
            },
            "output": {"path": "output.parquet"},
        }
        if schema is not None:
            data["output_schema"] = {"name": "output", "schema": schema}
        job = parse_job(data, tmpdir / "map.toml")
        result = asyncio.run(run_async(job, progress=progress))
        return result.frame()
