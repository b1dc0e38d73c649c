"""batchrun: bulk LLM prompts from a table to typed Parquet — planned, rate-limited, resumable."""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .api import amap, arun, map, run
    from .jobs import Job, load_job
    from .plan import Plan, make_plan
    from .plan_format import format_plan
    from .results import RunResult, format_summary

# the library's entry points are imported on first use: `import batchrun` (and so `batchrun --help`,
# which imports the package) does not load polars, the SDK and the engine before they are needed
_LAZY = {
    "amap": "api", "arun": "api", "map": "api", "run": "api",
    "Job": "jobs", "load_job": "jobs",
    "Plan": "plan", "make_plan": "plan",
    "format_plan": "plan_format",
    "RunResult": "results", "format_summary": "results",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchrun' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


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
