"""The run report: what a run did, as one self-contained HTML file a person can open anywhere.

`write_report(job)` reads the run's events and marks from the ledger (events.py), its summary (the
`runs` table), and the output Parquet, and writes `<output>.report.html`: rows by status with what to
do about each, throughput and tokens per minute against the limits with 429s and pauses marked,
latency, retries and their causes, cost by status / model / tier against the budget, the slowest
and most expensive rows, the commonest errors, Batch API shards and document chapters.

The charts are inline SVG drawn here: no script, no CDN, nothing to fetch — it opens offline, in a
mail attachment or a CI artifact, and a browser has nothing to run (so nothing to fail). A chart
library's embedded JS would add ~200 kB–1 MB per report for four simple charts. The figures are
also embedded as JSON (`<script type="application/json" id="report-data">`) for tools and tests.
"""

from __future__ import annotations

import bisect
import html
import json
import shlex
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .events import RequestTotals, read_marks, read_request_totals
from .jobs import Job
from .results import STATUS_ORDER, percentile
from .sources import ID_COLUMN

TOP = 10
COLORS = {"ok": "#2e7d32", "rate_limited": "#c62828", "retried": "#ef6c00", "unavailable": "#6a1b9a"}


def _what_to_do(status: str, job_path: str) -> str:
    run = f"batchrun run {job_path}"
    return {
        "ok": "nothing: answered",
        "refused": f"the model declined; review the rows, or send them again: {run} --retry refused",
        "filtered": f"a content filter stopped the reply; review the rows, or: {run} --retry filtered",
        "truncated": f"the reply hit max_tokens; raise [request] max_tokens, then: {run} --retry truncated",
        "schema_invalid": f"the reply did not match the schema; [request] retry_bad_replies, or: {run} --retry schema_invalid",
        "too_long": "the prompt does not fit the model's context or the TPM limit: shorten it or use a larger model",
        "failed": f"retryable failures go again with {run}; final ones with: {run} --retry failed",
        "empty_input": 'the template\'s columns are empty: fill them, or [input] empty = "send"',
        "not_sent": f"the run stopped before sending them: {run}",
    }.get(status, f"see the error column; {run} --retry {status}")


@dataclass
class Report:
    """The report's figures, gathered once (and embedded as JSON beside the charts)."""

    job: str
    job_path: str
    run: dict[str, Any]
    summary: dict[str, Any]
    by_status: dict[str, int]
    cost_by_status: dict[str, float]
    cost_by_model: dict[str, float]
    cost_by_tier: dict[str, list[float]]
    output_cost: float
    rows: int
    marks: list[dict[str, Any]]
    slowest: list[dict[str, Any]]
    dearest: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    budget: float | None
    spent: float
    shards: list[dict[str, Any]] = field(default_factory=list)
    shard_marks: list[dict[str, Any]] = field(default_factory=list)
    chapters: list[dict[str, Any]] = field(default_factory=list)
    requests: RequestTotals = field(default_factory=RequestTotals)
    """The run's requests, summed (events.read_request_totals)."""
    events: list[dict[str, Any]] | None = None
    """Or the events themselves, as dicts of REQUEST_COLUMNS: summed into `requests` when given."""

    def __post_init__(self) -> None:
        if self.events is not None:
            self.requests = RequestTotals.of(self.events)
            self.events = None  # summed: not kept

    def figures(self) -> dict[str, Any]:
        q = self.requests
        ok_lat = sorted(q.ok_latencies)
        return {
            "job": self.job,
            "run_id": self.run.get("id"),
            "rows": self.rows,
            "by_status": self.by_status,
            "output_cost_usd": self.output_cost,
            "run_cost_usd": self.summary.get("cost_usd"),
            "summary_by_status": self.summary.get("by_status"),
            "requests": q.requests,
            "outcomes": dict(q.outcomes),
            "latency_ms": {"p50": percentile(ok_lat, 50), "p95": percentile(ok_lat, 95), "p99": percentile(ok_lat, 99)},
            "cached_tokens": q.ok_cached_tokens,
            "cost_by_model": self.cost_by_model,
            "cost_by_tier": self.cost_by_tier,
            "budget_usd": self.budget,
            "spent_usd": self.spent,
        }


def gather(job: Job, *, ledger_path: Path | None = None, run_id: int | None = None) -> Report:
    """The figures of one run (the latest, unless `run_id`) from the ledger and the output."""
    import polars as pl

    path = ledger_path or job.ledger_file
    if not path.exists():
        raise FileNotFoundError(f"no ledger at {path}: run the job first")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT id, started_at, finished_at, rows, summary FROM runs "
            + ("WHERE id = ?" if run_id is not None else "WHERE summary IS NOT NULL ORDER BY id DESC LIMIT 1"),
            (run_id,) if run_id is not None else (),
        ).fetchone()
        if row is None:
            raise FileNotFoundError(f"{path} has no finished run" + (f" {run_id}" if run_id is not None else ""))
        run = dict(zip(("id", "started_at", "finished_at", "rows", "summary"), row, strict=True))
        summary = json.loads(run.pop("summary") or "{}")
        requests = read_request_totals(db, run["id"])
        marks = read_marks(db, run["id"], ("limits",))
        shard_marks = [
            {"at": at, "note": note}
            for at, note in db.execute("SELECT at, note FROM run_marks WHERE kind = 'shard' ORDER BY at")
        ]
        shards = [
            dict(zip(("round", "number", "lines", "tokens", "state", "batch_status", "completed", "failed", "submits"), r, strict=True))
            for r in db.execute(
                "SELECT round, number, lines, tokens, state, batch_status, completed, failed, submits FROM shards "
                "WHERE run_id = (SELECT MAX(id) FROM batch_runs) ORDER BY round, number"
            )
        ]  # fmt: skip
        spent = db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM spend WHERE job IN (?, '')", (job.name,)).fetchone()[
            0
        ]
    finally:
        db.close()

    if job.table_path.exists():
        frame = pl.scan_parquet(job.table_path)
    else:  # a Batch API run still under way: no output yet, only its shards and requests
        frame = pl.LazyFrame(
            schema={"status": pl.String, "error": pl.String, "cost_usd": pl.Float64, "latency_ms": pl.Float64,
                    "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64, "model": pl.String,
                    "service_tier": pl.String, "from_cache": pl.Boolean}
        )  # fmt: skip
    names = frame.collect_schema().names()
    id_col = next((c for c in (job.input.id_column, ID_COLUMN, "id") if c and c in names), None)
    ids = pl.col(id_col).cast(pl.String) if id_col else pl.int_range(pl.len()).cast(pl.String)
    cost = pl.col("cost_usd").fill_null(0.0)
    by = frame.group_by("status").agg(pl.len().alias("n"), cost.sum().alias("usd")).collect()
    by_status = {s: n for s, n, _ in by.iter_rows()}
    order = {s: i for i, s in enumerate(STATUS_ORDER)}
    by_status = dict(sorted(by_status.items(), key=lambda kv: order.get(kv[0], 99)))
    paid = frame.filter(~pl.col("from_cache").fill_null(False))
    models = paid.group_by("model").agg(cost.sum().alias("usd")).collect()
    tiers = paid.group_by("service_tier").agg(pl.len().alias("n"), cost.sum().alias("usd")).collect()
    shown = [ids.alias("row"), "status", "latency_ms", "cost_usd", "prompt_tokens", "completion_tokens", "error"]
    slowest = frame.select(shown).drop_nulls("latency_ms").sort("latency_ms", descending=True).head(TOP).collect()
    dearest = frame.select(shown).drop_nulls("cost_usd").sort("cost_usd", descending=True).head(TOP).collect()
    errors = (
        frame.filter(pl.col("error").is_not_null())
        .group_by(pl.col("error").str.slice(0, 160).alias("error"))
        .agg(pl.len().alias("rows"), ids.head(5).alias("examples"), pl.col("status").first())
        .sort("rows", descending=True)
        .head(TOP)
        .collect()
    )
    chapters: list[dict[str, Any]] = []
    if "chapter" in names:
        chapters = (
            frame.group_by("chapter")
            .agg(pl.len().alias("paragraphs"), (pl.col("status") == "ok").sum().alias("ok"), cost.sum().alias("usd"))
            .sort("chapter")
            .collect()
            .to_dicts()
        )
    return Report(
        job=job.name,
        job_path=shlex.quote(str(job.source_path)) if job.source_path else job.name,
        run=run,
        summary=summary,
        by_status=by_status,
        cost_by_status={s: usd for s, _, usd in by.iter_rows()},
        cost_by_model={str(m): usd for m, usd in models.iter_rows()},
        cost_by_tier={str(t): [n, usd] for t, n, usd in tiers.iter_rows() if t is not None},
        output_cost=float(by["usd"].sum()),
        rows=int(by["n"].sum()),
        requests=requests,
        marks=marks,
        slowest=slowest.to_dicts(),
        dearest=dearest.to_dicts(),
        errors=errors.to_dicts(),
        budget=job.budget.max_usd,
        spent=float(spent),
        shards=shards,
        shard_marks=shard_marks,
        chapters=chapters,
    )


# -- charts (inline SVG) --------------------------------------------------------------------------

W, H, PAD_L, PAD_B, PAD_T, PAD_R = 760, 240, 64, 34, 16, 16


def _fmt(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1e6:.1f}M"
    if v >= 10_000:
        return f"{v / 1e3:.0f}k"
    if v >= 1000:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}" if v >= 10 or v == 0 else f"{v:.2g}"


def _axes(x_max: float, y_max: float, x_label: str, y_label: str) -> list[str]:
    out = [
        f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" stroke="#555"/>',
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}" stroke="#555"/>',
        f'<text x="{W / 2}" y="{H - 4}" text-anchor="middle" class="ax">{html.escape(x_label)}</text>',
        f'<text x="12" y="{H / 2}" text-anchor="middle" class="ax" transform="rotate(-90 12 {H / 2})">'
        f"{html.escape(y_label)}</text>",
    ]
    for i in range(5):
        y = PAD_T + (H - PAD_B - PAD_T) * (1 - i / 4)
        out.append(f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(y_max * i / 4)}</text>')
        out.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{W - PAD_R}" y2="{y:.1f}" stroke="#eee"/>')
        x = PAD_L + (W - PAD_L - PAD_R) * i / 4
        out.append(
            f'<text x="{x:.1f}" y="{H - PAD_B + 14}" text-anchor="middle" class="tick">{_fmt(x_max * i / 4)}</text>'
        )
    return out


def _xy(x: float, y: float, x_max: float, y_max: float) -> tuple[float, float]:
    return (
        PAD_L + (W - PAD_L - PAD_R) * (x / x_max if x_max else 0),
        H - PAD_B - (H - PAD_B - PAD_T) * (min(y, y_max) / y_max if y_max else 0),
    )


def line_chart(
    name: str,
    series: list[tuple[str, str, list[tuple[float, float]]]],
    *,
    x_label: str,
    y_label: str,
    limit: list[tuple[float, float]] | None = None,
    markers: list[float] | None = None,
    bands: list[tuple[float, float]] | None = None,
) -> str:
    """Lines over time, a dashed step line for the limit, red ticks for 429s, grey bands for pauses."""
    points = [p for _, _, pts in series for p in pts] + (limit or [])
    x_max = max((x for x, _ in points), default=1.0) or 1.0
    y_max = max((y for _, y in points), default=1.0) * 1.1 or 1.0
    parts = [f'<svg class="chart" data-chart="{name}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">']
    for x0, x1 in bands or []:
        (a, _), (b, _) = _xy(x0, 0, x_max, y_max), _xy(x1, 0, x_max, y_max)
        parts.append(
            f'<rect x="{a:.1f}" y="{PAD_T}" width="{max(b - a, 1):.1f}" height="{H - PAD_B - PAD_T}" fill="#ddd"/>'
        )
    parts += _axes(x_max, y_max, x_label, y_label)
    for label, color, pts in series:
        if pts:
            path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in
                            enumerate(_xy(px, py, x_max, y_max) for px, py in pts))  # fmt: skip
            parts.append(
                f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.6"><title>{html.escape(label)}</title></path>'
            )
    if limit:
        steps: list[tuple[float, float]] = []
        for i, (x, y) in enumerate(limit):
            if i:
                steps.append((x, limit[i - 1][1]))
            steps.append((x, y))
        path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in
                        enumerate(_xy(px, py, x_max, y_max) for px, py in steps))  # fmt: skip
        parts.append(f'<path d="{path}" fill="none" stroke="#1565c0" stroke-dasharray="6 4" class="limit"/>')
    for x in markers or []:
        px, _ = _xy(x, 0, x_max, y_max)
        parts.append(
            f'<line class="mark429" x1="{px:.1f}" y1="{H - PAD_B}" x2="{px:.1f}" y2="{H - PAD_B - 10}" stroke="#c62828"/>'
        )
    legend = [(label, color) for label, color, _ in series] + ([("limit", "#1565c0")] if limit else [])
    legend += [("429", "#c62828")] if markers else []
    legend += [("paused", "#bbb")] if bands else []
    x = PAD_L + 10
    for label, color in legend:  # side by side, each as wide as its label
        parts.append(f'<rect x="{x}" y="{PAD_T + 2}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{x + 14}" y="{PAD_T + 11}" class="tick">{html.escape(label)}</text>')  # fmt: skip
        x += 30 + 6 * len(label)
    parts.append("</svg>")
    return "".join(parts)


def histogram(name: str, values: Sequence[float], *, x_label: str, bins: int = 40) -> str:
    if not values:
        return f'<p class="none" data-chart="{name}">no values</p>'
    top = max(values) or 1.0
    width = top / bins
    counts = [0] * bins
    for v in values:
        counts[min(int(v / width), bins - 1)] += 1
    y_max = max(counts) * 1.1
    parts = [f'<svg class="chart" data-chart="{name}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">']
    parts += _axes(top, y_max, x_label, "requests")
    bar_w = (W - PAD_L - PAD_R) / bins
    for i, n in enumerate(counts):
        x, y = _xy(i * width, n, top, y_max)
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" height="{H - PAD_B - y:.1f}" fill="#546e7a"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def bars(name: str, items: list[tuple[str, float]], *, unit: str = "") -> str:
    """Horizontal bars, one per item, with their values."""
    if not items:
        return f'<p class="none" data-chart="{name}">nothing to show</p>'
    top = max(v for _, v in items) or 1.0
    row = 22
    height = row * len(items) + 8
    parts = [
        f'<svg class="chart" data-chart="{name}" viewBox="0 0 {W} {height}" width="{W}" height="{height}" role="img">'
    ]
    for i, (label, v) in enumerate(items):
        y = 4 + i * row
        length = (W - 320) * v / top
        parts.append(f'<text x="150" y="{y + 14}" text-anchor="end" class="tick">{html.escape(label)}</text>'
                     f'<rect class="bar" x="158" y="{y + 3}" width="{max(length, 1):.1f}" height="{row - 8}" fill="#546e7a"/>'
                     f'<text x="{164 + length:.1f}" y="{y + 14}" class="tick">{html.escape(unit)}{v:,.4g}</text>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


# -- the page ---------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:980px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;
vertical-align:top}th{background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px}
.card b{display:block;font-size:18px}.ax{font-size:12px;fill:#444}.tick{font-size:11px;fill:#555}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px}.sim{color:#b71c1c;font-weight:600}.none{color:#777}
"""


def _num(v: float) -> str:
    """A float as a person reads it: no exponents (a row's cost is a few millionths of a dollar)."""
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.1f}"
    if abs(v) >= 1:
        return f"{v:,.3f}"
    return f"{v:.7f}".rstrip("0").rstrip(".")


def _table(head: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    out = ["<table><tr>", *(f"<th>{html.escape(h)}</th>" for h in head), "</tr>"]
    for r in rows:
        out.append("<tr>")
        for i, v in enumerate(r):
            text = v if isinstance(v, str) else ("" if v is None else _num(v) if isinstance(v, float) else f"{v:,}")
            out.append(f"<td{' class=n' if i in numeric else ''}>{html.escape(text)}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _last_minute(times: Sequence[float], weights: Sequence[int] | None, at: list[float]) -> list[float]:
    """For each instant in `at` (ascending), the sum of the weights (1 each if None) of the `times` (any
    order) in the 60 s before it — (t - 60, t], the sliding window a per-minute limit holds a client to.
    Each time adds its weight to the instants in [time, time + 60): two bisections, no sort of the times."""
    diff = [0] * (len(at) + 1)
    for i, t in enumerate(times):
        w = 1 if weights is None else weights[i]
        diff[bisect.bisect_left(at, t)] += w
        diff[bisect.bisect_left(at, t + 60.0)] -= w
    out, total = [], 0
    for d in diff[:-1]:
        total += d
        out.append(float(total))
    return out


def _time_series(r: Report) -> tuple[str, str]:
    """Requests sent and tokens used in the last minute, through the run, against the RPM and TPM
    limits in force (a server's buckets start full, so the first minute may pass the line by up to one
    minute's allowance)."""
    q = r.requests
    if not q.requests:
        none = '<p class="none" data-chart="{}">no requests were sent in this run</p>'
        return none.format("requests"), none.format("tokens")
    t0 = min(q.sent)
    span = max(max(q.used) - t0, max(q.sent) - t0, 1.0)
    xs = [span * i / 120 for i in range(121)]
    at = [t0 + x for x in xs]
    rpm = [(m["at"] - t0, m["rpm"]) for m in r.marks if m["rpm"] and m["at"] >= t0 - 1]
    tpm = [(m["at"] - t0, m["tpm"]) for m in r.marks if m["tpm"] and m["at"] >= t0 - 1]
    limited = [t - t0 for t in q.limited]
    paused = [(max(m["at"] - t0 - 1, 0), m["at"] - t0) for m in r.marks if m["note"] == "paused"]
    req = line_chart(
        "requests", [("requests sent in the last minute", "#2e7d32", list(zip(xs, _last_minute(q.sent, None, at), strict=True)))],
        x_label="seconds into the run", y_label="requests / min", limit=rpm or None, markers=limited, bands=paused,
    )  # fmt: skip
    tok = line_chart(
        "tokens", [("tokens used in the last minute", "#ef6c00", list(zip(xs, _last_minute(q.used, q.used_tokens, at), strict=True)))],
        x_label="seconds into the run", y_label="tokens / min", limit=tpm or None, markers=limited, bands=paused,
    )  # fmt: skip
    return req, tok


def render(r: Report) -> str:
    """The report as one HTML page."""
    fig = r.figures()
    s = r.summary
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.run["started_at"]))
    wall = s.get("wall_seconds") or (r.run["finished_at"] or r.run["started_at"]) - r.run["started_at"]
    sim = (
        '<p class="sim">Simulated endpoint: replies are synthetic and nothing was billed.</p>'
        if s.get("simulated")
        else ""
    )
    cards = [
        ("rows", f"{r.rows:,}"), ("ok", f"{r.by_status.get('ok', 0):,}"),
        ("not answered", f"{sum(n for k, n in r.by_status.items() if k not in ('ok', 'refused', 'filtered')):,}"),
        ("requests sent", f"{r.requests.requests:,}"), ("429s", f"{fig['outcomes'].get('rate_limited', 0):,}"),
        ("run cost", f"${s.get('cost_usd') or 0:,.4f}"), ("wall", f"{wall:,.1f} s"),
        ("latency p50 / p95", " / ".join("—" if v is None else f"{v:,.0f} ms" for v in (fig["latency_ms"]["p50"], fig["latency_ms"]["p95"]))),
    ]  # fmt: skip
    req_chart, tok_chart = _time_series(r)
    lat = r.requests.ok_latencies
    causes = r.requests.causes
    p = fig["latency_ms"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>batchrun report: {html.escape(r.job)}</title><style>{CSS}</style></head><body>",
        f"<h1>Run report: {html.escape(r.job)}</h1>",
        f"<p>Run {r.run['id']} started {started}, {s.get('mode', 'online')} mode; job file <code>{html.escape(r.job_path)}</code>.</p>",
        sim,
        '<div class="cards">' + "".join(f'<div class="card">{html.escape(k)}<b>{html.escape(v)}</b></div>' for k, v in cards) + "</div>",
        "<h2>Rows by status</h2>",
        _table(["status", "rows", "cost $", "what to do"],
               [[k, n, r.cost_by_status.get(k, 0.0), _what_to_do(k, r.job_path)] for k, n in r.by_status.items()], {1, 2}),
        bars("status", [(k, float(n)) for k, n in r.by_status.items()]),
        "<h2>Throughput against the limits</h2>",
        "<p>Requests sent and tokens used in the minute before each moment; the dashed line is the limit in force (the "
        "job's, or learned from the server's headers), red ticks are requests a rate limit refused, grey bands are "
        "pauses. A server's buckets start full, so the first minute may pass the line by one minute's allowance.</p>",
        req_chart, tok_chart,
        "<h2>Latency</h2>",
        f"<p>Answered requests: p50 {_ms(p['p50'])}, p95 {_ms(p['p95'])}, p99 {_ms(p['p99'])}.</p>",
        histogram("latency", lat, x_label="latency, ms"),
        "<h2>Retries and their causes</h2>",
        _table(["outcome", "requests"], [[k, v] for k, v in sorted(fig["outcomes"].items())], {1}),
        _table(["outcome", "error", "requests"], [[o, err, n] for (o, err), n in
               sorted(causes.items(), key=lambda kv: -kv[1])[:TOP]], {2}) if causes else "<p class=none>no failed requests</p>",
        "<h2>Cost</h2>",
        f"<p>This run: ${s.get('cost_usd') or 0:,.4f}; the rows in the output: ${r.output_cost:,.4f} (answers reused "
        f"from the ledger count there, not here); this job's spend so far: ${r.spent:,.4f}"
        + (f" of a ${r.budget:,.2f} budget" if r.budget is not None else "") + ".</p>",
        bars("budget", [("spent", r.spent), ("budget", r.budget)], unit="$") if r.budget is not None else "",
        _cache_line(r.requests),
        _table(["model", "cost $ (rows paid in this output)"], [[m, v] for m, v in r.cost_by_model.items()], {1}),
        _table(["tier", "rows", "cost $"], [[t, n, usd] for t, (n, usd) in r.cost_by_tier.items()], {1, 2}) if r.cost_by_tier else "",
        "<h2>Slowest rows</h2>", _rows(r.slowest),
        "<h2>Most expensive rows</h2>", _rows(r.dearest),
        "<h2>Commonest errors</h2>",
        _table(["error", "status", "rows", "example row ids"], [[e["error"], e["status"], e["rows"], ", ".join(e["examples"])] for e in r.errors], {2})
        if r.errors else "<p class=none>no row has an error</p>",
    ]  # fmt: skip
    if r.shards:
        parts += ["<h2>Batch API shards</h2>", _table(
            ["round", "shard", "lines", "tokens", "state", "batch status", "completed", "failed", "submits"],
            [[d["round"], d["number"], d["lines"], d["tokens"], d["state"], d["batch_status"] or "", d["completed"],
              d["failed"], d["submits"]] for d in r.shards], {2, 3, 6, 7, 8})]  # fmt: skip
        if r.shard_marks:
            t0 = r.shard_marks[0]["at"]
            parts.append(
                _table(
                    ["seconds", "shard: state/batch status"],
                    [[f"{m['at'] - t0:,.1f}", m["note"]] for m in r.shard_marks[-200:]],
                )
            )
    if r.chapters:
        parts += ["<h2>Chapters</h2>", _table(["chapter", "paragraphs", "ok", "cost $"],
                  [[str(c["chapter"]), c["paragraphs"], c["ok"], c["usd"]] for c in r.chapters], {1, 2, 3})]  # fmt: skip
    data = json.dumps(fig, default=str).replace("</", "<\\/")
    parts.append(f'<script type="application/json" id="report-data">{data}</script></body></html>')
    return "".join(parts)


def _cache_line(requests: RequestTotals) -> str:
    """The provider's prompt cache in this run: cached prompt tokens of all prompt tokens answered."""
    prompt, cached = requests.ok_prompt_tokens, requests.ok_cached_tokens
    if not cached:
        return "<p>Prompt cache: no prompt tokens were served from the provider's cache in this run.</p>"
    return (
        f"<p>Prompt cache: {cached:,} of {prompt:,} prompt tokens ({cached / prompt:.1%}) were served from the "
        "provider's cache, at its cached-input price.</p>"
    )


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f} ms"


def _rows(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p class=none>no rows</p>"
    return _table(
        ["row", "status", "latency ms", "cost $", "prompt tok", "output tok", "error"],
        [[str(d["row"]), d["status"], d["latency_ms"], d["cost_usd"], d["prompt_tokens"], d["completion_tokens"],
          (d["error"] or "")[:100]] for d in rows], {2, 3, 4, 5},
    )  # fmt: skip


def write_report(
    job: Job, *, ledger_path: Path | None = None, run_id: int | None = None, out: Path | None = None
) -> Path:
    """Write the run report (default `<output>.report.html`) and return its path."""
    report = gather(job, ledger_path=ledger_path, run_id=run_id)
    path = out or job.report_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(report), encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a report
    return path


__all__ = ["Report", "gather", "render", "write_report"]
