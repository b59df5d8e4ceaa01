"""The one exception tree of llmops.

Every error renders as a single line that names the problem and, where there is one, the fix::

    LlmopsError
    ├── ConfigError            settings or llmops.yaml is invalid
    ├── PromptError            unknown prompt / version / alias, bad template
    │   └── RenderError        missing, undeclared or ill-typed variable; output too large
    ├── InputError             unreadable or malformed batch input
    ├── RequestError           request names an unknown person, department or model
    ├── ProviderError          the model provider failed (``retryable`` says whether to retry)
    ├── BudgetExceededError    the department's hard budget limit would be passed
    ├── LedgerError            the ledger database is missing or inconsistent
    └── ReconciliationError    a batch's records do not add up

Record-level outcomes (blocked, denied, ...) are *not* exceptions: they are terminal statuses of a
:class:`llmops.types.Result`. Exceptions are for problems that stop a whole command.
"""

from __future__ import annotations


class LlmopsError(Exception):
    """Base class. ``str(err)`` is one line: the problem, then the fix."""

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = " ".join(problem.split())
        self.fix = " ".join(fix.split()) if fix else None
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.problem} — fix: {self.fix}" if self.fix else self.problem


class ConfigError(LlmopsError):
    exit_code = 2


class PromptError(LlmopsError):
    exit_code = 2


class RenderError(PromptError):
    pass


class InputError(LlmopsError):
    exit_code = 2


class RequestError(LlmopsError):
    exit_code = 2


class ProviderError(LlmopsError):
    def __init__(
        self,
        problem: str,
        fix: str | None = None,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(problem, fix)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status_code = status_code


class BudgetExceededError(LlmopsError):
    exit_code = 3


class LedgerError(LlmopsError):
    pass


class ReconciliationError(LlmopsError):
    exit_code = 4


def raised_at(exc: BaseException) -> str:
    """``file:line`` where ``exc`` was raised — what may be reported of an exception whose message could
    quote a record (PII, secrets)."""
    where = exc.__traceback__
    while where is not None and where.tb_next is not None:
        where = where.tb_next
    return f"{where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where is not None else "?"
