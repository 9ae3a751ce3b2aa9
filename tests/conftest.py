"""Fixtures: every queue/worker test runs on SQLite (a temp file) and on a real PostgreSQL.

PostgreSQL comes from JOBKIT_TEST_POSTGRES_URL (default: the local server). Each
test gets its own database, cloned from a template that already has the schema.
Without a server the PostgreSQL cases skip with a reason, except under CI=true,
where an unreachable server is a failure.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

import jobkit
from jobkit.dispatcher import DISPATCH_TABLE

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PG_URL = os.environ.get("JOBKIT_TEST_POSTGRES_URL",
                        "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
TEMPLATE_DB = f"jobkit_tpl_{os.getpid()}"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Fast defaults for tests: tiny simulated analysis, immediate retries.
FAST = {"cut_analysis_seconds": 0.01, "retry_backoff_base": 0.0, "worker_poll_interval": 0.2}


def _plain_dsn(url: str, database: str | None = None) -> str:
    u = make_url(url)
    if database is not None:
        u = u.set(database=database)
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_admin(sql: str, database: str | None = None) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(_plain_dsn(PG_URL, database), timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


_pg_state: dict[str, object] = {}


def pg_available() -> bool:
    if "ok" not in _pg_state:
        try:
            _pg_admin("SELECT 1")
            _pg_state["ok"] = True
        except Exception as exc:  # noqa: BLE001
            _pg_state["ok"] = False
            _pg_state["why"] = f"{type(exc).__name__}: {exc}"
    return bool(_pg_state["ok"])


def require_pg() -> None:
    if pg_available():
        return
    why = f"PostgreSQL not reachable at {make_url(PG_URL).render_as_string(hide_password=True)} ({_pg_state.get('why')})"
    if IN_CI:
        pytest.fail(f"CI=true requires PostgreSQL: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    require_pg()
    _pg_admin(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{TEMPLATE_DB}"')
    url = make_url(PG_URL).set(database=TEMPLATE_DB).render_as_string(hide_password=False)

    async def schema() -> None:
        engine = jobkit.create_engine(url)
        await jobkit.init_schema(engine)
        await engine.dispose()

    asyncio.run(schema())
    yield TEMPLATE_DB
    _pg_admin(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database with the jobkit schema, dropped after the test."""
    name = f"jobkit_t_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'jobkit.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def handlers() -> dict[str, jobkit.dispatcher.Handler]:
    """A private copy of the dispatch table: tests register handlers without leaking them."""
    return dict(DISPATCH_TABLE)


@pytest.fixture
async def runner(db_url: str, handlers: dict) -> AsyncIterator[jobkit.Runner]:
    r = await jobkit.open(db_url, handlers=handlers, **FAST)
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
async def db(runner: jobkit.Runner) -> AsyncIterator[object]:
    async with runner.sessions() as session:
        session.info["jobkit.settings"] = runner.settings
        yield session
