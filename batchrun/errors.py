"""The one exception tree of batchrun.

    BatchrunError
    ├── UserError            something in the job or its input must change; nothing was sent
    │   ├── JobFileError     a key in the job file is missing, mistyped or out of range
    │   ├── InputError       the input file is missing, empty, unreadable, or its ids are bad
    │   ├── TemplateError    the prompt template does not render against the input
    │   └── SchemaError      the structured-output schema breaks the strict-mode rules
    └── RunError             the run started and could not go on
        ├── EndpointError    the endpoint refused us for a reason retrying will not fix
        ├── QuotaExhausted   the account is out of credit / over its spend limit
        ├── BudgetExceeded   the job's budget.max_usd would be passed by the next request
        └── Interrupted      the user pressed Ctrl+C

Each class carries the process exit code the CLI uses, so scripts and cron can
tell a bad job (2) from a quota stop (3) or a budget stop (4).
SDK and HTTP exceptions are translated into this tree in one place (`retries`),
never caught piecemeal elsewhere.
"""

from __future__ import annotations


class BatchrunError(Exception):
    """Base of every error batchrun raises on purpose."""

    exit_code = 1


class UserError(BatchrunError):
    """A mistake in the job or its input: fix it and run again. Nothing was spent."""

    exit_code = 2


class JobFileError(UserError):
    """The job file is wrong: names the file, the key and what is allowed."""

    def __init__(self, path: object, key: str, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: [{key}]" if key else self.path
        super().__init__(f"{where}: {problem}")


class InputError(UserError):
    """The input data is wrong: names the file and, where known, the row or line."""


class TemplateError(UserError):
    """The prompt template fails against the input columns."""


class SchemaError(UserError):
    """The structured-output schema is not valid for OpenAI strict mode."""


class RunError(BatchrunError):
    """The run started but could not continue; what is done is kept."""


class EndpointError(RunError):
    """The endpoint rejected the run for a reason that retrying will not fix."""

    exit_code = 5


class QuotaExhausted(RunError):
    """The account's quota or spend limit is reached: add credit, then resume."""

    exit_code = 3


class BudgetExceeded(RunError):
    """The job's budget would be passed: raise budget.max_usd, then run again."""

    exit_code = 4


class Interrupted(RunError):
    """Stopped by the user; in-flight requests were finished and written."""

    exit_code = 130
