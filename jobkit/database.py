"""Engines, sessions and the schema, for SQLite (embedded default) and PostgreSQL.

SQLite is made safe for several worker processes: WAL, a busy timeout, and a
transaction that takes the write lock (``BEGIN IMMEDIATE``) *before its first
write*. Reads before that run outside any transaction, so a handler that reads,
thinks for a while and then writes never holds the database's single write
lock while it thinks, and a write never has to "upgrade" a read transaction
(the source of "database is locked" errors that a busy timeout cannot cure).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

from sqlalchemy import event, select, text
from sqlalchemy.engine import URL, Connection, make_url
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

from .config import Settings, _check_url
from .errors import DatabaseURLError, JobkitError
from .jsonutil import dumps
from .models import Meta, meta_table

log = logging.getLogger("jobkit")

SQLITE_BUSY_TIMEOUT_MS = 30_000
_READ_PREFIXES = ("SELECT", "PRAGMA", "EXPLAIN", "SAVEPOINT", "RELEASE")


#: Query parameters whose value is a secret (drivers accept a password there too).
_SECRET_PARAM = re.compile(r"pass(word|wd|phrase)?$|pwd$|secret|token|credential|api_?key|"
                           r"^auth", re.IGNORECASE)
_SECRET_IN_QUERY = re.compile(r"([?&;])([^=&;#]+)=([^&;#]*)")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)@")


def redact_url(url: str | URL) -> str:
    """The URL as text with every secret replaced by ``***``: the password of the user
    part and query parameters such as ``?password=``, ``sslpassword=`` or ``token=`` (a
    driver takes the password from either place). Works on malformed URLs too."""
    text_url = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)

    def userinfo(m: re.Match[str]) -> str:
        user, sep, _ = m.group(2).partition(":")
        return f"{m.group(1)}{user}{':***' if sep else ''}@"

    def query(m: re.Match[str]) -> str:
        key = m.group(2)
        secret = _SECRET_PARAM.search(unquote(key)) is not None
        return f"{m.group(1)}{key}={'***' if secret else m.group(3)}"

    text_url = _USERINFO.sub(userinfo, text_url, count=1)
    head, sep, rest = text_url.partition("?")
    return head + sep + _SECRET_IN_QUERY.sub(query, "?" + rest)[1:] if sep else text_url


def backend_of(url: str) -> str:
    """``'sqlite'`` or ``'postgresql'``."""
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def create_engine(url: str | None = None, *, settings: Settings | None = None,
                  pool_size: int = 10, max_overflow: int = 40, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` (default: the settings' database URL), ready for workers."""
    settings = settings or Settings.from_env()
    url = url or settings.database_url
    _check_url("database_url", url)
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

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _before(conn: Connection, cursor: Any, statement: str, params: Any,
                context: Any, executemany: bool) -> None:
        if conn.info.get("jk_sqlite_begun", True) or not conn.in_transaction():
            return
        if statement.lstrip()[:9].upper().startswith(_READ_PREFIXES):
            return  # reads before the first write run outside a transaction
        conn.info["jk_sqlite_begun"] = True
        cursor.execute("BEGIN IMMEDIATE")

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
        if not _sqlite_idle(dbapi_conn):
            do_commit(dbapi_conn)

    def _rollback(dbapi_conn: Any) -> None:
        if not _sqlite_idle(dbapi_conn):
            do_rollback(dbapi_conn)

    dialect.do_commit, dialect.do_rollback = _commit, _rollback


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
