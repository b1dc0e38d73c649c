"""The Python API: `run` / `arun` a job file, `map` / `amap` a prompt over a DataFrame.

The same lifecycle as `batchrun run` (lock, ledger, budget, commits). The sync forms work
anywhere: called where an event loop is already running (Jupyter, an async app), they run the
job on a worker thread with its own loop instead of failing; in async code, await `arun`/`amap`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import tempfile
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from .jobs import Job, load_job, parse_job
from .lifecycle import CacheMode, RunOptions, run_job
from .results import RunResult

T = TypeVar("T")


def _sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from sync code, whether or not this thread has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if not running:  # (outside the except clause, so a run's own error is not chained to this one)
        return asyncio.run(coro)
    # a loop is running here (a notebook cell): asyncio.run would refuse, so run on a thread of its own
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batchrun") as pool:
        return pool.submit(asyncio.run, coro).result()


def _options(
    progress: bool,
    cache: CacheMode,
    wait: bool,
    retry: Iterable[str],
    wait_lock: float,
    over_budget: bool = False,
    ray: bool | str = False,
) -> RunOptions:
    return RunOptions(
        progress=progress,
        cache=cache,
        wait=wait,
        retry=frozenset(retry),
        wait_lock=wait_lock,
        over_budget=over_budget,
        ray=ray is not False,
        ray_address=ray if isinstance(ray, str) and ray else None,
    )


async def arun(
    job: Job | str | Path,
    *,
    progress: bool = False,
    cache: CacheMode = "use",
    wait: bool = False,
    retry: Iterable[str] = (),
    wait_lock: float = 0.0,
    over_budget: bool = False,
    ray: bool | str = False,
) -> RunResult:
    """Run a job (a Job or a job-file path) and return what it did; output is in result.output_path.

    Batch mode: one step (submit what is ready, collect what finished) unless `wait`, which
    polls until the output is written; `result.waiting` says what is still running.

    cache: "use" (resume: rows with a final answer in the ledger are not sent again), "refresh"
    (send every row again and replace the ledger's answers) or "off" (no answers kept; spend is).
    retry: statuses whose rows are sent again (e.g. {"failed", "truncated"}).
    over_budget: start even when the plan expects the budget to run out (it then stops at it).
    ray: True (or a cluster address) sends the requests from actors on a Ray cluster, under one
    cluster-wide limit; the ledger and the output stay in this process (`batchrun[ray]`).
    Raises the stop error (with `.result`) if the run had to stop; `result.exit_code` is what the
    CLI would exit with otherwise.
    """
    options = _options(progress, cache, wait, retry, wait_lock, over_budget, ray)
    if not isinstance(job, Job):
        job = await asyncio.to_thread(load_job, job)
    return await run_job(job, options)


def run(
    job: Job | str | Path,
    *,
    progress: bool = False,
    cache: CacheMode = "use",
    wait: bool = False,
    retry: Iterable[str] = (),
    wait_lock: float = 0.0,
    over_budget: bool = False,
    ray: bool | str = False,
) -> RunResult:
    """`arun` from sync code (a script, or a notebook cell: see the module docstring)."""
    _options(
        progress, cache, wait, retry, wait_lock, over_budget, ray
    )  # bad arguments fail here, in the caller's thread
    return _sync(
        arun(
            job,
            progress=progress,
            cache=cache,
            wait=wait,
            retry=retry,
            wait_lock=wait_lock,
            over_budget=over_budget,
            ray=ray,
        )
    )


def _map_job(
    tmpdir: Path,
    *,
    prompt: str,
    model: str,
    schema: dict[str, Any] | type | None,
    system: str | None,
    max_tokens: int | None,
    kind: str,
    temperature: float | None,
    base_url: str | None,
    api_key_env: str,
    rpm: int | None,
    tpm: int | None,
    max_in_flight: int,
    ledger: str | Path | None,
    max_usd: float | None,
) -> Job:
    if isinstance(schema, type):
        from openai.lib._pydantic import to_strict_json_schema

        schema = to_strict_json_schema(schema)  # type: ignore[arg-type]
    request: dict[str, Any] = {"model": model, "kind": kind}
    if kind == "chat":
        request["max_tokens"] = max_tokens or 1024
    if temperature is not None:
        request["temperature"] = temperature
    output: dict[str, Any] = {"path": "output.parquet"}
    if ledger is not None:
        output["ledger"] = str(Path(ledger).resolve())
    data: dict[str, Any] = {
        "name": "map",
        "input": {"path": "input.parquet"},
        "prompt": {"template": prompt, **({"system": system} if system else {})},
        "request": request,
        "endpoint": {"api_key_env": api_key_env, **({"base_url": base_url} if base_url else {})},
        "limits": {"max_in_flight": max_in_flight, **({"rpm": rpm} if rpm else {}), **({"tpm": tpm} if tpm else {})},
        "output": output,
    }
    if max_usd is not None:
        data["budget"] = {"max_usd": max_usd}
    if schema is not None:
        data["output_schema"] = {"name": "output", "schema": schema}
    return parse_job(data, tmpdir / "map.toml")


async def amap(
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
    ledger: str | Path | None = None,
    max_usd: float | None = None,
) -> pl.DataFrame:
    """Run `prompt` (Jinja2 over df's columns) for every row of df; returns df with output and status columns.

    Same engine as `batchrun run`; `schema` is a JSON schema or a pydantic model class. `ledger`: a
    file that keeps answers and spend across calls (a second call with the same rows sends nothing);
    without it each call starts afresh. `max_usd`: a spend cap, counted across calls on one ledger.
    """
    with tempfile.TemporaryDirectory(prefix="batchrun-map-") as tmp:
        tmpdir = Path(tmp)
        await asyncio.to_thread(df.write_parquet, tmpdir / "input.parquet")
        job = _map_job(
            tmpdir, prompt=prompt, model=model, schema=schema, system=system, max_tokens=max_tokens, kind=kind,
            temperature=temperature, base_url=base_url, api_key_env=api_key_env, rpm=rpm, tpm=tpm,
            max_in_flight=max_in_flight, ledger=ledger, max_usd=max_usd,
        )  # fmt: skip
        result = await run_job(job, RunOptions(progress=progress))
        return await asyncio.to_thread(result.frame)


def map(df: pl.DataFrame, **kwargs: Any) -> pl.DataFrame:
    """`amap` from sync code (a script, or a notebook cell): the same keyword arguments."""
    return _sync(amap(df, **kwargs))
