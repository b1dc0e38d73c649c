"""The plan as a person reads it (`batchrun plan`); `--json` prints `Plan.to_dict()` instead."""

from __future__ import annotations

from typing import Any

from .plan import Plan
from .pricing import money


def _minutes(v: float | None) -> str:
    if v is None:
        return "unknown"
    if v < 1:
        return f"{v * 60:.0f} s"
    if v < 120:
        return f"{v:.1f} min"
    return f"{v / 60:.1f} h"


def _queue_line(plan: Plan) -> str:
    limit = plan.batch_queue_limit
    if limit is None:
        return f"enqueued-token limit {plan.batch_queue_source}"
    waves = -(-plan.batch_prompt_tokens // limit) if plan.batch_prompt_tokens else 0
    line = f"enqueued-token limit {limit:,} ({plan.batch_queue_source}): "
    if plan.batch_over_queue:
        line += f"{plan.batch_over_queue:,} request(s) alone exceed it and cannot be batched; "
    if waves <= 1:
        return line + f"all {plan.batch_prompt_tokens:,} prompt tokens fit in the queue at once"
    typical = (
        f"; about {plan.batch_hours_typical:,.0f} h in all at the assumed [batch] typical_hours"
        if plan.batch_hours_typical
        else ""
    )
    return line + (
        f"{plan.batch_prompt_tokens:,} prompt tokens go in {waves} waves, each submitted when the last "
        f"one's batches finish (up to 24 h each, so up to {waves} days){typical}"
    )


def _document_lines(d: dict[str, Any]) -> list[str]:
    chains = (
        f"the previous {d['context_paragraphs']} paragraph(s) as context: each chapter a chain, chapters in parallel"
        if d["context_paragraphs"]
        else "no context: every chunk independent"
    )
    return [
        f"  document             {d['name']}: {d['chapters']} chapter(s), {d['paragraphs']:,} paragraph(s) to "
        f"translate, {d['verbatim_blocks']} block(s) kept as they are, {d['split_paragraphs']} paragraph(s) longer "
        "than a chunk (cut at sentence ends)",
        f"  chunks               {d['chunks']:,} request(s) of ≤ {d['chunk_tokens']:,} source tokens (largest "
        f"{d['largest_chunk_tokens']:,}); {chains}; glossary {d['glossary_terms']} term(s)",
    ]


def _cache_lines(plan: Plan) -> list[str]:
    if not plan.cache_groups:
        return []
    share = plan.cached_tokens_expected / plan.prompt_tokens_total if plan.prompt_tokens_total else 0.0
    saving = "" if plan.cache_saving_expected is None else f", saving {money(plan.cache_saving_expected)} online"
    return [
        f"  prompt cache         {plan.cache_requests:,} request(s) in {plan.cache_groups:,} group(s) sharing a "
        f"prompt prefix of ≥ 1,024 tokens: expected {plan.cached_tokens_expected:,} cached token(s), "
        f"{share:.1%} of prompt tokens{saving} (in the expected online costs; prompt_cache_key {plan.cache_keys})"
    ]


def _limit_lines(plan: Plan) -> list[str]:
    return [
        f"  time online at your limits (rpm {plan.rpm or '?'}, tpm {plan.tpm or '?'})",
        f"    requests/min bound {_minutes(plan.minutes_at_rpm)}   tokens/min bound {_minutes(plan.minutes_at_tpm)}"
        f"   → {_minutes(plan.minutes_online)}"
        + (f", {plan.binding_limit.upper()} binds" if plan.binding_limit else "")
        + (
            " — the whole job fits in the first minute's allowance (the buckets start full)"
            if plan.minutes_online == 0
            else ""
        ),
        f"    tokens charged against TPM: {plan.charged_tokens_total:,} (prompt + max output per request)",
    ]


def _server_lines(plan: Plan) -> list[str]:
    """A server of your own has no bill and states no limits: the time is how fast it answered before."""
    if plan.own_server is None:
        return []
    head = f"  time on your server  {plan.own_server}"
    if plan.server_rows_per_s is None:
        return [
            head,
            "    not measured yet: no answers from it in this job's ledger. A run finds the concurrency it "
            "answers best at, and the next plan times the rest at the rate it measured",
        ]
    tokens = (
        f", {plan.server_output_tokens_per_s:,.1f} output tokens/s"
        if plan.server_output_tokens_per_s is not None
        else ""
    )
    return [
        head,
        f"    measured over this job's last {plan.server_answers_measured:,} answers from it: "
        f"{plan.server_rows_per_s:,.2f} rows/s{tokens}, {plan.server_latency_s or 0:,.1f} s a reply on average",
        f"    {plan.finish_rows:,} row(s) to send → about {_minutes(plan.minutes_on_server)}",
    ]


def format_plan(plan: Plan) -> str:
    """The plan as the text `batchrun plan` prints."""
    lines = [
        f"Plan for job {plan.job!r}: {plan.kind} on {plan.model} (tokenizer {plan.encoding}) — nothing is sent",
        *(_document_lines(plan.document) if plan.document else []),
        f"  {'paragraphs' if plan.document else 'rows':<20} {plan.rows:,}   requests {plan.requests:,}",
        f"  prompt tokens        total {plan.prompt_tokens_total:,}   mean {plan.prompt_tokens_mean:,.1f}   "
        f"p95 {plan.prompt_tokens_p95:,}   max {plan.prompt_tokens_max:,}",
    ]
    if plan.kind == "chat":
        lines.append(
            f"  output tokens        worst case {plan.output_tokens_worst:,}   expected "
            f"{plan.output_tokens_expected:,} ({plan.expected_basis})"
        )
    lines += [
        f"  cost (prices as of {plan.price_as_of})",
        f"    online             expected {money(plan.cost_online_expected)}   worst case {money(plan.cost_online_worst)}",
        f"    Batch API          expected {money(plan.cost_batch_expected)}   worst case {money(plan.cost_batch_worst)}",
        *(
            f"    {label:<19}expected {money(exp)}   worst case {money(worst)}"
            for tier, label in (("flex", "online, flex"), ("priority", "online, priority"))
            for exp, worst in [plan.cost_tiers.get(tier) or [None, None]]
            if exp is not None
        ),
        *_cache_lines(plan),
        *_server_lines(plan),
        # on a server of your own the job's limits are only a cap of yours: shown where they slow it down
        *(_limit_lines(plan) if plan.own_server is None or (plan.minutes_online or 0) > 0 else []),
        "  Batch API            not on your own server (OpenAI's and Azure's)"
        if plan.own_server is not None
        else f"  Batch API            {plan.batch_shards:,} shard file(s); {_queue_line(plan)}"
        if not plan.document
        else "  Batch API            not used for documents yet (cost shown for comparison)",
    ]
    if plan.empty_rows:
        shown = ", ".join(repr(i) for i in plan.empty_examples)
        lines.append(
            f"  empty rows           {plan.empty_rows:,} (a template column is empty, or the prompt is blank): "
            f'status empty_input, not sent — e.g. row ids {shown}; [input] empty = "send" sends them'
        )
    if plan.too_long_count:
        lines.append(f"  rows that cannot be sent: {plan.too_long_count:,} (status too_long in the output)")
        for issue in plan.too_long:
            lines.append(f"    id {issue.row_id} (data row {issue.row + 1}): {issue.reason}")
        if plan.too_long_count > len(plan.too_long):
            lines.append(f"    ... and {plan.too_long_count - len(plan.too_long):,} more")
    else:
        lines.append("  rows that cannot be sent: none")
    if plan.answered_rows or plan.spent_usd:
        lines.append(
            f"  already done         {plan.answered_rows:,} row(s) answered in the ledger (not sent again); "
            f"{money(plan.spent_usd)} spent by this job so far"
        )
    if plan.answered_rows:
        lines.append(
            f"  to finish            {plan.finish_rows:,} row(s): expected {money(plan.finish_cost_expected)} online, "
            f"worst case {money(plan.finish_cost_worst)}"
        )
    if plan.budget_usd is not None:
        left = f"budget.max_usd {money(plan.budget_usd)}: {money(plan.budget_left)} left"
        if plan.over_budget:
            lines.append(
                f"  BUDGET               {left}, less than the expected {money(plan.finish_cost_expected)} to finish: "
                "`batchrun run` refuses to start (raise the budget, or pass --over-budget to run until it stops)"
            )
        elif plan.over_budget_worst:
            lines.append(
                f"  budget               {left}: enough for the expected cost, not the worst case "
                f"({money(plan.finish_cost_worst)}); a run may stop at the budget (exit 4) and resume when raised"
            )
        else:
            lines.append(f"  budget               {left}: enough even for the worst case")
    mode = plan.recommended_mode + (f", {plan.recommended_tier} tier" if plan.recommended_tier else "")
    lines.append(f"  recommended mode     {mode}: {plan.recommendation}")
    for note in plan.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)
