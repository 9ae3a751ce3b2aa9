"""The `jobkit` command line: thin argument parsing over the functions a script calls.

Every command takes --database-url (default: $JOBKIT_DATABASE_URL or ./jobkit.db) and
--json (machine-readable output on stdout); logs go to stderr.

Exit codes:
  0    success
  1    jobkit refused the request (invalid params, a job in the wrong state, ...)
  2    bad command-line usage or configuration (unknown option, malformed JSON, ...)
  3    `work` refused: the worker is disabled (JOBKIT_WORKER_ENABLED is false;
       pass --force or enable it)
  4    no such job
  5    the database cannot be reached, has no jobkit tables (`jobkit init`), or its
       schema is older (`jobkit migrate`) or newer (upgrade jobkit) than this jobkit's
  130  interrupted
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback

from ..errors import ConfigError, JobkitError, JobNotFound, SchemaError
from ..logsetup import setup_logging
from .common import (
    EXIT_DATABASE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    DatabaseUnavailable,
    UsageError,
)
from .registry import Run
from .registry import build_parser as _build_parser

# Each module registers its commands (jobkit.cli.registry) when imported: the order of
# these imports, then of the commands in each module, is the order of `jobkit --help`.
# isort: off
from . import schema  # noqa: F401  init, migrate
from . import submit  # noqa: F401  upload, enqueue
from . import work  # noqa: F401  step, work, drain
from . import status  # noqa: F401  status
from . import jobs  # noqa: F401  jobs, schedules, show, explain, failed, retry, cancel, prune
from . import serve  # noqa: F401  serve, demo
# isort: on

__all__ = ["DatabaseUnavailable", "UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``jobkit`` command."""
    return _build_parser(__doc__)


def main(argv: list[str] | None = None) -> int:
    """Run ``jobkit`` with ``argv`` (default: the process's arguments); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # `demo` prints a report on stdout: its per-job INFO lines would interleave with it.
    default_level = "WARNING" if args.command == "demo" else "INFO"
    setup_logging(args.log_level or default_level, args.log_format)
    func: Run = args.func
    try:
        return asyncio.run(func(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (`jobkit jobs --json | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - every error becomes one line and an exit code
        if args.debug:
            traceback.print_exc()
        print(f"jobkit {args.command}: {_message(exc)}", file=sys.stderr)
        return _exit_code(exc)


def _exit_code(exc: BaseException) -> int:
    from ..database import DB_ERRORS

    if isinstance(exc, UsageError | ConfigError):
        return EXIT_USAGE
    if isinstance(exc, JobNotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, (DatabaseUnavailable, SchemaError, *DB_ERRORS)):
        return EXIT_DATABASE
    return EXIT_ERROR


def _message(exc: BaseException) -> str:
    from ..database import DB_ERRORS

    if isinstance(exc, JobNotFound):
        return f"no job with id {exc.job_id}; list jobs with `jobkit jobs`"
    if isinstance(exc, JobkitError):
        return str(exc)
    if isinstance(exc, DB_ERRORS):
        from ..database import describe_error

        return f"database error: {describe_error(exc)}"
    return (f"unexpected error: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback)")
