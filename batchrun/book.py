"""A document job: chapters → chunks → checked translations → translated documents and a Parquet of paragraphs.

Each chunk is one request through the online engine (same limiter, retries,
budget, audit and ledger as a table job). A reply that does not match its
request item for item is never padded or shifted onto other paragraphs: the
chunk is split in half and asked again, down to single paragraphs; a paragraph
that still fails is written as failed, with the reason, and marked in the
translated document. With `context_paragraphs`, a chapter is a chain: each
chunk waits for the one before and carries its last paragraphs as context;
chapters run in parallel. Resume is the ledger: a rerun rebuilds the same
requests, finds the answered ones and sends only the rest.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from .chunks import Chunk, ChunkRenderer, Segment, check_reply, halves, load_glossary, plan_chunks
from .context import RunContext
from .document_input import open_document
from .documents import Document, Paragraph, Rendering, render_text, write_atomically
from .engine import WorkItem
from .errors import BatchrunError
from .ledger import FINAL_STATUSES
from .replies import ReplyParser
from .results import RunResult
from .sinks import ParquetSink, RowResult, make_layout
from .sizing import too_long_reason

# reply statuses worth asking again with fewer paragraphs: the content or its length was the problem
SPLIT_ON = frozenset({"schema_invalid", "truncated", "refused", "filtered", "too_long", "misaligned"})
PARAGRAPH_COLUMNS = ("document", "chapter", "chapter_title", "paragraph", "id", "kind", "text")
PARAGRAPH_TYPES = (pl.String, pl.Int64, pl.String, pl.Int64, pl.String, pl.String, pl.String)
LISTED_FAILURES = 10


@dataclass
class _Piece:
    """What happened to one segment, summed over every request that carried it."""

    translation: str | None = None
    status: str = "not_sent"
    error: str | None = None
    raw_text: str | None = None
    attempts: int = 0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    cost_usd: float = 0.0
    latency_ms: float | None = None
    finish_reason: str | None = None
    model: str | None = None
    request_id: str | None = None
    paid: bool = False
    cached: bool = False


@dataclass
class _Chain:
    """A run of chunks sent one after another, carrying the last translations as context."""

    chunks: list[Chunk]
    keep: int
    pairs: list[tuple[str, str]] = field(default_factory=list)

    def context(self) -> list[tuple[str, str]]:
        return self.pairs[-self.keep :] if self.keep else []


class BookRun:
    """The state of one document run."""

    def __init__(self, ctx: RunContext, doc: Document) -> None:
        job = ctx.job
        self.ctx = ctx
        self.job = job
        self.doc = doc
        self.endpoint = ctx.endpoint
        spec = job.document
        self.renderer = ChunkRenderer(job, load_glossary(spec.glossary))
        self.chunks = plan_chunks(doc, self.renderer.counter, spec.chunk_tokens)
        self.paragraphs = {p.id: p for p in doc.paragraphs() if p.translatable}
        self.segments: dict[str, list[Segment]] = {}
        for chunk in self.chunks:
            for s in chunk.segments:
                self.segments.setdefault(s.paragraph, []).append(s)
        self.pieces: dict[str, _Piece] = {s.id: _Piece() for c in self.chunks for s in c.segments}
        self.left = {pid: len(segs) for pid, segs in self.segments.items()}
        self.price = ctx.price
        self.ledger = ctx.ledger
        self.limiter = ctx.limiter
        self.replies: dict[int, RowResult] = {}
        self.engine = ctx.engine(
            kind="chat",
            parser=ReplyParser(
                self.renderer.params["response_format"]["json_schema"]["schema"], job.request.max_output_tokens
            ),
            on_result=self.replies.__setitem__,
        )
        self.endpoint_key = ctx.endpoint_key
        self.fingerprinter = self.renderer.fingerprinter(self.endpoint_key, ctx.endpoint.model)
        self.seq = 0
        self.splits = 0
        self.cached_usd = 0.0
        self.bar = ctx.bar(len(self.paragraphs), "para")

    # -- one request -----------------------------------------------------------------------------

    async def _ask(self, segs: tuple[Segment, ...], chain: _Chain) -> RowResult:
        """The reply to these segments: from the ledger if answered before, else sent."""
        self.seq += 1
        seq = self.seq
        req, key = self.renderer.request(segs, chain.context(), seq)
        fp = self.fingerprinter.of(key)
        found = await asyncio.to_thread(self.ledger.lookup, [fp], None, self.ctx.cache)
        if fp in found:
            self.cached_usd += found[fp].cost_usd or 0.0
            return found[fp]
        reason = too_long_reason(self.job, req, self.ctx.context_window, self.limiter.limits[1])
        if reason:
            return RowResult(row=seq, row_id=req.row_id, status="too_long", error=reason)
        if self.engine.stopped.is_set():
            return RowResult(row=seq, row_id=req.row_id, status="not_sent", error=self.engine.stopped_reason())
        async with self.engine.gate:
            await self.engine.process(WorkItem((seq,), (req,)))
        result = self.replies.pop(seq)
        if self.ctx.cache.write and result.status in FINAL_STATUSES and not result.retryable:
            self.ledger.record(fp, result, self.endpoint_key)
        # committed at once, not on the table jobs' timer: a chunk is a large request, a book has few of
        # them, and a kill -9 must cost no answered chunk a second payment (nor its audit record)
        await self.ctx.committer.commit()
        return result

    def _charge(self, segs: tuple[Segment, ...], result: RowResult) -> None:
        """Spread a request's tokens and cost over its segments by their share of its source tokens."""
        total = sum(s.tokens for s in segs) or 1
        sent = result.status not in ("not_sent", "too_long") or result.from_cache
        for s in segs:
            piece = self.pieces[s.id]
            share = s.tokens / total
            if sent:
                piece.attempts += 1
            piece.prompt_tokens += (result.prompt_tokens or 0) * share
            piece.completion_tokens += (result.completion_tokens or 0) * share
            piece.cost_usd += (result.cost_usd or 0.0) * share
            piece.latency_ms = result.latency_ms
            piece.finish_reason = result.finish_reason
            piece.model = result.model or piece.model
            piece.request_id = result.request_id
            if result.from_cache:
                piece.cached = True
            elif sent:
                piece.paid = True

    def _finish(self, seg: Segment, status: str, translation: str | None, error: str | None, raw: str | None) -> None:
        piece = self.pieces[seg.id]
        piece.status, piece.translation, piece.error, piece.raw_text = status, translation, error, raw
        self.left[seg.paragraph] -= 1
        if self.left[seg.paragraph] == 0:
            self.bar.update(1)

    async def translate(self, segs: tuple[Segment, ...], chain: _Chain) -> None:
        """Translate consecutive segments; a reply that does not match is split in half and asked again."""
        result = await self._ask(segs, chain)
        self._charge(segs, result)
        status, reason = result.status, result.error
        if status == "ok":
            mapping, why = check_reply(segs, result.output)
            if mapping is not None:
                for s in segs:
                    self._finish(s, "ok", mapping[s.id], None, None)
                    chain.pairs.append((s.text, mapping[s.id]))
                return
            status, reason = "misaligned", f"misaligned reply: {why}"
        if status in SPLIT_ON and len(segs) > 1:
            self.splits += 1
            for half in halves(segs):
                await self.translate(half, chain)
            return
        final = status if status in ("refused", "truncated", "filtered", "too_long", "not_sent") else "failed"
        if len(segs) == 1 and status in SPLIT_ON:
            reason = f"{reason} (the paragraph was sent on its own and still failed)"
        for s in segs:
            self._finish(s, final, None, reason or status, result.raw_text)

    async def _run_chains(self, chains: list[_Chain]) -> None:
        queue: asyncio.Queue[_Chain] = asyncio.Queue()
        for chain in chains:
            queue.put_nowait(chain)

        async def worker() -> None:
            while not queue.empty():
                chain = queue.get_nowait()
                for chunk in chain.chunks:
                    await self.translate(chunk.segments, chain)

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self.job.limits.max_in_flight, len(chains))):
                tg.create_task(worker())

    def chains(self) -> list[_Chain]:
        keep = self.job.document.context_paragraphs
        if not keep:
            return [_Chain([c], 0) for c in self.chunks]
        by_chapter: dict[int, list[Chunk]] = {}
        for c in self.chunks:
            by_chapter.setdefault(c.chapter, []).append(c)
        # the longest chapters first: the run takes as long as its longest chain
        ordered = sorted(by_chapter.values(), key=lambda cs: -sum(c.tokens for c in cs))
        return [_Chain(cs, keep) for cs in ordered]

    # -- the whole run ---------------------------------------------------------------------------

    async def run(self) -> RunResult:
        try:
            await self._run_chains(self.chains())
        finally:
            self.bar.close()
            await self.ctx.committer.commit()  # what was paid for is committed before we leave
        rows = self.paragraph_rows()
        written = await asyncio.to_thread(self.write_outputs, rows)
        return self.result(rows, written)

    def paragraph_rows(self) -> list[tuple[Paragraph, RowResult]]:
        """Each translated paragraph's result: its pieces joined, its status the first failure among them."""
        out = []
        for pid, p in self.paragraphs.items():
            pieces = [(s, self.pieces[s.id]) for s in self.segments.get(pid, [])]
            bad = [(s, x) for s, x in pieces if x.status != "ok"]
            if bad:
                status = bad[0][1].status
                many = len(pieces) > 1
                error = "; ".join(f"{s.id if many else ''}{': ' if many else ''}{x.error}" for s, x in bad)
                translation = None
            else:
                status, error = "ok", None
                translation = "".join(x.translation + s.sep for s, x in pieces)  # type: ignore[operator]
            last = pieces[-1][1]
            out.append(
                (
                    p,
                    RowResult(
                        row=p.index,
                        row_id=pid,
                        status=status,
                        error=error,
                        attempts=max(x.attempts for _, x in pieces),
                        prompt_tokens=round(sum(x.prompt_tokens for _, x in pieces)),
                        completion_tokens=round(sum(x.completion_tokens for _, x in pieces)),
                        cost_usd=sum(x.cost_usd for _, x in pieces) if self.price else None,
                        latency_ms=last.latency_ms,
                        finish_reason=last.finish_reason,
                        model=last.model,
                        request_id=last.request_id,
                        output={"translation": translation} if translation is not None else None,
                        raw_text=next((x.raw_text for _, x in bad if x.raw_text), None),
                        from_cache=all(x.cached and not x.paid for _, x in pieces),
                    ),
                )
            )
        return out

    def write_outputs(self, rows: list[tuple[Paragraph, RowResult]]) -> list[Path]:
        """The per-paragraph Parquet and each translated document (written under .partial, then renamed)."""
        layout = make_layout(
            PARAGRAPH_COLUMNS,
            PARAGRAPH_TYPES,
            kind="chat",
            schema={"type": "object", "properties": {"translation": {"type": "string"}}},
            model=self.job.request.model,
        )
        sink = ParquetSink(self.job.table_path, layout, self.job.output.row_group_size)
        titles = {c.index: c.title for c in self.doc.chapters}
        records = [
            layout.record(
                {"document": self.doc.name, "chapter": p.chapter, "chapter_title": titles[p.chapter],
                 "paragraph": p.index, "id": p.id, "kind": p.kind, "text": p.text},
                r,
            )
            for p, r in rows
        ]  # fmt: skip
        sink.write(records)
        sink.close()
        renderings = {
            p.id: Rendering(r.output["translation"]) if r.status == "ok" else Rendering(None, f"{r.status}: {r.error}")
            for p, r in rows
        }
        spec = self.job.document
        written = []
        for fmt, path in self.job.document_outputs:
            if fmt == "epub":
                from .epub import build_epub, write_translated_epub

                write = write_translated_epub if self.doc.format == "epub" else build_epub
                write(self.doc, renderings, path, bilingual=spec.bilingual, language=spec.language)
            else:
                text = render_text(self.doc, renderings, bilingual=spec.bilingual, fmt=fmt)
                write_atomically(path, lambda p, t=text: p.write_text(t, encoding="utf-8"))
            written.append(path)
        return written

    def result(self, rows: list[tuple[Paragraph, RowResult]], documents: list[Path]) -> RunResult:
        by_status = Counter(r.status for _, r in rows)
        notes = []
        if self.endpoint.simulated:
            notes.append(
                "simulated endpoint: the translations are Pig Latin, nothing was billed; set the API key to run for real"
            )
        notes.append(
            f"{len(self.doc.chapters)} chapter(s), {len(self.chunks)} chunk(s) of ≤ {self.job.document.chunk_tokens} "
            f"tokens"
            + (f"; {self.splits} chunk(s) split in half after a reply that did not match" if self.splits else "")
        )
        failed = [(p, r) for p, r in rows if r.status != "ok"]
        for p, r in failed[:LISTED_FAILURES]:
            notes.append(f"paragraph {p.id} not translated ({r.status}): {r.error}")
        if len(failed) > LISTED_FAILURES:
            notes.append(f"... and {len(failed) - LISTED_FAILURES} more paragraph(s) not translated (see the Parquet)")
        if failed:
            notes.append(
                "paragraphs not translated are marked [not translated: ...] in the documents; run again to retry"
            )
        return self.ctx.engine_result(
            self.engine,
            by_status=dict(by_status),
            cached_rows=sum(1 for _, r in rows if r.from_cache and r.status != "failed"),
            cached_usd=self.cached_usd,
            notes=notes,
            documents=documents,
        )


async def run_document(ctx: RunContext) -> tuple[RunResult, BatchrunError | None]:
    """Translate a document job; returns what it did and the error it stopped on, if any."""
    job = ctx.job
    doc = await asyncio.to_thread(open_document, job.input.path, job.document, job.input.resolved_format)
    state = await asyncio.to_thread(BookRun, ctx, doc)
    result = await state.run()
    state.engine.finish()
    return result, state.engine.stop_error
