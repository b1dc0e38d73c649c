"""batchrun as a stage of your own Ray Data pipeline: `process(ds, job) -> ds`.

    import ray, batchrun.ray
    ds = ray.data.read_parquet("s3://bucket/reviews/")
    out = batchrun.ray.process(ds, "jobs/classify_reviews.toml")   # lazy, like any Ray Data stage
    out.write_parquet("s3://bucket/classified/")

Each block is rendered, counted, sent and parsed by an actor-pool `map_batches` stage whose actors
run the same Engine as a local run (retries, reply parsing, too-long checks), all under one
cluster-wide limiter actor (leases.py) — RPM, TPM and `budget.max_usd` hold for the whole cluster,
however many actors Ray starts. The output blocks have the schema a local run writes to Parquet:
the input columns, the structured output as real columns, and the per-row metadata columns.

What the stage does not do is keep a ledger: inside a pipeline Ray Data owns the blocks, and a
block it retries is sent again. For resume, no-row-paid-twice and an output in input order, run the
job file with `batchrun run JOB --ray` (cluster.py), which keeps the ledger on the driver.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from .cluster import NAMESPACE, RowWorker, WorkerSetup, connect, import_ray, limiter_actor
from .endpoints import Endpoint, open_endpoint
from .engine import WorkItem
from .jobs import Job, load_job
from .pricing import price_table_for
from .prompts import Renderer
from .sinks import RowResult, embedding_dims, empty_result, make_layout
from .sizing import embedding_groups, inputs_per_request, too_long_reason
from .sources import ID_COLUMN, ROW_COLUMN

_LIMITERS: list[Any] = []
_ENDPOINTS: list[Endpoint] = []
"""Endpoints opened for stages of this process (the simulator among them), kept open while the
driver lives: a Ray Data stage runs lazily, whenever the dataset is consumed."""


class _Stage:
    """The map_batches UDF: one per actor, one engine per actor, every batch through it."""

    def __init__(self, setup: WorkerSetup, limiter: Any, columns: list[str], dtypes: list[Any]) -> None:
        job = setup.job
        self.job = job
        self.worker = RowWorker(setup, limiter, f"stage-{uuid.uuid4().hex[:8]}")
        self.renderer = Renderer(job, columns, warn_unknown_model=False)
        self.layout = make_layout(
            columns,
            dtypes,
            kind=job.request.kind,
            schema=job.schema_strict,
            model=job.request.model,
            dimensions=job.request.dimensions,
        )
        self.columns = columns
        self.context_window = setup.price.context_window if setup.price else None
        self.per_request = inputs_per_request(job)
        self.seqs = itertools.count()
        self.watching: Any = None

    async def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        if self.watching is None:  # hear of other actors' 429 pauses for the life of this actor
            import asyncio

            self.watching = asyncio.get_running_loop().create_task(self.worker.watch())
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        id_col = self.job.input.id_column
        base = next(self.seqs) * 1_000_000_000  # this batch's seqs in the actor's engine
        frame = frame.with_columns(
            pl.int_range(pl.len()).alias(ROW_COLUMN),  # `row`: the position in its block
            (pl.col(id_col).cast(pl.String) if id_col else pl.int_range(pl.len()).cast(pl.String)).alias(ID_COLUMN),
        )
        positions, ids, texts = self.renderer.texts(frame)
        empty = self.renderer.empty(frame, texts)
        results: dict[int, RowResult] = {}
        todo = [i for i in range(len(texts)) if not empty[i]]
        for i in range(len(texts)):
            if empty[i]:
                results[i] = empty_result(positions[i], ids[i])
        requests = self.renderer.requests(
            [positions[i] for i in todo], [ids[i] for i in todo], [texts[i] for i in todo]
        )
        tpm = self.worker.limiter.limits[1] or self.job.limits.tpm
        items: list[WorkItem] = []
        pending = []
        for i, req in zip(todo, requests, strict=True):
            reason = too_long_reason(self.job, req, self.context_window, tpm)
            if reason:
                results[i] = RowResult(
                    row=req.row, row_id=req.row_id, status="too_long", error=reason, prompt_tokens=req.prompt_tokens
                )
            elif self.job.request.kind == "chat":
                items.append(WorkItem((base + i,), (req,)))
            else:
                pending.append((base + i, req))
        for group in embedding_groups(pending, lambda pair: pair[1].prompt_tokens, self.per_request):
            items.append(WorkItem(tuple(i for i, _ in group), tuple(r for _, r in group)))
        if items:  # the actor's batches share its engine: their seqs (base + index) never collide
            reply = await self.worker.run(items)
            results.update((seq - base, r) for seq, r in reply.results)
        inputs = frame.select(self.columns).to_dicts()
        records = [self.layout.record(inputs[i], results[i]) for i in range(len(inputs))]
        yield pa.Table.from_pylist(records, schema=self.layout.schema)


def process(
    ds: Any,
    job: Job | str | Path,
    *,
    actors: int | None = None,
    max_in_flight_per_actor: int | None = None,
    batch_size: int | None = None,
    limiter: str | None = None,
) -> Any:
    """The job's requests as a Ray Data stage over `ds`: a Dataset of the input columns plus the
    output and metadata columns (lazy; nothing is sent until it is consumed).

    actors / max_in_flight_per_actor: default the job's [ray] keys. batch_size: rows per block the
    stage is given (default max_in_flight_per_actor: each block fills one actor's in-flight window).
    limiter: a name several pipelines share (one RPM/TPM/budget for all); default [ray] limiter,
    else a limiter of this stage's own.
    """
    ray = import_ray()
    if not isinstance(job, Job):
        job = load_job(job)
    connect(None)
    actors = actors or job.ray.actors
    per_actor = max_in_flight_per_actor or job.ray.max_in_flight_per_actor
    endpoint = open_endpoint(job)
    _ENDPOINTS.append(endpoint)
    table = price_table_for(job)
    price = table.lookup(job.request.model)
    schema = ds.schema()
    names = list(schema.names)
    wanted = list(job.input.columns) if job.input.columns else names
    missing = [c for c in wanted if c not in names]
    if missing:
        from .errors import InputError

        raise InputError(f"the dataset has no column(s) {missing}; it has {names}")
    empty = pl.from_arrow(schema.base_schema.empty_table())  # the Arrow schema's polars types
    assert isinstance(empty, pl.DataFrame)
    dtypes = [empty.schema[c] for c in wanted]
    setup = WorkerSetup.of(
        job,
        base_url=endpoint.base_url,
        model=endpoint.model,
        price=price,
        price_for=table.lookup,
        embedding_dims=embedding_dims(job.request.model, job.request.dimensions)
        if job.request.kind == "embeddings"
        else None,
        embedding_extra={"dimensions": job.request.dimensions} if job.request.dimensions else {},
        max_in_flight=per_actor,
    )
    lim = limiter_actor(ray, job, limiter or job.ray.limiter)
    _LIMITERS.append(lim)  # a limiter of the stage's own lives while this driver does
    ray.get(lim.join.remote(f"{job.name}:stage", job.budget.max_usd, 0.0))
    return ds.map_batches(
        _Stage,
        fn_constructor_args=(setup, lim, wanted, dtypes),
        concurrency=actors,
        batch_size=batch_size or per_actor,
        batch_format="pyarrow",
        num_cpus=0.5,
        zero_copy_batch=True,
    )


__all__ = ["NAMESPACE", "process"]
