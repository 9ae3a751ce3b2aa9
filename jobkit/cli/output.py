"""How ``jobkit`` commands print: JSON with ``--json``, otherwise text for a person."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any


def out(args: argparse.Namespace, data: Any, human: str | Callable[[], str]) -> None:
    """Print ``data`` as JSON with ``--json``, else ``human`` (text, or a function making it)."""
    if getattr(args, "json", False):
        print(json.dumps(data, default=str, ensure_ascii=False))
    else:
        print(human() if callable(human) else human)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def short_error(error: str | None, width: int = 60) -> str:
    from ..errors import last_line

    line = last_line(error) or ""
    return line if len(line) <= width else line[:width - 1] + "…"


def ago(value: datetime | None) -> str:
    from ..models import utcnow

    if value is None:
        return "never"
    s = max(0.0, (utcnow() - value).total_seconds())
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    if s < 172800:
        return f"{s / 3600:.0f}h ago"
    return f"{s / 86400:.0f}d ago"


def progress_cell(job: Any, width: int = 10) -> str:
    """``[####      ]  40% decoding 12/30 s`` for a job that reported progress."""
    if job.progress is None:
        return ""
    filled = int(round(job.progress * width))
    text = f"[{'#' * filled}{' ' * (width - filled)}] {job.progress * 100:3.0f}%"
    if job.progress_message and str(job.status) == "processing":
        text += f" {job.progress_message[:40]}"
    return text
