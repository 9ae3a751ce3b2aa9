"""Engines, sessions and the schema, for SQLite (embedded default) and PostgreSQL.

What differs between the two (URL checks, engine options, connection hooks: SQLite's write
lock taken before the first write, its write gate and one-trip cursors, PostgreSQL's light
ping) is in :mod:`jobkit.backends`; this module makes engines and sessions with them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util import queue as sqla_queue

from .backends import backend_of
from .backends.common import READ_PREFIXES, TRUSTED_CHECKOUT, TrustedCheckout, open_lane
from .config import Settings
from .errors import DatabaseURLError, JobkitError
from .jsonutil import dumps
from .models import Meta, meta_table
from .urls import check_url, redact_url

log = logging.getLogger("jobkit")


#: While connections are in use, the pool opens at most one more per this many seconds
#: (see :class:`ReusingPool`).
OPEN_EVERY_S = 0.05


class ReusingPool(AsyncAdaptedQueuePool):
    """The engine's pool: SQLAlchemy's, except that while some of its connections are in
    use it opens at most one more per :data:`OPEN_EVERY_S`; a checkout meanwhile waits for
    one in use to come back, or for its turn to open one.

    Connections are kept once opened (``max_overflow=0``). Opening one for every checkout
    that found none idle, 100 handlers whose short transactions started at the same
    moment opened as many as the pool allowed (PostgreSQL forks a server process for
    each, about 5 ms, and each prepares its statements anew): 500 cut_analysis jobs at
    concurrency 100 took 3.1-3.6 s with up to 50 connections, 2.9-3.0 s with 10 kept,
    and 2.9-3.0 s with this pool of 50. A burst of short transactions shares the few
    connections it needs, and the pool grows only while checkouts keep waiting. Handlers
    that hold their session across long waits (and the worker's heartbeat beside them)
    still get a connection each, up to ``pool_size``: the k-th opened while the others
    are in use waits at most k × 50 ms, once (connections are kept).
    """

    # Log as SQLAlchemy's pool does (under "sqlalchemy", not "jobkit").
    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"
    _last_open = 0.0

    def _do_get(self) -> ConnectionPoolEntry:
        while self._overflow < self._max_overflow and self.checkedout() > 0:
            since = time.monotonic() - self._last_open
            if since >= OPEN_EVERY_S:
                try:
                    return self._pool.get(False)
                except sqla_queue.Empty:
                    self._last_open = time.monotonic()
                    break  # our turn: open one (below)
            try:
                return self._pool.get(True, OPEN_EVERY_S - since)
            except sqla_queue.Empty:
                continue
        return super()._do_get()


def create_engine(url: str | None = None, *, settings: Settings | None = None,
                  pool_size: int | None = None, max_overflow: int = 0,
                  **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` (default: the settings' database URL), ready for workers.

    Up to ``pool_size`` connections at once (default: the settings' ``db_pool_size``,
    ``JOBKIT_DB_POOL_SIZE``, 50), each kept open once made. The pool opens them as they are
    needed, never more than were in use at the same time, and while some are in use at
    most one per 50 ms (:class:`ReusingPool`). An older default (10 kept, 40 more opened
    and closed as needed) reopened connections on every burst: a worker at concurrency
    100 whose handlers write opened ~400 connections for 500 jobs. Pass smaller values for
    a server with few connections to spare."""
    settings = settings or Settings.from_env()
    url = url or settings.database_url
    check_url("JOBKIT_DATABASE_URL", url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseURLError("JOBKIT_DATABASE_URL", redact_url(url),
                               "a well-formed database URL") from None
    kwargs.setdefault("json_serializer", dumps)
    backend = backend_of(parsed)
    problem = backend.url_problem(parsed)
    if problem is not None:
        raise DatabaseURLError("JOBKIT_DATABASE_URL", redact_url(url), problem)
    kwargs.setdefault("pool_size", settings.db_pool_size if pool_size is None else pool_size)
    kwargs.setdefault("max_overflow", max_overflow)
    kwargs.setdefault("poolclass", ReusingPool)
    backend.engine_options(parsed, kwargs)
    engine = create_async_engine(parsed, **kwargs)
    backend.install(engine, kwargs)
    _install_write_tracking(engine)
    open_lane(engine)
    return engine


def _install_write_tracking(engine: AsyncEngine) -> None:
    """Mark a connection's transaction as 'wrote' once it runs anything but a read.

    The worker uses this to know whether a handler wrote through its session,
    and so whether its completion must share the handler's transaction.
    """
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _track(conn: Connection, cursor: Any, statement: str, params: Any,
               context: Any, executemany: bool) -> None:
        if not statement.lstrip()[:9].upper().startswith(READ_PREFIXES):
            conn.info["jk_wrote"] = True

    def _reset(conn: Connection) -> None:
        conn.info["jk_wrote"] = False

    event.listen(sync_engine, "begin", _reset)


def session_wrote(session: AsyncSession) -> bool:
    """Whether ``session`` has unflushed changes or ran a write in its transaction."""
    if not session_used(session):
        return False
    sync = session.sync_session
    if sync.new or sync.dirty or sync.deleted:
        return True
    if not session.in_transaction():
        return False
    tx = sync.get_transaction()
    if tx is None:
        return False
    for conn in tx._connections.values():  # noqa: SLF001 - SQLAlchemy offers no public view
        connection = conn[0]
        if connection.info.get("jk_wrote"):
            return True
    return False


class LazySession(AsyncSession):
    """An :class:`AsyncSession` whose ORM ``Session`` is made the first time it is used.

    A worker hands one to every job's handler as ``db``. Most handlers of a queue never
    touch the database (or not on every path); for them, creating and closing a session
    was the largest per-job cost left. It is an ``AsyncSession`` for every purpose
    (``isinstance``, every method): any use but ``info`` builds the real session first,
    with the sessionmaker's settings, and ``info`` set before that is carried over.
    """

    def __init__(self, maker: async_sessionmaker[AsyncSession]) -> None:  # noqa: D107
        # AsyncSession.__init__ runs later, in _materialise (see __getattr__).
        self.__dict__["_jk_maker"] = maker
        self.__dict__["_jk_info"] = {}

    def _materialise(self) -> None:
        AsyncSession.__init__(self, **self._jk_maker.kw)
        self.sync_session.info.update(self.__dict__.pop("_jk_info"))

    def __getattr__(self, name: str) -> Any:
        # Reached only for an attribute not set yet: until the first use, all of them.
        if name.startswith("_jk") or "sync_session" in self.__dict__:
            raise AttributeError(name)
        self._materialise()
        return getattr(self, name)

    @property
    def info(self) -> dict[Any, Any]:  # type: ignore[override]
        if "sync_session" in self.__dict__:
            return self.sync_session.info
        return self.__dict__["_jk_info"]  # type: ignore[no-any-return]

    @property
    def bind(self) -> Any:
        # The engine it will be bound to, without making the session (progress tracking
        # asks for it before every handler).
        if "sync_session" in self.__dict__:
            return AsyncSession.bind.fget(self)  # type: ignore[attr-defined]
        return self._jk_maker.kw.get("bind")

    @bind.setter
    def bind(self, value: Any) -> None:
        AsyncSession.bind.fset(self, value)  # type: ignore[attr-defined]

    async def close(self) -> None:
        if "sync_session" in self.__dict__:
            await super().close()

    async def execute(self, statement: Any, params: Any = None,  # type: ignore[override]
                      **kw: Any) -> Any:
        """:meth:`AsyncSession.execute`, which may skip the checkout ping for the first
        statement of a transaction and run it again if its connection turns out dead.

        Only for a statement that opens the transaction, with nothing waiting to be flushed
        and not in autocommit: it failed on a connection the server had closed (its BEGIN
        or the statement itself, before any COMMIT), so nothing of it was kept, and the
        handler has seen nothing of it yet. The backend decides whether the ping is skipped
        (PostgreSQL: a connection returned less than a second ago; SQLite has no ping).
        """
        if "sync_session" not in self.__dict__:
            self._materialise()
        sync = self.sync_session
        if sync.in_transaction() or sync.new or sync.dirty or sync.deleted:
            return await AsyncSession.execute(self, statement, params, **kw)
        trusted = TrustedCheckout()
        token = TRUSTED_CHECKOUT.set(trusted)
        try:
            return await AsyncSession.execute(self, statement, params, **kw)
        except DBAPIError as exc:
            unchecked = trusted.unchecked
            if not (exc.connection_invalidated and unchecked is not None
                    and getattr(unchecked, "autocommit", True) is False):
                raise
            log.info("a pooled connection had been closed by the server; "
                     "running the statement again on another one (%s)", exc.orig)
        finally:
            TRUSTED_CHECKOUT.reset(token)
        await self.rollback()
        return await AsyncSession.execute(self, statement, params, **kw)

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        if "sync_session" not in self.__dict__:
            return
        sync = self.sync_session
        if not sync.in_transaction():
            # Nothing open (the handler's work was committed): closing does no I/O, so
            # it runs here, without the task and the shield that protect a close that
            # does (AsyncSession.__aexit__), and no cancellation can cut it short.
            sync.close()
            return
        await super().__aexit__(type_, value, traceback)


def session_used(session: AsyncSession) -> bool:
    """False for a :class:`LazySession` nobody has used yet (no session, no connection)."""
    return "sync_session" in session.__dict__


_SETTINGS = "jobkit.settings"


def attach_settings(db: AsyncSession, settings: Settings) -> None:
    """Let the code ``db`` is handed to (a handler, explain, the dashboard) find ``settings``."""
    db.info[_SETTINGS] = settings


def settings_of(db: AsyncSession) -> Settings:
    """The settings attached to ``db`` (:func:`attach_settings`), else the environment's."""
    found = db.info.get(_SETTINGS)
    return found if isinstance(found, Settings) else Settings.from_env()


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that never expire on commit (no surprise lazy loads in async code)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=True)


async def schema_version(engine: AsyncEngine) -> int | None:
    """The number of the database's jobkit schema revision, or None when there is none yet.

    Read from ``jobkit_meta`` (jobkit 0.1.0's record, kept equal to the Alembic revision);
    :func:`jobkit.schema.read_state` tells the whole story.
    """
    async with engine.connect() as conn:
        has_meta = await conn.run_sync(
            lambda sync: sync.dialect.has_table(sync, meta_table.name))
        if not has_meta:
            return None
        value = (await conn.execute(
            select(Meta.value).where(Meta.key == "schema_version"))).scalar_one_or_none()
        return None if value is None else int(value)


async def init_schema(engine: AsyncEngine, settings: Settings | None = None) -> None:
    """Create the schema, or bring it to this jobkit's revision (see :mod:`jobkit.schema`).

    An empty database is created by the migrations; an older one is upgraded on SQLite
    and, on PostgreSQL, only with ``JOBKIT_AUTO_MIGRATE=true`` (else
    :class:`~jobkit.errors.SchemaOutdated` says to run ``jobkit migrate``); a newer one is
    refused (:class:`~jobkit.errors.SchemaTooNew`). A database already current is only
    read, so a read-only database opens.
    """
    from .schema import ensure_schema

    await ensure_schema(engine, settings)


async def get_db(url: str | None = None) -> AsyncIterator[AsyncSession]:
    """Yield one session on a fresh engine: ``async for db in get_db()``."""
    engine = create_engine(url)
    try:
        await init_schema(engine)
        async with make_sessionmaker(engine)() as session:
            yield session
    finally:
        await engine.dispose()


async def check_database(engine: AsyncEngine) -> None:
    """Raise a clear :class:`JobkitError` when the database cannot be reached."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - we re-raise with a clear message
        raise JobkitError(
            f"cannot reach the database {redact_url(engine.url)}: {describe_error(exc)}") from None


#: What a database outage raises: SQLAlchemy's errors, the OS's and, where it is installed,
#: asyncpg's own (a dropped connection outside SQLAlchemy's wrapping).
DB_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, ConnectionError)
try:  # asyncpg raises its own errors for a dropped connection outside SQLAlchemy's wrapping
    import asyncpg

    DB_ERRORS += (asyncpg.PostgresError, asyncpg.InterfaceError)
except ImportError:  # pragma: no cover
    pass


def describe_error(exc: BaseException) -> str:
    """One line naming a database error (no traceback, no password)."""
    msg = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")
