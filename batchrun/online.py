"""The online executor for table jobs: source → renderer → engine → Parquet, in input order.

Driven by the lifecycle (which owns the lock, ledger, budget, signals, commits and
summary): this module only turns rows into work for the engine and results into
output rows. Three stages in one task group:

    producer (read, render, fingerprint, ledger lookup — in threads)
      → engine (limiter, send, retries)
      → writer (reorder, Parquet row groups — in a thread)
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from .context import RunContext, TableParts
from .engine import EngineOptions, RunStats, WorkItem
from .ledger import COMMIT_ROWS, FINAL_STATUSES
from .prefixes import CACHE_MIN_TOKENS, CacheKeys, group_of, key_template, order, prompt_text
from .prompts import Request
from .replies import ReplyParser
from .results import RunResult
from .sinks import ParquetSink, ReorderBuffer, RowResult, embedding_dims, empty_result
from .sizing import embedding_groups, inputs_per_request, too_long_reason

if TYPE_CHECKING:
    import polars as pl

HOLD_ROWS = 500
"""Output rows handed to the sink's thread at a time, to become Arrow columns (ParquetSink.hold)."""
FIRST_ROWS = 100
"""Rows of the first input batch rendered, looked up and counted on their own, so the first requests go
out before the rest of the batch (5,000 rows: ~0.1 s of a run's start) is ready. Cache order groups
these rows among themselves: a prefix they share with later rows is cached by the time those are sent."""


def _first_rows_apart(batches: Iterator[pl.DataFrame], first: int) -> Iterator[tuple[pl.DataFrame, bool]]:
    """The input's batches, the first `first` rows as a batch of their own, each with whether it is the
    last: the next batch is read before a batch is handed on (the first rows' excepted, so they are not
    kept waiting for it), so the run knows when it has counted its last row (release_tokenizers)."""
    head = next(batches, None)
    if head is None:
        return
    if head.height > first:
        yield head.slice(0, first), False
        head = head.slice(first)
    for batch in batches:
        yield head, False
        head = batch
    yield head, True


def _an_answer(result: RowResult) -> bool:
    """Whether an identical row's result answers this one too (a failure is shared, but is no answer)."""
    return result.status in FINAL_STATUSES and result.status != "failed" and not result.retryable


def _work_item(group: list[tuple[int, Request]]) -> WorkItem:
    return WorkItem(tuple(seq for seq, _ in group), tuple(req for _, req in group))


class OnlineRun:
    """The state of one online table run, shared by its producer, engine and writer."""

    def __init__(self, ctx: RunContext, parts: TableParts) -> None:
        job = ctx.job
        self.ctx = ctx
        self.job = job
        self.inputs_per_request = inputs_per_request(job)
        self.source = parts.source
        self.renderer = parts.renderer
        self.input_columns, self.layout = parts.input_columns, parts.layout
        self.ledger = ctx.ledger
        self.cache = ctx.cache
        per_item = 2048 if job.request.kind == "embeddings" else 1
        self.options = EngineOptions(
            max_in_flight=job.limits.max_in_flight,
            max_attempts=job.limits.max_attempts,
            retry_bad_replies=job.request.retry_bad_replies,
            window=max(20_000, 4 * job.limits.max_in_flight * per_item),
            fail_fast_rows=job.limits.fail_fast_rows,
        )
        self.results: asyncio.Queue[tuple[int, RowResult] | None] = asyncio.Queue()
        self.engine = ctx.engine(
            kind=job.request.kind,
            parser=ReplyParser(job.schema_strict, job.request.max_output_tokens),
            options=self.options,
            on_result=self._on_result,
            embedding_dims=embedding_dims(job.request.model, job.request.dimensions)
            if job.request.kind == "embeddings"
            else None,
        )
        self.endpoint_key = ctx.endpoint_key
        self.fingerprinter = parts.fingerprinter
        self.fps: dict[int, str] = {}  # seq → fingerprint, for requests sent in this run
        self.in_flight: set[str] = set()
        self.followers: dict[str, list[tuple[int, Request]]] = {}
        # results recorded in this run and not yet seen by a ledger lookup: committed ones are dropped
        # only when the producer looks the next input batch up in the ledger, so an identical row
        # whose lookup came before the commit still finds its answer here (and is not sent twice)
        self.recent: dict[str, RowResult] = {}
        # rows sent again (--refresh, --retry, a changed max_tokens) whose earlier answer is kept in
        # case this run stops before a new one comes: a stopped run never leaves a row worse off
        self.earlier: dict[int, RowResult] = {}
        if job.request.dimensions:
            self.engine.embedding_extra["dimensions"] = job.request.dimensions
        self.window = asyncio.Semaphore(self.options.window)
        template = key_template(job.request.prompt_cache_key, job.endpoint.openai_like)
        self.cache_keys = CacheKeys(template, job.name) if template and job.request.kind == "chat" else None
        self.key_of: dict[int, tuple[str, int]] = {}  # seq → (prefix group, key index) of requests sent keyed
        self.inputs: dict[int, dict[str, Any]] = {}
        self.total = parts.source.rows  # counted when the input was checked: no second scan
        self.bar = ctx.bar(self.total, "row")

    def _on_result(self, seq: int, result: RowResult) -> None:
        """A sent request's result: into the ledger, then out to this row and any identical rows."""
        before = self.earlier.pop(seq, None)
        if self.cache_keys is not None and (keyed := self.key_of.pop(seq, None)) is not None:
            self.cache_keys.answered(*keyed)  # the key is warm: the provider has its prefix now
        if before is not None and result.status == "not_sent":
            result = dataclasses.replace(before, row=result.row, row_id=result.row_id)
        self.results.put_nowait((seq, result))
        fp = self.fps.pop(seq, None)
        if fp is None:
            return
        self.in_flight.discard(fp)
        if result.status in FINAL_STATUSES and not result.retryable:
            if self.cache.write:
                self.ledger.record(fp, result, self.endpoint_key)
            self.recent[fp] = result
        for f_seq, f_req in self.followers.pop(fp, []):
            self._emit_direct(
                f_seq,
                dataclasses.replace(result, row=f_req.row, row_id=f_req.row_id, from_cache=_an_answer(result)),
            )

    def _emit_direct(self, seq: int, result: RowResult) -> None:
        self.engine.stats.add(result)
        self.results.put_nowait((seq, result))

    def _lookup(self, fps: list[str]) -> tuple[dict[str, RowResult], dict[str, RowResult]]:
        """(answers this run reuses, earlier answers it sends again) — in a thread."""
        if not self.cache.write and not self.cache.read:
            return {}, {}  # --no-cache: the ledger keeps only this run's spend
        earlier: dict[str, RowResult] = {}
        cached = self.ledger.lookup(fps, policy=self.cache, rejected=earlier)
        return cached, earlier

    async def items(self) -> AsyncIterator[WorkItem]:
        """Rows rendered and counted in a worker thread, in input order, as work items."""
        it = iter(self.source.batches(5000))
        it = _first_rows_apart(it, FIRST_ROWS)
        seq = 0
        cols = self.input_columns
        committer = self.ctx.committer
        # embedding rows wait here until they fill a request; the last, partial group is carried
        # into the next batch so requests are grouped exactly as `plan` counted them
        todo: list[tuple[int, Request]] = []
        ready: list[WorkItem] = []  # chat requests of this batch, sent once it is rendered
        while (got := await asyncio.to_thread(next, it, None)) is not None:
            batch, last = got
            positions, ids, texts = await asyncio.to_thread(self.renderer.texts, batch)
            empty = await asyncio.to_thread(self.renderer.empty, batch, texts)
            inputs = await asyncio.to_thread(lambda b=batch: b.select(cols).to_dicts())
            fps = await asyncio.to_thread(lambda t=texts: [self.fingerprinter.of(x) for x in t])
            done, committer.committed = committer.committed, []
            cached, earlier = await asyncio.to_thread(self._lookup, fps)
            for fp in done:  # committed before this lookup: the ledger answers for them now
                self.recent.pop(fp, None)
            # tokens are counted only for rows that may be sent: a resumed run skips the rest
            misses = [i for i, fp in enumerate(fps) if fp not in cached and not empty[i]]
            fresh = await asyncio.to_thread(
                self.renderer.requests,
                [positions[i] for i in misses],
                [ids[i] for i in misses],
                [texts[i] for i in misses],
            )
            by_index = dict(zip(misses, fresh, strict=True))
            if last and self.ctx.one_run:  # every row is counted (a retry keeps its count): the tokenizer's
                # ~40 MB go before the last row group and the report, the run's peak
                await asyncio.to_thread(self.renderer.release_tokenizers)
            for i, (row_inputs, fp) in enumerate(zip(inputs, fps, strict=True)):
                await self.window.acquire()
                self.inputs[seq] = row_inputs
                if empty[i]:  # nothing to ask: never sent, never paid
                    self._emit_direct(seq, empty_result(positions[i], ids[i]))
                    seq += 1
                    continue
                hit = cached.get(fp)
                if hit is None and fp in self.recent:
                    hit = dataclasses.replace(self.recent[fp], from_cache=True)
                if hit is not None:  # answered before: the row's own columns come from its input
                    self._emit_direct(seq, hit)
                    seq += 1
                    continue
                req = by_index[i]
                before = earlier.get(fp)
                if fp in self.in_flight:  # an identical request is already on its way: share its answer
                    self.followers.setdefault(fp, []).append((seq, req))
                    seq += 1
                    continue
                reason = too_long_reason(self.job, req, self.ctx.context_window, self.engine.limiter.limits[1])
                if self.engine.stopped.is_set():
                    if before is not None:  # the earlier answer stands: this run did not replace it
                        self._emit_direct(seq, dataclasses.replace(before, row=req.row, row_id=req.row_id))
                    else:
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
                else:
                    self.fps[seq] = fp
                    self.in_flight.add(fp)
                    if before is not None:
                        self.earlier[seq] = dataclasses.replace(before, from_cache=True)
                    if self.job.request.kind == "chat":
                        ready.append(WorkItem((seq,), (req,)))
                    else:
                        todo.append((seq, req))
                seq += 1
            for item, group in self._for_cache(ready):
                yield await self._keyed(item, group)
            ready = []
            groups = embedding_groups(todo, lambda pair: pair[1].prompt_tokens, self.inputs_per_request)
            todo = groups.pop() if groups else []
            for group in groups:
                yield _work_item(group)
        if todo:
            yield _work_item(todo)

    def _for_cache(self, items: list[WorkItem]) -> list[tuple[WorkItem, str | None]]:
        """A batch's chat requests in the order the prompt cache likes (prefixes.py): requests sharing
        a prompt prefix together, each with its group. Only prompts long enough to be cached have one."""
        if not (self.job.request.cache_order or self.cache_keys):
            return [(item, None) for item in items]
        groups: dict[int, str] = {}
        for item in items:
            req = item.requests[0]
            if req.prompt_tokens >= CACHE_MIN_TOKENS:
                groups[item.seqs[0]] = group_of(req.model or self.job.request.model, prompt_text(req.body))
        if groups and self.job.request.cache_order:
            items = order(items, lambda item: groups.get(item.seqs[0]))
        return [(item, groups.get(item.seqs[0])) for item in items]

    async def _keyed(self, item: WorkItem, group: str | None) -> WorkItem:
        """The item with its group's prompt_cache_key, taken as it goes to the engine (a key's first
        request goes alone: see prefixes.CacheKeys). The key is in the body only, never in the
        fingerprint."""
        if group is None or self.cache_keys is None:
            return item
        key, index = await self.cache_keys.take(group, self.engine.stopped)
        self.key_of[item.seqs[0]] = (group, index)
        req = item.requests[0]
        return WorkItem(item.seqs, (dataclasses.replace(req, body={**req.body, "prompt_cache_key": key}),))

    async def writer(self, sink: ParquetSink) -> None:
        """Results into output rows in input order; the bar moves per row, its figures a few times a second."""
        reorder = ReorderBuffer()
        pending: list[dict[str, Any]] = []
        last_postfix = 0.0
        stats = self.engine.stats
        ledger = self.ledger
        while (got := await self.results.get()) is not None:
            seq, result = got
            self.bar.update(1)  # a row is done when its answer arrives, whatever order it is written in
            for res_seq, res in reorder.add(seq, result):
                pending.append(self.layout.record(self.inputs.pop(res_seq), res))
                self.window.release()
            if len(ledger.pending) >= COMMIT_ROWS:
                await self.ctx.committer.commit()
            if len(pending) >= min(HOLD_ROWS, sink.row_group_size):
                await asyncio.to_thread(sink.hold, pending)
                pending = []
            now = time.monotonic()
            if now - last_postfix > 0.5:
                last_postfix = now
                self._postfix(stats, now)
        await self.ctx.committer.commit()
        await asyncio.to_thread(sink.write, pending)  # with the rows held: the last row group
        stats.reorder_peak = reorder.peak
        self._postfix(stats, time.monotonic())

    def _postfix(self, stats: RunStats, now: float) -> None:
        failed = sum(n for k, n in stats.by_status.items() if k not in self.ctx.accepted)
        tpm_limit = self.engine.limiter.limits[1]
        tpm_now = stats.tokens_last_minute(now)
        self.bar.set_postfix_str(
            f"ok {stats.by_status.get('ok', 0):,} not-ok {failed:,} | "
            f"{tpm_now:,} tok/min" + (f" of {tpm_limit:,}" if tpm_limit else "") + f" | ${stats.cost_usd:,.4f}",
            refresh=False,
        )

    async def run(self) -> RunResult:
        sink = await asyncio.to_thread(ParquetSink, self.job.table_path, self.layout, self.job.output.row_group_size)
        ok = False
        try:
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
            # whatever happened, what was paid for is committed before we leave
            await self.ctx.committer.commit()
            await asyncio.to_thread(sink.close if ok else sink.abort)
        return self._result()

    def _result(self) -> RunResult:
        stats = self.engine.stats
        notes = list(self.engine.notes)
        if self.ctx.endpoint.local is not None:
            local = self.ctx.endpoint.local
            notes.append(f"embedded local model {local.name} ({local.slots} slots): real answers, nothing billed")
        if self.ctx.endpoint.simulated:
            notes.append(
                "simulated endpoint: replies are synthetic, nothing was billed; set the API key to run for real"
            )
        return self.ctx.engine_result(
            self.engine,
            by_status=dict(stats.by_status),
            cached_rows=stats.cached_rows,
            cached_usd=stats.cached_usd,
            notes=notes,
        )
