"""jobkit's exceptions: one base, specific errors that carry their data.

Every message says what was wrong and what to do about it.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable


class JobkitError(Exception):
    """Something went wrong in jobkit."""


class ConfigError(JobkitError, ValueError):
    """A setting has a value jobkit cannot use."""

    def __init__(self, name: str, value: object, expected: str) -> None:
        self.name = name
        self.value = value
        self.expected = expected
        super().__init__(f"{name}={value!r} is not valid: expected {expected}")


class DatabaseURLError(ConfigError):
    """The database URL names a backend jobkit does not support."""


class UnknownJobType(JobkitError, KeyError):
    """No handler is registered for a job's ``job_type``."""

    def __init__(self, job_type: str, known: Iterable[str]) -> None:
        self.job_type = job_type
        self.known = sorted(known)
        super().__init__(job_type)

    def __str__(self) -> str:  # KeyError would quote the message
        known = ", ".join(self.known) or "(none)"
        return (
            f"unknown job_type {self.job_type!r}; registered handlers: {known}. "
            "Register one with @jobkit.handler(name) or jobkit.register_handler(name, fn), "
            "or pass allow_unknown=True if only your workers have it."
        )


class InvalidHandler(JobkitError, TypeError):
    """A function that cannot be a handler (it must be ``async def handler(job, db)``)."""


class HandlerExistsError(JobkitError, ValueError):
    """A handler name is already taken."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"a handler named {name!r} is already registered; "
            "pass replace=True to replace it on purpose"
        )


class InvalidParams(JobkitError, ValueError):
    """Job params (or a handler result) cannot be stored as JSON."""

    def __init__(self, path: str, problem: str, what: str = "params") -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{what}{path}: {problem}")


class InvalidResult(InvalidParams):
    """A handler returned a result that cannot be stored as JSON."""

    def __init__(self, path: str, problem: str, what: str = "result") -> None:
        super().__init__(path, problem, what)
        self.args = (f"the handler's result is not storable JSON: {what}{path}: {problem}",)


class JobNotFound(JobkitError, LookupError):
    """No job has this id."""

    def __init__(self, job_id: object) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id}; list jobs with `jobkit jobs`")


class InvalidTransition(JobkitError, ValueError):
    """The job is not in a state that allows this action."""


class PermanentError(JobkitError):
    """Raised by a handler when retrying cannot help: the job fails at once."""


class Retry(JobkitError):
    """Raised by a handler to ask for another attempt after ``delay`` seconds."""

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        self.delay = delay
        self.reason = reason
        super().__init__(reason if delay is None else f"{reason} (in {delay:g} s)")


class JobCancelled(JobkitError):
    """A running job was cancelled on request."""


class SchemaError(JobkitError):
    """The database's schema is not the one this jobkit works with."""


class SchemaOutdated(SchemaError):
    """The database's schema is older than this jobkit's, and upgrading it is not automatic."""

    def __init__(self, database: str, current: str, head: str) -> None:
        self.database = database
        self.current = current
        self.head = head
        super().__init__(
            f"the database {database} has jobkit schema revision {current}, older than this "
            f"jobkit's {head}: run `jobkit migrate` (or set JOBKIT_AUTO_MIGRATE=true)")


class SchemaTooNew(SchemaError):
    """The database was upgraded by a newer jobkit than this one."""

    def __init__(self, database: str, current: str, head: str, version: str) -> None:
        self.database = database
        self.current = current
        self.head = head
        super().__init__(
            f"the database {database} has jobkit schema revision {current}, newer than this "
            f"jobkit {version} knows (its newest is {head}): upgrade jobkit on this host; "
            "nothing was written")


# ---------------------------------------------------------------------------
# The stored error text
# ---------------------------------------------------------------------------
def error_text(exc: BaseException) -> str:
    """The stored error: a traceback whose LAST line is always ``Type: first line``.

    Monitoring, logs and summaries show that last line, so a multi-line message keeps
    its type and its first line there.
    """
    lines = str(exc).strip().splitlines()
    summary = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip()
    if isinstance(exc, JobkitError | KeyError):
        return summary if len(lines) <= 1 else f"{type(exc).__name__}: {exc}\n{summary}"
    text = "".join(traceback.format_exception(exc)).rstrip()
    return text if text.endswith(summary) else f"{text}\n{summary}"


def last_line(error: str | None) -> str | None:
    """The last line of a stored error (the exception line of a traceback)."""
    if not error:
        return error
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1] if lines else error
