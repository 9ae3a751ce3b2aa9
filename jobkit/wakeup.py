"""Waking idle workers without waiting out the poll interval.

- PostgreSQL: a statement trigger on ``jobs`` sends ``NOTIFY jobkit_jobs`` (job ids
  only) at commit; workers ``LISTEN`` on a dedicated asyncpg connection and
  reconnect when it drops.
- SQLite across processes: ``PRAGMA data_version`` changes when another connection
  commits; a dedicated connection reads it every few milliseconds (a microsecond
  query on a page already in memory).
- In one process: enqueue wakes local workers directly (see ``queue.wake_local``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("jobkit")

CHANNEL = "jobkit_jobs"
SQLITE_WATCH_INTERVAL = 0.005

PG_NOTIFY_DDL = (
    f"""
    CREATE OR REPLACE FUNCTION jobkit_notify_jobs() RETURNS trigger AS $$
    BEGIN
        PERFORM pg_notify('{CHANNEL}', coalesce(
            (SELECT string_agg(id::text, ',') FROM (SELECT id FROM new_jobs LIMIT 20) s), ''));
        RETURN NULL;
    END $$ LANGUAGE plpgsql
    """,
    """
    CREATE OR REPLACE TRIGGER jobkit_notify_jobs AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobkit_notify_jobs()
    """,
)


async def watch(engine: AsyncEngine, wake: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``wake()`` whenever another process may have made a job eligible."""
    if engine.dialect.name == "postgresql":
        await _listen_postgres(engine, wake, stop)
    else:
        await _watch_sqlite(engine, wake, stop)


async def _listen_postgres(engine: AsyncEngine, wake: Callable[[], None],
                           stop: asyncio.Event) -> None:
    import asyncpg

    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    delay = 0.1
    while not stop.is_set():
        conn = None
        try:
            conn = await asyncpg.connect(dsn)
            await conn.add_listener(CHANNEL, lambda *_: wake())
            wake()  # we may have missed notifications while (re)connecting
            delay = 0.1
            while not stop.is_set() and not conn.is_closed():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await stop.wait()
                if not stop.is_set():
                    # A cheap liveness check: a dropped connection raises here.
                    await conn.execute("SELECT 1")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep listening through outages
            log.warning("jobkit LISTEN connection lost (%s); reconnecting in %.1fs",
                        type(exc).__name__, delay)
        finally:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            delay = min(delay * 2, 5.0)


async def _watch_sqlite(engine: AsyncEngine, wake: Callable[[], None],
                        stop: asyncio.Event) -> None:
    import aiosqlite

    path = engine.url.database or ""
    delay = 0.1
    while not stop.is_set():
        try:
            async with aiosqlite.connect(path, uri=path.startswith("file:")) as conn:
                last = None
                while not stop.is_set():
                    async with conn.execute("PRAGMA data_version") as cur:
                        row = await cur.fetchone()
                    value = row[0] if row else None
                    if last is not None and value != last:
                        wake()
                    last = value
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(SQLITE_WATCH_INTERVAL):
                            await stop.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.warning("jobkit SQLite watcher failed (%s); retrying in %.1fs",
                        type(exc).__name__, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            delay = min(delay * 2, 5.0)
