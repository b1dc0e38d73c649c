"""A job through the OpenAI Batch API, one invocation at a time: tick the job's state machine
(`batch_job.BatchJob`) once, or until done with `--wait`, and say where it stands; and
`batchrun cancel`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import replace

from .batch_book import ShardRecord
from .batch_job import BatchJob
from .batch_results import Tally
from .context import RunContext, TableParts
from .results import RunResult


def _state_line(shards: tuple[ShardRecord, ...]) -> str:
    by: dict[str, int] = {}
    for s in shards:
        key = s.batch_status if s.state == "submitted" and s.batch_status else s.state
        by[key] = by.get(key, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(by.items()))


async def drive_batch(ctx: RunContext, parts: TableParts, *, wait: bool, start: bool) -> tuple[RunResult, BatchJob]:
    """One invocation of a batch job: tick once (or, with `wait`, until done or a signal).

    `start=False` (the `collect` command) only moves an existing batch run along. When the
    returned job has `go_online`, the lifecycle sends the rest online and calls `finish_online`.
    """
    job = ctx.job
    notes: list[str] = []
    if ctx.endpoint.sim is not None:
        # the in-process simulator ends with this process, so its batches cannot outlive it; and
        # it finishes them in seconds, so polling every 30 s would only make the demo slow
        wait = True
        fast = {"poll_seconds": min(job.batch.poll_seconds, 0.5), "poll_max_seconds": 2.0}
        job = job.model_copy(update={"batch": job.batch.model_copy(update=fast)})
        ctx = replace(ctx, job=job)
        notes.append("simulated endpoint: waited for the batches (the simulator stops when batchrun exits)")
    bj = BatchJob(ctx, parts)
    bar = None
    stop = ctx.stopper.requested
    try:
        run = await bj.open(start=start)
        if run is None:
            last = await bj._db(bj.book.last_run, bj.job_key)
            waiting = "nothing to collect: no batch run is under way for this job" + (
                f" (the last one ended: {last.state})" if last else "; start one with `batchrun run`"
            )
            result = RunResult.empty(job, waiting=waiting, simulated=ctx.endpoint.simulated, notes=notes)
            return dataclasses.replace(result, accepted=ctx.accepted), bj
        delay = job.batch.poll_seconds
        last_finished = -1
        while True:
            report = await bj.tick()
            notes.extend(n for n in report.notes if n not in notes)
            if ctx.progress and bar is None and wait and not report.done:
                bar = ctx.bar(report.lines_total, "req")
            if bar is not None:
                bar.total = report.lines_total
                bar.n = report.lines_finished
                bar.set_postfix_str(_state_line(report.shards), refresh=True)
            if report.done or not wait or stop.is_set():
                break
            if report.lines_finished != last_finished:
                last_finished, delay = report.lines_finished, job.batch.poll_seconds
            else:
                delay = min(delay * 1.5, job.batch.poll_max_seconds)
            with contextlib.suppress(TimeoutError):  # a signal ends the wait at once
                await asyncio.wait_for(stop.wait(), delay)
    finally:
        if bar is not None:
            bar.close()
    wall = time.monotonic() - ctx.started
    shards = report.shards
    batch_ids = [s.batch_id for s in shards if s.batch_id]
    if bj.go_online:
        return dataclasses.replace(RunResult.empty(job, waiting="", simulated=False, notes=notes)), bj
    if not report.done:
        waiting = (
            f"{len(shards)} shard(s) of {report.lines_total:,} requests: {_state_line(shards)}. "
            f"Run `batchrun collect {job.source_path}` (or the same `batchrun run`) later to collect; "
            "add --wait to wait here."
        )
        result = RunResult.empty(
            job, waiting=waiting, simulated=ctx.endpoint.simulated, notes=notes, batch_ids=batch_ids
        )
        return dataclasses.replace(result, accepted=ctx.accepted), bj
    tally: Tally = bj.tally
    return RunResult(
        job=job.name,
        output_path=job.output_path,
        rows=tally.rows,
        by_status=tally.by_status,
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        cost_usd=tally.cost_usd,
        price_known=bj.price is not None,
        latency_p50_ms=None,
        latency_p95_ms=None,
        latency_max_ms=None,
        requests_sent=sum(s.lines for s in shards),
        rate_limited=0,
        retries=sum(s.lines for s in shards if s.round > 1),
        wall_seconds=wall,
        minimum_seconds=0.0,
        limits=(None, None),
        simulated=ctx.endpoint.simulated,
        cached_rows=tally.cached_rows,
        cached_usd=tally.cached_usd,
        ledger_path=bj.ledger.path,
        notes=notes,
        mode="batch",
        batch_ids=batch_ids,
        accepted=ctx.accepted,
    ), bj


async def cancel_batches(ctx: RunContext, parts: TableParts) -> str:
    """`batchrun cancel`: cancel the job's pending batches, collect what they finished, write the output."""
    job = ctx.job
    bj = BatchJob(ctx, parts)
    run = await bj.open(start=False)
    if run is None:
        return f"{job.name}: no batch run under way; nothing to cancel"
    n = await bj.cancel_all(wait=True)
    await bj._write_output()
    await bj._db(bj.book.finish_run, run.id, "cancelled", "cancelled by `batchrun cancel`")
    t: Tally = bj.tally
    done = "   ".join(f"{k} {v:,}" for k, v in sorted(t.by_status.items()))
    return (
        f"{job.name}: {n} batch(es) cancelled; what they finished is kept.\n"
        f"  output {job.output_path}: {t.rows:,} rows   {done}\n"
        "  `batchrun run` sends the rows without an answer again (finished ones are not paid twice)"
    )
