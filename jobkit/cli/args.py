"""Argument types and options shared by several ``jobkit`` commands.

argparse turns a ValueError/ArgumentTypeError of an argument type into exit code 2 with
one line naming the argument.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..checks import INT32_MAX

ID_HELP = "the job's id, as `jobkit jobs` or `jobkit enqueue` print it"


# ---------------------------------------------------------------------------
# Argument types (argparse turns a ValueError/ArgumentTypeError into exit 2)
# ---------------------------------------------------------------------------
def _shown(text: str, limit: int = 40) -> str:
    """An argument echoed in an error: ASCII-safe and cut short (it may be huge)."""
    shown = ascii(text)
    return shown if len(shown) <= limit else shown[:limit - 1] + "…'"


def int_type(minimum: int, unit: str = "", maximum: int = INT32_MAX) -> Callable[[str], int]:
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


def float_type(strict_positive: bool, maximum: float | None = None) -> Callable[[str], float]:
    from ..checks import MAX_SECONDS

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


def datetime_type(text: str) -> datetime:
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


def duration_type(text: str) -> Any:
    from ..durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def json_object(text: str) -> dict[str, Any]:
    from ..jsonutil import loads_strict

    try:
        value = loads_strict(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"is not valid JSON ({exc}): {_shown(text)}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object such as '{{\"key\": 1}}', got a {type(value).__name__}")
    return value


def queue_name(text: str) -> str:
    from ..checks import check_queue
    from ..errors import InvalidTransition

    try:
        return check_queue(text)
    except InvalidTransition as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def queue_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--queue", dest="queues", action="append", type=queue_name, default=None,
                   metavar="NAME", help=f"{what} only jobs of this queue; repeatable "
                                        "(default: every queue)")


def import_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--import", dest="imports", action="append", default=[],
                   metavar="MODULE", help="import MODULE first (it registers handlers); "
                                          "repeatable")


positive = int_type(1)
priority_type = int_type(-INT32_MAX)
