"""The ``jobkit`` command line's argument parser and argument types.

argparse turns a ValueError/ArgumentTypeError of an argument type into exit code 2 with
one line naming the argument.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any, NoReturn

from .models import ALL_STATUSES, TERMINAL

EXIT_USAGE = 2
ID_HELP = "the job's id, as `jobkit jobs` or `jobkit enqueue` print it"
INT32_MAX = 2**31 - 1

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


# ---------------------------------------------------------------------------
# Argument types (argparse turns a ValueError/ArgumentTypeError into exit 2)
# ---------------------------------------------------------------------------
def _shown(text: str, limit: int = 40) -> str:
    """An argument echoed in an error: ASCII-safe and cut short (it may be huge)."""
    shown = ascii(text)
    return shown if len(shown) <= limit else shown[:limit - 1] + "…'"


def _int_type(minimum: int, unit: str = "", maximum: int = INT32_MAX) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            if len(text.strip()) > 20:  # beyond any bound we accept; int() of 5,000 digits fails
                raise ValueError
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number{' of ' + unit if unit else ''} between {minimum} and "
                f"{maximum}, got {_shown(text)}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"must be between {minimum} and {maximum}{' ' + unit if unit else ''}, "
                f"got {value}")
        return value

    return parse


def _float_type(strict_positive: bool, maximum: float | None = None) -> Callable[[str], float]:
    from .checks import MAX_SECONDS

    top = MAX_SECONDS if maximum is None else maximum

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a number of seconds, got {_shown(text)}") from None
        ok = value > 0 if strict_positive else value >= 0
        if not ok or not value <= top:  # also refuses nan and inf
            raise argparse.ArgumentTypeError(
                f"must be a number of seconds {'>' if strict_positive else '>='} 0 and at most "
                f"{top:.0f} (ten years), got {_shown(text)}")
        return value

    return parse


def _datetime_type(text: str) -> datetime:
    raw = text.strip()
    try:
        value = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an ISO 8601 time such as 2030-01-01T12:00:00Z, got {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone; add one, e.g. {raw}Z or {raw}+02:00")
    return value


def _duration_type(text: str) -> Any:
    from .durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json_object(text: str) -> dict[str, Any]:
    from .jsonutil import loads_strict

    try:
        value = loads_strict(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"is not valid JSON ({exc}): {_shown(text)}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object such as '{{\"key\": 1}}', got a {type(value).__name__}")
    return value


def _queue_name(text: str) -> str:
    from .checks import check_queue
    from .errors import InvalidTransition

    try:
        return check_queue(text)
    except InvalidTransition as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _queue_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--queue", dest="queues", action="append", type=_queue_name, default=None,
                   metavar="NAME", help=f"{what} only jobs of this queue; repeatable "
                                        "(default: every queue)")


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """Bad usage prints one line (no usage dump) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """On the top parser with real defaults; on each command with none (SUPPRESS), so
    `jobkit --log-format json work` and `jobkit work --log-format json` both work."""
    suppress: Any = argparse.SUPPRESS
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors",
                   default=False if top else suppress)
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                   help="logging level (default INFO; `demo` shows only warnings)",
                   default=None if top else suppress)
    p.add_argument("--log-format", choices=("text", "json"),
                   help="log lines as text, or one JSON object per line (default text)",
                   default="text" if top else suppress)


def build_parser(commands: Mapping[str, Command], description: str | None = None
                 ) -> argparse.ArgumentParser:
    """The ``jobkit`` parser; ``commands`` maps each command name to its coroutine."""
    parser = _Parser(prog="jobkit", description=description,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _log_options(parser, top=True)
    from .version import __version__

    parser.add_argument("--version", action="version", version=f"jobkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help_text: str, *, db: bool = True,
            json_out: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if db:
            p.add_argument("--database-url", default=None,
                           help="database URL (default: $JOBKIT_DATABASE_URL or ./jobkit.db)")
        if json_out:
            p.add_argument("--json", action="store_true", help="print JSON instead of text")
        _log_options(p, top=False)
        p.set_defaults(func=commands[name])
        return p

    def imports(p: argparse.ArgumentParser) -> None:
        p.add_argument("--import", dest="imports", action="append", default=[],
                       metavar="MODULE", help="import MODULE first (it registers handlers); "
                                              "repeatable")

    positive = _int_type(1)
    priority_type = _int_type(-INT32_MAX)

    add("init", "create the jobkit tables (idempotent)")

    p = add("migrate", "upgrade the database's schema to this jobkit's newest revision "
                       "(or print the SQL with --sql)")
    p.add_argument("--sql", action="store_true",
                   help="print the upgrade's SQL (one transaction) for a DBA instead of running it")
    p.add_argument("--from", dest="from_revision", default=None, metavar="REVISION",
                   help="with --sql: the database's revision, so it is not asked: base (an "
                        "empty database), 0.1.0 (made by jobkit 0.1.0) or a revision id")

    p = add("upload", "register a video and queue its cut_analysis job")
    p.add_argument("file", metavar="FILE",
                   help="a video file (its path and size are recorded, and cut_analysis "
                        "decodes it) or just a name (a simulated analysis)")
    p.add_argument("--duration-ms", type=_int_type(1, "milliseconds"), default=None,
                   help="the video's length in milliseconds: required for a bare name; "
                        "probed from the file when not given")
    p.add_argument("--priority", type=priority_type, default=0, help="higher runs first")

    p = add("enqueue", "add a job of any registered type")
    p.add_argument("job_type", metavar="TYPE", help="the handler's name, e.g. cut_analysis")
    p.add_argument("--params", type=_json_object, default={}, metavar="JSON",
                   help="the job's params as a JSON object (default {})")
    p.add_argument("--priority", type=priority_type, default=0, help="higher runs first")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--run-at", type=_datetime_type, default=None, metavar="TIME",
                      help="not before this ISO 8601 time with a zone, e.g. 2030-01-01T09:00Z")
    when.add_argument("--delay", type=_float_type(False), default=None, metavar="SECONDS",
                      help="not before this many seconds from now")
    p.add_argument("--dedupe-key", default=None,
                   help="at most one unfinished job per key (the existing one is returned)")
    p.add_argument("--max-retries", type=_int_type(0), default=None,
                   help="retries after the first attempt (default $JOBKIT_MAX_JOB_RETRIES)")
    p.add_argument("--timeout", type=_float_type(True), default=None, metavar="SECONDS",
                   help="seconds before a running attempt is cancelled")
    p.add_argument("--allow-unknown", action="store_true",
                   help="enqueue a type no imported module registers (your workers know it)")
    p.add_argument("--queue", type=_queue_name, default=None, metavar="NAME",
                   help="the queue it waits in (default: its handler's, else 'default')")
    p.add_argument("--after", action="append", default=None, metavar="ID",
                   help="run only once this job has completed; repeatable")
    imports(p)

    p = add("step", "process ONE job now and print its summary")
    imports(p)
    p.add_argument("--any-type", action="store_true",
                   help="also claim a job no imported handler can run (it fails at once as "
                        "unknown); by default such jobs are left waiting")
    _queue_options(p, "claim")

    p = add("work", "run a worker until SIGINT/SIGTERM (or --burst)")
    p.add_argument("--concurrency", type=positive, default=None, help="jobs at once (default 1)")
    p.add_argument("--poll-interval", type=float, default=None,
                   help="seconds between polls when idle (default 2)")
    imports(p)
    p.add_argument("--burst", action="store_true", help="exit when nothing is eligible")
    _queue_options(p, "serve")
    p.add_argument("--no-schedules", dest="schedules", action="store_false", default=None,
                   help="do not enqueue the ticks of periodic jobs (another worker does)")
    p.add_argument("--force", action="store_true",
                   help="run even when JOBKIT_WORKER_ENABLED is false")

    p = add("drain", "process jobs until nothing is eligible, then exit")
    p.add_argument("--concurrency", type=positive, default=1, help="jobs at once (default 1)")
    imports(p)
    _queue_options(p, "process")

    add("status", "jobs per status (and per queue), queue depth, workers and their health")

    p = add("jobs", "list the newest jobs")
    p.add_argument("--status", choices=[*(s.value for s in ALL_STATUSES), "cancelled"],
                   default=None, help="only jobs in this status (cancelled: the failed jobs "
                                      "that were cancelled)")
    p.add_argument("--type", dest="job_type", default=None, help="only jobs of this type")
    p.add_argument("--queue", type=_queue_name, default=None, metavar="NAME",
                   help="only jobs of this queue")
    p.add_argument("--limit", type=positive, default=20, help="at most this many (default 20)")

    p = add("schedules", "list the periodic jobs; pause, resume or remove one")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--pause", metavar="NAME", default=None, help="stop enqueueing its ticks")
    act.add_argument("--resume", metavar="NAME", default=None,
                     help="enqueue its ticks again, from the next one")
    act.add_argument("--remove", metavar="NAME", default=None, help="delete it")

    p = add("show", "everything about one job")
    p.add_argument("job_id", metavar="ID", help=ID_HELP)

    p = add("explain", "why a job is in its state, and what happens next")
    p.add_argument("job_id", metavar="ID", help=ID_HELP)
    imports(p)

    p = add("failed", "the most recent failed jobs")
    p.add_argument("--limit", type=positive, default=10, help="at most this many (default 10)")

    p = add("retry", "send a failed job (or every failed job) back to pending")
    p.add_argument("job_id", metavar="ID", nargs="?", default=None,
                   help=ID_HELP + " (or give --all-failed)")
    p.add_argument("--all-failed", action="store_true", help="every failed job")
    p.add_argument("--type", dest="job_type", default=None,
                   help="with --all-failed: only jobs of this type")
    p.add_argument("--include-cancelled", action="store_true",
                   help="with --all-failed: also jobs that were cancelled on purpose")

    p = add("cancel", "cancel a waiting job, or ask a running one to stop")
    p.add_argument("job_id", metavar="ID", help=ID_HELP)

    terminal = ",".join(s.value for s in sorted(TERMINAL, key=lambda s: s.value))
    p = add("prune", "delete finished jobs older than a duration, in batches "
                                "(never unfinished ones; clips are kept)")
    p.add_argument("--older-than", type=_duration_type, required=True, metavar="DURATION",
                   help="a number with a unit, e.g. 30d, 12h, 1d12h, 90m, 45s (units: w, d, "
                        "h, m, s)")
    p.add_argument("--status", default=terminal,
                   help=f"comma-separated finished statuses (default {terminal})")
    p.add_argument("--batch-size", type=positive, default=1000,
                   help="rows deleted per transaction (default 1000)")
    p.add_argument("--dry-run", action="store_true", help="count, delete nothing")

    p = add("serve", "run the HTTP API with uvicorn (and a worker when "
                                "JOBKIT_WORKER_ENABLED is true)", json_out=False)
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    p.add_argument("--port", type=_int_type(0, "", 65535), default=8000,
                   help="default 8000 (0: any free port)")
    p.add_argument("--concurrency", type=positive, default=None,
                   help="the in-process worker's concurrency (default $JOBKIT_CONCURRENCY)")
    p.add_argument("--dev-endpoints", action="store_true",
                   help="enable POST /jobs/process (like JOBKIT_DEV_ENDPOINTS=true)")
    imports(p)

    p = add("demo", "upload sample videos, drain, print the outcome", db=False)
    p.add_argument("--database-url", default=None,
                   help="default: a fresh SQLite file in a temporary folder")
    p.add_argument("--concurrency", type=positive, default=5,
                   help="jobs at once (default 5)")
    p.add_argument("--plot", default=None, help="write a PNG of the clip scores here")
    return parser
