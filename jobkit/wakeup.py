"""Waking idle workers without waiting out the poll interval.

- PostgreSQL: a statement trigger on ``jobs`` sends ``NOTIFY jobkit_jobs`` (job ids
  only) at commit; workers ``LISTEN`` on a dedicated asyncpg connection and
  reconnect when it drops.
- SQLite across processes: ``PRAGMA data_version`` changes when another connection
  commits; a dedicated connection reads it every few milliseconds (a microsecond
  query on a page already in memory).
- In one process: enqueue wakes local workers directly (see ``queue.wake_local``).

Each backend's watcher is its ``watch`` (:mod:`jobkit.backends`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from .backends import backend_of


async def watch(engine: AsyncEngine, wake: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``wake()`` whenever another process may have made a job eligible."""
    await backend_of(engine).watch(engine, wake, stop)
