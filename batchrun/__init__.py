"""batchrun: bulk LLM prompts from a table to typed Parquet — planned, rate-limited, resumable."""

from .errors import (
    BatchrunError,
    BudgetExceeded,
    EndpointError,
    InputError,
    Interrupted,
    JobFileError,
    QuotaExhausted,
    RunError,
    SchemaError,
    TemplateError,
    UserError,
)
from .jobs import Job, load_job
from .plan import Plan, format_plan, make_plan
from .runner import RunResult, format_summary, map, run

__all__ = [
    "BatchrunError",
    "BudgetExceeded",
    "EndpointError",
    "InputError",
    "Interrupted",
    "Job",
    "JobFileError",
    "Plan",
    "QuotaExhausted",
    "RunError",
    "RunResult",
    "SchemaError",
    "TemplateError",
    "UserError",
    "format_plan",
    "format_summary",
    "load_job",
    "make_plan",
    "map",
    "run",
]
