"""Durations as people write and read them (``30d``, ``1 day 12 hours``) and THE duration
of an attempt. A foundation module: no database, no pandas."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhms])", re.IGNORECASE)
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


DURATION_UNITS = "w (weeks), d (days), h (hours), m (minutes), s (seconds)"


def parse_duration(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"1d12h"``, ``"90s"`` → timedelta. A number needs a unit: a
    bare ``30`` is refused (30 seconds? days?) with a message listing the units."""
    raw = text.strip()
    try:
        float(raw)
    except ValueError:
        pass
    else:
        raise ValueError(f"{text!r} has no unit; write e.g. {raw}d or {raw}s "
                         f"(units: {DURATION_UNITS})")
    pos, seconds = 0, 0.0
    for m in _DURATION_RE.finditer(raw):
        if m.start() != pos or raw[pos:m.start()].strip():
            break
        seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()]
        pos = m.end()
    if pos == 0 or raw[pos:].strip():
        raise ValueError(f"{text[:60]!r} is not a duration; use e.g. 30d, 12h, 1d12h, 90m or "
                         f"45s (units: {DURATION_UNITS})") from None
    if not seconds >= 0 or seconds > 100 * 365 * 86400:
        raise ValueError(f"{text[:60]!r} is not a duration from 0 to 100 years")
    return timedelta(seconds=seconds)


def human_duration(value: timedelta | float) -> str:
    """``30 days``, ``1 day 12 hours``, ``90 minutes`` → as a person would say it."""
    total = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if total < 60 and total != int(total):
        return f"{total:g} seconds"
    rest = int(round(total))
    parts = []
    units = (("week", 604800),) if rest % 604800 == 0 else ()
    for name, size in (*units, ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        n, rest = divmod(rest, size)
        if n:
            parts.append(f"{n} {name}{'s' if n != 1 else ''}")
    return " ".join(parts) or "0 seconds"


def attempt_ms(started_at: datetime | None, ended_at: datetime | None) -> int | None:
    """THE duration of an attempt, in whole milliseconds: from its claim (``started_at``) to
    the recording of its outcome (``finished_at``), both as stored in the database, rounded
    to the nearest millisecond. ``step``, ``show``, ``explain`` and the monitoring frames all
    use this definition."""
    if started_at is None or ended_at is None:
        return None
    delta = ended_at - started_at
    return (delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds
            + 500) // 1000
