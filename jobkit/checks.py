"""Checks of what callers give jobkit (names, queue names, file names, seconds, limits):
one definition each, shared by the Python API, the CLI and HTTP. A foundation module."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from .errors import InvalidTransition
from .jsonutil import short_repr, text_problem

#: Largest priority / duration_ms magnitude: the columns are 32-bit integers on PostgreSQL.
INT32_MAX = 2**31 - 1
#: Longest job_type / dedupe_key (the columns are VARCHAR(200)).
MAX_NAME_LENGTH = 200
#: Longest delay or timeout: ten years, in seconds.
MAX_SECONDS = 10 * 365 * 86400


def check_name(what: str, value: Any) -> str:
    """A job_type or dedupe_key: non-empty text of at most 200 characters that every
    backend can store, or :class:`InvalidTransition`."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidTransition(f"{what} must be a non-empty string, got {short_repr(value)}")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidTransition(f"{what} is {len(value)} characters long; at most "
                                f"{MAX_NAME_LENGTH} are allowed")
    problem = text_problem(value)
    if problem is not None:
        raise InvalidTransition(f"{what} {problem}")
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_filename(name: str) -> str:
    """A video's display name: a plain file name, never a path (ValueError otherwise)."""
    if not name or not name.strip():
        raise ValueError("filename must not be empty")
    if len(name) > 255:
        raise ValueError(f"filename is {len(name)} characters long; at most 255 are allowed")
    if "/" in name or "\\" in name:
        raise ValueError(f"filename {short_repr(name)} contains a path separator; give a plain "
                         "file name such as match.mp4")
    if name.strip() in (".", ".."):
        raise ValueError(f"filename {name!r} is not a file name")
    if _CONTROL.search(name):
        raise ValueError("filename contains control characters (such as NUL)")
    problem = text_problem(name)
    if problem is not None:
        raise ValueError(f"filename {problem}")
    return name


def check_seconds(what: str, value: Any, *, positive: bool) -> float:
    """A finite number of seconds (> 0 or >= 0) up to ten years, or :class:`InvalidTransition`."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidTransition(f"{what} must be a number of seconds {bound}, got "
                                f"{short_repr(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = float("inf")
    if not math.isfinite(number) or not (number > 0 if positive else number >= 0):
        raise InvalidTransition(f"{what} must be a finite number of seconds {bound}, got "
                                f"{short_repr(value)}")
    if number > MAX_SECONDS:
        raise InvalidTransition(f"{what} must be at most {MAX_SECONDS} seconds (ten years), "
                                f"got {short_repr(value)}")
    return number


def check_queue(queue: Any) -> str:
    """A queue name as given, or :class:`InvalidTransition` saying what a name must be."""
    if not isinstance(queue, str) or not queue.strip() or len(queue) > 100 or queue != queue.strip():
        raise InvalidTransition(
            f"queue must be a non-empty name of at most 100 characters without surrounding "
            f"spaces, got {short_repr(queue)}")
    problem = text_problem(queue)
    if problem is not None:
        raise InvalidTransition(f"queue {problem}")
    return queue


def check_queues(queues: Iterable[str] | str | None) -> list[str] | None:
    """The queues a worker serves (None: every queue), each checked."""
    if queues is None:
        return None
    if isinstance(queues, str):
        queues = [queues]
    names = list(dict.fromkeys(check_queue(q) for q in queues))
    if not names:
        raise InvalidTransition("queues must name at least one queue (or be None for all)")
    return names


def check_max_running(value: Any, what: str = "max_running") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise ValueError(f"{what} must be a whole number >= 1 (or None for no limit), "
                         f"got {value!r}")
    return value
