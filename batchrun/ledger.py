"""The run ledger: one SQLite file (WAL) recording every result a job has paid for.

Results are keyed by the request's fingerprint — a hash of exactly what is sent
(endpoint, model, messages, parameters, schema) — so the ledger is also the
cache: a re-run, a resumed run, or a nightly run over a file with new rows
appended sends only the requests whose fingerprint has no final result yet.

The fingerprint leaves out the output-token limit (`max_tokens`): each answer
records the limit it was asked under, and `CachePolicy` decides whether it still
stands under the job's current one (an answer that finished naturally within the
new limit does; a truncated one is asked again).

Spend is a fact apart from the cache: every paid reply adds to the `spend` table
under its job's name whatever the cache mode, so `--no-cache`, `--refresh` and
jobs sharing one ledger all count the budget exactly.

Durability: results are committed in batches of at most `COMMIT_ROWS` rows, and
a timer commits whatever was received at least every `COMMIT_SECONDS` whether
more results arrive or not; a result is committed before it is written to the
Parquet output. A hard crash (kill -9, power loss) can therefore lose at most the
requests in flight plus the last commit window; those rows are sent again on resume.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import fastjson, local_model
from .errors import UserError
from .events import EventLog
from .fingerprints import CachePolicy
from .pricing import embedded_model
from .rows import RowResult

if TYPE_CHECKING:
    from .jobs import Job


class LedgerUnavailable(UserError):
    """The ledger file cannot be created or opened (a read-only folder, a file that is not SQLite)."""


COMMIT_ROWS = 200
COMMIT_SECONDS = 0.1
SCHEMA_VERSION = "2"
SIMULATOR = "batchrun-simulator"
# statuses that are the final answer for a request; others (not_sent, retryable failures) are re-sent
FINAL_STATUSES = frozenset({"ok", "refused", "filtered", "truncated", "schema_invalid", "failed"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    fingerprint TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    error TEXT,
    attempts INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost_usd REAL,
    latency_ms REAL,
    finish_reason TEXT,
    model TEXT,
    request_id TEXT,
    output TEXT,
    raw_text TEXT,
    row_id TEXT,
    endpoint TEXT,
    created_at REAL NOT NULL,
    max_output_tokens INTEGER,
    service_tier TEXT,
    cached_tokens INTEGER
);
CREATE TABLE IF NOT EXISTS spend (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    run_id INTEGER,
    at REAL NOT NULL,
    requests INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    endpoint TEXT
);
CREATE INDEX IF NOT EXISTS spend_job ON spend (job);
CREATE TABLE IF NOT EXISTS batch_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_key TEXT NOT NULL,
    state TEXT NOT NULL,
    round INTEGER NOT NULL DEFAULT 0,
    sharding INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,
    finished_at REAL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS shards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL,
    round INTEGER NOT NULL,
    number INTEGER NOT NULL,
    path TEXT NOT NULL,
    lines INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    file_id TEXT,
    batch_id TEXT,
    batch_status TEXT,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    submits INTEGER NOT NULL DEFAULT 0,
    note TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_items (
    fingerprint TEXT PRIMARY KEY,
    shard_id INTEGER NOT NULL,
    row_id TEXT,
    attempts INTEGER NOT NULL,
    last_error TEXT
) WITHOUT ROWID;
-- covering a shard's lines (the fingerprint is the key, in every index of a WITHOUT ROWID table): reading
-- a shard's 50,000 ids back is one index range, not a key lookup a line
DROP INDEX IF EXISTS batch_items_shard;
CREATE INDEX IF NOT EXISTS batch_items_shard_rows ON batch_items (shard_id, row_id);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    rows INTEGER,
    summary TEXT
);
"""
RESULT_COLUMNS = (
    "fingerprint, status, error, attempts, prompt_tokens, completion_tokens, cost_usd, latency_ms, finish_reason, "
    "model, request_id, output, raw_text, row_id, endpoint, created_at, max_output_tokens, service_tier, cached_tokens"
)


THROUGHPUT_GAP_S = 60.0
"""Answers further apart than this belong to different runs (Ledger.throughput)."""


@dataclass(frozen=True, slots=True)
class Throughput:
    """How fast a server answered a run: answers and output tokens a second, and the mean reply latency."""

    answers: int
    answers_per_s: float
    output_tokens_per_s: float | None
    latency_s: float


_OUTPUT_JSON = json.JSONEncoder(ensure_ascii=False)
"""What `json.dumps(output, ensure_ascii=False)` writes, without making an encoder for every answer (~1/3 of
its time for a small structured answer)."""
INSERT_RESULTS = f"INSERT OR REPLACE INTO results ({RESULT_COLUMNS})"


def insert_rows(db: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]]) -> None:
    """`head` (``INSERT … INTO t (cols)``) VALUES every row, as few multi-row statements as SQLite's
    bound-parameter limit allows.

    Not `executemany`: it releases and retakes the GIL for every row, and while another thread is busy
    (the event loop of an online run) each retake waits for a switch interval — 222 rows/s against
    175,000 idle in a micro-benchmark. A statement of ~1,700 rows retakes it once, and binds its
    values in C: 179,000 rows/s idle, 87,000 beside a busy thread, against 59,000 and 48,000 for the
    one-JSON-array statement it replaces (SQLite before 3.45 re-parses the array element per column).
    """
    if not rows:
        return
    width = len(rows[0])
    per = max(1, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    one = "(" + ",".join("?" * width) + ")"
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        db.execute(f"{head} VALUES {','.join([one] * len(chunk))}", [v for row in chunk for v in row])


def select_in(db: sqlite3.Connection, sql: str, keys: Sequence[str]) -> Iterator[tuple[Any, ...]]:
    """Rows of `sql` (whose `{marks}` is an IN list) for every key, 900 keys per statement: SQLite's
    bound-parameter limit. The caller holds whatever lock the connection needs."""
    for start in range(0, len(keys), 900):
        chunk = list(keys[start : start + 900])
        yield from db.execute(sql.format(marks=",".join("?" * len(chunk))), chunk)


@dataclass(frozen=True, slots=True)
class LedgerStats:
    results: int
    by_status: dict[str, int]
    cost_usd: float
    runs: int
    last_run: dict[str, Any] | None
    runs_by_mode: dict[str, int] = field(default_factory=dict)
    """This job's invocations by mode ("online", "batch", "unfinished")."""


class Ledger:
    """Append-mostly store of final results by fingerprint. Not thread-safe: one user at a time."""

    def __init__(self, path: Path, *, job: str = "", max_output_tokens: int | None = None) -> None:
        self.path = path
        self.job = job
        """The job whose spend this connection records (jobs may share a ledger; budgets are per job)."""
        self.max_output_tokens = max_output_tokens
        """The output-token limit recorded with each answer (see CachePolicy)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as exc:
            raise LedgerUnavailable(
                f"cannot open the ledger {path}: {exc}; make its folder writable or set [output] ledger"
            ) from exc
        self.db.execute("PRAGMA synchronous=NORMAL")
        # fingerprints are random keys: a million-row job inserts all over the index, and with
        # SQLite's 2 MB default page cache those inserts slow down as the ledger grows
        self.db.execute("PRAGMA cache_size=-65536")
        self.db.executescript(_SCHEMA)
        self._migrate()
        self.events = EventLog(self.db)
        """The run's request events and marks (events.py), committed with the answers."""
        self.pending: list[tuple[Any, ...]] = []
        self.pending_spend: dict[str, list[float]] = {}  # endpoint → [requests, usd] not yet committed
        self.last_commit = time.monotonic()
        self.run_id: int | None = None
        # lookups (producer thread) and commits (writer thread) may overlap
        self.lock = threading.Lock()
        # results are queued from the event loop and from worker threads (batch collection) while the
        # commit timer swaps the queue out: a short lock of its own, never held across I/O
        self.queue_lock = threading.Lock()

    def _migrate(self) -> None:
        """Bring a ledger written by an earlier version up to this schema."""
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(results)")}
        if "max_output_tokens" not in cols:
            self.db.execute("ALTER TABLE results ADD COLUMN max_output_tokens INTEGER")
        for col, kind in (("service_tier", "TEXT"), ("cached_tokens", "INTEGER")):
            if col not in cols:  # answers recorded before tiers and caching were: NULL (unknown)
                self.db.execute(f"ALTER TABLE results ADD COLUMN {col} {kind}")
        found = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if found is not None and found[0] == "1":
            # version 1 kept spend only as each answer's cost: carried over unattributed (job ''),
            # which every job on the ledger counts against its budget, so no cap is loosened
            with self.db:
                self.db.execute(
                    "INSERT INTO spend (job, run_id, at, requests, cost_usd, endpoint) SELECT '', NULL, ?, "
                    "COUNT(*), COALESCE(SUM(cost_usd), 0), endpoint FROM results GROUP BY endpoint",
                    (time.time(),),
                )
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))

    def close(self) -> None:
        self.flush()
        with self.lock:  # never under another thread's transaction
            self.db.close()

    # -- reading -------------------------------------------------------------------------------

    def lookup(
        self,
        fingerprints: Sequence[str],
        origin: dict[str, tuple[str | None, float]] | None = None,
        policy: CachePolicy | None = None,
        rejected: dict[str, RowResult] | None = None,
    ) -> dict[str, RowResult]:
        """Final results already paid for, by fingerprint (row and row_id left for the caller); with a
        `policy`, only those it accepts (the others go into `rejected`, if given). With `origin`, also
        fills fingerprint → (row id it was first answered for, time recorded)."""
        found: dict[str, RowResult] = {}
        with self.lock:
            self._lookup(fingerprints, found, origin, policy, rejected)
        return found

    def _lookup(
        self,
        fingerprints: Sequence[str],
        found: dict[str, RowResult],
        origin: dict[str, tuple[str | None, float]] | None,
        policy: CachePolicy | None,
        rejected: dict[str, RowResult] | None = None,
    ) -> None:
        for row in select_in(
            self.db,
            "SELECT fingerprint, status, error, attempts, prompt_tokens, completion_tokens, cost_usd, "
            "latency_ms, finish_reason, model, request_id, output, raw_text, row_id, created_at, "
            "max_output_tokens, service_tier, cached_tokens FROM results WHERE fingerprint IN ({marks})",
            fingerprints,
        ):
            (
                fp,
                status,
                error,
                attempts,
                pt,
                ct,
                cost,
                lat,
                finish,
                model,
                rid,
                output,
                raw,
                row_id,
                at,
                mx,
                tier,
                cached,
            ) = row
            into = found
            if policy is not None and not policy.accepts(status, ct, mx, at):
                if rejected is None:
                    continue
                into = rejected
            if origin is not None:
                origin[fp] = (row_id, at)
            into[fp] = RowResult(
                row=-1,
                row_id="",
                status=status,
                error=error,
                attempts=attempts,
                prompt_tokens=pt,
                completion_tokens=ct,
                cost_usd=cost,
                latency_ms=lat,
                finish_reason=finish,
                model=model,
                request_id=rid,
                output=fastjson.loads(output) if output is not None else None,
                raw_text=raw,
                from_cache=True,
                service_tier=tier,
                cached_tokens=cached,
            )

    def answered(self, fingerprints: Sequence[str], policy: CachePolicy | None = None) -> dict[str, float]:
        """Fingerprint → time recorded, for those with a final answer `policy` accepts (nothing decoded)."""
        found: dict[str, float] = {}
        with self.lock:
            for fp, status, ct, mx, at in select_in(
                self.db,
                "SELECT fingerprint, status, completion_tokens, max_output_tokens, created_at FROM results "
                "WHERE fingerprint IN ({marks})",
                fingerprints,
            ):
                if policy is None or policy.accepts(status, ct, mx, at):
                    found[fp] = at
        return found

    def statuses(self, fingerprints: Sequence[str]) -> dict[str, str]:
        """Fingerprint → status of its recorded answer, for those that have one."""
        with self.lock:
            return dict(
                select_in(
                    self.db, "SELECT fingerprint, status FROM results WHERE fingerprint IN ({marks})", fingerprints
                )
            )

    def spent(self, job: str | None = None) -> float:
        """Dollars recorded as paid by `job` (default: this ledger's job) in every run, the simulator's
        excluded; spend carried over from a version-1 ledger (job '') counts for every job."""
        job = self.job if job is None else job
        with self.lock:
            (total,) = self.db.execute(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM spend WHERE (job = ? OR job = '') AND endpoint IS NOT ?",
                (job, SIMULATOR),
            ).fetchone()
        return float(total)

    def spend_by_job(self) -> dict[str, tuple[int, float]]:
        """job → (paid requests, dollars), the simulator's excluded (for `batchrun status`)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT job, SUM(requests), COALESCE(SUM(cost_usd), 0) FROM spend WHERE endpoint IS NOT ? "
                "GROUP BY job ORDER BY job",
                (SIMULATOR,),
            ).fetchall()
        return {job: (int(n or 0), float(usd)) for job, n, usd in rows}

    def throughput(self, endpoint: str, last: int = 512) -> Throughput | None:
        """How fast `endpoint` answered this ledger's last run on it: its newest `last` answers, back to the
        first gap of a minute (the run before), if ≥ 8. For `plan` on a server of your own, which states
        no limits to time a job by (a full scan: plan reads the whole input anyway)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT created_at, latency_ms, completion_tokens FROM results WHERE endpoint = ? "
                "AND latency_ms IS NOT NULL ORDER BY created_at DESC LIMIT ?",
                (endpoint, last),
            ).fetchall()
        run = rows[:1]
        for row in rows[1:]:
            if run[-1][0] - row[0] > THROUGHPUT_GAP_S:
                break
            run.append(row)
        if len(run) < 8 or run[0][0] <= run[-1][0]:
            return None
        # the replies after the first: the first's own latency came before the span began
        seconds = run[0][0] - run[-1][0]
        tokens = [r[2] for r in run[:-1] if r[2] is not None]
        return Throughput(
            answers=len(run),
            answers_per_s=(len(run) - 1) / seconds,
            output_tokens_per_s=sum(tokens) / seconds if tokens else None,
            latency_s=sum(r[1] for r in run) / len(run) / 1000,
        )

    def stats(self) -> LedgerStats:
        by_status = dict(self.db.execute("SELECT status, COUNT(*) FROM results GROUP BY status").fetchall())
        # a shared ledger holds every job's runs: this job's are those its summary names (an unfinished
        # one has no summary yet and is counted for every job, as it may be this one)
        mine = "(summary IS NULL OR json_extract(summary, '$.job') = ?)"
        runs_by_mode = dict(
            self.db.execute(
                f"SELECT COALESCE(json_extract(summary, '$.mode'), 'unfinished'), COUNT(*) FROM runs WHERE {mine} "
                "GROUP BY 1",
                (self.job,),
            ).fetchall()
        )
        runs = sum(runs_by_mode.values())
        last = self.db.execute(
            f"SELECT started_at, finished_at, rows, summary FROM runs WHERE {mine} ORDER BY id DESC LIMIT 1",
            (self.job,),
        ).fetchone()
        last_run = None
        if last:
            last_run = {
                "started_at": last[0],
                "finished_at": last[1],
                "rows": last[2],
                "summary": json.loads(last[3]) if last[3] else None,
            }
        return LedgerStats(
            results=sum(by_status.values()),
            by_status=by_status,
            cost_usd=self.spent(),
            runs=runs,
            last_run=last_run,
            runs_by_mode=runs_by_mode,
        )

    # -- writing -------------------------------------------------------------------------------

    def record_spend(self, usd: float, endpoint: str, requests: int = 1) -> None:
        """Queue a paid reply's cost for this job; committed with the next write, answers or not."""
        with self.queue_lock:
            acc = self.pending_spend.setdefault(endpoint, [0, 0.0])
            acc[0] += requests
            acc[1] += usd

    def record(self, fp: str, result: RowResult, endpoint: str) -> None:
        """Queue a final result; committed with the next flush (see COMMIT_ROWS / COMMIT_SECONDS)."""
        row = self.row(fp, result, endpoint)
        if row is not None:
            with self.queue_lock:
                self.pending.append(row)

    def row(self, fp: str, result: RowResult, endpoint: str) -> tuple[Any, ...] | None:
        """The results row a final result is kept as (RESULT_COLUMNS); None for one that is not kept."""
        if result.status not in FINAL_STATUSES or result.retryable or result.from_cache:
            return None
        output = None if result.output is None else _OUTPUT_JSON.encode(result.output)
        return (
            fp,
            result.status,
            result.error,
            result.attempts,
            result.prompt_tokens,
            result.completion_tokens,
            result.cost_usd,
            result.latency_ms,
            result.finish_reason,
            result.model,
            result.request_id,
            output,
            result.raw_text,
            result.row_id,
            endpoint,
            time.time(),
            self.max_output_tokens,
            result.service_tier,
            result.cached_tokens,
        )

    def due(self) -> bool:
        return len(self.pending) >= COMMIT_ROWS or (
            bool(self.pending) and time.monotonic() - self.last_commit >= COMMIT_SECONDS
        )

    def take(self) -> tuple[list[tuple[Any, ...]], dict[str, list[float]], Any]:
        """The queued results, spend and run events, handed over for `write` (swapped, so `record` can
        go on meanwhile)."""
        with self.queue_lock:
            batch, self.pending = self.pending, []
            spend, self.pending_spend = self.pending_spend, {}
            self.last_commit = time.monotonic()
        return batch, spend, self.events.take()

    def write(self, taken: tuple[list[tuple[Any, ...]], dict[str, list[float]], Any]) -> None:
        """Commit results and their spend in one transaction: an answer is never kept without its cost."""
        batch, spend, events = taken
        if not batch and not spend and not events[0] and not events[1]:
            return
        now = time.time()
        with self.lock, self.db:
            self.db.execute("BEGIN")
            insert_rows(self.db, INSERT_RESULTS, batch)
            self.write_spend(spend, now)
            EventLog.write(self.db, events, self.run_id)

    def write_spend(self, spend: dict[str, list[float]], now: float) -> None:
        """Spend rows (endpoint → [requests, usd]), inside the caller's transaction."""
        for endpoint, (n, usd) in spend.items():
            self.db.execute(
                "INSERT INTO spend (job, run_id, at, requests, cost_usd, endpoint) VALUES (?, ?, ?, ?, ?, ?)",
                (self.job, self.run_id, now, int(n), usd, endpoint),
            )

    def flush(self) -> None:
        self.write(self.take())

    def forget(self, fingerprints: Iterable[str]) -> None:
        """Drop cached results (for --refresh)."""
        with self.db:
            self.db.executemany("DELETE FROM results WHERE fingerprint = ?", [(fp,) for fp in fingerprints])

    def start_run(self) -> None:
        cur = self.db.execute("INSERT INTO runs (started_at) VALUES (?)", (time.time(),))
        self.run_id = cur.lastrowid

    def finish_run(self, rows: int, summary: dict[str, Any]) -> None:
        self.flush()
        if self.run_id is not None:
            self.db.execute(
                "UPDATE runs SET finished_at = ?, rows = ?, summary = ? WHERE id = ?",
                (time.time(), rows, json.dumps(summary), self.run_id),
            )


def endpoint_key(job: Job) -> tuple[str, str]:
    """(endpoint key, model as sent) a run of `job` would record answers under, without opening a client
    (for `plan`): the same as endpoints.Endpoint.cache_key and .model."""
    ep = job.endpoint
    if ep.azure_endpoint:
        return ep.azure_endpoint.rstrip("/"), ep.azure_deployment or job.request.model
    spec = embedded_model(job)
    if spec is not None:  # the embedded model: its file names it (Endpoint.cache_key)
        base = job.source_path.parent if job.source_path is not None else None
        return f"local:{local_model.model_path(spec, base).name}", job.request.model
    if ep.base_url is None and not os.environ.get(ep.api_key_env):
        return SIMULATOR, job.request.model
    base = ep.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    return base.rstrip("/"), job.request.model


def legacy_ledger_path(output: Path) -> Path:
    """Where versions before 0.2 kept a job's ledger: beside its output."""
    return output.with_name(output.name + ".ledger.sqlite")


def adopt_legacy_ledger(legacy: Path, path: Path) -> bool:
    """Move a ledger from its old default place beside the output to the job's own (under the job's lock),
    so an upgrade re-sends nothing. Returns whether one was moved."""
    if path.exists() or not legacy.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(legacy)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # fold the WAL in, so one file carries everything
    finally:
        db.close()
    legacy.rename(path)
    for suffix in ("-wal", "-shm"):
        Path(str(legacy) + suffix).unlink(missing_ok=True)
    return True
