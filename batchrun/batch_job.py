"""A job's Batch API state machine: shard, upload, submit, poll, collect, resubmit, write.

Every invocation (`batchrun run`, the next cron tick, `batchrun collect`) does one
"tick" or, with `--wait`, ticks until the job is done:

    recover   steps a crash left half-done are found on the server, never redone blindly
    poll      each submitted batch is read; finished ones are collected into the ledger
    submit    written shards are uploaded and submitted while the enqueued-token queue has room
    reshard   when nothing is outstanding, requests still without a final answer (expired,
              cancelled, failed lines worth retrying) go into the next round of shards
    write     when no request is left, the Parquet output is written from the ledger, in input order

The ledger is the only state: shards and their steps (`BatchBook`), and results by
fingerprint — the same results table, statuses and columns as an online run, so an
online run and a batch run of one job write the same file. A request's custom_id
is its fingerprint: identical rows are sent once, and a line maps back to its
answer whatever order the output file is in.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import failpoints
from .batch_api import PENDING, BatchClient, BatchInfo
from .batch_book import BatchBook, BatchRunRecord, ShardRecord
from .batch_results import ResultsMixin
from .context import RunContext, TableParts
from .errors import BudgetExceeded, EndpointError, JobFileError
from .fingerprints import OUTPUT_LIMIT_KEYS, CachePolicy, Fingerprinter
from .ledger import Ledger
from .prompts import Request
from .replies import ReplyParser
from .rows import RowResult
from .shards import CHAT_URL, EMBEDDINGS_URL, LineTooLarge, Shard, ShardLimits, ShardLine, ShardWriter

OUTSTANDING = frozenset({"written", "uploading", "uploaded", "creating", "submitted"})


@dataclass(frozen=True, slots=True)
class TickReport:
    """Where a batch job stands after a tick."""

    done: bool
    shards: tuple[ShardRecord, ...]
    lines_total: int
    lines_finished: int
    notes: tuple[str, ...] = ()


class BatchJob(ResultsMixin):
    """One job's Batch API state machine, driven tick by tick."""

    def __init__(self, ctx: RunContext, parts: TableParts) -> None:
        job = ctx.job
        if not ctx.cache.write:
            raise JobFileError(
                job.source_path,
                "mode",
                "batch mode keeps its state (shards, batch ids, results) in the ledger; --no-cache is for "
                "online runs only (use --refresh to send every row again)",
            )
        self.ctx = ctx
        self.job = job
        self.source = parts.source
        self.endpoint = ctx.endpoint
        self.echo = ctx.stopper.say
        self.renderer = parts.renderer
        self.price = ctx.price
        self.discount = ctx.batch_discount
        self.context = ctx.context_window
        self.input_columns, self.layout = parts.input_columns, parts.layout
        self.parser = ReplyParser(job.schema_strict, job.request.max_output_tokens)
        self.endpoint_key = ctx.endpoint_key
        self.fingerprinter = parts.fingerprinter
        self.ledger = ctx.ledger
        self.book = BatchBook(self.ledger)
        self.api = BatchClient(ctx.endpoint.client)
        self.url = EMBEDDINGS_URL if job.request.kind == "embeddings" else CHAT_URL
        self.limits = ShardLimits.for_job(job)
        # one key per job: the tag that finds this job's batches on the server again (the output path
        # is not part of it, so `-o elsewhere` continues the same batch run)
        self.job_key = hashlib.blake2b(self.fingerprinter.prefix + job.name.encode(), digest_size=8).hexdigest()
        legacy = Fingerprinter(self.endpoint_key, job.request.kind, self._constant(), legacy=True)
        self.legacy_key = hashlib.blake2b(legacy.prefix + str(job.output_path).encode(), digest_size=8).hexdigest()
        self.work_dir = job.output_path.with_name(job.output_path.name + ".shards")
        self.run: BatchRunRecord | None = None
        self.held_for_queue = False
        self.go_online = False

    def _constant(self) -> dict[str, Any]:
        """What versions before 0.2 hashed into a job's batch key (to find their runs after an upgrade)."""
        r = self.renderer
        if r.kind == "embeddings":
            constant: dict[str, Any] = {"model": self.endpoint.model}
            if self.job.request.dimensions:
                constant["dimensions"] = self.job.request.dimensions
            return constant
        return {**r.params, "model": self.endpoint.model, "messages": r.fixed_messages}

    def policy(self) -> CachePolicy:
        """The run's cache policy, with "this run" reaching back to the batch run's start (it spans
        several invocations, and what it collected is its own)."""
        started = self.run.started_at if self.run is not None else self.ctx.cache.since
        return replace(self.ctx.cache, since=min(started, self.ctx.cache.since))

    @staticmethod
    def has_active_run(ledger_file: Path) -> bool:
        """Whether the ledger holds an unfinished batch run (of any job sharing it)."""
        ledger = Ledger(ledger_file)
        try:
            return ledger.db.execute("SELECT 1 FROM batch_runs WHERE state = 'active' LIMIT 1").fetchone() is not None
        finally:
            ledger.close()

    async def _db(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kw)

    # -- one tick ------------------------------------------------------------------------------

    async def open(self, *, start: bool) -> BatchRunRecord | None:
        """The job's active batch run; a new one if `start` and there is none."""
        run = await self._db(self.book.active_run, self.job_key)
        if run is None:
            old = await self._db(self.book.active_run, self.legacy_key)
            if old is not None:  # started by an earlier version: adopted under the new key
                await self._db(self.book.update_run, old.id, job_key=self.job_key)
                run = await self._db(self.book.active_run, self.job_key)
        if run is None and start:
            await self.api.probe()  # a server without a Batch API is refused before anything is written
            run = await self._db(self.book.start_run, self.job_key)
        if run is not None and run.sharding:
            # killed while writing shards: none of that pass was uploaded; write it again
            for dropped in await self._db(self.book.drop_unfinished_sharding, run.id):
                Path(dropped.path).unlink(missing_ok=True)
            await self._db(self.book.update_run, run.id, sharding=0)
            run = await self._db(self.book.active_run, self.job_key)
        self.run = run
        return run

    async def tick(self) -> TickReport:
        """Recover, poll and collect, submit, reshard, and write the output when nothing is left."""
        assert self.run is not None
        run = self.run
        notes: list[str] = []
        for shard in await self._db(self.book.shards, run.id):
            if shard.state in ("uploading", "creating"):
                await self._recover(shard)
            elif shard.state == "submitted":
                await self._poll(shard)
        if self._fallback_due():
            return await self._go_online(notes)
        await self._submit_ready()
        shards = await self._db(self.book.shards, run.id)
        if not any(s.state in OUTSTANDING for s in shards):
            if run.round > 0 and self._fallback_due(new_round=True):
                return await self._go_online(notes)
            written = await self._reshard()
            if written:
                await self._submit_ready()
            else:
                await self._write_output()
                await self._db(self.book.finish_run, run.id, "done")
                shards = await self._db(self.book.shards, run.id)
                return self._report(True, shards, notes)
            shards = await self._db(self.book.shards, run.id)
        return self._report(False, shards, notes)

    def _report(self, done: bool, shards: list[ShardRecord], notes: list[str]) -> TickReport:
        for note in self.api.notes:  # said once, when it happens, and kept for the summary
            if note not in notes:
                self.echo(f"batchrun: note: {note}")
                notes.append(note)
        self.api.notes.clear()
        current = [s for s in shards if s.round == max((x.round for x in shards), default=0)]
        total = sum(s.lines for s in current)
        finished = sum(s.lines if s.state == "collected" else s.completed + s.failed for s in current)
        return TickReport(done, tuple(shards), total, finished, tuple(notes))

    # -- recovering after a crash ----------------------------------------------------------------

    def _tags(self, shard: ShardRecord) -> dict[str, str]:
        return {
            "batchrun_job": self.job_key,
            "batchrun_shard": f"{shard.run_id}.{shard.round}.{shard.number}",
            "batchrun_submit": str(shard.submits + 1),
            "batchrun_name": self.job.name[:500],
        }

    async def _recover(self, shard: ShardRecord) -> None:
        """A step was recorded as started but not as done: ask the server whether it happened."""
        if shard.state == "uploading":
            file_id = await self.api.find_file(shard.filename, shard.bytes)
            if file_id is not None:
                await self._db(self.book.update_shard, shard.id, state="uploaded", file_id=file_id)
            else:
                if self.api.can_list_files is False:
                    self.api.orphan(shard.filename)  # killed mid-upload: it may be there, it cannot be found
                await self._db(self.book.update_shard, shard.id, state="written")
            return
        tags = self._tags(shard)
        wanted = {k: tags[k] for k in ("batchrun_job", "batchrun_shard", "batchrun_submit")}
        info = await self.api.find_batch(wanted, since=shard.updated_at)
        if info is not None:
            await self._submitted(shard, info)
        else:
            if self.api.can_list_batches is False:
                self.api.unverified_batch(wanted)  # killed mid-create: created again, and said
            await self._db(self.book.update_shard, shard.id, state="uploaded")

    # -- submitting ------------------------------------------------------------------------------

    def _worst_usd(self, shard: ShardRecord) -> float:
        """A shard's worst case at the batch price (with rows naming their own models: the dearest)."""
        prices = [self.price, *(self.ctx.price_for(m) for m in sorted(self.renderer.row_models))]
        out = shard.lines * (self.job.request.max_output_tokens or 0)
        return max((p.cost(shard.tokens, out, discount=self.discount) for p in prices if p is not None), default=0.0)

    async def _submit_ready(self) -> None:
        """Upload and submit written shards, in order, while the model's queue and the budget allow."""
        assert self.run is not None
        shards = await self._db(self.book.shards, self.run.id)
        queued = sum(s.tokens for s in shards if s.state == "submitted" and s.batch_status in PENDING)
        limit = self.limits.max_tokens
        budget = self.job.budget.max_usd
        committed = 0.0
        if budget is not None:
            if self.price is None:
                raise JobFileError(
                    self.job.source_path,
                    "budget.max_usd",
                    f"no price is known for {self.job.request.model!r}, so a budget cannot be enforced; "
                    "add its price under [pricing.models] or remove the budget",
                )
            spent = await self._db(self.ledger.spent)  # this job's spend record
            committed = spent + sum(self._worst_usd(s) for s in shards if s.state == "submitted")
        for shard in shards:
            if shard.state not in ("written", "uploaded"):
                continue
            if limit is not None and queued + shard.tokens > limit and queued > 0:
                self.held_for_queue = True
                return  # the queue frees up as batches finish; the next tick tries again
            if self.held_for_queue and queued > 0:
                return  # the server said the queue is full: wait for one of ours to finish first
            if budget is not None and not self.endpoint.simulated:
                worst = self._worst_usd(shard)
                if committed + worst > budget:
                    raise BudgetExceeded(
                        f"submitting shard {shard.number} (worst case ${worst:,.4f} at the batch price) would pass "
                        f"budget.max_usd ${budget:,.2f} (${committed:,.4f} spent or committed); raise the budget "
                        "and run again: submitted batches are kept and collected"
                    )
                committed += worst
            if shard.state == "written":
                shard = await self._upload(shard)
            shard = await self._create(shard)
            queued += shard.tokens

    async def _upload(self, shard: ShardRecord) -> ShardRecord:
        path = Path(shard.path)
        if not path.exists():
            raise EndpointError(
                f"shard file {path} is gone before it was uploaded; delete {self.ledger.path} to start over"
            )
        await self._db(self.book.update_shard, shard.id, state="uploading")
        file_id = await self.api.upload(path, shard.bytes)
        failpoints.reached("upload")
        return await self._db(self.book.update_shard, shard.id, state="uploaded", file_id=file_id)

    async def _create(self, shard: ShardRecord) -> ShardRecord:
        assert shard.file_id is not None
        await self._db(self.book.update_shard, shard.id, state="creating")
        info = await self.api.create(shard.file_id, self.url, self._tags(shard), since=time.time())
        failpoints.reached("create")
        self.echo(f"batchrun: shard {shard.number} ({shard.lines:,} requests) submitted as {info.id}")
        return await self._submitted(shard, info)

    async def _submitted(self, shard: ShardRecord, info: BatchInfo) -> ShardRecord:
        """Record that a shard's batch exists (just created, or found after a crash)."""
        return await self._db(
            self.book.update_shard,
            shard.id,
            state="submitted",
            batch_id=info.id,
            batch_status=info.status,
            submits=shard.submits + 1,
            note=None,
        )

    # -- polling and collecting ----------------------------------------------------------------

    async def _poll(self, shard: ShardRecord) -> None:
        assert shard.batch_id is not None
        info = await self.api.retrieve(shard.batch_id)
        failpoints.reached("poll")
        if info.status != shard.batch_status or info.completed != shard.completed or info.failed != shard.failed:
            shard = await self._db(
                self.book.update_shard,
                shard.id,
                batch_status=info.status,
                completed=info.completed,
                failed=info.failed,
            )
        if not info.terminal:
            return
        if info.token_limit_exceeded:
            # nothing ran: the same file goes in again once the model's queue has room
            self.held_for_queue = True
            self.echo(
                f"batchrun: batch {info.id} (shard {shard.number}) refused: enqueued-token limit reached; "
                "it is submitted again when earlier batches finish"
            )
            await self._db(self.book.update_shard, shard.id, state="uploaded", note="token_limit_exceeded")
            return
        self.held_for_queue = False
        await self._collect(shard, info)

    async def _collect(self, shard: ShardRecord, info: BatchInfo) -> None:
        """Download a finished batch's files and record every line; unanswered lines wait for the next round."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        files: list[Path] = []
        for kind, file_id in (("output", info.output_file_id), ("errors", info.error_file_id)):
            if file_id:
                dest = self.work_dir / f"{Path(shard.filename).stem}.{kind}.jsonl"
                await self.api.download(file_id, dest)
                files.append(dest)
        failpoints.reached("download")
        line_errors = [e for e in info.errors if e.get("line")] if info.status == "failed" else []
        note = await self._db(self._ingest, shard, info, files, line_errors)
        if info.status == "failed" and not line_errors and info.errors:
            note = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in info.errors)[:1000]
            self.echo(f"batchrun: batch {info.id} (shard {shard.number}) failed validation: {note}")
        await self._db(self.book.update_shard, shard.id, state="collected", batch_status=info.status, note=note)
        if self.job.batch.delete_files:
            for file_id in (shard.file_id, info.output_file_id, info.error_file_id):
                if file_id:
                    await self.api.delete_file(file_id)
        for f in files:
            f.unlink(missing_ok=True)
        if not self.job.batch.keep_shards:
            Path(shard.path).unlink(missing_ok=True)

    # -- sharding ------------------------------------------------------------------------------

    async def _reshard(self) -> int:
        """Write the next round's shards: every request without a final answer that is not in a shard yet."""
        assert self.run is not None
        round_no = self.run.round + 1
        await self._db(self.book.update_run, self.run.id, round=round_no, sharding=1)
        written = await asyncio.to_thread(self.build_shards, round_no)
        # a pass that found nothing to send is not a round
        await self._db(self.book.update_run, self.run.id, sharding=0, round=round_no if written else round_no - 1)
        self.run = await self._db(self.book.active_run, self.job_key)
        if written:
            self.echo(f"batchrun: round {round_no}: {written} shard(s) written to {self.work_dir}")
        return written

    def build_shards(self, round_no: int) -> int:
        """Stream the input into shard files (runs in a thread); returns how many were written."""
        assert self.run is not None
        run = self.run
        max_attempts = self.job.limits.max_attempts
        policy = self.policy()
        attempts_of: dict[str, int] = {}
        open_ids: set[str] = set()

        def on_shard(shard: Shard, lines: list[ShardLine]) -> None:
            items = [(ln.custom_id, ln.row_id, attempts_of.pop(ln.custom_id, 0)) for ln in lines]
            self.book.add_shard(run.id, round_no, shard, items)
            open_ids.difference_update(ln.custom_id for ln in lines)  # other writers' shards stay open

        prefix = f"{self.job.name[:40]}-{self.job_key[:8]}-r{run.id}.{round_no}"
        # one model per batch file (the API's rule): rows naming their own model get a writer per model
        writers: dict[str, ShardWriter] = {}

        def writer_for(text: str) -> ShardWriter:
            model = self.renderer.params_of(text).get("model") or "" if per_model else ""
            found = writers.get(model)
            if found is None:
                tag = f"-m{len(writers)}" if per_model else ""
                found = writers[model] = ShardWriter(self.work_dir, prefix + tag, self.url, self.limits, on_shard)
            return found

        per_model = "model" in self.renderer.row_params
        body_of = self.renderer.json_body(self.endpoint.model)
        max_out = self.renderer.max_output

        @functools.cache
        def unsendable(prompt_tokens: int) -> bool:
            # whether a request can go in a batch depends only on its size here (one output limit for the
            # job): asked once per prompt size, not once per row
            return self._unsendable(Request(-1, "", {}, prompt_tokens, max_out)) is not None

        for batch in self.source.batches(5000):
            _positions, ids, texts = self.renderer.texts(batch)
            empty = self.renderer.empty(batch, texts)
            fps = [self.fingerprinter.of(t) for t in texts]
            final = self.ledger.answered(fps, policy)
            redo = self._bad_replies_to_resend(final, run.started_at)
            todo = [i for i, fp in enumerate(fps) if (fp not in final or fp in redo) and not empty[i]]
            if not todo:
                continue
            known = self.book.items([fps[i] for i in todo])
            send: list[int] = []
            for i in todo:
                fp = fps[i]
                if fp in open_ids:
                    continue  # an identical row is in the shard being written
                item = known.get(fp)
                if item is not None and item[3] != "collected":
                    continue  # already in a shard of this run that is not finished
                attempts = item[1] if item is not None else 0
                if fp in redo and attempts >= max_attempts:
                    continue  # out of tries: the bad reply already recorded is the answer
                if attempts >= max_attempts:
                    error = f"no answer after {attempts} batch submissions; last: {item[2] if item else ''}"
                    self.ledger.record(fp, RowResult(row=-1, row_id=ids[i], status="failed", error=error,
                                                     attempts=attempts), self.endpoint_key)  # fmt: skip
                    continue
                attempts_of[fp] = attempts
                open_ids.add(fp)
                send.append(i)
            self.ledger.flush()
            if not send:
                continue
            sub = [texts[i] for i in send]
            tokens = self.renderer.prompt_tokens(sub)
            for i, text, n in zip(send, sub, tokens, strict=True):
                fp = fps[i]
                if unsendable(n):
                    open_ids.discard(fp)
                    attempts_of.pop(fp, None)
                    continue  # reported as too_long when the output is written; never sent
                body = body_of(text)
                if redo.get(fp) == "truncated":  # as online: a reply cut off is asked again with room for it
                    body = self._doubled(body, attempts_of.get(fp, 1))
                try:
                    writer_for(text).add(fp, ids[i], body, n)
                except LineTooLarge:
                    open_ids.discard(fp)
                    attempts_of.pop(fp, None)
        for writer in writers.values():
            writer.close()
        return sum(w.count for w in writers.values())

    def _bad_replies_to_resend(self, final: dict[str, float], started: float) -> dict[str, str]:
        """`[limits] retry_bad_replies` in batch mode: answers of this run that came back schema_invalid or
        truncated go into the next round, up to that many times (fingerprint → status)."""
        tries = self.job.request.retry_bad_replies
        if not tries or self.job.request.kind == "embeddings":
            return {}
        recent = [fp for fp, at in final.items() if at >= started]
        bad = {fp: st for fp, st in self.ledger.statuses(recent).items() if st in ("schema_invalid", "truncated")}
        if not bad:
            return {}
        known = self.book.items(list(bad))
        return {
            fp: st for fp, st in bad.items() if fp in known and known[fp][3] == "collected" and known[fp][1] <= tries
        }

    def _doubled(self, body: bytes, sends: int) -> bytes:
        data = json.loads(body)
        for key in OUTPUT_LIMIT_KEYS:
            if data.get(key):
                data[key] = data[key] * 2**sends
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    # -- the online fallback --------------------------------------------------------------------

    def _fallback_due(self, *, new_round: bool = False) -> bool:
        """With online_fallback on: is the deadline too near to wait for (another) batch?"""
        if not self.job.batch.online_fallback or self.job.deadline_hours is None or self.run is None:
            return False
        deadline = self.run.started_at + self.job.deadline_hours * 3600
        left = deadline - time.time()
        if new_round:
            return left < 24 * 3600  # a new batch may take the whole 24 h window
        return left <= min(0.25 * self.job.deadline_hours * 3600, 2 * 3600)

    async def _go_online(self, notes: list[str]) -> TickReport:
        """Cancel what is still queued and collect what finished; the lifecycle then sends the rest
        through the online executor (`go_online`) and calls `finish_online`."""
        assert self.run is not None
        self.echo("batchrun: the deadline is near: cancelling queued batches and sending the rest online")
        await self.cancel_all(wait=True)
        self.go_online = True
        notes.append("deadline near: batches cancelled, finished rows kept, the rest sent online at full price")
        return self._report(True, await self._db(self.book.shards, self.run.id), notes)

    async def finish_online(self) -> None:
        assert self.run is not None
        await self._db(self.book.finish_run, self.run.id, "done", "rest sent online: deadline near")

    async def cancel_all(self, *, wait: bool) -> int:
        """Cancel every pending batch of the active run; with `wait`, collect what they finished."""
        assert self.run is not None
        cancelled = 0
        for shard in await self._db(self.book.shards, self.run.id):
            if shard.state == "submitted" and shard.batch_id and shard.batch_status in PENDING:
                info = await self.api.cancel(shard.batch_id)
                cancelled += 1
                await self._db(self.book.update_shard, shard.id, batch_status=info.status)
        delay = self.job.batch.poll_seconds
        while wait:
            pending = [s for s in await self._db(self.book.shards, self.run.id) if s.state == "submitted"]
            if not pending:
                break
            for shard in pending:
                await self._poll(shard)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.job.batch.poll_max_seconds)
        return cancelled

    # -- output ----------------------------------------------------------------------------------

    async def _write_output(self) -> None:
        self.tally = await asyncio.to_thread(self.write_output)
