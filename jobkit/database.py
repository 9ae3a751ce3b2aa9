"""Engines, sessions and the schema, for SQLite (embedded default) and PostgreSQL.

SQLite is made safe for several worker processes: WAL, a busy timeout, and a
transaction that takes the write lock (``BEGIN IMMEDIATE``) *before its first
write*. Reads before that run outside any transaction, so a handler that reads,
thinks for a while and then writes never holds the database's single write
lock while it thinks, and a write never has to "upgrade" a read transaction
(the source of "database is locked" errors that a busy timeout cannot cure).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import weakref
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DisconnectionError,
    PendingRollbackError,
    ResourceClosedError,
)
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_only

from .config import Settings
from .errors import DatabaseURLError, JobkitError
from .jsonutil import dumps
from .models import Meta, meta_table
from .urls import check_url, redact_url

log = logging.getLogger("jobkit")

SQLITE_BUSY_TIMEOUT_MS = 30_000
_READ_PREFIXES = ("SELECT", "PRAGMA", "EXPLAIN", "SAVEPOINT", "RELEASE")


def create_engine(url: str | None = None, *, settings: Settings | None = None,
                  pool_size: int = 10, max_overflow: int = 40, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` (default: the settings' database URL), ready for workers."""
    settings = settings or Settings.from_env()
    url = url or settings.database_url
    check_url("JOBKIT_DATABASE_URL", url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseURLError("JOBKIT_DATABASE_URL", redact_url(url),
                               "a well-formed database URL") from None
    kwargs.setdefault("json_serializer", dumps)
    if parsed.get_backend_name() == "postgresql" and "sslmode" in parsed.query:
        raise DatabaseURLError(
            "JOBKIT_DATABASE_URL", redact_url(url),
            f"asyncpg's spelling of the TLS option: ?ssl={parsed.query['sslmode']} "
            "instead of ?sslmode=…")
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or "mode=memory" in str(parsed):
            raise DatabaseURLError(
                "JOBKIT_DATABASE_URL", redact_url(url),
                "a SQLite *file* (an in-memory database cannot be shared by workers); "
                "e.g. sqlite+aiosqlite:///./jobkit.db")
        if database.startswith("file:"):  # a SQLite URI (e.g. ?mode=ro&uri=true)
            database = database[5:].split("?", 1)[0]
        folder = os.path.dirname(os.path.abspath(database))
        if not os.path.isdir(folder):
            raise DatabaseURLError("JOBKIT_DATABASE_URL", redact_url(url),
                                   f"a file in an existing folder ({folder} does not exist)")
        kwargs.setdefault("pool_size", pool_size)
        kwargs.setdefault("max_overflow", max_overflow)
        if parsed.get_driver_name() == "aiosqlite":
            kwargs.setdefault("module", _one_trip_aiosqlite())
        engine = create_async_engine(parsed, **kwargs)
        _install_sqlite_hooks(engine)
    else:
        kwargs.setdefault("pool_size", pool_size)
        kwargs.setdefault("max_overflow", max_overflow)
        kwargs.setdefault("pool_pre_ping", False)
        engine = create_async_engine(parsed, **kwargs)
        if not kwargs["pool_pre_ping"]:
            _install_light_ping(engine)
    _install_write_tracking(engine)
    return engine


def _install_light_ping(engine: AsyncEngine) -> None:
    """Check every pooled PostgreSQL connection before use, in one round trip.

    Same guarantee as SQLAlchemy's ``pool_pre_ping`` (a connection dropped by a restart or
    ``pg_terminate_backend`` is replaced, not handed to the caller), but its asyncpg ping
    costs three round trips (BEGIN, ping, ROLLBACK) on every checkout, more than the
    one-statement transactions of the hot path.
    """
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        raw = getattr(dbapi_conn, "_connection", None)
        try:
            if raw is None:
                dbapi_conn.ping()
            elif raw.is_closed():  # the server's close already reached us: no round trip
                raise ConnectionError("closed by the server")
            else:
                await_only(raw.fetchrow(";"))
        except Exception as exc:  # the pool replaces the connection and tries again
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        # Let us issue BEGIN ourselves; the driver's own implicit BEGIN is deferred.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.info["jk_sqlite_begun"] = False

    gate = _GATES[sync_engine] = _WriteGate()

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _before(conn: Connection, cursor: Any, statement: str, params: Any,
                context: Any, executemany: bool) -> None:
        if statement.lstrip()[:9].upper().startswith(_READ_PREFIXES):
            return  # reads before the first write run outside a transaction
        # A write: take this process's turn at SQLite's write lock first (see _WriteGate).
        gate.acquire(conn.connection.dbapi_connection)
        if conn.info.get("jk_sqlite_begun", True) or not conn.in_transaction():
            return
        conn.info["jk_sqlite_begun"] = True
        cursor.execute("BEGIN IMMEDIATE")

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _after(conn: Connection, cursor: Any, statement: str, params: Any,
               context: Any, executemany: bool) -> None:
        # A lone write statement (no transaction open around it) has released SQLite's lock.
        dbapi_conn = conn.connection.dbapi_connection
        if gate.holds(dbapi_conn) and _sqlite_idle(dbapi_conn):
            gate.release(dbapi_conn)

    @event.listens_for(sync_engine, "handle_error")
    def _on_error(ctx: Any) -> None:
        try:
            raw = ctx.connection.connection.dbapi_connection if ctx.connection else None
        except Exception:  # noqa: BLE001 - closed or invalidated: the pool events release it
            return
        if raw is not None and gate.holds(raw) and _sqlite_idle(raw):
            gate.release(raw)

    # Every other way a connection's transaction ends releases its turn too: an invalidated
    # (cancelled mid-statement) or closed connection, and, as a safety net, the check-in.
    def _release_conn(dbapi_conn: Any, *_: Any) -> None:
        if dbapi_conn is not None:
            gate.release(dbapi_conn)

    for name in ("invalidate", "soft_invalidate", "close", "close_detached", "detach",
                 "checkin"):
        event.listen(sync_engine.pool, name, _release_conn)

    def _end(conn: Connection) -> None:
        info = connection_info(conn)
        if info is not None:
            info["jk_sqlite_begun"] = True

    event.listen(sync_engine, "commit", _end)
    event.listen(sync_engine, "rollback", _end)

    # COMMIT/ROLLBACK when SQLite has no transaction open (a lone autocommit statement, a
    # read-only session, the pool's reset on check-in) are no-ops, but each still costs a
    # round trip to aiosqlite's thread; sqlite3 knows the state without one.
    dialect: Any = sync_engine.dialect
    do_commit, do_rollback = dialect.do_commit, dialect.do_rollback

    def _commit(dbapi_conn: Any) -> None:
        try:
            if not _sqlite_idle(dbapi_conn):
                do_commit(dbapi_conn)
        finally:
            if _sqlite_idle(dbapi_conn):  # a failed COMMIT may leave the transaction open
                gate.release(dbapi_conn)

    def _rollback(dbapi_conn: Any) -> None:
        try:
            if not _sqlite_idle(dbapi_conn):
                do_rollback(dbapi_conn)
        finally:
            gate.release(dbapi_conn)

    dialect.do_commit, dialect.do_rollback = _commit, _rollback


class _WriteGate:
    """This process's queue for SQLite's single write lock, one per engine.

    SQLite lets one connection write at a time; the others wait in its busy handler,
    which *sleeps* between tries (1, 2, 5, 10 … 100 ms). With many jobs of one worker
    finishing at once, those sleeps, not the writes, made up most of the time. So the
    engine's connections take turns on an ``asyncio.Lock`` (FIFO, handed over the moment
    the holder's transaction ends) before ``BEGIN IMMEDIATE`` or a lone write statement;
    SQLite's own lock and busy timeout still arbitrate between processes.

    The turn is released when the connection's transaction ends: commit, rollback, a lone
    statement's end, an error that left no transaction, and, for a connection invalidated
    by a cancellation, closed or checked in, by the pool events. A waiter cancelled while
    queued never holds it. A holder that keeps its transaction open for longer than the
    busy timeout does not block the others forever: they go on to SQLite's busy handler.
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = \
            weakref.WeakKeyDictionary()
        self._held: dict[int, asyncio.Lock] = {}  # id(DBAPI connection) → the lock it holds

    @staticmethod
    def _key(conn: Any) -> int:
        # The DBAPI connection itself, whether given as is or through the pool's proxy
        # (SQLAlchemy passes the proxy to do_commit / do_rollback).
        return id(getattr(conn, "dbapi_connection", None) or conn)

    def holds(self, dbapi_conn: Any) -> bool:
        return self._key(dbapi_conn) in self._held

    @property
    def holders(self) -> int:
        """Connections holding their turn now (0 or 1 while the gate works)."""
        return len(self._held)

    def acquire(self, dbapi_conn: Any) -> None:
        """Wait (inside SQLAlchemy's greenlet) for this connection's turn to write."""
        key = self._key(dbapi_conn)
        if key in self._held:
            return  # already its turn (a transaction's second write)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (not reached through the asyncio API): SQLite decides
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        if lock.locked():
            try:
                await_only(_acquire_within(lock, SQLITE_BUSY_TIMEOUT_MS / 1000))
            except TimeoutError:
                return  # held too long by another connection: leave it to SQLite
        else:
            await_only(lock.acquire())  # free: returns at once
        self._held[key] = lock

    def release(self, dbapi_conn: Any) -> None:
        lock = self._held.pop(self._key(dbapi_conn), None)
        if lock is not None and lock.locked():
            lock.release()


async def _acquire_within(lock: asyncio.Lock, seconds: float) -> None:
    # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that
    # arrives as the lock is handed over (and return holding it).
    async with asyncio.timeout(seconds):
        await lock.acquire()


_GATES: weakref.WeakKeyDictionary[Any, _WriteGate] = weakref.WeakKeyDictionary()


def write_gate(engine: AsyncEngine) -> _WriteGate | None:
    """The SQLite engine's :class:`_WriteGate` (None on PostgreSQL)."""
    return _GATES.get(engine.sync_engine)


def _one_trip_aiosqlite() -> Any:
    """SQLAlchemy's aiosqlite DBAPI adapter, with cursors that cost ONE trip to aiosqlite's
    thread per statement.

    The stock adapter makes up to four (create a cursor, execute, fetch the rows, close
    the cursor), each a hand-off between the event loop and aiosqlite's thread that costs
    more than a small statement itself on a busy machine. Here the four run as one call in
    that thread (aiosqlite's own ``execute_fetchall`` does the same); results are buffered,
    as the stock cursor buffers them too. Passed to the engine as its DBAPI ``module``.
    """
    import sqlite3

    import aiosqlite
    from sqlalchemy.dialects.sqlite.aiosqlite import (
        AsyncAdapt_aiosqlite_connection,
        AsyncAdapt_aiosqlite_cursor,
        AsyncAdapt_aiosqlite_dbapi,
    )
    from sqlalchemy.util import EMPTY_DICT

    def run(conn: sqlite3.Connection, operation: Any, parameters: Any,
            many: bool) -> tuple[Any, int, Any, list[Any] | None]:
        cur = conn.cursor()
        try:
            if many:
                cur.executemany(operation, parameters)
            elif parameters is None:
                cur.execute(operation)
            else:
                cur.execute(operation, parameters)
            desc = cur.description
            rows = cur.fetchall() if desc else None
            return desc, cur.rowcount, cur.lastrowid, rows
        finally:
            cur.close()

    class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
        __slots__ = ("_desc", "_rowcount", "_lastrowid", "_size")

        def __init__(self, adapt_connection: Any) -> None:  # no aiosqlite cursor: no trip
            self._adapt_connection = adapt_connection
            self._connection = adapt_connection._connection
            self._cursor = None  # type: ignore[assignment]
            self._soft_closed_memoized = EMPTY_DICT
            self._rows = collections.deque()
            self._desc: Any = None
            self._rowcount = -1
            self._lastrowid: Any = None
            self._size = 1

        @property
        def description(self) -> Any:
            return self._desc

        @property
        def rowcount(self) -> int:
            return self._rowcount

        @property
        def lastrowid(self) -> Any:
            return self._lastrowid

        @property
        def arraysize(self) -> int:
            return self._size

        @arraysize.setter
        def arraysize(self, value: int) -> None:
            self._size = value

        async def _run(self, operation: Any, parameters: Any, many: bool) -> None:
            async with self._adapt_connection._execute_mutex:
                aio = self._connection
                self._desc, self._rowcount, self._lastrowid, rows = await aio._execute(
                    run, aio._conn, operation, parameters, many)
            self._rows = collections.deque(rows or ())

        async def _execute_async(self, operation: Any, parameters: Any) -> Any:
            await self._run(operation, parameters, False)

        async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
            await self._run(operation, seq_of_parameters, True)

        async def _async_soft_close(self) -> None:
            return  # nothing open: the rows are already here

        def close(self) -> None:
            self._rows.clear()

        def nextset(self) -> None:
            return None

        def setinputsizes(self, *inputsizes: Any) -> None:
            return None

    class OneTripConnection(AsyncAdapt_aiosqlite_connection):
        __slots__ = ()
        _cursor_cls = OneTripCursor

    class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
        def connect(self, *arg: Any, **kw: Any) -> Any:
            stock = super().connect(*arg, **kw)
            return OneTripConnection(self, stock._connection)

    return OneTripDBAPI(aiosqlite, sqlite3)


def connection_info(conn: Connection) -> dict[Any, Any] | None:
    """``conn.info``, or None when the connection was invalidated or closed.

    A transaction-end listener runs while SQLAlchemy rolls back a connection that a
    cancellation (or a dropped server) invalidated. Reading ``conn.info`` there raises
    ``PendingRollbackError``, which would replace the ``CancelledError`` in flight: the
    caller's cancellation would turn into an ordinary database error and be retried.
    """
    if conn.invalidated or conn.closed:
        return None
    try:
        return conn.info
    except (PendingRollbackError, ResourceClosedError):
        return None


def _sqlite_idle(dbapi_conn: Any) -> bool:
    """True when this aiosqlite connection is surely outside any SQLite transaction."""
    try:
        return not dbapi_conn._connection.in_transaction
    except Exception:  # noqa: BLE001 - closed or unexpected: let the real call decide
        return False


def sqlite_autocommit(conn: Connection) -> None:
    """Run this SQLite transaction's statements without ``BEGIN IMMEDIATE``.

    For a transaction of ONE write statement: SQLite runs it atomically on its own and
    takes the write lock when it starts (so it never has to upgrade a read), which is all
    ``BEGIN IMMEDIATE`` gives; skipping it saves a round trip to aiosqlite's thread.
    """
    conn.info["jk_sqlite_begun"] = True


def _install_write_tracking(engine: AsyncEngine) -> None:
    """Mark a connection's transaction as 'wrote' once it runs anything but a read.

    The worker uses this to know whether a handler wrote through its session,
    and so whether its completion must share the handler's transaction.
    """
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _track(conn: Connection, cursor: Any, statement: str, params: Any,
               context: Any, executemany: bool) -> None:
        if not statement.lstrip()[:9].upper().startswith(_READ_PREFIXES):
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

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        if "sync_session" in self.__dict__:
            await super().__aexit__(type_, value, traceback)


def session_used(session: AsyncSession) -> bool:
    """False for a :class:`LazySession` nobody has used yet (no session, no connection)."""
    return "sync_session" in session.__dict__


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


def sqlite_begin_immediate(conn: Connection) -> None:
    """Open ``conn``'s transaction with ``BEGIN IMMEDIATE`` now (take the write lock first)."""
    _sqlite_begin(conn, "BEGIN IMMEDIATE")


def sqlite_begin_snapshot(conn: Connection) -> None:
    """Open a deferred transaction, so ``conn``'s next reads all see one snapshot."""
    _sqlite_begin(conn, "BEGIN")


def _sqlite_begin(conn: Connection, begin: str) -> None:
    conn.exec_driver_sql("SELECT 1")  # SQLAlchemy's autobegin (a read: no BEGIN emitted)
    conn.info["jk_sqlite_begun"] = True
    conn.exec_driver_sql(begin)


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


def describe_error(exc: BaseException) -> str:
    """One line naming a database error (no traceback, no password)."""
    msg = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")
