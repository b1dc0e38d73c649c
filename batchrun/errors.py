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
        ├── LockHeld         another batchrun process is running this job (or another job on its ledger)
        └── Interrupted      Ctrl+C, SIGTERM or SIGHUP: dispatching stopped, what was answered is written

Each class carries the process exit code the CLI uses, so scripts and cron can
tell a bad job (2) from a quota stop (3) or a budget stop (4); `ExitCode` is the
whole table (README: "Exit codes").
SDK and HTTP exceptions are translated into this tree in one place (`retries`),
never caught piecemeal elsewhere.
"""

from __future__ import annotations

import enum
import signal


class ExitCode(enum.IntEnum):
    """What `batchrun` tells cron. One table, documented in the README."""

    DONE = 0
    """Every row has a final answer of an accepted status (ok, refused, filtered by default)."""
    INTERNAL = 1
    """A bug in batchrun (a traceback): please report it."""
    USER = 2
    """The job file or its input must change; nothing was sent."""
    QUOTA = 3
    BUDGET = 4
    ENDPOINT = 5
    ROWS_FAILED = 6
    """The run finished, but some rows ended failed / schema_invalid / truncated / too_long / not_sent /
    empty_input: the summary says how many and how to send them again."""
    PENDING = 7
    """Batch mode: batches are submitted or still running; run the same command again later."""
    LOCKED = 8
    """Another batchrun process holds this job's lock; nothing was read or sent."""
    SIGHUP = 129
    SIGINT = 130
    SIGTERM = 143


SIGNAL_EXIT = {signal.SIGINT: ExitCode.SIGINT, signal.SIGTERM: ExitCode.SIGTERM, signal.SIGHUP: ExitCode.SIGHUP}


class BatchrunError(Exception):
    """Base of every error batchrun raises on purpose."""

    exit_code = 1


class UserError(BatchrunError):
    """A mistake in the job or its input: fix it and run again. Nothing was spent."""

    exit_code = ExitCode.USER


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

    exit_code = ExitCode.ENDPOINT


class QuotaExhausted(RunError):
    """The account's quota or spend limit is reached: add credit, then resume."""

    exit_code = ExitCode.QUOTA


class BudgetExceeded(RunError):
    """The job's budget would be passed: raise budget.max_usd, then run again."""

    exit_code = ExitCode.BUDGET


class LockHeld(RunError):
    """Another process runs this job (or a job sharing its ledger): refused before anything was read."""

    exit_code = ExitCode.LOCKED


class Interrupted(RunError):
    """Stopped by a signal; in-flight requests were finished (or, on a second signal, abandoned) and
    every answer received was committed and written."""

    exit_code = ExitCode.SIGINT

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = SIGNAL_EXIT.get(signal.Signals(signum), ExitCode.SIGINT)


class JobKeyIgnored(UserWarning):
    """A job-file key that the mode the job runs in cannot use: warned, not silently dropped."""
