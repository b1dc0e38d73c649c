"""The Files and Batch API as batchrun uses them: one small client, retries through `retries`,
and one normalised view of a batch whoever serves it.

Azure OpenAI reports the same objects a little differently (capitalised statuses,
ISO-8601 timestamps, `request_counts` null while validating); `BatchInfo.from_api`
turns both into one shape. Batches are read as raw JSON for that reason, not
through the SDK's typed models.

Uploads and batch creation are not idempotent on the server. When such a call
fails ambiguously (timeout, dropped connection, 5xx: the server may have acted),
the client first looks for what it may have created — the file by its unique
name, the batch by its metadata tag — and only sends again if it finds nothing.

Several compatible servers cannot list files or batches (GET answers 404, 405 or
501). Then nothing can be looked up: a step that may have happened is done again
(an upload under a new name, so the two are never confused) and what may have been
left on the server is said, in `notes`, rather than the run being stuck for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import openai

from .errors import EndpointError, QuotaExhausted
from .retries import Action, Backoff, classify

try:  # the HTTP library under the openai SDK: httpx2 in current releases, httpx before
    from httpx2 import Response as HTTP_RESPONSE
except ImportError:  # pragma: no cover
    from httpx import Response as HTTP_RESPONSE  # type: ignore[assignment,no-redef]

T = TypeVar("T")
_NO_BATCH_API = 'this server has no Batch API (or not this part of it); use mode = "online"'
API_BACKOFF = Backoff(base=1.0, cap=60.0)
NOT_OFFERED = frozenset({404, 405, 501})
"""What a server answers for a route it does not have (or a method it does not allow there)."""
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
PENDING = frozenset({"validating", "in_progress", "finalizing", "cancelling"})


def _snake(status: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", status.strip()).lower()


def _epoch(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """A batch as OpenAI or Azure reports it, normalised."""

    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: float | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: tuple[dict[str, Any], ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> BatchInfo:
        counts = data.get("request_counts") or {}
        errors = data.get("errors")
        if isinstance(errors, dict):
            errors = errors.get("data")
        return cls(
            id=str(data["id"]),
            status=_snake(str(data.get("status") or "")),
            input_file_id=data.get("input_file_id"),
            output_file_id=data.get("output_file_id") or None,
            error_file_id=data.get("error_file_id") or None,
            created_at=_epoch(data.get("created_at")),
            total=int(counts.get("total") or 0),
            completed=int(counts.get("completed") or 0),
            failed=int(counts.get("failed") or 0),
            errors=tuple(e for e in (errors or []) if isinstance(e, dict)),
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
        )

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def token_limit_exceeded(self) -> bool:
        return self.status == "failed" and any(e.get("code") == "token_limit_exceeded" for e in self.errors)


class BatchClient:
    """Files + Batch API calls with batchrun's retries (the SDK's are off)."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        max_attempts: int = 8,
        backoff: Backoff = API_BACKOFF,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.sleep = sleep
        self.rng = random.Random()
        self.calls = 0
        self.can_list_files: bool | None = None
        self.can_list_batches: bool | None = None
        self.notes: list[str] = []
        """What the run should be told: uploads or batches that may be left on the server."""

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    async def _call(
        self,
        what: str,
        op: Callable[[], Awaitable[T]],
        recover: Callable[[], Awaitable[T | None]] | None = None,
        attempts: int | None = None,
        not_offered: str | None = None,
    ) -> T:
        """Run `op`, retrying what is worth retrying; after an ambiguous failure, `recover` looks
        for what the failed call may have created before `op` is sent again. `what` names the call
        in every message (`batches.create answered 500: ...`); `not_offered` is said when the server
        answers that it has no such route."""
        max_attempts = attempts or self.max_attempts
        for attempt in range(1, max_attempts + 1):
            self.calls += 1
            try:
                return await op()
            except (openai.APIError, openai.APIConnectionError) as exc:
                failure = classify(exc)
            if failure.action is Action.STOP_QUOTA:
                raise QuotaExhausted(
                    f"{what}: the account is out of quota ({failure.message}). What was collected is kept; "
                    "add credit, then run the job again."
                )
            if failure.action in (Action.RETRY, Action.RATE_LIMITED) and attempt < max_attempts:
                await self.sleep(self.backoff.delay(attempt, self.rng, failure.wait))
                if recover is not None and failure.action is Action.RETRY:
                    try:
                        found = await recover()
                    except EndpointError as exc:
                        # the failure the user must see is the call's own, not the look-up's
                        raise EndpointError(
                            f"{what} answered {failure.message}; then checking whether it took effect failed: {exc}"
                        ) from exc
                    if found is not None:
                        return found
                continue
            if failure.status is None:
                raise EndpointError(
                    f"{what} failed: could not reach the server at {self.client.base_url} ({failure.message}); "
                    "check [endpoint] base_url and that the server is running. Nothing submitted is lost."
                )
            if not_offered is not None and failure.status in NOT_OFFERED:
                raise EndpointError(f"{what} answered {failure.message}: {not_offered}")
            raise EndpointError(f"{what} answered {failure.message}")
        raise AssertionError("unreachable")

    async def _json(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        options = {"params": params} if params else {}
        if method == "GET":
            response = await self.client.get(path, cast_to=HTTP_RESPONSE, options=options)
        else:
            response = await self.client.post(path, body=body, cast_to=HTTP_RESPONSE, options=options)
        return json.loads(response.content)

    # -- capability ----------------------------------------------------------------------------

    async def probe(self) -> None:
        """Fail early, before anything is uploaded, when the server has no Batch API."""

        async def op() -> Any:
            return await self._json("GET", "/batches", params={"limit": 1})

        try:
            await op()
        except openai.APIConnectionError:
            # nothing submitted yet: a few quick tries, then a clear error, not a minute of backoff
            await self._call("GET /batches (is there a Batch API?)", op, attempts=3)
        except openai.InternalServerError:
            # "Batch API broken right now", not "no Batch API": retried with backoff, then named
            await self._call("GET /batches (is there a Batch API?)", op)
        except openai.NotFoundError as exc:
            raise EndpointError(
                f"this server has no Batch API (GET {self.client.base_url}batches answered 404). "
                'Use mode = "online" for servers such as vLLM, Ollama or llama.cpp.'
            ) from exc
        except openai.APIStatusError as exc:
            if exc.status_code in NOT_OFFERED:
                # the route is there (405: not for GET) but batches cannot be listed; whether files and
                # batches can be created is learnt from the first upload
                self.can_list_batches = False
                return
            failure = classify(exc)
            if failure.action in (Action.STOP_ENDPOINT, Action.STOP_QUOTA, Action.ROW_FAILED):
                raise EndpointError(f"the Batch API refused us: {failure.message}") from exc
        else:
            self.can_list_batches = True

    # -- files ---------------------------------------------------------------------------------

    async def find_file(self, filename: str, size: int) -> str | None:
        """The id of an uploaded batch file with this name and size; None if there is none, or if the
        server cannot list files (then `can_list_files` is False)."""
        if self.can_list_files is False:
            return None

        async def op() -> str | None:
            async for f in self.client.files.list(purpose="batch"):
                if f.filename == filename and f.bytes == size:
                    return f.id
            return None

        try:
            found = await op()  # the common case, without the retry loop's bookkeeping
        except openai.APIStatusError as exc:
            if exc.status_code in NOT_OFFERED:
                self.can_list_files = False
                return None
            found = await self._call(f"files.list (looking for {filename})", op)
        except openai.APIConnectionError:
            found = await self._call(f"files.list (looking for {filename})", op)
        self.can_list_files = True
        return found

    async def upload(self, path: Path, size: int) -> str:
        """Upload a shard and return the file id. Its name is unique to the job, round and shard, so an
        upload that fails ambiguously is looked for by name before it is sent again; on a server that
        cannot list files each new try goes under a new name, and the one that may be left is noted."""
        # where nothing can be looked up, names need not be found again: a fresh one never collides
        names = [path.name if self.can_list_files is not False else f"{path.stem}.{secrets.token_hex(4)}{path.suffix}"]

        async def op() -> str:
            with path.open("rb") as f:
                return (await self.client.files.create(file=(names[-1], f), purpose="batch")).id

        async def recover() -> str | None:
            found = await self.find_file(names[-1], size)
            if found is None and self.can_list_files is False:
                self.orphan(names[-1])
                names.append(f"{path.stem}.{secrets.token_hex(4)}{path.suffix}")
            return found

        return await self._call(f"files.create (uploading {path.name})", op, recover, not_offered=_NO_BATCH_API)

    def orphan(self, filename: str) -> None:
        self.note(
            f"an upload of {filename} may have been kept by the server (its answer was lost, and this server "
            "cannot list files to check); it was uploaded again under a new name. If the server lists it, "
            "delete it there."
        )

    async def download(self, file_id: str, dest: Path) -> int:
        """Stream a file's content to disk; returns its size."""

        async def op() -> int:
            size = 0
            async with self.client.files.with_streaming_response.content(file_id) as response:
                with dest.open("wb") as f:
                    async for chunk in response.iter_bytes(1 << 20):
                        await asyncio.to_thread(f.write, chunk)
                        size += len(chunk)
            return size

        return await self._call(f"files.content ({file_id})", op)

    async def delete_file(self, file_id: str) -> None:
        async def op() -> None:
            # already gone (expired, or deleted by an earlier run) is fine
            with contextlib.suppress(openai.NotFoundError):
                await self.client.files.delete(file_id)

        await self._call(f"files.delete ({file_id})", op)

    # -- batches -------------------------------------------------------------------------------

    async def find_batch(self, tags: dict[str, str], since: float | None = None) -> BatchInfo | None:
        """The newest batch whose metadata carries all of `tags`, looking back to `since` (epoch s);
        None if there is none, or if the server cannot list batches (`can_list_batches` False)."""
        if self.can_list_batches is False:
            return None

        async def op() -> BatchInfo | None:
            after: str | None = None
            while True:
                params: dict[str, Any] = {"limit": 100}
                if after:
                    params["after"] = after
                page = await self._json("GET", "/batches", params=params)
                items = [BatchInfo.from_api(d) for d in page.get("data") or []]
                for info in items:
                    if all(info.metadata.get(k) == v for k, v in tags.items()):
                        return info
                if not page.get("has_more") or not items:
                    return None
                oldest = items[-1].created_at
                if since is not None and oldest is not None and oldest < since - 3600:
                    return None
                after = items[-1].id

        what = f"batches.list (looking for shard {tags.get('batchrun_shard', '?')}'s batch)"
        try:
            found = await op()
        except openai.APIStatusError as exc:
            if exc.status_code in NOT_OFFERED:
                self.can_list_batches = False
                return None
            found = await self._call(what, op)
        except openai.APIConnectionError:
            found = await self._call(what, op)
        self.can_list_batches = True
        return found

    async def create(self, file_id: str, endpoint: str, tags: dict[str, str], since: float | None = None) -> BatchInfo:
        """Create a batch tagged with `tags`; after an ambiguous failure, find it by its tags first."""

        async def op() -> BatchInfo:
            body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", "metadata": tags}
            return BatchInfo.from_api(await self._json("POST", "/batches", body=body))

        async def recover() -> BatchInfo | None:
            found = await self.find_batch(tags, since)
            if found is None and self.can_list_batches is False:
                self.unverified_batch(tags)
            return found if found is not None and found.input_file_id in (None, file_id) else None

        return await self._call("batches.create", op, recover, not_offered=_NO_BATCH_API)

    def unverified_batch(self, tags: dict[str, str]) -> None:
        self.note(
            f"a batch for shard {tags.get('batchrun_shard', '?')} may have been created twice (an answer was lost, "
            "and this server cannot list batches to check); if the server shows two, cancel the one batchrun "
            "does not report"
        )

    async def retrieve(self, batch_id: str) -> BatchInfo:
        async def op() -> BatchInfo:
            return BatchInfo.from_api(await self._json("GET", f"/batches/{batch_id}"))

        return await self._call(f"batches.retrieve ({batch_id})", op)

    async def cancel(self, batch_id: str) -> BatchInfo:
        async def op() -> BatchInfo:
            return BatchInfo.from_api(await self._json("POST", f"/batches/{batch_id}/cancel"))

        return await self._call(f"batches.cancel ({batch_id})", op)
