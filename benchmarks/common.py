"""Databases, timing and correctness checks shared by the scenarios."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import make_url

import jobkit

PG_ADMIN_URL = os.environ.get("JOBKIT_BENCH_POSTGRES_URL",
                              "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
PG_BENCH_DB = os.environ.get("JOBKIT_BENCH_POSTGRES_DB", "jobkit_bench")  # one per concurrent run
BACKENDS = ("sqlite", "postgresql")

# A side table for the transactional-handler scenario (the handler writes one row).
BENCH_ROWS_DDL = "CREATE TABLE IF NOT EXISTS bench_rows (job_id CHAR(36) NOT NULL, n INTEGER NOT NULL)"


def plain_dsn(url: str, database: str | None = None) -> str:
    """An asyncpg DSN (no ``+asyncpg``) for a SQLAlchemy URL."""
    u = make_url(url)
    if database is not None:
        u = u.set(database=database)
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


class Databases:
    """A temporary SQLite folder and a dedicated PostgreSQL database, dropped at the end."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="jobkit-bench-")
        self.pg_url = make_url(PG_ADMIN_URL).set(database=PG_BENCH_DB).render_as_string(
            hide_password=False)
        self._n = 0
        self.pg_ok = False

    async def _admin(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(plain_dsn(PG_ADMIN_URL), timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def start(self) -> None:
        try:
            await self._admin(f'DROP DATABASE IF EXISTS "{PG_BENCH_DB}" WITH (FORCE)')
            await self._admin(f'CREATE DATABASE "{PG_BENCH_DB}"')
            self.pg_ok = True
        except Exception as exc:  # noqa: BLE001 - the report says PostgreSQL was skipped
            print(f"PostgreSQL unavailable, skipping it: {type(exc).__name__}: {exc}")

    async def close(self) -> None:
        if self.pg_ok:
            await self._admin(f'DROP DATABASE IF EXISTS "{PG_BENCH_DB}" WITH (FORCE)')
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def fresh(self, backend: str) -> str:
        """A URL of an empty database with the jobkit schema (and ``bench_rows``)."""
        if backend == "sqlite":
            self._n += 1
            url = f"sqlite+aiosqlite:///{self.tmp}/bench{self._n}.db"
        else:
            url = self.pg_url
        engine = jobkit.create_engine(url)
        try:
            await jobkit.init_schema(engine)
            from sqlalchemy import text

            async with engine.begin() as conn:
                await conn.execute(text(BENCH_ROWS_DDL))
                if backend == "postgresql":
                    await conn.execute(text(
                        "TRUNCATE jobs, clips, video_assets, workers, bench_rows CASCADE"))
        finally:
            await engine.dispose()
        if backend == "postgresql":
            import asyncpg

            conn = await asyncpg.connect(plain_dsn(url))
            try:
                await conn.execute("VACUUM ANALYZE jobs")
                await conn.execute("CHECKPOINT")
            finally:
                await conn.close()
        return url

    def sqlite_path(self, url: str) -> str:
        return str(make_url(url).database)


@asynccontextmanager
async def timed() -> AsyncIterator[dict[str, float]]:
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - t0


@dataclass
class Series:
    """Repeated measurements of one figure."""

    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(v)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def lo(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def hi(self) -> float:
        return max(self.values) if self.values else float("nan")


class CheckFailed(AssertionError):
    """A benchmark run did not do every job exactly once: its figure is not reported."""


def check_exactly_once(executed: dict[Any, int], expected: set[Any], what: str) -> None:
    """Every expected job ran once, no job twice, nothing unknown ran."""
    dupes = [k for k, n in executed.items() if n != 1]
    missing = expected - set(executed)
    extra = set(executed) - expected
    if dupes or missing or extra:
        raise CheckFailed(f"{what}: {len(dupes)} duplicate, {len(missing)} missing, "
                          f"{len(extra)} unexpected executions")


async def status_of_all(url: str) -> dict[str, int]:
    """Jobs per status, read with the bare driver."""
    if url.startswith("sqlite"):
        import aiosqlite

        async with aiosqlite.connect(str(make_url(url).database)) as conn:
            rows = await conn.execute_fetchall("SELECT status, count(*) FROM jobs GROUP BY status")
    else:
        import asyncpg

        pg = await asyncpg.connect(plain_dsn(url))
        try:
            rows = await pg.fetch("SELECT status, count(*) FROM jobs GROUP BY status")
        finally:
            await pg.close()
    return {str(r[0]): int(r[1]) for r in rows}


async def check_all_completed(url: str, n: int, what: str) -> None:
    counts = await status_of_all(url)
    if counts != {"completed": n}:
        raise CheckFailed(f"{what}: expected {n} completed jobs and nothing else, got {counts}")

