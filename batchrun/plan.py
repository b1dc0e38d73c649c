"""`batchrun plan`: every request rendered and counted exactly, priced and timed. Nothing is sent."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from . import local_model
from .advice import recommend
from .checks import check_excel_rows, check_job_paths
from .fingerprints import CachePolicy
from .jobs import Job
from .ledger import Ledger, endpoint_key
from .prefixes import KEY_RPM, Forecast, key_template
from .pricing import PriceTable, embedded_model, flex_offered, price_table_for
from .prompts import Renderer, Request
from .shards import CHAT_URL, EMBEDDINGS_URL, ShardCounter, ShardLimits, line_overhead, queue_limit
from .sizing import embedding_groups, inputs_per_request, too_long_reason
from .sources import Source, open_source
from .tokens import Histogram

LISTED_ISSUES = 20
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RowIssue:
    row_id: str
    row: int
    prompt_tokens: int
    charged_tokens: int
    reason: str


@dataclass(frozen=True)
class Plan:
    job: str
    model: str
    encoding: str
    model_known: bool
    kind: str
    rows: int
    requests: int
    prompt_tokens_total: int
    prompt_tokens_mean: float
    prompt_tokens_p95: int
    prompt_tokens_max: int
    output_tokens_worst: int
    output_tokens_expected: int
    expected_basis: str
    charged_tokens_total: int
    price_as_of: str
    price_known: bool
    cost_online_worst: float | None
    cost_online_expected: float | None
    cost_batch_worst: float | None
    cost_batch_expected: float | None
    rpm: int | None
    tpm: int | None
    minutes_at_rpm: float | None
    minutes_at_tpm: float | None
    binding_limit: str | None
    minutes_online: float | None
    context_window: int | None
    too_long_count: int
    too_long: list[RowIssue] = field(default_factory=list)
    empty_rows: int = 0
    """Rows with nothing to ask (a template column null, or a blank prompt): status empty_input, never sent."""
    empty_examples: list[str] = field(default_factory=list)
    batch_shards: int = 0
    batch_queue_limit: int | None = None
    batch_queue_source: str = ""
    batch_largest_shard_tokens: int = 0
    batch_prompt_tokens: int = 0
    batch_over_queue: int = 0
    batch_waves: int = 0
    """Rounds of batches the enqueued-token limit forces (each waits for the one before to finish)."""
    batch_hours_typical: float | None = None
    batch_hours_worst: float | None = None
    answered_rows: int = 0
    """Rows the ledger already holds a final answer for (not sent again)."""
    spent_usd: float = 0.0
    """What this job has paid so far (its spend record in the ledger; the simulator's excluded)."""
    finish_rows: int = 0
    finish_cost_expected: float | None = None
    """Online cost of the rows still to send, expected and worst case."""
    finish_cost_worst: float | None = None
    budget_usd: float | None = None
    budget_left: float | None = None
    over_budget: bool = False
    """The expected cost to finish is more than the budget has left: `run` refuses unless --over-budget."""
    over_budget_worst: bool = False
    recommended_mode: str = "online"
    recommendation: str = ""
    notes: list[str] = field(default_factory=list)
    document: dict[str, Any] | None = None
    """Document jobs: chapters, paragraphs, chunks (rows are paragraphs, requests are chunks)."""
    cost_tiers: dict[str, list[float | None]] = field(default_factory=dict)
    """Online at another service tier: tier → [expected, worst case] (flex; priority where priced)."""
    cache_groups: int = 0
    """Groups of ≥ 2 prompts of ≥ 1,024 tokens sharing their opening (prefixes.py)."""
    cache_requests: int = 0
    cached_tokens_expected: int = 0
    """Prompt tokens the provider's prompt cache is expected to serve (in the expected online costs)."""
    cache_saving_expected: float | None = None
    """What the cache saves on the default tier, expected."""
    cache_keys: str = "off"
    recommended_tier: str | None = None
    """The service tier the recommendation names for an online run (flex), if any."""
    own_server: str | None = None
    """A server of your own (nothing billed, no limits stated): what it is. Its time is how fast it answered."""
    server_answers_measured: int = 0
    """Answers of this job's last run on it that the rate below is measured over (0: none yet)."""
    server_rows_per_s: float | None = None
    server_latency_s: float | None = None
    server_output_tokens_per_s: float | None = None
    minutes_on_server: float | None = None
    """The rows still to send at the rate measured (None until a run has measured it)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class OwnServer:
    """A server of your own the job runs on, as far as the plan can tell without sending anything."""

    what: str
    context: int | None
    """Tokens a request may use in all, where the server says (or the embedded model's per-slot context)."""


def own_server(job: Job, table: PriceTable) -> OwnServer | None:
    """The embedded model, or a model of your own priced at $0 (`[pricing] local = true`, or a private address
    serving a model the price table does not know — not a local proxy in front of OpenAI): asked what it is
    (llama.cpp's /props, vLLM's /v1/models; GET only, nothing generated). None: a provider's endpoint."""
    spec = embedded_model(job)
    if spec is not None:
        base_dir = job.source_path.parent if job.source_path is not None else None
        name = local_model.model_path(spec, base_dir).stem  # as the run's banner names it
        slots = local_model.default_slots()
        return OwnServer(
            f"the embedded model {name} (llama.cpp on this machine, {slots} slots, "
            f"{local_model.CTX_PER_SLOT:,} tokens each)",
            local_model.CTX_PER_SLOT,
        )
    base = job.endpoint.base_url
    if base is None or not table.own(job.request.model):
        return None
    facts = local_model.server_facts(base, job.request.model)
    said = []
    if facts is not None and facts.slots:
        said.append(f"{facts.slots} slots")
    if facts is not None and facts.context:
        said.append(f"{facts.context:,} tokens of context a request")
    about = f" ({', '.join(said)})" if said else " (it says nothing of its slots or context)"
    return OwnServer(f"your own server at {base}{about}", facts.context if facts is not None else None)


def _binding(known: list[tuple[float, str]]) -> tuple[float | None, str | None]:
    """Minutes the limits need, and the limit that binds — None when the job fits within what the
    buckets hold at the start (neither limit binds then)."""
    if not known:
        return None, None
    minutes, name = max(known)
    return minutes, (name if minutes > 0 else None)


def _minutes_needed(amount: int, per_minute: int | None) -> float | None:
    # the server's bucket starts full: the first minute's worth goes at once
    if per_minute is None:
        return None
    return max(amount - per_minute, 0) / per_minute


@dataclass
class _ModelTally:
    """One model's sendable tokens in a plan: prompt, and requests by output limit (all, and to finish)."""

    prompt: int = 0
    outs: Counter[int] = field(default_factory=Counter)
    finish_prompt: int = 0
    finish_outs: Counter[int] = field(default_factory=Counter)

    @staticmethod
    def out_tokens(outs: Counter[int], expected_of: Callable[[int], int] | None) -> int:
        """Output tokens of requests by limit: the limits themselves (worst), or what is expected of each."""
        return sum((limit if expected_of is None else expected_of(limit)) * n for limit, n in outs.items())


def make_document_plan(job: Job) -> Plan:
    """A document job's chunks built and counted as the run will send them (context estimated)."""
    from .chunks import ChunkRenderer, load_glossary, plan_chunks
    from .document_input import open_document

    doc = open_document(job.input.path, job.document, job.input.resolved_format)
    renderer = ChunkRenderer(job, load_glossary(job.document.glossary))
    counter = renderer.counter
    chunks = plan_chunks(doc, counter, job.document.chunk_tokens)
    keep = job.document.context_paragraphs
    counts = Histogram()
    expected_out: list[int] = []
    chapter_done: dict[int, list[tuple[str, str]]] = {}
    for chunk in chunks:
        done = chapter_done.setdefault(chunk.chapter, [])
        # the context's translations are not known yet: the source stands in for them
        req, _ = renderer.request(chunk.segments, done[-keep:] if keep else [], chunk.number)
        counts.append(req.prompt_tokens)
        reply = json.dumps({"items": [{"id": s.id, "translation": s.text} for s in chunk.segments]}, ensure_ascii=False)
        expected_out.append(counter.count_text(reply))
        done += [(s.text, s.text) for s in chunk.segments]
    paragraphs = [p for p in doc.paragraphs() if p.translatable]
    split = {s.paragraph for c in chunks for s in c.segments if s.id != s.paragraph}
    max_out = job.request.max_output_tokens or 0
    table = price_table_for(job)
    price = table.lookup(job.request.model)
    total_prompt = counts.total
    worst_out = max_out * len(chunks)
    expected = sum(min(e, max_out) for e in expected_out)
    charged = total_prompt + worst_out
    notes = [
        "expected output assumes a translation about as long in tokens as its source (varies by language)",
    ]
    if keep:
        notes.append(
            f"prompt tokens include {keep} paragraph(s) of context per chunk, with the source standing in for "
            "translations not made yet"
        )
    largest = max(expected_out, default=0)
    if largest > max_out:
        notes.append(
            f"request.max_tokens ({max_out}) is below what the largest chunk's reply needs (~{largest} tokens): "
            "those replies would be cut off and their chunks split and sent again; raise request.max_tokens "
            "or lower document.chunk_tokens"
        )
    if price is None:
        notes.append(
            f"no price for {job.request.model!r} in the price table: cost unknown; add it under [pricing.models]"
        )
    if not counter.model_known:
        notes.append(f"model {job.request.model!r} is unknown to tiktoken: tokens counted with {counter.encoding_name}")

    def cost(out_tokens: int, discount: float) -> float | None:
        return None if price is None else price.cost(total_prompt, out_tokens, discount=discount)

    rpm, tpm = job.limits.rpm, job.limits.tpm
    m_rpm, m_tpm = _minutes_needed(len(chunks), rpm), _minutes_needed(charged, tpm)
    known = [(m, name) for m, name in ((m_rpm, "rpm"), (m_tpm, "tpm")) if m is not None]
    minutes, binding = _binding(known)
    verbatim = sum(1 for p in doc.paragraphs() if not p.translatable)
    return Plan(
        job=job.name, model=job.request.model, encoding=counter.encoding_name, model_known=counter.model_known,
        kind="chat", rows=len(paragraphs), requests=len(chunks), prompt_tokens_total=total_prompt,
        prompt_tokens_mean=total_prompt / len(chunks) if chunks else 0.0, prompt_tokens_p95=counts.p95(),
        prompt_tokens_max=counts.max(), output_tokens_worst=worst_out, output_tokens_expected=expected,
        expected_basis="a translation as long as its source", charged_tokens_total=charged,
        price_as_of=table.as_of, price_known=price is not None, cost_online_worst=cost(worst_out, 1.0),
        cost_online_expected=cost(expected, 1.0), cost_batch_worst=cost(worst_out, table.batch_discount),
        cost_batch_expected=cost(expected, table.batch_discount), rpm=rpm, tpm=tpm, minutes_at_rpm=m_rpm,
        minutes_at_tpm=m_tpm, binding_limit=binding, minutes_online=minutes,
        context_window=price.context_window if price else None, too_long_count=0,
        recommended_mode="online", recommendation="document jobs run online", notes=notes,
        document={
            "name": doc.name, "format": doc.format, "chapters": len(doc.chapters), "paragraphs": len(paragraphs),
            "verbatim_blocks": verbatim, "split_paragraphs": len(split), "chunks": len(chunks),
            "chunk_tokens": job.document.chunk_tokens, "largest_chunk_tokens": max((c.tokens for c in chunks), default=0),
            "context_paragraphs": keep, "glossary_terms": len(renderer.glossary.entries),
        },
    )  # fmt: skip


def make_plan(job: Job, source: Source | None = None, *, batch_size: int = 20_000) -> Plan:
    """Render and count every row of the job; price and time it at the job's limits."""
    check_job_paths(job)  # the same checks a run makes first: a plan that passes is a job that can write
    if job.input.is_document:
        return make_document_plan(job)
    source = source or open_source(job.input)
    check_excel_rows(job, source.rows)
    renderer = Renderer(job, source.columns)
    renderer.check_no_empty(source)
    renderer.check_row_params(source)
    table = price_table_for(job)
    price = table.lookup(job.request.model)
    context = price.context_window if price else None
    own = own_server(job, table)
    if own is not None and own.context is not None:  # what the server has, not what the model's name says
        context = own.context
    tpm = job.limits.tpm
    counts = Histogram()
    charged_total = 0
    requests = 0
    issues: list[RowIssue] = []
    issue_count = 0
    pending_embed: list[Request] = []
    queue, queue_source = queue_limit(job)
    shard_counter = ShardCounter(ShardLimits(job.batch.max_lines, job.batch.max_bytes, queue))
    url = EMBEDDINGS_URL if job.request.kind == "embeddings" else CHAT_URL
    overhead = line_overhead(url)
    body_of = renderer.json_body(job.request.model)
    batch_tokens = 0
    empty_rows = 0
    empty_examples: list[str] = []
    # the ledger, when there is one: which rows are answered already, and what was spent
    ledger = Ledger(job.ledger_file, job=job.name) if job.ledger_file.exists() else None
    policy = CachePolicy(max_output_tokens=job.request.max_output_tokens)
    fingerprinter = renderer.fingerprinter(*endpoint_key(job))
    answered_rows = 0
    finish_rows = 0
    finish_prompt = 0
    # requests by their output-token limit (one value unless [request] params_from sets it per row)
    outs: Counter[int] = Counter()
    finish_outs: Counter[int] = Counter()
    # the same, per model, for the cost: rows may name their own model ([request] params_from model)
    by_model: dict[str, _ModelTally] = {}
    forecast = Forecast()  # the prompt cache's expected hits, from the prompts' shared prefixes
    for batch in source.batches(batch_size):
        positions, ids, texts = renderer.texts(batch)
        empty = renderer.empty(batch, texts)
        if any(empty):
            keep = [i for i, e in enumerate(empty) if not e]
            empty_rows += len(texts) - len(keep)
            empty_examples += [ids[i] for i, e in enumerate(empty) if e][: max(0, 5 - len(empty_examples))]
            positions, ids, texts = [positions[i] for i in keep], [ids[i] for i in keep], [texts[i] for i in keep]
        reqs = renderer.requests(positions, ids, texts)
        done: set[int] = set()
        if ledger is not None:
            fps = [fingerprinter.of(t) for t in texts]
            found = ledger.answered(fps, policy)
            done = {i for i, fp in enumerate(fps) if fp in found}
            answered_rows += len(done)
        for i, r in enumerate(reqs):
            if too_long_reason(job, r, context, tpm) is None:
                outs[r.max_output_tokens] += 1
                tally = by_model.setdefault(r.model or job.request.model, _ModelTally())
                tally.prompt += r.prompt_tokens
                if job.request.kind == "chat":
                    forecast.add(r.model or job.request.model, r.body, r.prompt_tokens, i not in done)
                tally.outs[r.max_output_tokens] += 1
                if i not in done:
                    finish_rows += 1
                    finish_prompt += r.prompt_tokens
                    finish_outs[r.max_output_tokens] += 1
                    tally.finish_prompt += r.prompt_tokens
                    tally.finish_outs[r.max_output_tokens] += 1
        for r, text in zip(reqs, texts, strict=True):
            counts.append(r.prompt_tokens)
            if too_long_reason(job, r, context, None) is None:
                # the shard line as batch mode writes it (custom_id is a 32-character fingerprint)
                shard_counter.add(overhead + len(body_of(text)), r.prompt_tokens)
                batch_tokens += r.prompt_tokens
            reason = too_long_reason(job, r, context, tpm)
            if reason:
                issue_count += 1
                if len(issues) < LISTED_ISSUES:
                    issues.append(RowIssue(r.row_id, r.row, r.prompt_tokens, r.charged_tokens, reason))
                continue
            if job.request.kind == "chat":
                requests += 1
                charged_total += r.charged_tokens
            else:
                pending_embed.append(r)
        if pending_embed:
            groups = embedding_groups(pending_embed, lambda r: r.prompt_tokens, inputs_per_request(job))
            # keep the last, possibly unfilled group for the next batch so grouping matches the engine
            last = groups.pop()
            requests += len(groups)
            charged_total += sum(r.prompt_tokens for g in groups for r in g)
            pending_embed = last
    if pending_embed:
        requests += 1
        charged_total += sum(r.prompt_tokens for r in pending_embed)

    rows = len(counts) + empty_rows
    total_prompt = counts.total
    if job.request.kind == "embeddings":
        basis = "embeddings produce no output tokens"
    elif job.request.expected_output_tokens is not None:
        basis = "request.expected_output_tokens"
    else:
        basis = "assumed half of max_tokens; set request.expected_output_tokens for a better estimate"

    def expected_of(limit: int) -> int:
        if job.request.kind == "embeddings":
            return 0
        if job.request.expected_output_tokens is not None:
            return min(job.request.expected_output_tokens, limit)
        return limit // 2

    worst_out = sum(limit * n for limit, n in outs.items())
    expected_out = sum(expected_of(limit) * n for limit, n in outs.items())

    notes: list[str] = []
    if not renderer.counter.model_known:
        notes.append(
            f"model {job.request.model!r} is unknown to tiktoken: tokens counted with {renderer.counter.encoding_name}"
        )
    if job.schema_strict is not None:
        notes.append(
            "prompt tokens include an estimate of the response_format schema's overhead "
            "(schema JSON tokens + 9; OpenAI publishes no exact formula)"
        )
    if table.own(job.request.model):
        notes.append(
            f"{job.request.model!r} runs on your own server ({job.endpoint.base_url or 'local'}): priced at $0, "
            "tokens still counted ([pricing] local = false to price it from the table)"
        )
    if price is None:
        notes.append(
            f"no price for {job.request.model!r} in the price table (as of {table.as_of}): cost unknown; "
            "add it under [pricing.models] in the job"
        )

    keys = key_template(job.request.prompt_cache_key, job.endpoint.openai_like)
    spread = keys is not None and "{index}" in keys
    hits = forecast.cached(lambda _m, text: renderer.counter.count_text(text), job.limits.rpm, spread)
    cached_all = {m: v[0] for m, v in hits.items()}
    cached_finish = {m: v[1] for m, v in hits.items()}

    def priced(
        outs_of: Callable[[_ModelTally], tuple[int, int]],
        discount: float = 1.0,
        tier: str | None = None,
        cached: dict[str, int] | None = None,
    ) -> float | None:
        """Σ over models of (prompt, output) tokens at each model's price, `cached` prompt tokens at its
        cached rate; None if one has no price."""
        total = 0.0
        for model, tally in (by_model or {job.request.model: _ModelTally()}).items():
            p = table.lookup(model)
            if p is None or (tier == "priority" and p.priority is None):
                return None
            p = p.tier(tier)
            prompt, out = outs_of(tally)
            total += p.cost(prompt, out, discount=discount, cached_tokens=(cached or {}).get(model, 0))
        return total

    def cost(expected: bool, discount: float, tier: str | None = None) -> float | None:
        # expected costs count the prompt cache's forecast hits (cached input has a Batch API and a flex
        # price too); the worst case counts none
        cached = cached_all if expected else None
        return priced(
            lambda t: (t.prompt, t.out_tokens(t.outs, expected_of if expected else None)), discount, tier, cached
        )

    unpriced = sorted(m for m in by_model if m != job.request.model and table.lookup(m) is None)
    if unpriced:
        notes.append(f"no price for {unpriced} (rows name them in [request] params_from model): cost unknown")
    if len(by_model) > 1:
        notes.append("rows use " + ", ".join(f"{m} ({sum(t.outs.values()):,})" for m, t in sorted(by_model.items())))

    rpm, tpm = job.limits.rpm, job.limits.tpm
    m_rpm = _minutes_needed(requests, rpm)
    m_tpm = _minutes_needed(charged_total, tpm)
    known = [(m, name) for m, name in ((m_rpm, "rpm"), (m_tpm, "tpm")) if m is not None]
    minutes, binding = _binding(known)
    if not known and own is None:
        notes.append(
            "no limits.rpm / limits.tpm in the job: run time unknown (the engine learns the "
            "limits from the server's headers)"
        )

    plan = Plan(
        job=job.name,
        model=job.request.model,
        encoding=renderer.counter.encoding_name,
        model_known=renderer.counter.model_known,
        kind=job.request.kind,
        rows=rows,
        requests=requests,
        prompt_tokens_total=total_prompt,
        prompt_tokens_mean=total_prompt / len(counts) if counts else 0.0,
        prompt_tokens_p95=counts.p95(),
        prompt_tokens_max=counts.max(),
        output_tokens_worst=worst_out,
        output_tokens_expected=expected_out,
        expected_basis=basis,
        charged_tokens_total=charged_total,
        price_as_of=table.as_of,
        price_known=price is not None and not unpriced,
        cost_online_worst=cost(False, 1.0),
        cost_online_expected=cost(True, 1.0),
        cost_batch_worst=cost(False, table.batch_discount),
        cost_batch_expected=cost(True, table.batch_discount),
        cost_tiers={
            t: [cost(True, 1.0, t), cost(False, 1.0, t)]
            for t in ("flex", "priority")
            # flex only where the model offers it (or the job asks for it): Azure refuses it otherwise
            if t != "flex" or flex_offered(job.request.model) or job.request.service_tier == "flex"
        }
        if job.request.kind == "chat"
        else {},
        rpm=rpm,
        tpm=tpm,
        minutes_at_rpm=m_rpm,
        minutes_at_tpm=m_tpm,
        binding_limit=binding,
        minutes_online=minutes,
        context_window=context,
        too_long_count=issue_count,
        empty_rows=empty_rows,
        empty_examples=empty_examples,
        too_long=issues,
        notes=notes,
        batch_shards=shard_counter.shards,
        batch_queue_limit=queue,
        batch_queue_source=queue_source,
        batch_largest_shard_tokens=shard_counter.max_tokens_seen,
        batch_prompt_tokens=batch_tokens,
        batch_over_queue=shard_counter.too_large,
    )
    spent = ledger.spent() if ledger is not None else 0.0
    speed = ledger.throughput(endpoint_key(job)[0]) if ledger is not None and own is not None else None
    if ledger is not None:
        ledger.close()
    if own is not None:
        plan = _with(
            plan,
            own_server=own.what,
            server_answers_measured=speed.answers if speed else 0,
            server_rows_per_s=speed.answers_per_s if speed else None,
            server_latency_s=speed.latency_s if speed else None,
            server_output_tokens_per_s=speed.output_tokens_per_s if speed else None,
            minutes_on_server=finish_rows / speed.answers_per_s / 60 if speed else None,
        )
    waves = -(-batch_tokens // queue) if queue and batch_tokens else (1 if batch_tokens else 0)
    finish_expected = priced(
        lambda t: (t.finish_prompt, t.out_tokens(t.finish_outs, expected_of)), cached=cached_finish
    )
    finish_worst = priced(lambda t: (t.finish_prompt, t.out_tokens(t.finish_outs, None)))
    budget = job.budget.max_usd
    left = None if budget is None else max(budget - spent, 0.0)
    plan = _with(
        plan,
        batch_waves=waves,
        batch_hours_typical=waves * job.batch.typical_hours if waves else None,
        batch_hours_worst=waves * 24.0 if waves else None,
        answered_rows=answered_rows,
        spent_usd=spent,
        finish_rows=finish_rows,
        finish_cost_expected=finish_expected,
        finish_cost_worst=finish_worst,
        budget_usd=budget,
        budget_left=left,
        over_budget=left is not None and finish_expected is not None and finish_expected > left + 1e-12,
        over_budget_worst=left is not None and finish_worst is not None and finish_worst > left + 1e-12,
    )
    groups, grouped = forecast.summary()
    uncached = priced(lambda t: (t.prompt, t.out_tokens(t.outs, expected_of)))
    plan = _with(
        plan,
        cache_groups=groups,
        cache_requests=grouped,
        cached_tokens_expected=sum(cached_all.values()),
        cache_saving_expected=None
        if uncached is None or plan.cost_online_expected is None
        else uncached - plan.cost_online_expected,
        cache_keys="off" if keys is None else (f"spread at {KEY_RPM} requests/min per key" if spread else keys),
    )
    if groups and not spread and any(g.requests > KEY_RPM for g in forecast.groups.values()):
        notes.append(
            f"prompt_cache_key {'off' if keys is None else 'without {index}'}: past ~{KEY_RPM} requests a minute for "
            "one prefix a provider routes requests to machines without it (the forecast counts no hits there); "
            'prompt_cache_key = "auto" spreads a prefix over keys'
        )
    if forecast.beyond:
        notes.append(f"{forecast.beyond:,} long prompt(s) past the forecast's first groups are counted uncached")
    mode, why, tier = recommend(job, plan)
    return _with(plan, recommended_mode=mode, recommendation=why, recommended_tier=tier)


def _with(plan: Plan, **changes: Any) -> Plan:
    data = {**{k: getattr(plan, k) for k in plan.__dataclass_fields__}, **changes}
    return Plan(**data)
