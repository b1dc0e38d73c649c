"""The simulator's Files and Batch API, with OpenAI's validation, lifecycle and file formats.

A batch's state is advanced lazily whenever it is read, from the time that has
passed, on the configured time scale: validating → in_progress → finalizing →
completed (or failed / expired / cancelling → cancelled). Output lines come back
shuffled, successes in the output file, failures in the error file.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import shutil
import tempfile
import time
import warnings
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import content
from .records import BatchRec, FileRec
from .responder import error_body, markers

# aiohttp's multipart reader calls its own deprecated unread_data() when a read happens to span
# a part boundary; harmless, and not ours to fix
warnings.filterwarnings("ignore", message=r"unread_data\(\) is deprecated", category=DeprecationWarning)

if TYPE_CHECKING:
    from .server import Simulator

ENDPOINTS = {"/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/completions", "/v1/moderations"}
PENDING = {"validating", "in_progress", "finalizing", "cancelling"}


def _line_error(code: str, line: int | None, param: str | None, message: str) -> dict[str, Any]:
    """One entry of a failed batch's `errors.data`, as OpenAI reports validation errors."""
    return {"code": code, "line": line, "param": param, "message": message}


class BatchStore:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.dir = Path(tempfile.mkdtemp(prefix="batchrun-sim-"))
        self.files: dict[str, FileRec] = {}
        self.batches: dict[str, BatchRec] = {}
        self.counters: Counter[str] = Counter()

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def stats(self) -> dict[str, Any]:
        by_status = Counter(b.status for b in self.batches.values())
        return {**dict(self.counters), "by_status": dict(by_status), "files": len(self.files)}

    def add_routes(self, app: web.Application) -> None:
        # OpenAI's paths under /v1, Azure OpenAI's under /openai (with ?api-version=)
        for prefix in ("/v1", "/openai"):
            app.add_routes(
                [
                    web.post(f"{prefix}/files", self._gate(self.upload)),
                    web.get(f"{prefix}/files", self._gate(self.list_files)),
                    web.get(f"{prefix}/files/{{id}}", self._gate(self.get_file)),
                    web.get(f"{prefix}/files/{{id}}/content", self._gate(self.file_content)),
                    web.delete(f"{prefix}/files/{{id}}", self._gate(self.delete_file)),
                    web.post(f"{prefix}/batches", self._gate(self.create)),
                    web.get(f"{prefix}/batches", self._gate(self.list_batches)),
                    web.get(f"{prefix}/batches/{{id}}", self._gate(self.retrieve)),
                    web.post(f"{prefix}/batches/{{id}}/cancel", self._gate(self.cancel)),
                ]
            )

    def _gate(self, handler: Any) -> Any:
        """Routes answer 404 when the simulated server has no Batch API (batch_api = false)."""

        async def gated(request: web.Request) -> web.StreamResponse:
            if not self.sim.config.batch_api:
                return web.json_response(
                    {"error": {"message": "Not Found", "type": "invalid_request_error"}}, status=404
                )
            return await handler(request)

        return gated

    def _error(self, status: int, message: str, code: str | None = None, param: str | None = None) -> web.Response:
        return web.json_response(error_body(message, "invalid_request_error", code, param), status=status)

    # -- files ---------------------------------------------------------------------------------

    def _new_file(self, filename: str, purpose: str, data: bytes | None = None) -> FileRec:
        fid = "file-" + secrets.token_hex(12)
        path = self.dir / fid
        if data is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        rec = FileRec(fid, filename, purpose, len(data or b""), int(time.time()), path)
        self.files[fid] = rec
        return rec

    async def upload(self, request: web.Request) -> web.Response:
        if self.sim.config.insufficient_quota:
            return web.json_response(
                error_body("You exceeded your current quota.", "insufficient_quota", "insufficient_quota"), status=429
            )
        reader = await request.multipart()
        purpose, filename, size = None, None, 0
        fid = "file-" + secrets.token_hex(12)
        self.dir.mkdir(parents=True, exist_ok=True)  # a temp cleaner may have removed it
        path = self.dir / fid
        too_large = False
        while (part := await reader.next()) is not None:
            if part.name == "purpose":
                purpose = (await part.text()).strip()  # type: ignore[union-attr]
            elif part.name == "file":
                filename = part.filename or "upload.jsonl"  # type: ignore[union-attr]
                with path.open("wb") as f:
                    # read to the end even when too large, so the answer follows a fully read request
                    while chunk := await part.read_chunk(1 << 20):  # type: ignore[union-attr]
                        size += len(chunk)
                        if size > self.sim.config.max_file_bytes:
                            too_large = True
                        if not too_large:
                            f.write(chunk)
        if too_large:
            path.unlink(missing_ok=True)
            return self._error(400, "File is too large.", "file_too_large", "file")
        if filename is None:
            return self._error(400, "Missing file", None, "file")
        if purpose not in ("batch", "fine-tune", "assistants", "user_data", "vision", "evals"):
            path.unlink(missing_ok=True)
            return self._error(400, f"Invalid purpose {purpose!r}", None, "purpose")
        if purpose == "batch" and not filename.endswith(".jsonl"):
            path.unlink(missing_ok=True)
            return self._error(400, "Invalid file format for Batch API. Must be .jsonl", None, "file")
        rec = FileRec(fid, filename, purpose, size, int(time.time()), path)
        self.files[fid] = rec
        self.counters["files_uploaded"] += 1
        cfg = self.sim.config
        if cfg.upload_500s > 0:  # stored, and the answer lost: the client cannot know the id
            self.sim.config = cfg.updated({"upload_500s": cfg.upload_500s - 1})
            return self._server_error()
        return web.json_response(rec.to_dict())

    def _server_error(self) -> web.Response:
        message = "The server had an error while processing your request. Sorry about that!"
        return web.json_response(error_body(message, "server_error"), status=500)

    def _not_allowed(self) -> web.Response:
        return web.json_response(
            {"error": {"message": "Method Not Allowed", "type": "invalid_request_error"}}, status=405
        )

    async def list_files(self, request: web.Request) -> web.Response:
        if not self.sim.config.list_files:
            return self._not_allowed()
        purpose = request.query.get("purpose")
        data = [f.to_dict() for f in self.files.values() if purpose in (None, f.purpose)]
        data.sort(key=lambda d: d["created_at"], reverse=True)
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def get_file(self, request: web.Request) -> web.Response:
        rec = self.files.get(request.match_info["id"])
        if rec is None:
            return self._error(404, f"No such File object: {request.match_info['id']}", None, "id")
        return web.json_response(rec.to_dict())

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        rec = self.files.get(request.match_info["id"])
        if rec is None:
            return self._error(404, f"No such File object: {request.match_info['id']}", None, "id")
        self.counters["files_downloaded"] += 1
        return web.FileResponse(rec.path, headers={"content-type": "application/octet-stream"})

    async def delete_file(self, request: web.Request) -> web.Response:
        rec = self.files.pop(request.match_info["id"], None)
        if rec is None:
            return self._error(404, f"No such File object: {request.match_info['id']}", None, "id")
        rec.path.unlink(missing_ok=True)
        self.counters["files_deleted"] += 1
        return web.json_response({"id": rec.id, "object": "file", "deleted": True})

    # -- batches -------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        cfg = self.sim.config
        if cfg.create_500s > 0:
            self.sim.config = cfg.updated({"create_500s": cfg.create_500s - 1})
            return self._server_error()
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return self._error(400, "We could not parse the JSON body of your request.")
        fid = body.get("input_file_id")
        if fid not in self.files:
            return self._error(400, f"No such File object: {fid}", None, "input_file_id")
        if body.get("endpoint") not in ENDPOINTS:
            return self._error(400, f"Invalid endpoint {body.get('endpoint')!r}", None, "endpoint")
        if body.get("completion_window") != "24h":
            return self._error(400, "completion_window must be '24h'", None, "completion_window")
        meta = body.get("metadata")
        if meta is not None and (len(meta) > 16 or any(len(k) > 64 or len(str(v)) > 512 for k, v in meta.items())):
            return self._error(
                400, "metadata: at most 16 pairs, keys ≤ 64 and values ≤ 512 characters", None, "metadata"
            )
        now = time.time()
        rec = BatchRec(
            id="batch_" + secrets.token_hex(12),
            endpoint=body["endpoint"],
            input_file_id=fid,
            completion_window="24h",
            metadata=meta,
            created_at=int(now),
            t0=time.monotonic(),
        )
        self.batches[rec.id] = rec
        self.counters["batches_created"] += 1
        return web.json_response(self.to_dict(rec))

    async def list_batches(self, request: web.Request) -> web.Response:
        if not self.sim.config.list_batches:
            return self._not_allowed()
        limit = int(request.query.get("limit", "20"))
        after = request.query.get("after")
        ordered = list(reversed(self.batches.values()))  # newest first, as OpenAI lists them
        if after:
            ids = [b.id for b in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        page = ordered[:limit]
        for rec in page:
            await self.advance(rec)
        data = [self.to_dict(b) for b in page]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "has_more": len(ordered) > limit,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def retrieve(self, request: web.Request) -> web.Response:
        rec = self.batches.get(request.match_info["id"])
        if rec is None:
            return self._error(404, f"No such Batch object: {request.match_info['id']}", None, "id")
        await self.advance(rec)
        return web.json_response(self.to_dict(rec))

    async def cancel(self, request: web.Request) -> web.Response:
        rec = self.batches.get(request.match_info["id"])
        if rec is None:
            return self._error(404, f"No such Batch object: {request.match_info['id']}", None, "id")
        await self.advance(rec)
        if rec.status in ("validating", "in_progress"):
            now = time.monotonic()
            started = rec.t_in_progress
            run_s = self.sim.config.batch_run_seconds
            rec.done_fraction = 0.0 if started is None else min(max((now - started) / run_s, 0.0), 1.0)
            rec.status = "cancelling"
            rec.t_cancel = now
            rec.stamps["cancelling_at"] = int(time.time())
        return web.json_response(self.to_dict(rec))

    def to_dict(self, rec: BatchRec) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": rec.id,
            "object": "batch",
            "endpoint": rec.endpoint,
            "model": rec.model,
            "errors": {"object": "list", "data": rec.errors} if rec.errors else None,
            "input_file_id": rec.input_file_id,
            "completion_window": rec.completion_window,
            "status": rec.status,
            "output_file_id": rec.output_file_id,
            "error_file_id": rec.error_file_id,
            "created_at": rec.created_at,
            "expires_at": rec.created_at + 86400,
            "request_counts": dict(rec.counts),
            "metadata": rec.metadata,
            "usage": {
                "input_tokens": rec.input_tokens,
                "output_tokens": rec.output_tokens,
                "total_tokens": rec.input_tokens + rec.output_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }
        for name in (
            "in_progress_at",
            "finalizing_at",
            "completed_at",
            "failed_at",
            "expired_at",
            "cancelling_at",
            "cancelled_at",
        ):
            d[name] = rec.stamps.get(name)
        if self.sim.config.azure_batch_style:
            d = self._azure(d)
        return d

    @staticmethod
    def _azure(d: dict[str, Any]) -> dict[str, Any]:
        """The same batch as Azure OpenAI reports it."""
        d = dict(d)
        d["status"] = "".join(part.capitalize() for part in d["status"].split("_"))  # in_progress → InProgress
        for key, value in list(d.items()):
            if key.endswith("_at") and isinstance(value, int):
                d[key] = datetime.fromtimestamp(value, tz=UTC).isoformat().replace("+00:00", "Z")
        if d["status"] == "Validating":
            d["request_counts"] = None
        d.pop("usage", None)
        return d

    # -- lifecycle -----------------------------------------------------------------------------

    async def advance(self, rec: BatchRec) -> None:
        async with rec.lock:
            cfg = self.sim.config
            now = time.monotonic()
            if rec.status == "validating" and now >= rec.t0 + cfg.batch_validate_seconds:
                await asyncio.to_thread(self._validate, rec)
                if rec.status == "in_progress":
                    rec.t_in_progress = rec.t0 + cfg.batch_validate_seconds
            if rec.status == "in_progress":
                assert rec.t_in_progress is not None
                frac = min((now - rec.t_in_progress) / cfg.batch_run_seconds, 1.0)
                rec.counts["completed"] = int(rec.counts["total"] * frac)
                end = rec.t_in_progress + cfg.batch_run_seconds
                if now >= end:
                    if cfg.batch_expire:
                        rec.done_fraction = cfg.batch_expire_done_fraction
                        await asyncio.to_thread(
                            self._finish,
                            rec,
                            "expired",
                            "batch_expired",
                            "This request could not be executed before the completion window expired.",
                        )
                        rec.stamps["expired_at"] = int(time.time())
                    else:
                        rec.status = "finalizing"
                        rec.stamps["finalizing_at"] = int(time.time())
            if (
                rec.status == "finalizing"
                and now >= rec.t_in_progress + cfg.batch_run_seconds + cfg.batch_finalize_seconds
            ):  # type: ignore[operator]
                rec.done_fraction = 1.0
                await asyncio.to_thread(self._finish, rec, "completed", "", "")
                rec.stamps["completed_at"] = int(time.time())
            if (
                rec.status == "cancelling"
                and rec.t_cancel is not None
                and now >= rec.t_cancel + cfg.batch_finalize_seconds
            ):
                await asyncio.to_thread(
                    self._finish,
                    rec,
                    "cancelled",
                    "batch_cancelled",
                    "This request was cancelled before it was executed.",
                )
                rec.stamps["cancelled_at"] = int(time.time())

    def _validate(self, rec: BatchRec) -> None:
        cfg = self.sim.config
        errors: list[dict[str, Any]] = []
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        models: set[str] = set()
        path = self.files[rec.input_file_id].path if rec.input_file_id in self.files else None
        if path is None or not path.exists():
            errors.append(_line_error("file_not_found", None, "input_file_id", "The input file was deleted."))
        else:
            with path.open("rb") as f:
                for n, raw in enumerate(f, start=1):
                    if not raw.strip():
                        continue
                    if len(lines) >= cfg.max_batch_lines:
                        errors = [
                            _line_error(
                                "too_many_requests",
                                None,
                                None,
                                f"The input file has more than {cfg.max_batch_lines} requests.",
                            )
                        ]
                        break
                    try:
                        line = json.loads(raw)
                    except json.JSONDecodeError:
                        errors.append(
                            _line_error("invalid_json_line", n, None, "This line is not parseable as valid JSON.")
                        )
                        continue
                    cid = line.get("custom_id") if isinstance(line, dict) else None
                    if not isinstance(cid, str) or not cid:
                        errors.append(
                            _line_error(
                                "missing_required_parameter", n, "custom_id", "Missing required parameter: 'custom_id'."
                            )
                        )
                        continue
                    if cid in seen:
                        errors.append(
                            _line_error(
                                "duplicate_custom_id",
                                n,
                                "custom_id",
                                f"The custom_id for this request is a duplicate of another request: {cid}",
                            )
                        )
                        continue
                    seen.add(cid)
                    if line.get("method") != "POST":
                        errors.append(_line_error("invalid_method", n, "method", "Only POST is supported."))
                    if line.get("url") != rec.endpoint:
                        errors.append(
                            _line_error(
                                "invalid_url",
                                n,
                                "url",
                                f"The URL provided for this request does not match the batch endpoint {rec.endpoint}.",
                            )
                        )
                    body = line.get("body")
                    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
                        errors.append(
                            _line_error(
                                "missing_required_parameter",
                                n,
                                "body.model",
                                "Missing required parameter: 'body.model'.",
                            )
                        )
                        continue
                    if any(kind == "badline" for kind, _ in markers(body)):
                        errors.append(
                            _line_error(
                                "invalid_request", n, "body", "Invalid request body (forced by [[sim:badline]])."
                            )
                        )
                        continue
                    models.add(body["model"])
                    if len(models) > 1:
                        errors.append(
                            _line_error(
                                "mismatched_model",
                                n,
                                "body.model",
                                "The provided model does not match the model of other "
                                "requests in the file: one model per batch file.",
                            )
                        )
                        models.discard(body["model"])
                        continue
                    lines.append(line)
                    if len(errors) >= 100:
                        break
        if not errors and not lines:
            errors.append(_line_error("empty_file", None, None, "The batch input file is empty."))
        rec.model = next(iter(models), None)
        if errors:
            self._fail(rec, errors)
            return
        responder = self.sim.responder
        tokens = 0
        for line in lines:
            body = line["body"]
            if rec.endpoint == "/v1/embeddings":
                _, counts = responder.embeddings_tokens(cfg, body)
                tokens += sum(counts)
            else:
                tokens += responder.chat_prompt_tokens(body)
        limit = cfg.batch_queue_limit_tokens
        if limit is not None:
            queued = sum(
                b.input_tokens
                for b in self.batches.values()
                if b is not rec and b.status in PENDING and b.model == rec.model
            )
            if queued + tokens > limit:
                self._fail(
                    rec,
                    [
                        _line_error(
                            "token_limit_exceeded",
                            None,
                            None,
                            f"Enqueued token limit reached for {rec.model} in organization org-sim. "
                            f"Limit: {limit:,} enqueued tokens. Please try submitting an equivalent batch "
                            "after some time.",
                        )
                    ],
                )
                return
        rec.lines = lines
        rec.input_tokens = tokens
        rec.counts["total"] = len(lines)
        rec.status = "in_progress"
        rec.stamps["in_progress_at"] = int(time.time())

    def _fail(self, rec: BatchRec, errors: list[dict[str, Any]]) -> None:
        rec.status = "failed"
        rec.errors = errors
        rec.stamps["failed_at"] = int(time.time())
        self.counters["batches_failed"] += 1

    def _finish(self, rec: BatchRec, status: str, unfinished_code: str, unfinished_message: str) -> None:
        """Run the finished share of the lines and write the output and error files."""
        cfg = self.sim.config
        sim = self.sim
        rng = random.Random(f"{cfg.seed}:{rec.id}")
        n_done = round(len(rec.lines) * rec.done_fraction)
        ok_lines: list[str] = []
        err_lines: list[str] = []
        in_tok = out_tok = 0
        for i, line in enumerate(rec.lines):
            cid = line["custom_id"]
            body = line["body"]
            rid = "batch_req_" + secrets.token_hex(12)
            if i >= n_done:
                err_lines.append(
                    json.dumps(
                        {
                            "id": rid,
                            "custom_id": cid,
                            "response": None,
                            "error": {"code": unfinished_code, "message": unfinished_message},
                        }
                    )
                )
                continue
            digest = content.body_digest(json.dumps(body, sort_keys=True).encode())
            forced = sim.forced(body, digest)  # [[sim:500*1]] fails the first batch only
            if rng.random() < cfg.batch_line_error_rate or "500" in forced:
                reply_status, reply_body = (
                    500,
                    error_body("The server had an error processing your request.", "server_error"),
                )
            elif "400" in forced:
                reply_status, reply_body = (
                    400,
                    error_body("Invalid request: forced by [[sim:400]]", "invalid_request_error"),
                )
            elif rec.endpoint == "/v1/embeddings":
                bad, counts = sim.responder.embeddings_tokens(cfg, body)
                reply = bad or sim.responder.embeddings(cfg, body, counts)
                reply_status, reply_body = reply.status, reply.body
                in_tok += reply.prompt_tokens
            else:
                bad = sim.responder.validate_chat(cfg, body)
                reply = bad or sim.responder.chat(cfg, body, digest, forced, rng.random())
                reply_status, reply_body = reply.status, reply.body
                in_tok += reply.prompt_tokens
                out_tok += reply.completion_tokens
            if reply_status == 200:
                sim.stats.ok_bodies[digest] += 1
            out = json.dumps(
                {
                    "id": rid,
                    "custom_id": cid,
                    "response": {
                        "status_code": reply_status,
                        "request_id": "req_" + secrets.token_hex(8),
                        "body": reply_body,
                    },
                    "error": None,
                }
            )
            (ok_lines if reply_status == 200 else err_lines).append(out)
        rng.shuffle(ok_lines)
        rng.shuffle(err_lines)
        if ok_lines:
            rec.output_file_id = self._new_file(
                f"{rec.id}_output.jsonl", "batch_output", ("\n".join(ok_lines) + "\n").encode()
            ).id
        if err_lines:
            rec.error_file_id = self._new_file(
                f"{rec.id}_error.jsonl", "batch_output", ("\n".join(err_lines) + "\n").encode()
            ).id
        rec.counts = {
            "total": len(rec.lines),
            "completed": len(ok_lines),
            "failed": len(err_lines) if status == "completed" else len(err_lines) - (len(rec.lines) - n_done),
        }
        rec.input_tokens, rec.output_tokens = in_tok or rec.input_tokens, out_tok
        rec.status = status
        rec.lines = []
        self.counters[f"batches_{status}"] += 1
