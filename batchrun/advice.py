"""The plan's recommendation: which way to run a job (online or the Batch API) and on which service
tier, with the reason in words. Reads the plan's figures only; `plan.make_plan` calls it last."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .jobs import Job
from .pricing import flex_offered, money

if TYPE_CHECKING:  # the plan imports this module; its type is only named here
    from .plan import Plan


def recommend(job: Job, plan: Plan) -> tuple[str, str, str | None]:
    """(mode, why, tier): the way to run the job, with the service tier an online run should ask for.
    Flex is the Batch API's price without its 24 h window, so where the model offers it, it wins over
    batch unless the limits make online slow; priority is named only with what it would cost."""
    mode, why = _mode(job, plan)
    flex = (plan.cost_tiers.get("flex") or [None])[0]
    default = plan.cost_online_expected
    if job.request.kind != "chat" or flex is None or default is None or not flex_offered(job.request.model):
        return mode, why, None
    if flex >= default - 1e-9:  # your own server, or a price table without a flex discount
        return mode, why, None
    time = _minutes_text(plan.minutes_online)
    batch = plan.cost_batch_expected
    if mode == "batch" and plan.minutes_online is not None and plan.minutes_online > 24 * 60:
        return mode, why + f" (flex would cost about the same, {money(flex)}, but online takes {time})", None
    saving = default - flex
    more = (
        "the Batch API would save nothing more and take up to 24 h"
        if batch is None or batch >= flex - 0.005
        else f"the Batch API would save {money(flex - batch)} more and take up to 24 h"
    )
    how = "" if job.request.service_tier == "flex" else ' (set [request] service_tier = "flex")'
    return (
        "online",
        (
            f"flex{how}: the Batch API's price, {money(flex)} expected ({money(saving)} less than the default "
            f"tier), done in {time} at your limits (slower replies; refused requests are retried, then sent on the "
            f"default tier); {more}"
        ),
        "flex",
    )


def _minutes_text(minutes: float | None) -> str:
    if minutes is None:
        return "a time the plan cannot tell (no limits in the job)"
    if minutes < 1:
        return "about a minute"
    return f"~{minutes:,.0f} min" if minutes < 120 else f"~{minutes / 60:,.1f} h"


def _mode(job: Job, plan: Plan) -> tuple[str, str]:
    """Batch when it saves real money or time does not matter; online when a deadline or small job says so."""
    if plan.own_server is not None:
        return "online", "your own server: nothing is billed, and the Batch API is OpenAI's (and Azure's)"
    if job.request.kind == "embeddings" and plan.requests <= 1:
        return "online", "a single request"
    if job.deadline_hours is not None and job.deadline_hours < 24:
        return "online", f"the job's deadline ({job.deadline_hours:g} h) is shorter than the Batch API's 24 h window"
    saving = None
    if plan.cost_online_expected is not None and plan.cost_batch_expected is not None:
        saving = plan.cost_online_expected - plan.cost_batch_expected
    long_online = plan.minutes_online is not None and plan.minutes_online > 60
    waves = plan.batch_waves
    if waves > 1 and plan.batch_hours_typical is not None:
        batch_h, worst_h = plan.batch_hours_typical, plan.batch_hours_worst or 0.0
        online_h = plan.minutes_online / 60 if plan.minutes_online is not None else None
        if job.deadline_hours is not None and worst_h > job.deadline_hours:
            return "online", (
                f"the enqueued-token limit needs {waves} waves of batches, one after another: up to {worst_h:,.0f} h, "
                f"past the job's {job.deadline_hours:g} h deadline"
            )
        if online_h is not None and online_h < batch_h:
            return "online", (
                f"the enqueued-token limit needs {waves} waves of batches, one after another: about {batch_h:,.0f} h "
                f"at {job.batch.typical_hours:g} h a wave (up to {worst_h / 24:,.1f} days), while online takes "
                f"{online_h:,.1f} h at your limits; raise [batch] enqueued_token_limit if your tier allows more"
            )
        if saving is not None and saving >= 1.0:
            return "batch", (
                f"the Batch API saves about ${saving:,.2f}, but the enqueued-token limit needs {waves} waves of "
                f"batches one after another: about {batch_h:,.0f} h at {job.batch.typical_hours:g} h a wave, up to "
                f"{worst_h / 24:,.1f} days; split the job or raise your tier if that is too slow"
            )
    if saving is not None and saving >= 1.0:
        return "batch", f"the Batch API saves about ${saving:,.2f} ({1 - 0.5:.0%}) if results can wait up to 24 h"
    if long_online:
        return (
            "batch",
            f"online would take {plan.minutes_online:,.0f} min at your limits; the Batch API does not count against them",
        )
    if saving is None:
        return "online", "cost unknown; online gives results as they come"
    return "online", f"the Batch API would save only ${saving:,.2f}; online finishes sooner"
