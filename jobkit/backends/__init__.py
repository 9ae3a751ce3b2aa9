"""The two database backends, side by side: every dialect difference and every literal SQL
statement lives in :mod:`jobkit.backends.postgres` or :mod:`jobkit.backends.sqlite`, under the
same names (listed by :class:`Backend`). Everything else asks for the backend of what it holds:

    backend = backend_of(db)          # a session, engine, connection, dialect or name
    rows = await db.execute(backend.CLAIM[shape], {**params, **backend.lease_params(60)})
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Table, TextualSelect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

from ..models import Job
from . import postgres, sqlite
from .common import ClaimShape, Prepared

__all__ = ["Backend", "ClaimShape", "Prepared", "backend_of", "postgres", "sqlite"]


class Backend(Protocol):
    """What each backend module provides (``jobkit.backends.postgres`` / ``.sqlite``)."""

    #: The SQLAlchemy dialect name: ``"postgresql"`` or ``"sqlite"``.
    NAME: str
    #: One connection writes at a time (a write may wait for another transaction).
    SINGLE_WRITER: bool
    #: An older schema is upgraded on open without ``JOBKIT_AUTO_MIGRATE``.
    MIGRATES_ON_OPEN: bool
    #: Claim predicates (literal SQL): no unfinished dependency / no ``max_running`` limit.
    DEPS_DONE: str
    UNLIMITED: str
    #: The claim, one prebuilt statement per :class:`ClaimShape`.
    CLAIM: dict[ClaimShape, TextualSelect]
    #: One job's fenced completion; many in one statement; many jobs inserted in one.
    COMPLETE: Any
    COMPLETE_MANY: TextualSelect
    INSERT_MANY: TextClause
    #: The fast lane (:meth:`fetch_alone`): the claims it runs (unlimited, at most one
    #: queue, no type filter), one job's / many jobs' completion, one job's insert.
    CLAIM_ALONE: dict[ClaimShape, Prepared]
    COMPLETE_ALONE: Prepared
    COMPLETE_MANY_ALONE: Prepared
    INSERT_ALONE: Prepared
    #: The schema lock as SQL for an offline script (None: the transaction is the lock).
    SCHEMA_LOCK: Any

    # The database clock.
    def now(self) -> Any: ...  # "now" for a statement: an SQL clock or a value
    def clock_params(self) -> dict[str, Any]: ...  # the bound values statements' clock needs
    async def clock(self, db: AsyncSession) -> datetime: ...  # the current time, read
    def seconds_between(self, later: Any, earlier: Any) -> Any: ...  # SQL
    def insert(self, table: Table) -> Any: ...  # INSERT with on_conflict_do_*()

    # Statements' bound values.
    def lease_params(self, lease_seconds: float) -> dict[str, Any]: ...
    def complete_many_params(self, items: Sequence[tuple[Job, Any]],
                             worker_id: str) -> dict[str, Any]: ...
    def insert_many_params(self, rows: Sequence[Mapping[str, Any]],
                           now: datetime) -> dict[str, Any]: ...
    async def begin_limited_claim(self, db: AsyncSession, job_type: str,
                                  commit: bool) -> bool: ...

    # Transactions.
    async def one_statement_transaction(self, db: AsyncSession) -> None: ...
    async def execute_alone(self, conn: AsyncConnection, statement: Any,
                            params: Any) -> None: ...
    def claim_alone_statement(self, shape: ClaimShape, n: int) -> Prepared: ...  # of n jobs
    async def fetch_alone(self, engine: AsyncEngine, statement: Prepared,
                          params: Mapping[str, Any]) -> list[dict[str, Any]]: ...
    # One job row (``queue.build_job_row``) inserted through the fast lane.
    async def insert_alone(self, engine: AsyncEngine, row: Mapping[str, Any]) -> None: ...
    # ``commit=True``: the caller commits at once if rows come back; the backend may commit
    # with the statement (SQLite: in its trip), leaving the caller's commit nothing to send.
    async def fetch_in_transaction(self, conn: AsyncConnection, statement: Prepared,
                                   params: Mapping[str, Any], *,
                                   commit: bool = False) -> list[dict[str, Any]] | None: ...
    async def begin_snapshot(self, conn: AsyncConnection) -> None: ...
    async def after_bulk_insert(self, db: AsyncSession, inserted: int) -> None: ...
    async def lock_schema(self, conn: AsyncConnection) -> None: ...

    # Engines.
    def url_problem(self, url: URL) -> str | None: ...
    def engine_options(self, url: URL, kwargs: dict[str, Any]) -> None: ...
    def connect_timeout(self, seconds: float) -> dict[str, Any]: ...  # connect_args
    def missing_file(self, url: str) -> str | None: ...  # an embedded file not there yet
    def install(self, engine: AsyncEngine, kwargs: Mapping[str, Any]) -> None: ...
    # Close the connections the engine holds outside its pool (before engine.dispose()).
    async def release(self, engine: AsyncEngine) -> None: ...

    # Wake-ups from other processes.
    async def watch(self, engine: AsyncEngine, wake: Callable[[], None],
                    stop: asyncio.Event) -> None: ...


_BY_NAME: dict[str, Backend] = {postgres.NAME: postgres, sqlite.NAME: sqlite}


def backend_of(bind: Any) -> Backend:
    """The backend of a session, engine, connection, dialect, migration context, URL, or
    backend name (``"postgresql"``, ``"sqlite"``)."""
    if isinstance(bind, (AsyncSession, Session)):
        bind = bind.get_bind()
    elif isinstance(bind, URL):
        bind = bind.get_backend_name()
    if isinstance(bind, str) and "://" in bind:
        bind = make_url(bind).get_backend_name()
    name = bind if isinstance(bind, str) else getattr(bind, "dialect", bind).name
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"no jobkit backend for {name!r}; jobkit runs on "
                         f"{' or '.join(_BY_NAME)}") from None
