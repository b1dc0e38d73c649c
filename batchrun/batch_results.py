"""Batch API results: result files into the ledger, and the ledger into the Parquet output.

Both go through the same pieces as an online run: the reply parser (statuses,
schema validation), the price table (at the batch discount), the ledger (by
fingerprint) and the output layout (typed columns fixed before the first row).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import failpoints, fastjson
from .batch_api import BatchInfo
from .batch_book import ShardRecord
from .bulk import BulkWrite
from .prompts import Request
from .replies import usage_tokens
from .retries import Action, line_failure
from .sinks import ParquetSink, RowResult, empty_result
from .sizing import too_long_reason

if TYPE_CHECKING:
    from .batch_job import BatchJob


@dataclass
class Tally:
    """What the output holds, counted while it is written."""

    rows: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached_rows: int = 0
    cached_usd: float = 0.0

    def add(self, r: RowResult) -> None:
        self.rows += 1
        self.by_status[r.status] = self.by_status.get(r.status, 0) + 1
        if r.from_cache:
            if r.status != "failed":  # a failure reused is not an answer
                self.cached_rows += 1
                self.cached_usd += r.cost_usd or 0.0
            return
        self.prompt_tokens += r.prompt_tokens or 0
        self.completion_tokens += r.completion_tokens or 0
        self.cost_usd += r.cost_usd or 0.0


class ResultsMixin:
    """BatchJob's reading and writing of results (see batch_job.BatchJob for the attributes)."""

    def _ingest(
        self: BatchJob, shard: ShardRecord, info: BatchInfo, files: list[Path], line_errors: list[dict[str, Any]]
    ) -> str:
        """Record a batch's result lines in the ledger (runs in a thread)."""
        ids = self.book.shard_items(shard.id)
        seen: set[str] = set()
        retry: list[tuple[str, str]] = []
        counts: dict[str, int] = {}  # by the status each line's answer got, as the output will say
        ledger = self.ledger
        audit = self.ctx.audit
        trail: list[dict[str, Any]] = []  # [output] audit: every result line as the server sent it
        with BulkWrite(ledger) as bulk:  # one transaction for the shard, inserted beside the parsing
            for path in files:
                with path.open("rb") as f:
                    for raw in f:
                        if not raw.strip():
                            continue
                        line = fastjson.loads_api(raw)
                        cid = line.get("custom_id")
                        if cid not in ids or cid in seen:
                            continue  # not ours (or a repeat): never let it overwrite an answer
                        seen.add(cid)
                        if audit.enabled:
                            trail.append({"time": time.time(), "mode": "batch", "batch_id": info.id, "custom_id": cid,
                                          "row_ids": [ids[cid]], "shard_file": shard.filename,
                                          "response": line.get("response"), "error": line.get("error")})  # fmt: skip
                        response = line.get("response") or None
                        status_code = response.get("status_code") if response else None
                        body = response.get("body") if response else None
                        if status_code == 200 and isinstance(body, dict):
                            result = self._result(body, response.get("request_id"), ids[cid] or "")
                            bulk.record_spend(result.cost_usd or 0.0, self.endpoint_key)  # paid, whatever it says
                        else:
                            failure = line_failure(status_code, body, line.get("error"))
                            if failure.action is not Action.ROW_FAILED:
                                retry.append((cid, failure.message))
                                continue
                            result = RowResult(row=-1, row_id=ids[cid] or "", status="failed", error=failure.message,
                                               attempts=1)  # fmt: skip
                        counts[result.status] = counts.get(result.status, 0) + 1
                        bulk.record(cid, result, self.endpoint_key)
            failpoints.reached("ingest")  # every line handed to the ledger's thread, none committed
            if line_errors:
                by_line = self._shard_lines(shard)
                for e in line_errors:
                    cid = by_line.get(int(e["line"]))
                    if cid is not None and cid not in seen:
                        seen.add(cid)
                        msg = f"batch validation: {e.get('code')}: {e.get('message')}"
                        bulk.record(
                            cid, RowResult(row=-1, row_id=ids[cid] or "", status="failed", error=msg), self.endpoint_key
                        )
                        counts["failed"] = counts.get("failed", 0) + 1
        ledger.flush()  # anything else queued meanwhile
        audit.write(trail)  # in this thread, as the ledger is: nothing else writes batch audit lines
        why = f"no result in batch {info.id} ({info.status})"
        retry += [(cid, why) for cid in ids.keys() - seen]
        self.book.note_failures(retry)
        got = ", ".join(f"{n:,} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        return f"{got or 'no answers'}; {len(retry):,} to send again"

    def _shard_lines(self: BatchJob, shard: ShardRecord) -> dict[int, str]:
        """Line number → custom_id, read back from the shard file (for validation errors)."""
        out: dict[int, str] = {}
        path = Path(shard.path)
        if path.exists():
            with path.open("rb") as f:
                for n, raw in enumerate(f, start=1):
                    out[n] = json.loads(raw)["custom_id"]
        return out

    def _result(self: BatchJob, body: dict[str, Any], request_id: str | None, row_id: str) -> RowResult:
        """A 200 line's answer, through the same reply parser as online, at the batch price."""
        prompt, completion, cached = usage_tokens(body)
        cost = None
        price = self.price
        if self.renderer.row_models and isinstance(body.get("model"), str):
            price = self.ctx.price_for(body["model"])  # the row's own model ([request] params_from)
        if price is not None and prompt is not None:
            cost = price.cost(prompt, completion or 0, discount=self.discount, cached_tokens=cached)
        if self.job.request.kind == "embeddings":
            data = body.get("data") or []
            vec = data[0].get("embedding") if data and isinstance(data[0], dict) else None
            return RowResult(
                row=-1, row_id=row_id, status="ok" if vec is not None else "failed",
                error=None if vec is not None else "no embedding in the reply", attempts=1,
                prompt_tokens=prompt, completion_tokens=0, cost_usd=cost, model=body.get("model"),
                request_id=request_id, output=vec,
            )  # fmt: skip
        parsed = self.parser.chat(body)
        return RowResult(
            row=-1, row_id=row_id, status=parsed.status, error=parsed.error, attempts=1, prompt_tokens=prompt,
            completion_tokens=completion, cost_usd=cost, finish_reason=parsed.finish_reason,
            model=body.get("model"), request_id=request_id, output=parsed.output, raw_text=parsed.raw_text,
        )  # fmt: skip

    def _unsendable(self: BatchJob, req: Request) -> str | None:
        """Why a request can never go through the Batch API (its output status is then too_long)."""
        reason = too_long_reason(self.job, req, self.context, None)
        limit = self.limits.max_tokens
        if reason is None and limit is not None and req.prompt_tokens > limit:
            reason = (
                f"prompt of {req.prompt_tokens:,} tokens is more than the model's whole Batch API queue "
                f"({limit:,} enqueued tokens); raise [batch] enqueued_token_limit or send it online"
            )
        return reason

    def write_output(self: BatchJob) -> Tally:
        """Write the Parquet output from the ledger, in input order (runs in a thread)."""
        assert self.run is not None
        started = self.run.started_at
        tally = Tally()
        sink = ParquetSink(self.job.table_path, self.layout, self.job.output.row_group_size)
        ok = False
        try:
            pending: list[dict[str, Any]] = []
            for batch in self.source.batches(5000):
                positions, ids, texts = self.renderer.texts(batch)
                empty = self.renderer.empty(batch, texts)
                inputs = batch.select(self.input_columns).to_dicts()
                fps = [self.fingerprinter.of(t) for t in texts]
                origin: dict[str, tuple[str | None, float]] = {}
                found = self.ledger.lookup(fps, origin)
                unsent: dict[int, RowResult] = {i: empty_result(positions[i], ids[i]) for i, e in enumerate(empty) if e}
                missing = [i for i, fp in enumerate(fps) if fp not in found and i not in unsent]
                if missing:
                    reqs = self.renderer.requests(
                        [positions[i] for i in missing], [ids[i] for i in missing], [texts[i] for i in missing]
                    )
                    for i, req in zip(missing, reqs, strict=True):
                        reason = self._unsendable(req)
                        unsent[i] = RowResult(
                            row=req.row,
                            row_id=req.row_id,
                            status="too_long" if reason else "not_sent",
                            error=reason or "no answer: the batch run was cancelled; run the job again to finish",
                            prompt_tokens=req.prompt_tokens if reason else None,
                        )
                for i, fp in enumerate(fps):
                    result = unsent.get(i)
                    if result is None:
                        first_id, at = origin[fp]
                        fresh = at >= started and first_id == ids[i]
                        result = replace(found[fp], row=positions[i], row_id=ids[i], from_cache=not fresh)
                    tally.add(result)
                    pending.append(self.layout.record(inputs[i], result))
                if len(pending) >= sink.row_group_size:
                    sink.write(pending)
                    pending = []
            sink.write(pending)
            ok = True
        finally:
            if ok:
                sink.close()
            else:
                sink.abort()
        return tally
