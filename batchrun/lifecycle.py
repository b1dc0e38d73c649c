"""A run's lifecycle: the one owner of everything around the rows, for every kind of run.

    lock ─▶ signals ─▶ mode ─▶ input, endpoint, ledger ─▶ RunContext ─▶ executor ─▶ commit ─▶ summary
    (one run per       (TERM/   (auto:          (opened once)     (frozen)    online table,   (timer:   (ledger
     ledger, fcntl)     INT/HUP) plan or ledger)                               Batch API, or   100 ms)   runs row)
                                                                              document chains

Executors (`online`, `batch_run`, `book`) receive the context and never import this module;
what they return (a RunResult, and the error they stopped on) becomes the exit code here
and in the CLI (README: Exit codes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .checks import check_excel_rows, check_job_paths
from .context import (
    AuditLog,
    Committer,
    RayTarget,
    RunContext,
    Stopper,
    TableParts,
    accepted_statuses,
    job_budget,
    require_price,
)
from .endpoints import Endpoint, open_endpoint
from .errors import BatchrunError, BudgetExceeded, EndpointError, Interrupted, JobFileError, JobKeyIgnored
from .fingerprints import CachePolicy
from .jobs import Job
from .ledger import Ledger, adopt_legacy_ledger, legacy_ledger_path
from .limits import RateLimiter
from .locking import JobLock
from .pricing import price_table_for
from .results import RunResult
from .sinks import export_table

CacheMode = Literal["use", "refresh", "off"]
SIGNAL_NAMES = {signal.SIGINT: "Ctrl+C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How this invocation runs the job (the CLI's flags; the job file says what to run)."""

    progress: bool = False
    cache: CacheMode = "use"
    """"use": reuse answers in the ledger (resume); "refresh": send every row again, replacing them;
    "off": neither reuse nor keep answers (spend is still recorded)."""
    wait: bool = False
    """Batch mode: poll until the output is written, instead of one step."""
    start: bool = True
    """Batch mode: False for `collect` (move an existing batch run along; submit no new one)."""
    retry: frozenset[str] = frozenset()
    """Send rows again whose final answer has one of these statuses (`--retry failed,truncated`)."""
    accept: tuple[str, ...] = ()
    """More statuses that count as answered for the exit code (besides the job's [output] accept)."""
    wait_lock: float = 0.0
    """Seconds to wait for another run of the job to finish; 0: refuse at once."""
    over_budget: bool = False
    """Start even when the plan expects the budget to run out before the job is done (it then stops at it)."""
    started: float | None = None
    """time.monotonic() the run's wall time counts from (the CLI: its process start); default: now."""
    ray: bool = False
    """Send the requests from actors on a Ray cluster (`run --ray`); the ledger and output stay here."""
    ray_address: str | None = None
    """The cluster (`auto`, `ray://…`); None: the job's [ray] address, else a local Ray instance."""
    verbose: bool = False
    """Print each request as it is answered or fails (`run -v`): when, status, tokens, latency, error."""
    one_run: bool = False
    """The process exits after this run (the CLI): what the run will not use again is let go as it goes
    (the tokenizer, ~40 MB, once every row is counted). A library caller keeps it for its next run, which
    would otherwise build it again (~0.15 s)."""

    def __post_init__(self) -> None:
        if self.cache not in ("use", "refresh", "off"):
            raise ValueError(f"cache must be 'use', 'refresh' or 'off', not {self.cache!r}")


@contextlib.contextmanager
def signal_handlers(stopper: Stopper) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP stop the run through `stopper` (first: finish in flight; second:
    abandon it); never a traceback. Off the main thread (a notebook's worker) nothing is installed."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig, name in SIGNAL_NAMES.items():
        try:
            loop.add_signal_handler(sig, stopper.signal, int(sig), name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            break  # not the main thread: signals behave as usual
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def choose_mode(job: Job) -> tuple[str, str]:
    """The mode a job runs in, and why: its own, or for "auto" the plan's recommendation
    (a batch run already under way is always continued)."""
    if job.mode != "auto":
        return job.mode, f'mode = "{job.mode}"'
    if job.ledger_file.exists():
        from .batch_job import BatchJob

        if BatchJob.has_active_run(job.ledger_file):
            return "batch", "a batch run of this job is under way"
    from .plan import make_plan

    plan = make_plan(job)
    return plan.recommended_mode, plan.recommendation


def build_context(job: Job, endpoint: Endpoint, ledger: Ledger, options: RunOptions, stopper: Stopper) -> RunContext:
    """The per-run objects, once (runs in a thread: the price table and the ledger are files)."""
    table = price_table_for(job)
    if endpoint.local is not None:  # the embedded model runs on this machine: tokens counted, $0
        table = dataclasses.replace(table, local="all")
    price = table.lookup(job.request.model)
    if price is not None and endpoint.context_window is not None:  # what the server has, not the model's name
        price = dataclasses.replace(price, context_window=endpoint.context_window)
    audit = AuditLog(job.output.audit)
    if options.verbose:
        ledger.events.listener = _say_event
    cache = CachePolicy(
        read=options.cache == "use",
        write=options.cache != "off",
        max_output_tokens=job.request.max_output_tokens,
        retry=options.retry,
        since=time.time(),
    )
    return RunContext(
        job=job,
        endpoint=endpoint,
        price=price,
        price_for=functools.lru_cache(maxsize=64)(table.lookup),
        batch_discount=table.batch_discount,
        limiter=RateLimiter(job.limits.rpm, job.limits.tpm),
        ledger=ledger,
        cache=cache,
        budget=job_budget(job, price, ledger),
        audit=audit,
        committer=Committer(ledger, audit),
        stopper=stopper,
        progress=options.progress,
        accepted=accepted_statuses(job, options.accept),
        started=options.started if options.started is not None else time.monotonic(),
        ray=RayTarget(options.ray_address or job.ray.address) if options.ray else None,
        one_run=options.one_run,
    )


def _say_event(event: tuple[object, ...]) -> None:
    """`run -v`: one line per request, above the progress bar."""
    from tqdm import tqdm

    from .events import describe

    tqdm.write(describe(event), file=sys.stderr)


def process_started() -> float:
    """time.monotonic() at this process's start (Linux: /proc), so the wall time a run reports includes
    the interpreter's start-up and imports; elsewhere, now."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic()
    return time.monotonic() - max(age, 0.0)


async def run_job(job: Job, options: RunOptions | None = None, *, endpoint: Endpoint | None = None) -> RunResult:
    """Run a job (online, through the Batch API, or a document) under its lock; returns what it did.

    Raises the error the run stopped on (quota, budget, endpoint, a signal) with `.result` set to
    what it did before stopping; a run that finished with some rows unanswered returns normally
    (`result.exit_code` says so).
    """
    options = options or RunOptions()
    await asyncio.to_thread(check_job_paths, job)  # before the lock: its folder must be writable too
    lock = JobLock(job.ledger_file)
    await asyncio.to_thread(lock.acquire, options.wait_lock)
    try:
        notes: list[str] = []
        legacy = legacy_ledger_path(job.output_path)
        if job.output.ledger is None and await asyncio.to_thread(adopt_legacy_ledger, legacy, job.ledger_file):
            notes.append(f"the ledger moved from beside the output to {job.ledger_file} (it belongs to the job)")
        stopper = Stopper()
        with signal_handlers(stopper):
            result, error = await _run_locked(job, options, endpoint, stopper)
        result.notes[:0] = notes
    finally:
        lock.release()
    if error is not None:
        error.result = result  # type: ignore[attr-defined]
        raise error
    return result


async def _run_locked(
    job: Job, options: RunOptions, endpoint: Endpoint | None, stopper: Stopper
) -> tuple[RunResult, BatchrunError | None]:
    mode, why = ("online", "") if job.mode == "online" else await asyncio.to_thread(choose_mode, job)
    if options.ray and (mode != "online" or job.input.is_document):
        what = "a document job" if job.input.is_document else "a Batch API run (it needs no cluster)"
        raise JobFileError(job.source_path, "mode", f"--ray runs an online table job; this is {what}")
    if not options.start and mode != "batch":
        raise JobFileError(job.source_path, "mode", "`collect` moves a Batch API run along; this job runs online")
    for message in job.ignored_keys(mode):
        warnings.warn(f"{job.source_path or job.name}: {message}", JobKeyIgnored, stacklevel=1)
    from .sources import open_source

    source = None if job.input.is_document else await asyncio.to_thread(open_source, job.input)
    if source is not None:
        check_excel_rows(job, source.rows)
    if job.budget.max_usd is not None and not options.over_budget and options.start and options.cache == "use":
        await asyncio.to_thread(_check_budget, job, source)
    own_endpoint = endpoint is None
    endpoint = endpoint or await asyncio.to_thread(open_endpoint, job)
    try:
        if endpoint.banner:
            stopper.say(endpoint.banner)
        ledger = await asyncio.to_thread(
            Ledger, job.ledger_file, job=job.name, max_output_tokens=job.request.max_output_tokens
        )
        try:
            ctx = await asyncio.to_thread(build_context, job, endpoint, ledger, options, stopper)
            await asyncio.to_thread(ledger.start_run)
            try:
                async with asyncio.TaskGroup() as tg:
                    timer = tg.create_task(ctx.committer.timer())
                    marks = tg.create_task(ctx.marks())
                    try:
                        result, error = await _execute(ctx, mode, why, source, options)
                    finally:
                        timer.cancel()
                        marks.cancel()
            except BaseExceptionGroup as group:
                raise _single(group) from None
            await ctx.committer.commit()
            result.table_path = job.table_path
            if result.waiting is None and job.output_format != "parquet" and job.table_path.exists():
                await asyncio.to_thread(export_table, job.table_path, job.output_path, job.output_format or "")
            await asyncio.to_thread(ledger.finish_run, result.rows, result.summary())
            if job.output.report:
                result.report_path = await asyncio.to_thread(_write_report, job, ledger.path, ledger.run_id)
        finally:
            await asyncio.to_thread(ledger.close)
    finally:
        if own_endpoint:
            await endpoint.close()
    error = error or stopper.error
    if isinstance(error, Interrupted) and result.waiting is None and not result.by_status.get("not_sent"):
        # the signal came after every row was done: the run is complete, and its exit code says so
        result.stopped = None
        result.notes.append(f"{str(error).split(';')[0]} after every row was done: nothing was left unsent")
        error = None
    return result, error


def _check_budget(job: Job, source: object) -> None:
    """Refuse a run the budget cannot finish on the plan's expected cost (one planning pass over the input)."""
    from .plan import make_plan
    from .sources import Source

    require_price(job, price_table_for(job).lookup(job.request.model))
    plan = make_plan(job, source if isinstance(source, Source) else None)
    if plan.over_budget:
        raise BudgetExceeded(
            f"the plan expects ${plan.finish_cost_expected or 0:,.4f} to finish {plan.finish_rows:,} row(s), but "
            f"budget.max_usd ${plan.budget_usd or 0:,.4f} has ${plan.budget_left or 0:,.4f} left "
            f"(${plan.spent_usd:,.4f} spent). Nothing was sent. Raise the budget, or pass --over-budget to run "
            "until it is reached (finished rows are kept)"
        )


def _write_report(job: Job, ledger: Path, run_id: int | None) -> Path | None:
    """The HTML run report beside the output. A report that cannot be written is a warning: the run's
    answers, output and exit code stand without it."""
    from .report import write_report

    try:
        return write_report(job, ledger_path=ledger, run_id=run_id)
    except Exception as exc:  # any failure here must not cost the run its answers or exit code
        warnings.warn(f"the run report was not written: {exc}", RuntimeWarning, stacklevel=1)
        return None


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one error inside task-group wrapping (a user or run error raised by an executor), so callers
    see a BatchrunError, not an ExceptionGroup; a real group of several errors stays as it is."""
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]  # type: ignore[assignment]
    return group


async def _execute(
    ctx: RunContext, mode: str, why: str, source: object, options: RunOptions
) -> tuple[RunResult, BatchrunError | None]:
    """Drive the executor for `mode`; (what it did, the error it stopped on)."""
    from .sources import Source

    job = ctx.job
    auto_note: str | None = None
    if source is None:
        from .book import run_document

        return await run_document(ctx)
    assert isinstance(source, Source)
    parts = await asyncio.to_thread(TableParts.build, ctx, source)
    if mode == "batch":
        from .batch_run import drive_batch

        auto_note = f'mode "auto" chose the Batch API: {why}' if job.mode == "auto" else None
        try:
            result, bj = await drive_batch(ctx, parts, wait=options.wait, start=options.start)
        except EndpointError as exc:
            if job.mode != "auto" or "no Batch API" not in str(exc):
                raise
            auto_note = f'mode "auto" ran online: {exc}'
        else:
            if bj.go_online:  # the deadline is near: the rest goes online, in this same run
                online = await _online(ctx, parts)
                await bj.finish_online()
                online[0].notes[:0] = result.notes
                return dataclasses.replace(online[0], mode="batch → online"), online[1]
            if auto_note:
                result.notes.insert(0, auto_note)
            return result, None
    elif job.mode == "auto":
        auto_note = f'mode "auto" chose online: {why}'
    result, error = await _online(ctx, parts)
    if auto_note:
        result.notes.insert(0, auto_note)
    return result, error


async def _online(ctx: RunContext, parts: TableParts) -> tuple[RunResult, BatchrunError | None]:
    from .online import OnlineRun

    state = await asyncio.to_thread(OnlineRun, ctx, parts)
    result = await state.run()
    return result, state.engine.stop_error


async def cancel_job(job: Job, *, wait_lock: float = 0.0) -> str:
    """`batchrun cancel`: under the job's lock, cancel its pending batches and keep what they finished."""
    from .batch_run import cancel_batches
    from .sources import open_source

    lock = JobLock(job.ledger_file)
    await asyncio.to_thread(lock.acquire, wait_lock)
    try:
        source = await asyncio.to_thread(open_source, job.input)
        endpoint = await asyncio.to_thread(open_endpoint, job)
        try:
            ledger = await asyncio.to_thread(Ledger, job.ledger_file, job=job.name)
            try:
                ctx = await asyncio.to_thread(build_context, job, endpoint, ledger, RunOptions(), Stopper())
                parts = await asyncio.to_thread(TableParts.build, ctx, source)
                return await cancel_batches(ctx, parts)
            finally:
                await asyncio.to_thread(ledger.close)
        finally:
            await endpoint.close()
    finally:
        lock.release()
