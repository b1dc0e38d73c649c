"""batchrun: bulk LLM prompts from a table to typed Parquet — planned, rate-limited, resumable."""

from .api import amap, arun, map, run
from .errors import (
    BatchrunError,
    BudgetExceeded,
    EndpointError,
    ExitCode,
    InputError,
    Interrupted,
    JobFileError,
    LockHeld,
    QuotaExhausted,
    RunError,
    SchemaError,
    TemplateError,
    UserError,
)
from .jobs import Job, load_job
from .plan import Plan, make_plan
from .plan_format import format_plan
from .results import RunResult, format_summary

__all__ = [
    "BatchrunError",
    "BudgetExceeded",
    "EndpointError",
    "ExitCode",
    "InputError",
    "Interrupted",
    "Job",
    "JobFileError",
    "LockHeld",
    "Plan",
    "QuotaExhausted",
    "RunError",
    "RunResult",
    "SchemaError",
    "TemplateError",
    "UserError",
    "amap",
    "arun",
    "format_plan",
    "format_summary",
    "load_job",
    "make_plan",
    "map",
    "run",
]
